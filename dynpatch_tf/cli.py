"""The `dynpatch` command: train, evaluate, embed, visualize, export, demo.

Run `dynpatch COMMAND --help` for each command's options, or `dynpatch demo`
for a few-minute tour on generated data: it trains a small model, prints its
accuracy and patch counts, saves and exports it and draws pictures.

Examples:

```bash
dynpatch train --needles 600 --epochs 8 --thresholds 0.001 0.002 0.004 --output run/
dynpatch evaluate --model run/model.keras --needles 200
dynpatch embed --model run/model.keras photos/ --output embeddings/
dynpatch visualize --model run/model.keras photo.jpg --output pictures/
dynpatch export --model run/model.keras --format saved_model --output saved_models --name dynpatch
```
"""

import argparse
import contextlib
import csv
import importlib.util
import inspect
import os
import sys

import keras
import numpy as np

from dynpatch_tf import demo
from dynpatch_tf.image_files import IMAGE_EXTENSIONS, list_image_files
from dynpatch_tf.augment import make_augmentation
from dynpatch_tf.inference import embed_files
from dynpatch_tf.model import DynamicPatchModel
from dynpatch_tf.needles import NEEDLE_KINDS
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS
from dynpatch_tf.training import compile_classifier, describe_counts, fit_and_save, patch_counts
from dynpatch_tf.training import folder_datasets, needles_datasets
from dynpatch_tf.visualize import draw_files

# Side of generated needles images unless --image-size says otherwise.
NEEDLES_IMAGE_SIZE = 192
# The patcher's block and smallest patch sides when --base-size and
# --min-patch-size are not given (the model's defaults).
BASE_SIZE, MIN_PATCH_SIZE = 64, 8
# `train --augment`'s factors unless given: make_augmentation's defaults.
AUGMENTATION = {name: parameter.default
                for name, parameter in inspect.signature(make_augmentation).parameters.items()
                if name != "seed"}


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
    args = _build_parser().parse_args(argv)
    try:
        args.run(args)
    except CommandError as error:
        print(f"dynpatch {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _build_parser():
    """The argument parser with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="dynpatch",
        description="Adaptive-resolution image embedding: train, evaluate, embed, "
        "visualize and export DynamicPatchModels.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(commands)
    _add_evaluate_parser(commands)
    _add_image_file_parsers(commands)
    _add_export_parser(commands)
    _add_demo_parser(commands)
    return parser


def _add_command(commands, name, run, help_text, description):
    """Adds the subparser of one command, which calls `run(args)`."""
    parser = commands.add_parser(
        name, help=help_text, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.set_defaults(run=run)
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up messages, and progress bars even "
                        "when the output is not a terminal")
    return parser


def _add_train_parser(commands):
    parser = _add_command(
        commands, "train", _train, "train a classifier",
        "Train a DynamicPatchModel classifier on a class folder or on generated "
        "needles images. Writes OUTPUT/model.keras, OUTPUT/checkpoints/ (one model "
        "per epoch) and OUTPUT/history.json (metrics per epoch). A killed run "
        "resumes where it stopped when started again with the same arguments "
        "(the state is backed up in OUTPUT/backup/ after every epoch).",
    )
    _add_data_arguments(parser, default_seed=0)
    parser.add_argument("--validation-split", type=float, default=0.2,
                        help="fraction of the images held out for validation (0 for none)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="Adam's initial learning rate, cosine-decayed to 0 over the run")
    parser.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                        help="initial split thresholds, one per split level, on the mean "
                        "complexity of the patch being split: 64, 32 and 16 px patches with "
                        f"the default sizes (default {' '.join(map(str, DEFAULT_THRESHOLDS))}; "
                        "needles images want about 0.001 0.002 0.004)")
    parser.add_argument("--base-size", type=int, metavar="PX",
                        help=f"side of the base blocks, a power of two (default {BASE_SIZE})")
    parser.add_argument("--min-patch-size", type=int, metavar="PX",
                        help=f"side of the smallest patches, a power of two (default "
                        f"{MIN_PATCH_SIZE})")
    parser.add_argument("--penalty-weight", type=float, default=0.0,
                        help="weight of the penalty on the expected patch count")
    parser.add_argument("--token-size", type=int, default=16,
                        help="side every patch is resampled to")
    parser.add_argument("--embed-dim", type=int, default=64, help="embedding size")
    parser.add_argument("--width-multiplier", type=float, default=0.5,
                        help="width of the embedder")
    parser.add_argument("--attention-filters", type=int, nargs="+", default=[16, 32],
                        help="conv filters of the attention CNN")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write to")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard logs to OUTPUT/logs")
    parser.add_argument("--augment", action="store_true",
                        help="randomly rotate, zoom and distort the training images (not the "
                        "validation images) at every epoch")
    for name, meaning in (("rotation", "largest rotation, as a fraction of a full turn"),
                          ("zoom", "largest zoom in or out, as a fraction of the image size"),
                          ("distortion", "largest corner shift of the perspective warp, as a "
                                         "fraction of the image side")):
        parser.add_argument(f"--{name}", type=float, help=f"with --augment: {meaning}; 0 "
                            f"turns it off (default {AUGMENTATION[name]})")


def _add_evaluate_parser(commands):
    parser = _add_command(
        commands, "evaluate", _evaluate, "accuracy and patch counts of a model",
        "Print the accuracy and loss of a trained classifier and the number of "
        "patches per image (mean, 95th percentile, max). Use another --seed than "
        "training's for needles images the model has not seen.",
    )
    _add_model_argument(parser, required=True)
    _add_data_arguments(parser, default_seed=1)


def _add_image_file_parsers(commands):
    """`embed` (a model needed) and `visualize` (an untrained model by default)."""
    embed = _add_command(
        commands, "embed", _embed, "embed image files",
        "Embed image files with a model. Writes OUTPUT/embeddings.npy (the pooled "
        "embeddings, [n, D] float32) and OUTPUT/embeddings.csv (path and patch count "
        "of each row). Files that cannot be read or embedded are reported on stderr "
        "and skipped.",
    )
    visualize = _add_command(
        commands, "visualize", _visualize, "draw patches, complexity and attention",
        "Draw, for each image, a PNG OUTPUT/<name>.png with three panels: the "
        "quadtree patches (outlines coloured by size: 64 px red, 32 yellow, 16 cyan, "
        "8 green), the complexity map, and the attention weights over the image.",
    )
    for parser, model_required in ((embed, True), (visualize, False)):
        _add_images_arguments(parser, model_required)


def _add_export_parser(commands):
    parser = _add_command(
        commands, "export", _export, "export for TF Serving or LiteRT",
        "Export a model as a SavedModel in TF Serving's layout "
        "(OUTPUT/NAME/VERSION/) or as a TFLite file (OUTPUT/NAME.tflite).",
    )
    _add_model_argument(parser, required=True)
    parser.add_argument("--format", required=True, choices=("saved_model", "tflite"))
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="base folder (saved_model) or folder of the file (tflite)")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--version", type=int,
                        help="saved_model only: version folder (default: one above the "
                        "largest existing)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="tflite only: the fixed input size (default 512 512)")
    parser.add_argument("--quantization", choices=("float16", "dynamic"),
                        help="tflite only: weight quantization (default float32)")


def _add_demo_parser(commands):
    parser = _add_command(
        commands, "demo", _demo, "train, evaluate, export and draw, in a few minutes",
        f"Generate {demo.CLASSES}-class needles images, train a small model on them "
        f"(progress bar), print its validation accuracy and patches per image, save "
        f"it to OUTPUT/model.keras, export it to "
        f"OUTPUT/{demo.SAVED_MODELS}/{demo.MODEL_NAME}/VERSION/, and draw pictures of photos that "
        f"ship with scikit-image and of needles images into OUTPUT/pictures/.",
    )
    parser.add_argument("--output", default="demo_output", metavar="DIR")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--images", type=int, default=576,
                        help=f"needles images to generate, {round(100 * demo.VALIDATION_SPLIT)}%% of "
                        "them held out for validation")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the needles images and the initial weights")


def _add_data_arguments(parser, default_seed):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR",
                        help="folder with one subfolder of images per class")
    source.add_argument("--needles", type=int, metavar="N",
                        help="generate N needles images instead: smooth scenes with small "
                        "objects whose kind is the class")
    parser.add_argument("--classes", type=int, default=4,
                        choices=range(2, len(NEEDLE_KINDS) + 1),
                        help="number of needles classes")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="resize images to PX x PX (default: needles "
                        f"{NEEDLES_IMAGE_SIZE}, folders keep each image's size)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=default_seed,
                        help="seed of the needles images, shuffling, split and (train) "
                        "initial weights")


def _add_model_argument(parser, required):
    parser.add_argument(
        "--model", required=required, metavar="PATH",
        help="a .keras file saved by `dynpatch train`"
        + ("" if required else " (default: an untrained DynamicPatchModel)"),
    )


def _add_images_arguments(parser, model_required):
    _add_model_argument(parser, model_required)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders searched recursively for "
                        + ", ".join(IMAGE_EXTENSIONS) + " files")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write to")


@contextlib.contextmanager
def _reported(*errors, prefix=""):
    """Reports `errors` (ValueError by default) raised inside as a CommandError.

    For library calls whose messages name the problem and the value.
    """
    try:
        yield
    except errors or ValueError as error:
        raise CommandError(f"{prefix}{error}") from None


def _train(args):
    if not 0 <= args.validation_split < 1:
        raise CommandError(f"--validation-split must be in [0, 1), got {args.validation_split}.")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise CommandError('--tensorboard needs the tensorboard package: pip install "dynpatch_tf[tensorboard]"')
    sizes = {"base_size": args.base_size, "min_size": args.min_patch_size}
    thresholds = _thresholds(args.thresholds, args.base_size or BASE_SIZE,
                             args.min_patch_size or MIN_PATCH_SIZE)
    training, validation, class_names = _load_datasets(args, training=True)
    keras.utils.set_random_seed(args.seed)
    model = DynamicPatchModel(
        num_classes=len(class_names),
        thresholds=thresholds,
        penalty_weight=args.penalty_weight,
        token_size=args.token_size,
        embed_dim=args.embed_dim,
        width_multiplier=args.width_multiplier,
        attention_filters=args.attention_filters,
        # Only the sizes given: the model's own defaults otherwise.
        **{name: size for name, size in sizes.items() if size is not None},
    )
    print(f"Classes: {', '.join(class_names)}")
    fit_and_save(model, training, validation, args.output, args.epochs,
                 args.learning_rate, _verbosity(args), args.tensorboard)


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
    dataset, _, class_names = _load_datasets(args)
    if model.num_classes != len(class_names):
        raise CommandError(
            f"the model has {model.num_classes} classes, the data {len(class_names)}: "
            f"{', '.join(class_names)}."
        )
    compile_classifier(model)
    results = model.evaluate(dataset, return_dict=True, verbose=_verbosity(args))
    print(f"accuracy: {results['accuracy']:.4f}")
    print(f"loss: {results['loss']:.4f}")
    print(f"patches per image: {describe_counts(patch_counts(model, dataset))}")


def _embed(args):
    with _reported():
        paths = list_image_files(args.images)
    embedded = embed_files(_load_model(args.model), paths, _verbosity(args))
    _report_skipped(embedded.skipped)
    if not embedded.paths:
        raise CommandError("no image could be embedded.")
    os.makedirs(args.output, exist_ok=True)
    np.save(os.path.join(args.output, "embeddings.npy"), embedded.embeddings)
    with open(os.path.join(args.output, "embeddings.csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "num_patches"])
        writer.writerows(zip(embedded.paths, embedded.num_patches.tolist()))
    print(f"Wrote {len(embedded.paths)} embeddings to {args.output}")


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


def _demo(args):
    with _reported():
        demo.run_demo(args.output, args.epochs, args.images, args.seed)


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


if __name__ == "__main__":
    sys.exit(main())
