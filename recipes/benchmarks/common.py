"""Shared pieces of the issue-6 benchmark scripts (throughput, overhead, scaling,
litert, accuracy): the image sets, the model variants, a timing helper, and the
Markdown header every report starts with.

Scripts import it as `common` (they run as `python recipes/benchmarks/<name>.py`,
so this folder is on `sys.path`).
"""

import argparse
import datetime
import os
import platform
import shlex
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dynpatch_tf import DynamicPatchModel, make_needles  # noqa: E402
from dynpatch_tf.image_files import sample_photo  # noqa: E402
from dynpatch_tf.inference import image_function  # noqa: E402
from dynpatch_tf.needles import NEEDLES_SIGMA, NEEDLES_THRESHOLDS  # noqa: E402
from dynpatch_tf.parts import default_parts  # noqa: E402
from dynpatch_tf.patch_ops import weighted_mean  # noqa: E402

# Every model variant gets its own tf.function; TF's retracing warning counts them all.
tf.get_logger().setLevel("ERROR")

PHOTOS = ("astronaut", "camera", "brick", "grass", "gravel", "moon", "immunohistochemistry", "retina")
# Patch sides of the patcher's levels with the defaults (base 64, min 8).
LEVEL_SIZES = (64, 32, 16, 8)
# The needles task's own thresholds and LoG scale (the library's defaults suit
# photos): every dynamic model that trains or runs on needles takes them.
NEEDLES_SETTINGS = {"thresholds": NEEDLES_THRESHOLDS, "sigma": NEEDLES_SIGMA}
NEEDLES_NOTE = f"the needles thresholds {NEEDLES_THRESHOLDS} and sigma {NEEDLES_SIGMA:g}"


# -- reports -------------------------------------------------------------------


def parser(doc):
    """An argument parser with the flags every script has (`--smoke`)."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat: checks that the script runs")
    return result


def training_flags(parser, size=256, epochs=5):
    """Adds the flags of a needles training run (the accuracy scripts): image side,
    classes, training and validation images, epochs, batch, learning rate, seed,
    backgrounds."""
    parser.add_argument("--size", type=int, default=size, help="image side")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--train", type=int, default=256, help="training images")
    parser.add_argument("--val", type=int, default=128, help="validation images")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--background", default="smooth", choices=["smooth", "photos"],
                        help="needles backgrounds: smooth scenes, or textured crops of real photos")
    return parser


def header(title, notes=()):
    """Print the Markdown section header: title, command, date, machine."""
    command = "python " + " ".join(shlex.quote(arg) for arg in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    load = ", load average %.1f at start" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"## {title}\n")
    print(f"Command: `{command}`, {datetime.date.today().isoformat()}.")
    print(f"Machine: {platform.platform()}, {platform.machine()}, {cores} cores usable "
          f"({os.cpu_count()} in all){load}; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU only'}.")
    for note in notes:
        print(note)
    print(flush=True)


def table(columns, rows):
    """A Markdown table as a string; floats are printed as given (format them first)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(target, met, numbers):
    """One line: the target, met or missed, and the numbers behind it."""
    return f"- target: {target}: **{'met' if met else 'missed'}** ({numbers})"


# -- images --------------------------------------------------------------------


def photo(name, size=512):
    """A scikit-image photo as uint8 `[size, size, 3]`: the central 512x512 crop
    (only retina, 1411x1411, is larger), resized when `size` is not 512."""
    image = sample_photo(name)
    top, left = (image.shape[0] - 512) // 2, (image.shape[1] - 512) // 2
    image = image[top:top + 512, left:left + 512]
    if size != 512:
        image = resize(image[None], size)[0]
    return image


def resize(images, size):
    """uint8 `[B, H, W, 3]` -> uint8 `[B, size, size, 3]` (antialiased)."""
    resized = tf.image.resize(images, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def photo_set(count=len(PHOTOS), size=512):
    """`count` photos, uint8 `[count, size, size, 3]`: the 8 of PHOTOS, repeated in
    order when `count` is larger."""
    photos = [photo(name, size) for name in PHOTOS]
    return np.stack([photos[index % len(photos)] for index in range(count)])


def needle_set(count, size=512, num_classes=4, seed=3):
    """`count` needles images, uint8 `[count, size, size, 3]` (labels dropped)."""
    return make_needles(count, image_size=size, num_classes=num_classes, seed=seed)[0]


def image_sets(count, size=512):
    """The two image sets of the speed benchmarks: {name: (uint8 images, settings)},
    `settings` the `dynamic_model` options of the set's dynamic model: none on the
    photos (the library defaults), `NEEDLES_SETTINGS` on needles."""
    return {
        f"photos ({', '.join(PHOTOS)}; central 512 crops"
        + (f" resized to {size}" if size != 512 else "")
        + (", repeated in order" if count > len(PHOTOS) else "") + ")": (photo_set(count, size), {}),
        "needles (make_needles, seed 3, 4 classes)": (needle_set(count, size), NEEDLES_SETTINGS),
    }


def noise(count, size, seed=0):
    """White noise, uint8 `[count, size, size, 3]`."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


# -- models --------------------------------------------------------------------


def uniform_count(side, height, width):
    """Patches per image of the uniform grid of `side` px patches."""
    return -(-height // side) * -(-width // side)


def nearest_side(mean_patches, height, width):
    """The patch side of `LEVEL_SIZES` whose uniform grid count is nearest `mean_patches`."""
    return min(LEVEL_SIZES, key=lambda side: abs(uniform_count(side, height, width) - mean_patches))


def dynamic_model(num_classes=4, seed=0, **settings):
    """A DynamicPatchModel (library defaults unless `settings`), built, seeded."""
    keras.utils.set_random_seed(seed)
    model = DynamicPatchModel(num_classes=num_classes, **settings)
    model.build((None, None, None, 3))
    return model


def mobilenet(size, num_classes=4, seed=0):
    """Whole-image MobileNetV2 alpha 0.35 (random weights) taking uint8 images.

    A Rescaling layer maps 0..255 to MobileNetV2's -1..1; logits out (no
    softmax). BatchNorm momentum is set to 0.9, as in the library's embedder
    (with Keras' 0.999 the moving statistics lag far behind in short runs)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), dtype="uint8")
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(keras.ops.cast(inputs, "float32"))
    net = keras.applications.MobileNetV2(
        alpha=0.35, weights=None, input_shape=(size, size, 3), classes=num_classes, classifier_activation=None
    )
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return keras.Model(inputs, net(scaled), name="mobilenetv2_035")


def predictor(model):
    """Inference function `uint8 [B, H, W, 3] -> logits`, one tf.function trace
    for all batch sizes and image sizes: `model(images, training=False)` (a
    DynamicPatchModel's `call` updates no metric, like any Keras model's)."""
    return image_function(lambda images: model(images, training=False), tf.uint8)


def level_counts(model, images, batch=8):
    """Patches per image and level of a DynamicPatchModel: int `[N, levels]`."""
    count = image_function(lambda x: model.patcher(x, model.complexity(x))["levels"], tf.uint8)
    rows = []
    for start in range(0, len(images), batch):
        levels = count(images[start:start + batch]).numpy()
        rows += [np.bincount(row, minlength=len(LEVEL_SIZES)) for row in levels]
    return np.stack(rows)


@keras.saving.register_keras_serializable(package="recipes")
class GridPatchModel(keras.Model):
    """The dynamic model's networks on a fixed grid of `side` px patches, cut by
    `tf.image.extract_patches` and resampled to the token only when `side`
    differs from it (area mean when shrinking, bilinear when enlarging, as the
    patcher does): no complexity map, no quadtree, no sorting. This is the fair
    grid of issues 11 and 14 (at `side=8`, `token_size=8`). `part_options`:
    more `default_parts` options (widths, the head's `identity_dim`)."""

    def __init__(self, side, num_classes, head_type="pooled", token_size=8, part_options=None, **kwargs):
        super().__init__(**kwargs)
        self.side, self.num_classes, self.head_type = side, num_classes, head_type
        self.token_size = token_size
        parts = default_parts(num_classes=num_classes, head_type=head_type, token_size=token_size,
                              include=("attention", "embedder", "position", "head"), **(part_options or {}))
        self.attention, self.embedder = parts["attention"], parts["embedder"]
        self.position, self.head = parts["position"], parts["head"]

    def call(self, images, training=False):
        images = tf.convert_to_tensor(images)
        if images.dtype == tf.uint8:
            images = tf.cast(images, tf.float32) / 255.0
        pixels, boxes = self._grid(images)
        weights = self.attention(pixels, training=training)
        embeddings = self.embedder(pixels, scales=weights, training=training)
        embeddings += self.position(boxes, tf.shape(images)[1:3])[None]
        ragged = tf.RaggedTensor.from_tensor(embeddings)
        if self.head_type == "transformer":
            return self.head(ragged, training=training)
        flat_weights = tf.reshape(weights, [-1])
        return self.head(weighted_mean(ragged.values, flat_weights, ragged))

    def _grid(self, images):
        """`[B, N, T, T, C]` patches and their `[N, 4]` boxes (row-major)."""
        side, token, channels = self.side, self.token_size, images.shape[-1]
        cut = tf.image.extract_patches(images, [1, side, side, 1], [1, side, side, 1], [1, 1, 1, 1], "VALID")
        rows, cols = tf.shape(cut)[1], tf.shape(cut)[2]
        pixels = tf.reshape(cut, [-1, side, side, channels])
        if side != token:
            pixels = tf.image.resize(pixels, [token, token], method="area" if side > token else "bilinear")
        pixels = tf.reshape(pixels, [tf.shape(images)[0], rows * cols, token, token, channels])
        y, x = tf.meshgrid(tf.range(rows) * side, tf.range(cols) * side, indexing="ij")
        starts = tf.reshape(tf.stack([y, x], -1), [-1, 2])
        return pixels, tf.concat([starts, starts + side], 1)


# -- timing --------------------------------------------------------------------


def timed_fit(model, x, y, args, **kwargs):
    """`model.fit` with `args.batch` and `args.epochs` (and `kwargs`), quietly.

    Returns:
        `(history dict, seconds per epoch)`: the median over the epochs after
        the first, which also traces the train and test steps.
    """
    marks = []  # (start, end) of each epoch
    clock = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: marks.append([time.perf_counter()]),
        on_epoch_end=lambda epoch, logs: marks[-1].append(time.perf_counter()),
    )
    history = model.fit(x, y, batch_size=args.batch, epochs=args.epochs, verbose=0, callbacks=[clock], **kwargs)
    return history.history, float(np.median([end - start for start, end in marks[1:] or marks]))


def time_calls(functions, batches, repeats, warmup=1):
    """Seconds per call of each of `functions` ({name: fn}), `repeats` calls each,
    cycling through `batches`. Calls are interleaved (round robin over the
    functions), so load from other jobs spreads evenly over them; outputs are
    fetched (`.numpy()`) inside the timing. `warmup` untimed rounds first.

    Returns:
        {name: float array of `repeats` seconds}.
    """
    def fetch(result):
        return tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)

    times = {name: [] for name in functions}
    for index in range(warmup + repeats):
        images = batches[index % len(batches)]
        for name, function in functions.items():
            start = time.perf_counter()
            fetch(function(images))
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: np.array(values) for name, values in times.items()}


def seconds_per_batch(seconds, count):
    """Mean over `count` batches of each batch's median seconds, from `time_calls`
    times that cycle through the batches (`len(seconds)` a multiple of `count`):
    every image counts alike, and a throughput `batch / seconds_per_batch` is
    the set's throughput, not a typical image's (the median of all calls)."""
    return float(np.median(np.reshape(seconds, [-1, count]), 0).mean())


def latency(times):
    """`(p50, p99)` in milliseconds (p99 interpolated: about the maximum when
    there are fewer than 100 calls)."""
    return 1000 * float(np.percentile(times, 50)), 1000 * float(np.percentile(times, 99))
