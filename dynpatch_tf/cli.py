"""The `dynpatch` command: train, evaluate, embed, search, visualize, export, calibrate, demo.

Run `dynpatch COMMAND --help` for each command's options, or `dynpatch demo`
for a few-minute tour on generated data: it trains a small model, prints its
accuracy and patch counts, saves and exports it and draws pictures.

The arguments are defined in `dynpatch_tf.cli_parser`; the work in the library
(`training`, `beam_embedding`, `visualize.draw_files`, `export`, `demo`):
each command here checks its arguments, calls them and prints what they return.

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
import json
import logging
import os
import sys

import keras
import tensorflow as tf

from dynpatch_tf import cli_search, demo
from dynpatch_tf.augment import make_augmentation
from dynpatch_tf.calibration import calibrate_thresholds, node_scores
from dynpatch_tf.cli_parser import AUGMENTATION, BASE_SIZE, MIN_PATCH_SIZE, NEEDLES_IMAGE_SIZE
from dynpatch_tf.cli_parser import parse_arguments
from dynpatch_tf.distribute import make_strategy, worker_folder
from dynpatch_tf.heads import identifies
from dynpatch_tf.image_files import error_reason, list_image_files, map_image_files
from dynpatch_tf.model import DynamicPatchModel
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS
from dynpatch_tf.training import compile_classifier, describe_counts, fit_and_save, patch_counts
from dynpatch_tf.training import folder_datasets, needles_datasets
from dynpatch_tf.tuners import TrialFailedError, best_config, leaderboard, make_tuner
from dynpatch_tf.tuning import DEFAULT_RANGES, DynamicPatchHyperModel, threshold_sweep
from dynpatch_tf.visualize import draw_files


class CommandError(Exception):
    """A problem with the command's input, reported without a traceback."""


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


@contextlib.contextmanager
def _reported(*errors, prefix=""):
    """Reports `errors` (ValueError by default) raised inside as a CommandError.

    For library calls whose messages name the problem and the value; a
    TensorFlow `OpError`'s message is cleaned of TensorFlow's wrapping
    (`error_reason`).
    """
    try:
        yield
    except errors or ValueError as error:
        raise CommandError(f"{prefix}{error_reason(error)}") from None


def _train(args):
    if not 0 <= args.validation_split < 1:
        raise CommandError(f"--validation-split must be in [0, 1), got {args.validation_split}.")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise CommandError('--tensorboard needs the tensorboard package: pip install "dynpatch_tf[tensorboard]"')
    sizes = {"base_size": args.base_size, "min_size": args.min_patch_size}
    thresholds = _thresholds(args.thresholds, args.base_size or BASE_SIZE,
                             args.min_patch_size or MIN_PATCH_SIZE)
    with _reported(prefix="--strategy: "):  # first: a multi-worker one precedes any op
        strategy = make_strategy(args.strategy)
    training, validation, class_names = _load_datasets(args, training=True)
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        with _reported(ValueError, TypeError, prefix="cannot build the model: "):
            model = _train_model(args, class_names, thresholds, sizes)
        print(f"Classes: {', '.join(class_names)}")
        with _reported(tf.errors.OpError, prefix="training stopped: "):
            try:
                fit_and_save(model, training, validation, worker_folder(args.output, strategy),
                             args.epochs, args.learning_rate, _verbosity(args), args.tensorboard)
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


def _thresholds(thresholds, base_size, min_size):
    """`--thresholds` (or the default ones), checked against the split levels.

    The patcher splits `base_size` blocks in halves down to `min_size`
    patches, one threshold per split: 3 from 64 to 8 px.
    """
    for flag, size in (("--base-size", base_size), ("--min-patch-size", min_size)):
        if size < 1 or size & (size - 1):
            raise CommandError(f"{flag} must be a power of two, got {size}.")
    if min_size > base_size:
        raise CommandError(f"--min-patch-size {min_size} exceeds --base-size {base_size}.")
    sides = [base_size >> level for level in range((base_size // min_size).bit_length())]
    levels = len(sides) - 1
    if thresholds is None and levels == len(DEFAULT_THRESHOLDS):
        return tuple(DEFAULT_THRESHOLDS)
    if thresholds is None or len(thresholds) != levels:
        given = "none" if thresholds is None else len(thresholds)
        raise CommandError(
            f"--thresholds needs one value per split level: {levels} for patches of "
            f"{', '.join(map(str, sides))} px, got {given}."
        )
    return tuple(thresholds)


def _evaluate(args):
    model = _load_model(args.model)
    if args.task == "identification":
        with _reported(ValueError, OSError, tf.errors.OpError):
            data, identities = cli_search.identification_data(args)
            return cli_search.evaluate_identification(model, data, identities, args)
    if args.identities is not None or identifies(model.head):
        raise CommandError("--identities and identification models are for --task identification.")
    dataset, _, class_names = _load_datasets(args)
    if model.num_classes != len(class_names):
        raise CommandError(
            f"the model has {model.num_classes} classes, the data {len(class_names)}: "
            f"{', '.join(class_names)}."
        )
    compile_classifier(model)
    with _reported(tf.errors.OpError, prefix="evaluation stopped: "):
        results = model.evaluate(dataset, return_dict=True, verbose=_verbosity(args))
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
        with _reported():
            job = beam_embedding.run_embedding_job(args.images, args.model, args.output,
                                                   pipeline_args=args.pipeline_args, **runner)
    if os.path.isdir(args.output):  # a local output: say which files failed, and why
        _report_skipped(beam_embedding.read_errors(args.output))
    print(f"Embedded {job.embedded} images into {os.path.join(args.output, 'embeddings')}; "
          f"{job.failed} files could not be embedded ({os.path.join(args.output, 'errors')}).")
    if not job.embedded:
        raise CommandError("no image could be embedded.")
    if args.index:
        with _reported(ValueError, ImportError, OSError, prefix="cannot index: "):
            cli_search.write_index(args)


def _search(args):
    with _reported(ValueError, ImportError, OSError):
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
    with _reported():
        paths = list_image_files(args.images)
    if args.model:
        model = _load_model(args.model)
    else:
        print("No --model: drawing with an untrained DynamicPatchModel (default "
              "thresholds); its attention weights are random.")
        model = DynamicPatchModel()
    written, skipped = draw_files(model, paths, args.output, _verbosity(args))
    _report_skipped(skipped)
    print(f"Wrote {len(written)} pictures to {args.output}")


def _export(args):
    from dynpatch_tf import export  # imported when needed: it is the slowest to load

    if args.format == "saved_model" and (args.image_size or args.quantization):
        raise CommandError("--image-size and --quantization are for --format tflite.")
    if args.format == "tflite" and args.version is not None:
        raise CommandError("--version is for --format saved_model.")
    model = _load_model(args.model)
    if args.format == "saved_model":
        path = export.export_saved_model(model, args.output, args.name, version=args.version)
    else:
        options = {"image_size": tuple(args.image_size)} if args.image_size else {}
        os.makedirs(args.output, exist_ok=True)
        path = export.export_tflite(model, os.path.join(args.output, f"{args.name}.tflite"),
                                    quantization=args.quantization, **options)
    print(f"Exported to {path}")


def _calibrate(args):
    model = _load_model(args.model)
    with _reported():
        paths = list_image_files(args.data)
    min_side = max(model.patcher.base_size, model.complexity.min_image_size)
    # One file at a time: only each image's node means are kept.
    results, skipped = map_image_files(lambda path, image: node_scores(model, image),
                                       paths, min_side, _verbosity(args))
    _report_skipped(skipped)
    if not results:
        raise CommandError("no image could be read.")
    with _reported():
        result = calibrate_thresholds(model, [scores for _, scores in results],
                                      args.patch_fraction, args.patches_per_image)
    output = args.output or args.model
    with _reported(ValueError, OSError, prefix=f"cannot write {output!r}: "):
        model.save(output)
    print(f"Calibrated on {len(results)} images.")
    print(f"thresholds before: {' '.join(f'{t:.6g}' for t in result.previous)}")
    print(f"thresholds after:  {' '.join(f'{t:.6g}' for t in result.thresholds)}")
    print(f"patches per image: {result.patches_per_image:.1f} (target {result.target:.1f}; "
          f"patch fraction {result.patch_fraction:.4f})")
    print(f"Wrote {output}")


def _demo(args):
    with _reported():
        demo.run_demo(args.output, args.epochs, args.images, args.seed)


def _tune(args):
    if (args.data is None) == (args.needles is None):
        raise CommandError("give a class folder DATA or --needles N (one of them).")
    if args.thresholds_only:
        return _sweep_thresholds(args)
    if args.directory is None:
        raise CommandError("--directory is required (the search is saved and resumed there).")
    if args.tuner == "hyperband" and args.max_trials is not None:
        raise CommandError("--max-trials is for random and bayesian; hyperband's trials "
                           "follow from --epochs.")
    thresholds = _thresholds(args.thresholds, BASE_SIZE, MIN_PATCH_SIZE)
    training, validation, class_names = _load_datasets(args, training=True)
    if validation is None:
        raise CommandError("--validation-split must hold out images to score the trials.")
    with _reported():
        hypermodel = DynamicPatchHyperModel(
            len(class_names), ranges=_search_ranges(args.range), thresholds=args.threshold_mode,
            base_thresholds=thresholds, patch_budget=args.patch_budget,
            budget_weight=args.budget_weight,
            fixed={"embed_dim": args.embed_dim, "attention_filters": args.attention_filters})
    with _reported():
        tuner = make_tuner(hypermodel, args.tuner, args.directory, args.project_name,
                           max_trials=args.max_trials or 10, max_epochs=args.epochs,
                           seed=args.seed, fail_fast=not args.keep_going)
    done = len(tuner.oracle.trials)
    with _reported(TrialFailedError):
        tuner.search(training, validation_data=validation, epochs=args.epochs,
                     verbose=_verbosity(args))
    print(f"{len(tuner.oracle.trials) - done} new trials, {len(tuner.oracle.trials)} in all; "
          f"objective {hypermodel.objective.name}")
    _print_leaderboard(leaderboard(tuner))
    with _reported():
        config = best_config(tuner)
    path = os.path.join(args.directory, "best_config.json")
    with open(path, "w") as file:
        json.dump(config, file, indent=1)
    print(f"Wrote the best configuration (trial {config['tuning']['trial_id']}) to {path}")


def _search_ranges(pairs):
    """`--range NAME VALUE...` as `DynamicPatchHyperModel` ranges, typed as the defaults."""
    ranges = {}
    for name, *values in pairs:
        if name not in DEFAULT_RANGES or not values:
            raise CommandError(f"--range takes a name of {', '.join(DEFAULT_RANGES)} and "
                               f"values, got {' '.join([name, *values])}.")
        default = DEFAULT_RANGES[name]
        kind = type(default[0]) if isinstance(default, list) else float
        try:
            typed = [kind(value) for value in values]
        except ValueError:
            raise CommandError(f"--range {name} takes {kind.__name__} values, got {values}.") from None
        if isinstance(default, tuple) and len(typed) > 2:
            raise CommandError(f"--range {name} takes LOW HIGH or one value, got {values}.")
        ranges[name] = tuple(typed) if isinstance(default, tuple) and len(typed) == 2 else typed
    return ranges


def _print_leaderboard(rows):
    def number(value, form, factor=1):
        return "-" if value is None else format(value * factor, form)

    print(f"{'trial':>6} {'status':>10} {'score':>8} {'accuracy':>9} {'patches/image':>14} "
          f"{'ms/image':>9}")
    for row in rows:
        print(f"{row['trial_id']:>6} {row['status']:>10} {number(row['score'], '.4f'):>8} "
              f"{number(row['accuracy'], '.4f'):>9} {number(row['patches_per_image'], '.1f'):>14} "
              f"{number(row['time_per_image'], '.2f', 1000):>9}")


def _sweep_thresholds(args):
    """`tune --thresholds-only`: the model's accuracy and patches per threshold scale."""
    if args.model is None:
        raise CommandError("--thresholds-only needs --model.")
    model = _load_model(args.model)
    dataset, _, class_names = _load_datasets(args)
    with _reported():
        rows = threshold_sweep(model, dataset, args.scales)
    print(f"{'scale':>7} {'accuracy':>9} {'patches/image':>14}  thresholds")
    for row in rows:
        thresholds = " ".join(f"{value:.4g}" for value in row["thresholds"])
        print(f"{row['scale']:>7.3g} {row['accuracy']:>9.4f} {row['patches_per_image']:>14.1f}  "
              f"{thresholds}")


def _report_skipped(skipped):
    """Prints each `SkippedFile` on stderr: the file and why it was left out."""
    for path, reason in skipped:
        print(f"Skipped {path}: {reason}", file=sys.stderr)


def _load_datasets(args, training=False):
    """Datasets from `--data` or `--needles`: `(dataset, validation, class_names)`.

    For `train` (`training=True`): the training set, shuffled and, with
    `--augment`, augmented, and the held-out `--validation-split` (None for
    0). Otherwise all the images, and None.
    """
    split = args.validation_split if training else None
    augment = _augmentation(args) if training else None
    if args.needles is not None:
        if args.needles < 1:
            raise CommandError(f"--needles must be at least 1, got {args.needles}.")
        with _reported():
            return needles_datasets(args.needles, args.image_size or NEEDLES_IMAGE_SIZE,
                                    args.classes, args.seed, args.batch_size, split, augment)
    image_size = (args.image_size, args.image_size) if args.image_size else None
    with _reported(ValueError, OSError, prefix=f"cannot read {args.data!r}: "):
        return folder_datasets(args.data, args.batch_size, image_size, args.seed, split,
                               augment, shuffle=training)


def _augmentation(args):
    """`make_augmentation` of `--rotation/--zoom/--distortion` with `--augment`, else None."""
    factors = {name: getattr(args, name) for name in AUGMENTATION
               if getattr(args, name) is not None}
    if not args.augment:
        if factors:
            flags = ", ".join(f"--{name}" for name in factors)
            raise CommandError(f"{flags} {'is' if len(factors) == 1 else 'are'} for --augment.")
        return None
    with _reported():
        return make_augmentation(**{**AUGMENTATION, **factors}, seed=args.seed)


def _load_model(path):
    """Loads a `.keras` model file, with a clear error when that fails."""
    if not os.path.isfile(path):
        raise CommandError(f"no model file {path!r}.")
    with _reported(ValueError, OSError, TypeError, prefix=f"cannot load the model {path!r}: "):
        return keras.models.load_model(path)


def _verbosity(args):
    """`fit`'s verbose: a progress bar on a terminal or with --verbose, else a line per epoch."""
    return 1 if args.verbose or sys.stdout.isatty() else 2


# What each command runs (`cli_parser.build_parser` defines their arguments).
COMMANDS = {"train": _train, "evaluate": _evaluate, "embed": _embed, "visualize": _visualize,
             "export": _export, "calibrate": _calibrate, "demo": _demo, "tune": _tune,
             "search": _search}

if __name__ == "__main__":
    sys.exit(main())
