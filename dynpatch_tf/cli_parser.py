"""The `dynpatch` command's arguments: one parser, a subparser per command.

`build_parser` defines what each command takes; `dynpatch_tf.cli` runs the
command `args.command` names. The defaults the help texts state are here too.
"""

import argparse
import inspect
import json
import sys

from dynpatch_tf import cli_search, demo
from dynpatch_tf.augment import make_augmentation
from dynpatch_tf.distribute import STRATEGIES
from dynpatch_tf.image_files import IMAGE_EXTENSIONS
from dynpatch_tf.needles import NEEDLE_KINDS
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS
from dynpatch_tf.tuners import TUNERS
from dynpatch_tf.tuning import DEFAULT_RANGES

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
    _add_tune_parser(commands)
    cli_search.add_search_arguments(
        _add_command(commands, "search", cli_search.SEARCH_HELP, cli_search.SEARCH_DESCRIPTION))
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
        "(the state is backed up in OUTPUT/backup/ after every epoch). With "
        "--strategy multiworker every worker runs this command; the chief writes "
        "to OUTPUT, worker N to OUTPUT/worker-N.",
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
                        "needles images want about 0.002 0.004 0.008)")
    parser.add_argument("--base-size", type=int, metavar="PX",
                        help=f"side of the base blocks, a power of two (default {BASE_SIZE})")
    parser.add_argument("--min-patch-size", type=int, metavar="PX",
                        help=f"side of the smallest patches, a power of two (default "
                        f"{MIN_PATCH_SIZE})")
    parser.add_argument("--penalty-weight", type=float, default=0.0,
                        help="weight of the penalty on the expected patch count")
    parser.add_argument("--patch-budget", type=float, metavar="F",
                        help="penalise only the patch fraction over F (of the finest count), "
                        "e.g. 0.15 with --penalty-weight 0.1 (default: the whole fraction)")
    parser.add_argument("--budget-momentum", type=float, default=0.9, metavar="M",
                        help="the budget penalty reads a running mean of the batches' "
                        "patch fraction with this momentum; 0.5-0.7 for weights near 1 "
                        "(default 0.9)")
    parser.add_argument("--token-size", type=int, default=16,
                        help="side every patch is resampled to")
    parser.add_argument("--embed-dim", type=int, default=64, help="embedding size")
    parser.add_argument("--width-multiplier", type=float, default=0.5,
                        help="width of the embedder")
    parser.add_argument("--attention-filters", type=int, nargs="+", default=[16, 32],
                        help="conv filters of the attention CNN")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write to")
    parser.add_argument("--config", metavar="FILE",
                        help="a JSON configuration, e.g. the best_config.json of `dynpatch "
                        "tune`: {\"model\": DynamicPatchModel options, \"training\": "
                        "{\"learning_rate\", \"epochs\", \"batch_size\", "
                        "\"validation_split\"}}; its values replace the defaults of the "
                        "matching flags, and flags given on the command line win")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard logs to OUTPUT/logs")
    parser.add_argument("--strategy", choices=STRATEGIES, default="default",
                        help="tf.distribute strategy: one device, mirrored over this host's "
                        "GPUs, or multiworker over the hosts TF_CONFIG names; each batch "
                        "of --batch-size images is split over the replicas")
    parser.add_argument("--sync-batch-norm", action="store_true",
                        help="with several replicas, BatchNorm normalises by the whole "
                        "batch's statistics, so a step equals one device's step (an "
                        "all-reduce per BatchNorm layer per step); otherwise by each "
                        "replica's own")
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
        commands, "evaluate", "accuracy (or retrieval scores) and patch counts of a model",
        "Print the accuracy and loss of a trained classifier (--task identification: "
        "recall@1, recall@5 and mAP of its embeddings) and the number of "
        "patches per image (mean, 95th percentile, max). Use another --seed than "
        "training's for needles images the model has not seen.",
    )
    _add_model_argument(parser, required=True)
    cli_search.add_task_arguments(parser, _add_data_arguments(parser, default_seed=1))


def _add_image_file_parsers(commands):
    """`embed` (a model needed) and `visualize` (an untrained model by default)."""
    embed = _add_command(
        commands, "embed", "embed image files on Apache Beam",
        "Embed image files with a model in an Apache Beam pipeline (RunInference; "
        "needs the beam extra). Writes Parquet files: OUTPUT/embeddings/part-*.parquet "
        "(path, height, width, num_patches and embedding, the pooled embedding, per "
        "image) and OUTPUT/errors/part-*.parquet (path and error of each file that "
        "could not be decoded or embedded; the job goes on). Arguments after -- are "
        "Beam pipeline options, e.g. -- --direct_num_workers=2, or for Dataflow "
        "-- --project=P --region=R --temp_location=gs://B/tmp.",
    )
    visualize = _add_command(
        commands, "visualize", "draw patches, complexity and attention",
        "Draw, for each image, a PNG OUTPUT/<name>.png with three panels: the "
        "quadtree patches (outlines coloured by size: 64 px red, 32 yellow, 16 cyan, "
        "8 green), the complexity map, and the attention weights over the image.",
    )
    _add_images_arguments(embed, model_required=True, beam=True)
    _add_images_arguments(visualize, model_required=False)
    cli_search.add_index_arguments(embed)
    embed.add_argument("--runner",
                       help="Beam runner, e.g. FlinkRunner, SparkRunner, DataflowRunner "
                       "(default: FnApiRunner, Beam's runner in this process; DirectRunner "
                       "first fetches Beam's Prism runner from GitHub)")


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
    """The data flags; returns the required group of the data sources (`--data`, `--needles`)."""
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
    return source


def _add_model_argument(parser, required, saved_model=False):
    parser.add_argument(
        "--model", required=required, metavar="PATH",
        help="a .keras file saved by `dynpatch train`"
        + (", or a SavedModel version folder written by `dynpatch export`" if saved_model else "")
        + ("" if required else " (default: an untrained DynamicPatchModel)"),
    )


def _add_images_arguments(parser, model_required, beam=False):
    """`--model`, IMAGE... and `--output`; with `beam`, SavedModels and file patterns too."""
    _add_model_argument(parser, model_required, saved_model=beam)
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders searched recursively for "
                        + ", ".join(IMAGE_EXTENSIONS) + " files"
                        + (", or file patterns (*, **); local, or any file system Beam "
                           "reads (gs://, s3://, ...)" if beam else ""))
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write to")


# `train --config`: the flag (its `dest`) each configuration entry sets. Other
# "model" entries are passed to DynamicPatchModel as they are (`model_options`);
# "num_classes" is left out, the data decides it.
CONFIG_FLAGS = {
    "model": {"thresholds": "thresholds", "penalty_weight": "penalty_weight",
              "patch_budget": "patch_budget", "budget_momentum": "budget_momentum",
              "token_size": "token_size", "embed_dim": "embed_dim",
              "width_multiplier": "width_multiplier", "attention_filters": "attention_filters",
              "base_size": "base_size", "min_size": "min_patch_size",
              "synchronized_batch_norm": "sync_batch_norm"},
    "training": {"learning_rate": "learning_rate", "epochs": "epochs",
                 "batch_size": "batch_size", "validation_split": "validation_split"},
}


def parse_arguments(argv=None):
    """Parses the command line; `train --config FILE` supplies flag defaults.

    The configuration's values become the defaults of the matching flags
    (`CONFIG_FLAGS`) and the arguments are parsed again, so a flag given on the
    command line overrides the file. `args.model_options` holds the "model"
    entries no flag takes (e.g. `sigma`, `attention_activation`).
    `args.pipeline_args` holds the arguments after `--`: Beam pipeline options
    of `embed`.
    """
    parser = build_parser()
    argv, pipeline_args = _split_pipeline_args(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    if pipeline_args and args.command != "embed":
        parser.error(f"arguments after -- are Beam pipeline options, for embed only: "
                     f"{' '.join(pipeline_args)}")
    args.pipeline_args = pipeline_args
    if getattr(args, "config", None) is None:
        return args
    train = _subparser(parser, "train")
    try:
        with open(args.config) as file:
            config = json.load(file)
        flags, options = _config_defaults(config)
    except (OSError, ValueError) as error:
        train.error(f"--config {args.config}: {error}")
    train.set_defaults(**flags)
    args = parser.parse_args(argv)
    args.model_options, args.pipeline_args = options, []
    return args


def _split_pipeline_args(argv):
    """`(arguments, Beam pipeline options)`: `argv` before and after its first `--`."""
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1:]


def _config_defaults(config):
    """`(flag defaults, other model options)` of a `train --config` dict."""
    if not isinstance(config, dict) or not set(config) <= {"model", "training", "tuning"}:
        raise ValueError('expected a JSON object with "model", "training" (and "tuning") entries.')
    unknown = sorted(set(config.get("training", {})) - set(CONFIG_FLAGS["training"]))
    if unknown:
        raise ValueError(f"unknown training entries {unknown}; known: {sorted(CONFIG_FLAGS['training'])}.")
    flags, options = {}, {}
    for section in ("model", "training"):
        for name, value in config.get(section, {}).items():
            if name in CONFIG_FLAGS[section]:
                flags[CONFIG_FLAGS[section][name]] = value
            elif name != "num_classes":
                options[name] = value
    return flags, options


def _subparser(parser, name):
    """The subparser of command `name`."""
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    return commands.choices[name]


def _add_tune_parser(commands):
    parser = _add_command(
        commands, "tune", "search hyperparameters with KerasTuner, or sweep thresholds",
        "Search DynamicPatchModel hyperparameters (thresholds, penalty weight, sigma, "
        "token size, width, attention normalisation, learning rate) with KerasTuner on "
        "a class folder DATA or on --needles images. Trials are saved in "
        "DIRECTORY/PROJECT_NAME; running the command again on the same folder resumes "
        "the search and keeps finished trials. Prints a leaderboard (accuracy, patches "
        "per image, time per image) and writes DIRECTORY/best_config.json for "
        "`dynpatch train --config`. The objective is val_accuracy, or with "
        "--patch-budget F: val_accuracy - BUDGET_WEIGHT x max(0, patch fraction - F), "
        "the patch fraction being patches per image over the 8 px grid's count. "
        "With --thresholds-only --model M: evaluate a trained model with its thresholds "
        "scaled by each of --scales, without training.",
    )
    parser.add_argument("data", nargs="?", metavar="DATA",
                        help="folder with one subfolder of images per class")
    parser.add_argument("--needles", type=int, metavar="N",
                        help="generate N needles images instead of DATA")
    parser.add_argument("--classes", type=int, default=4, choices=range(2, len(NEEDLE_KINDS) + 1),
                        help="number of needles classes")
    parser.add_argument("--image-size", type=int, metavar="PX",
                        help="resize images to PX x PX (default: needles "
                        f"{NEEDLES_IMAGE_SIZE}, folders keep each image's size)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the needles images, shuffling, split and tuner")
    parser.add_argument("--validation-split", type=float, default=0.2,
                        help="fraction of the images held out to score each trial")
    parser.add_argument("--tuner", choices=sorted(TUNERS), default="random")
    parser.add_argument("--max-trials", type=int,
                        help="trials of the whole search, resumed ones included (random, "
                        "bayesian; default 10)")
    parser.add_argument("--directory", metavar="DIR", help="folder of the search")
    parser.add_argument("--project-name", default="dynpatch_tune")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per trial (hyperband: the most epochs of a trial)")
    parser.add_argument("--patch-budget", type=float, metavar="F",
                        help="rank trials by accuracy under this patch fraction")
    parser.add_argument("--budget-weight", type=float, default=1.0,
                        help="accuracy lost per unit of patch fraction over --patch-budget")
    parser.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                        help="base thresholds that the searched scale multiplies "
                        f"(default {' '.join(map(str, DEFAULT_THRESHOLDS))})")
    parser.add_argument("--threshold-mode", choices=("scale", "levels"), default="scale",
                        help="search one scale on the base thresholds, or one value per "
                        "level (kept increasing)")
    parser.add_argument("--range", nargs="+", action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="override a search range: two numbers for a float range "
                        "(log scale), values for a choice, one value to fix it; names: "
                        + ", ".join(DEFAULT_RANGES))
    parser.add_argument("--embed-dim", type=int, default=64, help="embedding size (not tuned)")
    parser.add_argument("--attention-filters", type=int, nargs="+", default=[16, 32],
                        help="conv filters of the attention CNN (not tuned)")
    parser.add_argument("--keep-going", action="store_true",
                        help="report a failed trial and go on (default: stop at it)")
    parser.add_argument("--thresholds-only", action="store_true",
                        help="sweep the thresholds of --model instead of searching")
    _add_model_argument(parser, required=False)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0],
                        help="--thresholds-only: factors on the model's thresholds")
    # `cli_common.load_datasets` reads these train options; tune never augments.
    parser.set_defaults(augment=False, **{name: None for name in AUGMENTATION})
