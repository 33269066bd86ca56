"""The `dynpatch` command's arguments: one parser, a subparser per command.

`build_parser` defines what each command takes; `dynpatch_tf.cli` runs the
command `args.command` names. The defaults the help texts state are here too.
"""

import argparse
import inspect

from dynpatch_tf import demo
from dynpatch_tf.augment import make_augmentation
from dynpatch_tf.image_files import IMAGE_EXTENSIONS
from dynpatch_tf.needles import NEEDLE_KINDS
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS

# Side of generated needles images unless --image-size says otherwise.
NEEDLES_IMAGE_SIZE = 192
# The patcher's block and smallest patch sides when --base-size and
# --min-patch-size are not given (the model's defaults).
BASE_SIZE, MIN_PATCH_SIZE = 64, 8
# `train --augment`'s factors unless given: make_augmentation's defaults.
AUGMENTATION = {name: parameter.default
                for name, parameter in inspect.signature(make_augmentation).parameters.items()
                if name != "seed"}


def build_parser():
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
    _add_calibrate_parser(commands)
    _add_demo_parser(commands)
    return parser


def _add_command(commands, name, help_text, description):
    """Adds the subparser of one command."""
    parser = commands.add_parser(
        name, help=help_text, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up messages, and progress bars even "
                        "when the output is not a terminal")
    return parser


def _add_train_parser(commands):
    parser = _add_command(
        commands, "train", "train a classifier",
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
        commands, "evaluate", "accuracy and patch counts of a model",
        "Print the accuracy and loss of a trained classifier and the number of "
        "patches per image (mean, 95th percentile, max). Use another --seed than "
        "training's for needles images the model has not seen.",
    )
    _add_model_argument(parser, required=True)
    _add_data_arguments(parser, default_seed=1)


def _add_image_file_parsers(commands):
    """`embed` (a model needed) and `visualize` (an untrained model by default)."""
    embed = _add_command(
        commands, "embed", "embed image files",
        "Embed image files with a model. Writes OUTPUT/embeddings.npy (the pooled "
        "embeddings, [n, D] float32) and OUTPUT/embeddings.csv (path and patch count "
        "of each row). Files that cannot be read or embedded are reported on stderr "
        "and skipped.",
    )
    visualize = _add_command(
        commands, "visualize", "draw patches, complexity and attention",
        "Draw, for each image, a PNG OUTPUT/<name>.png with three panels: the "
        "quadtree patches (outlines coloured by size: 64 px red, 32 yellow, 16 cyan, "
        "8 green), the complexity map, and the attention weights over the image.",
    )
    for parser, model_required in ((embed, True), (visualize, False)):
        _add_images_arguments(parser, model_required)


def _add_export_parser(commands):
    parser = _add_command(
        commands, "export", "export for TF Serving or LiteRT",
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


def _add_calibrate_parser(commands):
    parser = _add_command(
        commands, "calibrate", "set the thresholds to a patch budget",
        "Set a model's thresholds so that its mean patch count per image on the given "
        "images hits a target, without training (dynpatch_tf.calibrate_thresholds), "
        "and write the model back. Files that cannot be read are reported on stderr "
        "and skipped; images may differ in size.",
    )
    parser.add_argument("data", nargs="+", metavar="DATA",
                        help="image files, or folders searched recursively for "
                        + ", ".join(IMAGE_EXTENSIONS) + " files")
    _add_model_argument(parser, required=True)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--patch-fraction", type=float, metavar="F",
                        help="target patches as a fraction of the finest count (the "
                        "smallest patches that tile the images), e.g. 0.15")
    target.add_argument("--patches-per-image", type=float, metavar="N",
                        help="target mean patch count per image")
    parser.add_argument("--output", metavar="PATH",
                        help="where to write the calibrated model (default: --model)")


def _add_demo_parser(commands):
    parser = _add_command(
        commands, "demo", "train, evaluate, export and draw, in a few minutes",
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
