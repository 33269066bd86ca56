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
import csv
import importlib.util
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from dynpatch_tf.data import IMAGE_EXTENSIONS, clean_op_message, image_folder_dataset
from dynpatch_tf.model import DynamicPatchModel
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS
from dynpatch_tf.needles import NEEDLE_KINDS, make_needles
from dynpatch_tf.visualize import render_patches, save_png

# Side of generated needles images unless --image-size says otherwise.
NEEDLES_IMAGE_SIZE = 192
# The demo: data, model and training, chosen by timing on 2 CPU cores (about
# 3 minutes of training; see `_demo`).
DEMO_CLASSES = 4
DEMO_VALIDATION_SPLIT = 1 / 6
DEMO_BATCH_SIZE = 16
DEMO_LEARNING_RATE = 3e-3
DEMO_MODEL = dict(
    thresholds=(0.001, 0.002, 0.004),  # needles objects split to 8 px, background stays 64 px
    token_size=8,
    embed_dim=32,
    width_multiplier=0.5,
)
DEMO_PHOTOS = ("astronaut", "rocket", "coffee")  # ship with scikit-image
DEMO_NEEDLES_PICTURES = 3
DEMO_SAVED_MODELS = "saved_models"
DEMO_MODEL_NAME = "dynpatch_demo"


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
    _add_embed_parser(commands)
    _add_visualize_parser(commands)
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
    parser.add_argument("--thresholds", type=float, nargs=3, default=DEFAULT_THRESHOLDS,
                        metavar=("T64", "T32", "T16"),
                        help="initial split thresholds on the mean complexity of 64, 32 and "
                        "16 px patches (needles images want about 0.001 0.002 0.004)")
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
    _add_verbose_argument(parser)


def _add_evaluate_parser(commands):
    parser = _add_command(
        commands, "evaluate", _evaluate, "accuracy and patch counts of a model",
        "Print the accuracy and loss of a trained classifier and the number of "
        "patches per image (mean, 95th percentile, max). Use another --seed than "
        "training's for needles images the model has not seen.",
    )
    _add_model_argument(parser, required=True)
    _add_data_arguments(parser, default_seed=1)
    _add_verbose_argument(parser)


def _add_embed_parser(commands):
    parser = _add_command(
        commands, "embed", _embed, "embed image files",
        "Embed image files with a model. Writes OUTPUT/embeddings.npy (the pooled "
        "embeddings, [n, D] float32) and OUTPUT/embeddings.csv (path and patch count "
        "of each row). Files that cannot be read or embedded are reported on stderr "
        "and skipped.",
    )
    _add_model_argument(parser, required=True)
    _add_images_arguments(parser)


def _add_visualize_parser(commands):
    parser = _add_command(
        commands, "visualize", _visualize, "draw patches, complexity and attention",
        "Draw, for each image, a PNG OUTPUT/<name>.png with three panels: the "
        "quadtree patches (outlines coloured by size: 64 px red, 32 yellow, 16 cyan, "
        "8 green), the complexity map, and the attention weights over the image.",
    )
    _add_model_argument(parser, required=False)
    _add_images_arguments(parser)


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
        f"Generate {DEMO_CLASSES}-class needles images, train a small model on them "
        f"(progress bar), print its validation accuracy and patches per image, save "
        f"it to OUTPUT/model.keras, export it to "
        f"{DEMO_SAVED_MODELS}/{DEMO_MODEL_NAME}/, and draw pictures of photos that "
        f"ship with scikit-image and of needles images into OUTPUT/pictures/.",
    )
    parser.add_argument("--output", default="demo_output", metavar="DIR")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--images", type=int, default=576,
                        help=f"needles images to generate, {round(100 * DEMO_VALIDATION_SPLIT)}%% of "
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


def _add_images_arguments(parser):
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files, or folders searched recursively for "
                        + ", ".join(IMAGE_EXTENSIONS) + " files")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to write to")


def _add_verbose_argument(parser):
    parser.add_argument("--verbose", action="store_true",
                        help="progress bar even when the output is not a terminal")


def _train(args):
    if not 0 <= args.validation_split < 1:
        raise CommandError(f"--validation-split must be in [0, 1), got {args.validation_split}.")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise CommandError('--tensorboard needs the tensorboard package: pip install "dynpatch_tf[tensorboard]"')
    training, validation, class_names = _load_datasets(args, args.validation_split)
    keras.utils.set_random_seed(args.seed)
    model = DynamicPatchModel(
        num_classes=len(class_names),
        thresholds=args.thresholds,
        penalty_weight=args.penalty_weight,
        token_size=args.token_size,
        embed_dim=args.embed_dim,
        width_multiplier=args.width_multiplier,
        attention_filters=args.attention_filters,
    )
    print(f"Classes: {', '.join(class_names)}")
    _fit_and_save(model, training, validation, args.output, args.epochs,
                  args.learning_rate, _verbosity(args), args.tensorboard)


def _evaluate(args):
    model = _load_model(args.model)
    dataset, _, class_names = _load_datasets(args)
    if model.num_classes != len(class_names):
        raise CommandError(
            f"the model has {model.num_classes} classes, the data {len(class_names)}: "
            f"{', '.join(class_names)}."
        )
    _compile(model)
    results = model.evaluate(dataset, return_dict=True, verbose=_verbosity(args))
    print(f"accuracy: {results['accuracy']:.4f}")
    print(f"loss: {results['loss']:.4f}")
    print(f"patches per image: {_describe_counts(_patch_counts(model, dataset))}")


def _embed(args):
    paths = _image_paths(args.images)
    model = _load_model(args.model)
    embed = _embed_function(model)
    rows, embeddings = [], []

    def embed_one(path, image):
        outputs = embed(image[None])
        rows.append((path, int(outputs["boxes"].row_lengths()[0])))
        embeddings.append(outputs["pooled_embedding"][0].numpy())

    _for_each_image(paths, embed_one, model.patcher.base_size)
    if not rows:
        raise CommandError("no image could be embedded.")
    os.makedirs(args.output, exist_ok=True)
    np.save(os.path.join(args.output, "embeddings.npy"), np.stack(embeddings))
    with open(os.path.join(args.output, "embeddings.csv"), "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "num_patches"])
        writer.writerows(rows)
    print(f"Wrote {len(rows)} embeddings to {args.output}")


def _visualize(args):
    paths = _image_paths(args.images)
    if args.model:
        model = _load_model(args.model)
    else:
        print("No --model: drawing with an untrained DynamicPatchModel (default "
              "thresholds); its attention weights are random.")
        model = DynamicPatchModel()
    _draw_pictures(model, dict.fromkeys(paths), args.output)


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
    """Needles data -> training -> accuracy and patch counts -> export -> pictures."""
    from dynpatch_tf import export

    start = time.time()
    print(f"Generating {args.images} needles images of {NEEDLES_IMAGE_SIZE} px, "
          f"{DEMO_CLASSES} classes ({', '.join(NEEDLE_KINDS[:DEMO_CLASSES])})...")
    training, validation, _ = _needles_datasets(
        args.images, NEEDLES_IMAGE_SIZE, DEMO_CLASSES, args.seed, DEMO_BATCH_SIZE,
        DEMO_VALIDATION_SPLIT,
    )
    keras.utils.set_random_seed(args.seed)
    model = DynamicPatchModel(num_classes=DEMO_CLASSES, **DEMO_MODEL)
    _fit_and_save(model, training, validation, args.output, args.epochs,
                  DEMO_LEARNING_RATE, verbose=1)
    results = model.evaluate(validation, return_dict=True, verbose=0)
    counts = _patch_counts(model, validation)
    finest = (NEEDLES_IMAGE_SIZE // model.patcher.min_size) ** 2
    blocks = (NEEDLES_IMAGE_SIZE // model.patcher.base_size) ** 2
    print(f"Validation accuracy: {results['accuracy']:.3f} (chance {1 / DEMO_CLASSES:.2f}): "
          "the share of held-out images whose object kind the model names right.")
    print(f"Patches per image: {_describe_counts(counts)}: the pieces the quadtree cut "
          f"each image into, from {blocks} (all 64 px) to {finest} (all 8 px); each "
          "costs one pass of the embedder.")
    print(f"Exported to {export.export_saved_model(model, DEMO_SAVED_MODELS, DEMO_MODEL_NAME)}")
    needles = next(iter(validation))[0][:DEMO_NEEDLES_PICTURES].numpy()
    pictures = {f"needles_{i}": image for i, image in enumerate(needles)}
    pictures.update({name: _scikit_image_photo(name) for name in DEMO_PHOTOS})
    print("Pictures: patches (outlines 64 px red, 32 yellow, 16 cyan, 8 green), "
          "complexity, attention; the thresholds suit needles, so photos split finely.")
    _draw_pictures(model, pictures, os.path.join(args.output, "pictures"))
    print(f"Done in {time.time() - start:.0f} s.")


def _fit_and_save(model, training, validation, output, epochs, learning_rate,
                  verbose, tensorboard=False):
    """Compiles, trains and saves `model` into `output`, resuming a killed run.

    Writes `output/model.keras`, `output/checkpoints/epoch-NNN.keras` and
    `output/history.json` (a list of per-epoch metrics, `epoch` counting from
    1). `output/backup/` holds the state of an unfinished run: when it is
    there, training starts after its last finished epoch.

    Args:
        model: an unbuilt `DynamicPatchModel` classifier.
        training, validation: `tf.data.Dataset`s of `(images, labels)`
            batches; `validation` may be None.
        output: the folder to write to.
        epochs: the number of epochs of the whole run.
        learning_rate: Adam's initial learning rate, cosine-decayed to 0 by
            the end of the run (the BatchNorm statistics then settle, which
            inference needs).
        verbose: `fit`'s verbosity: 1 for a progress bar, 2 for a line per epoch.
        tensorboard: also write TensorBoard logs to `output/logs`.
    """
    steps = epochs * int(training.cardinality())
    _compile(model, keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    model.build(training.element_spec[0].shape)  # BackupAndRestore needs the weights
    backup = os.path.join(output, "backup")
    resuming = os.path.isdir(backup)
    if resuming:
        print(f"Resuming the interrupted run backed up in {backup}")
    # The backup marks an epoch as done, so it is written last: a run killed
    # between these writes redoes the epoch instead of losing its checkpoint.
    callbacks = [
        _HistoryFile(os.path.join(output, "history.json"), resume=resuming),
        keras.callbacks.ModelCheckpoint(os.path.join(output, "checkpoints", "epoch-{epoch:03d}.keras")),
        keras.callbacks.BackupAndRestore(backup, double_checkpoint=True),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output, "logs")))
    model.fit(training, validation_data=validation, epochs=epochs, callbacks=callbacks,
              verbose=verbose, shuffle=False)  # `training` shuffles itself
    path = os.path.join(output, "model.keras")
    model.save(path)
    print(f"Saved the model to {path}")


class _HistoryFile(keras.callbacks.Callback):
    """Rewrites a JSON list of per-epoch metrics after every epoch.

    With `resume`, the records already in the file are kept (and replaced
    when an epoch is run again); otherwise the file starts empty.
    """

    def __init__(self, path, resume):
        super().__init__()
        self.path = path
        self.records = {}
        if resume and os.path.exists(path):
            with open(path) as file:
                self.records = {record["epoch"]: record for record in json.load(file)}

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{name: float(value) for name, value in logs.items()}}
        self.records[epoch + 1] = record
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "w") as file:
            json.dump([self.records[key] for key in sorted(self.records)], file, indent=1)


def _compile(model, learning_rate=1e-3):
    """Compiles `model` with Adam, cross-entropy on logits and accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _patch_counts(model, dataset):
    """The number of patches of every image of a dataset of `(images, labels)`."""
    embed = _embed_function(model)
    counts = [embed(images)["boxes"].row_lengths().numpy() for images, _ in dataset]
    return np.concatenate(counts)


def _draw_pictures(model, images, output):
    """Draws `render_patches` of each image into `output/<name>.png`.

    Args:
        model: the `DynamicPatchModel` whose patches and attention are drawn.
        images: a dict from name to image; a value of None reads the image from
            the file named by the key (reported on stderr and skipped when it
            cannot be read or drawn).
        output: the folder to write to.
    """
    written = []

    def draw(name, image):
        stem = os.path.splitext(os.path.basename(name))[0]
        path = os.path.join(output, f"{stem}.png")
        save_png(render_patches(image, model), path)
        written.append(path)

    _for_each_image(list(images), draw, model.patcher.base_size, preloaded=images)
    print(f"Wrote {len(written)} pictures to {output}")


def _for_each_image(names, process, min_size, preloaded=None):
    """Calls `process(name, image)` for each image, with a progress bar.

    Images come from `preloaded[name]` when it is not None, else from the
    file `name` (float32 `[H, W, 3]` in [0, 1]). An image that cannot be
    read, that is smaller than `min_size` on a side, or that `process` fails
    on, is reported on stderr with the reason and skipped.
    """
    progress = keras.utils.Progbar(len(names), unit_name="image")
    for name in names:
        image = (preloaded or {}).get(name)
        try:
            image = _read_image(name) if image is None else image
            height, width = image.shape[:2]
            if min(height, width) < min_size:
                raise ValueError(f"too small: {height}x{width} px (height x width), the "
                                 f"model needs at least {min_size} px per side")
            process(name, image)
        except (ValueError, tf.errors.OpError) as error:
            reason = clean_op_message(error.message) if isinstance(error, tf.errors.OpError) else error
            print(f"\nSkipped {name}: {reason}", file=sys.stderr)
        progress.add(1)


def _read_image(path):
    """Decodes an image file as float32 `[H, W, 3]` in [0, 1]."""
    return tf.io.decode_image(tf.io.read_file(path), channels=3,
                              expand_animations=False, dtype=tf.float32)


def _image_paths(inputs):
    """Files named in `inputs`, and image files found under folders in it, sorted."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(root, file)
                for root, _, files in os.walk(item)
                for file in files
                if file.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise CommandError(f"{item!r} is neither a file nor a folder.")
    if not paths:
        raise CommandError(f"no image files in {', '.join(inputs)}.")
    return paths


def _scikit_image_photo(name):
    """A photo that ships with scikit-image as uint8 `[H, W, 3]`."""
    import skimage.data

    photo = getattr(skimage.data, name)()
    return np.repeat(photo[..., None], 3, axis=-1) if photo.ndim == 2 else photo


def _load_datasets(args, validation_split=None):
    """`(training, validation or None, class_names)` from `--data` or `--needles`."""
    if args.needles is not None:
        if args.needles < 1:
            raise CommandError(f"--needles must be at least 1, got {args.needles}.")
        return _needles_datasets(args.needles, args.image_size or NEEDLES_IMAGE_SIZE,
                                 args.classes, args.seed, args.batch_size, validation_split)
    image_size = (args.image_size, args.image_size) if args.image_size else None
    options = dict(batch_size=args.batch_size, image_size=image_size, seed=args.seed)
    try:
        if not validation_split:
            dataset, info = image_folder_dataset(args.data, shuffle=False, **options)
            return dataset, None, info.class_names
        training, info = image_folder_dataset(
            args.data, validation_split=validation_split, subset="training", **options)
        validation, _ = image_folder_dataset(
            args.data, validation_split=validation_split, subset="validation",
            shuffle=False, **options)
    except (ValueError, OSError) as error:
        raise CommandError(f"cannot read {args.data!r}: {error}") from None
    return training, validation, info.class_names


def _needles_datasets(num_images, image_size, num_classes, seed, batch_size,
                      validation_split=None):
    """Generated needles images, the first `validation_split` of them held out.

    Returns:
        `(training, validation or None, class_names)`: datasets of float32
        images in [0, 1] and int32 labels; the training set is shuffled at
        every epoch.
    """
    try:
        images, labels = make_needles(num_images, image_size, num_classes, seed=seed)
    except ValueError as error:
        raise CommandError(str(error)) from None
    held_out = int(num_images * (validation_split or 0))
    if validation_split and not 0 < held_out < num_images:
        raise CommandError(
            f"a validation split of {validation_split} leaves no training or no "
            f"validation image of {num_images}."
        )

    def batches(chosen, shuffle):
        dataset = tf.data.Dataset.from_tensor_slices((images[chosen], labels[chosen]))
        if shuffle:
            dataset = dataset.shuffle(len(dataset), seed=seed, reshuffle_each_iteration=True)
        return dataset.batch(batch_size).map(
            lambda images, labels: (tf.image.convert_image_dtype(images, tf.float32), labels)
        ).prefetch(tf.data.AUTOTUNE)

    validation = batches(slice(0, held_out), shuffle=False) if held_out else None
    return batches(slice(held_out, None), shuffle=True), validation, list(NEEDLE_KINDS[:num_classes])


def _load_model(path):
    """Loads a `.keras` model file, with a clear error when that fails."""
    if not os.path.isfile(path):
        raise CommandError(f"no model file {path!r}.")
    try:
        return keras.models.load_model(path)
    except (ValueError, OSError, TypeError) as error:
        raise CommandError(f"cannot load the model {path!r}: {error}") from None


def _embed_function(model):
    """`model.embed` traced once for float32 batches of any size."""
    return tf.function(
        model.embed, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
    )


def _describe_counts(counts):
    """`mean M, p95 P, max X` of patch counts."""
    return (f"mean {np.mean(counts):.1f}, p95 {np.percentile(counts, 95):.0f}, "
            f"max {np.max(counts)}")


def _verbosity(args):
    """`fit`'s verbose: a progress bar on a terminal or with --verbose, else a line per epoch."""
    return 1 if args.verbose or sys.stdout.isatty() else 2


if __name__ == "__main__":
    sys.exit(main())
