"""The `dynpatch` command: train, evaluate, embed, search, visualize, export, calibrate, demo, tune.

Run `dynpatch COMMAND --help` for each command's options, or `dynpatch demo`
for a few-minute tour on generated data: it trains a small model, prints its
accuracy and patch counts, saves and exports it and draws pictures.

The arguments are defined in `dynpatch_tf.cli_parser`; the work in the library
(`training`, `beam_embedding`, `visualize.draw_files`, `export`, `demo`):
each command here checks its arguments, calls them and prints what they return.
`tune` lives in `cli_tune` and the identification parts in `cli_search`; what
the commands share (`CommandError`, the loaders) in `cli_common`.

Examples:

```bash
dynpatch train --needles 600 --epochs 8 --thresholds 0.002 0.004 0.008 --output run/
dynpatch evaluate --model run/model.keras --needles 200
dynpatch embed --model run/model.keras photos/ --output embeddings/ --index photos.index
dynpatch search --index photos.index --query photo.jpg -k 5
dynpatch visualize --model run/model.keras photo.jpg --output pictures/
dynpatch export --model run/model.keras --format saved_model --output saved_models --name dynpatch
dynpatch calibrate photos/ --model run/model.keras --patch-fraction 0.15
```
"""

import contextlib
import importlib.util
import logging
import os
import sys

import keras
import tensorflow as tf

from dynpatch_tf import cli_search, cli_tune, demo
from dynpatch_tf.calibration import calibrate_thresholds, node_scores
from dynpatch_tf.cli_common import CommandError, checked_thresholds, load_datasets, load_model, reported
from dynpatch_tf.cli_common import verbosity
from dynpatch_tf.cli_parser import BASE_SIZE, MIN_PATCH_SIZE
from dynpatch_tf.cli_parser import parse_arguments
from dynpatch_tf.distribute import make_strategy, worker_folder
from dynpatch_tf.heads import identifies
from dynpatch_tf.image_files import list_image_files, map_image_files
from dynpatch_tf.model import DynamicPatchModel
from dynpatch_tf.training import compile_classifier, describe_counts, fit_and_save, patch_counts
from dynpatch_tf.visualize import draw_files


def main(argv=None):
    """Runs the `dynpatch` command line.

    Args:
        argv: the arguments after the program name; `sys.argv[1:]` by default.

    Returns:
        The exit status: 0 on success, 1 when the command reported an error
        (argument errors exit with status 2 through argparse).
    """
    args = parse_arguments(argv)
    try:
        COMMANDS[args.command](args)
    except CommandError as error:
        print(f"dynpatch {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _train(args):
    if not 0 <= args.validation_split < 1:
        raise CommandError(f"--validation-split must be in [0, 1), got {args.validation_split}.")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise CommandError('--tensorboard needs the tensorboard package: pip install "dynpatch_tf[tensorboard]"')
    sizes = {"base_size": args.base_size, "min_size": args.min_patch_size}
    thresholds = checked_thresholds(args.thresholds, args.base_size or BASE_SIZE,
                             args.min_patch_size or MIN_PATCH_SIZE)
    with reported(prefix="--strategy: "):  # first: a multi-worker one precedes any op
        strategy = make_strategy(args.strategy)
    training, validation, class_names = load_datasets(args, training=True)
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        with reported(ValueError, TypeError, prefix="cannot build the model: "):
            model = _train_model(args, class_names, thresholds, sizes)
        print(f"Classes: {', '.join(class_names)}")
        with reported(tf.errors.OpError, prefix="training stopped: "):
            try:
                fit_and_save(model, training, validation, worker_folder(args.output, strategy),
                             args.epochs, args.learning_rate, verbosity(args), args.tensorboard)
            except tf.errors.UnavailableError as error:  # a worker of the cluster stopped
                raise CommandError(_lost_worker(error)) from None


def _lost_worker(error):
    """What `train` says when a multi-worker job loses a worker (TensorFlow aborts the others)."""
    tasks = [line.strip() for line in error.message.splitlines() if line.strip().startswith("/job:")]
    return (f"the cluster lost {', '.join(tasks) or 'a worker'} (UnavailableError). Restart: "
            "start every worker again with the same command; each resumes after the last "
            "epoch it finished (its backup/ folder).")


def _train_model(args, class_names, thresholds, sizes):
    """The model `train` fits: its flags, and `--config`'s options no flag takes."""
    return DynamicPatchModel(
        num_classes=len(class_names),
        thresholds=thresholds,
        penalty_weight=args.penalty_weight,
        patch_budget=args.patch_budget,
        budget_momentum=args.budget_momentum,
        token_size=args.token_size,
        embed_dim=args.embed_dim,
        width_multiplier=args.width_multiplier,
        attention_filters=args.attention_filters,
        synchronized_batch_norm=args.sync_batch_norm,
        # Only the sizes given: the model's own defaults otherwise.
        **{name: size for name, size in sizes.items() if size is not None},
        **getattr(args, "model_options", {}),
    )


def _evaluate(args):
    model = load_model(args.model)
    if args.task == "identification":
        with reported(ValueError, OSError, tf.errors.OpError):
            data, identities = cli_search.identification_data(args)
            return cli_search.evaluate_identification(model, data, identities, args)
    if args.identities is not None or identifies(model.head):
        raise CommandError("--identities and identification models are for --task identification.")
    dataset, _, class_names = load_datasets(args)
    if model.num_classes != len(class_names):
        raise CommandError(
            f"the model has {model.num_classes} classes, the data {len(class_names)}: "
            f"{', '.join(class_names)}."
        )
    compile_classifier(model)
    with reported(tf.errors.OpError, prefix="evaluation stopped: "):
        results = model.evaluate(dataset, return_dict=True, verbose=verbosity(args))
        counts = patch_counts(model, dataset)
    print(f"accuracy: {results['accuracy']:.4f}")
    print(f"loss: {results['loss']:.4f}")
    print(f"patches per image: {describe_counts(counts)}")


def _embed(args):
    runner = {"runner": args.runner} if args.runner else {}
    with _beam_warnings_hidden(not args.verbose):
        try:
            from dynpatch_tf import beam_embedding
        except ImportError as error:
            raise CommandError(f'embed runs on Apache Beam: pip install "dynpatch_tf[beam]" '
                               f"({error})") from None
        with reported():
            job = beam_embedding.run_embedding_job(args.images, args.model, args.output,
                                                   pipeline_args=args.pipeline_args, **runner)
    if os.path.isdir(args.output):  # a local output: say which files failed, and why
        _report_skipped(beam_embedding.read_errors(args.output))
    print(f"Embedded {job.embedded} images into {os.path.join(args.output, 'embeddings')}; "
          f"{job.failed} files could not be embedded ({os.path.join(args.output, 'errors')}).")
    if not job.embedded:
        raise CommandError("no image could be embedded.")
    if args.index:
        with reported(ValueError, ImportError, OSError, prefix="cannot index: "):
            cli_search.write_index(args)


def _search(args):
    with reported(ValueError, ImportError, OSError):
        cli_search.search(args)


@contextlib.contextmanager
def _beam_warnings_hidden(hide):
    """Hides logged warnings inside (Beam's notes on missing Google Cloud clients and torch)."""
    if hide:
        logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _visualize(args):
    with reported():
        paths = list_image_files(args.images)
    if args.model:
        model = load_model(args.model)
    else:
        print("No --model: drawing with an untrained DynamicPatchModel (default "
              "thresholds); its attention weights are random.")
        model = DynamicPatchModel()
    written, skipped = draw_files(model, paths, args.output, verbosity(args))
    _report_skipped(skipped)
    print(f"Wrote {len(written)} pictures to {args.output}")


def _export(args):
    from dynpatch_tf import export  # imported when needed: it is the slowest to load

    if args.format == "saved_model" and (args.image_size or args.quantization):
        raise CommandError("--image-size and --quantization are for --format tflite.")
    if args.format == "tflite" and args.version is not None:
        raise CommandError("--version is for --format saved_model.")
    model = load_model(args.model)
    if args.format == "saved_model":
        path = export.export_saved_model(model, args.output, args.name, version=args.version)
    else:
        options = {"image_size": tuple(args.image_size)} if args.image_size else {}
        os.makedirs(args.output, exist_ok=True)
        path = export.export_tflite(model, os.path.join(args.output, f"{args.name}.tflite"),
                                    quantization=args.quantization, **options)
    print(f"Exported to {path}")


def _calibrate(args):
    model = load_model(args.model)
    with reported():
        paths = list_image_files(args.data)
    min_side = max(model.patcher.base_size, model.complexity.min_image_size)
    # One file at a time: only each image's node means are kept.
    results, skipped = map_image_files(lambda path, image: node_scores(model, image),
                                       paths, min_side, verbosity(args))
    _report_skipped(skipped)
    if not results:
        raise CommandError("no image could be read.")
    with reported():
        result = calibrate_thresholds(model, [scores for _, scores in results],
                                      args.patch_fraction, args.patches_per_image)
    output = args.output or args.model
    with reported(ValueError, OSError, prefix=f"cannot write {output!r}: "):
        model.save(output)
    print(f"Calibrated on {len(results)} images.")
    print(f"thresholds before: {' '.join(f'{t:.6g}' for t in result.previous)}")
    print(f"thresholds after:  {' '.join(f'{t:.6g}' for t in result.thresholds)}")
    print(f"patches per image: {result.patches_per_image:.1f} (target {result.target:.1f}; "
          f"patch fraction {result.patch_fraction:.4f})")
    print(f"Wrote {output}")


def _demo(args):
    with reported():
        demo.run_demo(args.output, args.epochs, args.images, args.seed)


def _report_skipped(skipped):
    """Prints each `SkippedFile` on stderr: the file and why it was left out."""
    for path, reason in skipped:
        print(f"Skipped {path}: {reason}", file=sys.stderr)


# What each command runs (`cli_parser.build_parser` defines their arguments).
COMMANDS = {"train": _train, "evaluate": _evaluate, "embed": _embed, "visualize": _visualize,
             "export": _export, "calibrate": _calibrate, "demo": _demo, "tune": cli_tune.tune,
             "search": _search}

if __name__ == "__main__":
    sys.exit(main())
