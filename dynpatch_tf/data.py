"""Input pipeline: images from a folder with one subfolder per class.

`image_folder_dataset` is `keras.utils.image_dataset_from_directory` for this
library: images keep their own sizes by default (the patcher works on any size
of at least one base patch), decoding happens in graph, and broken files are
reported and skipped instead of stopping training. The optional rotation /
zoom / distortion augmentation that the pipeline applies to each batch is built
by `dynpatch_tf.augment.make_augmentation`.

Example:

```python
dataset, info = image_folder_dataset("photos/", batch_size=8, seed=1,
                                     augment=make_augmentation(seed=1))
info.class_names   # ["cat", "dog"]
info.skipped       # [SkippedFile(path="photos/cat/x.jpg", reason="...")]
model.fit(dataset, epochs=10)
```
"""

import concurrent.futures
import dataclasses
import logging
import math
import os

import keras
import numpy as np
import tensorflow as tf

from dynpatch_tf.image_files import (
    IMAGE_EXTENSIONS, SkippedFile, clean_op_message, read_image, too_small_reason,
)

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class ImageFolderInfo:
    """What `image_folder_dataset` found in its folder.

    Attributes:
        class_names: class names; label `i` is `class_names[i]`.
        paths: the files the data set reads, in listing order (the data set
            itself may shuffle them).
        labels: the label of each file in `paths`.
        sizes: `(height, width)` of each file in `paths` as the data set
            yields it (after `image_size` or upscaling).
        skipped: `SkippedFile`s for the files left out: unreadable, corrupt
            or too small.
    """

    class_names: list
    paths: list
    labels: list
    sizes: list
    skipped: list


def image_folder_dataset(
    directory,
    batch_size=8,
    image_size=None,
    crop_to_aspect_ratio=False,
    min_side=64,
    small="reject",
    shuffle=True,
    seed=None,
    augment=None,
    validation_split=None,
    subset=None,
    class_names=None,
):
    """Builds a `tf.data.Dataset` of `(images, labels)` from a class folder.

    The folder holds one subfolder per class; every JPEG, PNG, BMP or GIF
    file under a class subfolder (searched recursively) is one example.
    Each file is decoded once up front, in eager mode, to check it and to
    learn its size: a file that cannot be read or decoded, or that is
    smaller than `min_side`, is logged as a warning with its path and the
    reason, listed in `info.skipped` and left out. The data set then decodes
    the files again in graph (`tf.io.decode_image`), as float32 in [0, 1]
    with 3 channels (grayscale is repeated, alpha dropped, the first frame
    of an animated GIF taken).

    Batching: with `image_size` set every image has that size and batches
    are plain `batch_size` batches. With `image_size=None` images keep
    their own sizes, and images of the same size are grouped into batches
    (`tf.data.Dataset.group_by_window` keyed on height and width): every
    batch is a dense `[b, H, W, 3]` tensor of one size, `b <= batch_size`,
    the last batch of each size being smaller. A folder where every image
    has its own size therefore gives batches of one image; pass
    `image_size` to get full batches.

    Args:
        directory: path of the folder holding the class subfolders.
        batch_size: images per batch, or `None` for unbatched
            `[H, W, 3]` images.
        image_size: `None` to keep each image's size, or `(height, width)`
            to resize every image to it (bilinear, antialiased).
        crop_to_aspect_ratio: with `image_size`, crop the largest centred
            window of the target aspect ratio before resizing, instead of
            stretching.
        min_side: the smallest height and width, in pixels, a file may
            have when `image_size` is `None` (the patcher needs one base
            patch, 64 by default). With `image_size`, it must not exceed it.
        small: what to do with an image smaller than `min_side` on either
            side: `"reject"` skips and reports it, `"upscale"` enlarges it
            (bilinear, keeping the aspect ratio) until its shorter side is
            `min_side`.
        shuffle: whether to shuffle the files, again at every epoch.
        seed: seed for shuffling and for the validation split.
        augment: `None`, or a Keras layer (e.g. from `augment.make_augmentation`)
            applied to each batch with `training=True`; labels are untouched.
        validation_split: fraction of the files, in (0, 1), to hold out.
            Needs `subset` and `seed`.
        subset: `"training"` or `"validation"`, with `validation_split`. The
            split is made on the listed files, before checking them, so it
            does not move when a file turns out to be broken.
        class_names: the class subfolder names in label order; by default
            all subfolders in alphanumeric order.

    Returns:
        `(dataset, info)`: a `tf.data.Dataset` yielding `(images, labels)`,
        images float32 `[b, H, W, 3]` in [0, 1], labels int32 `[b]`; and an
        `ImageFolderInfo`.

    Raises:
        ValueError: for invalid arguments, a folder with no class subfolders
            or no image files in them, or when no usable image is left.

    Example:

    >>> dataset, info = image_folder_dataset("photos/", batch_size=4,
    ...                                      image_size=(512, 512), seed=0)
    >>> images, labels = next(iter(dataset))
    >>> images.shape, labels.dtype
    (TensorShape([4, 512, 512, 3]), tf.int32)
    """
    if small not in ("reject", "upscale"):
        raise ValueError(f'`small` must be "reject" or "upscale", got {small!r}.')
    if image_size is not None:
        image_size = tuple(int(side) for side in image_size)
        if len(image_size) != 2 or min(image_size) < min_side:
            raise ValueError(
                f"`image_size` must be (height, width) with both sides at least "
                f"min_side={min_side}, got {image_size}."
            )
    class_names, paths, labels = _list_class_files(directory, class_names)
    paths, labels = _split(paths, labels, validation_split, subset, seed)
    sizes, skipped = _check_files(paths)
    if image_size is None:
        sizes, too_small = _apply_min_side(sizes, min_side, small)
        skipped += [
            SkippedFile(paths[i], too_small_reason(size, min_side))
            for i, size in too_small
        ]
    for path, reason in skipped:
        logger.warning("Skipping %s: %s", path, reason)
    kept = [i for i, size in enumerate(sizes) if size is not None]
    if not kept:
        raise ValueError(
            f"No usable image in {directory!r} ({len(skipped)} skipped)."
        )
    paths = [paths[i] for i in kept]
    labels = [labels[i] for i in kept]
    sizes = [image_size or sizes[i] for i in kept]
    info = ImageFolderInfo(class_names, paths, labels, sizes, skipped)
    dataset = _build_dataset(
        info, batch_size, image_size, crop_to_aspect_ratio, shuffle, seed, augment
    )
    return dataset, info


def _list_class_files(directory, class_names):
    """Lists `(class_names, paths, labels)` of the image files under `directory`."""
    subfolders = sorted(
        entry.name for entry in os.scandir(directory) if entry.is_dir()
    )
    if not subfolders:
        raise ValueError(
            f"{directory!r} has no class subfolders: put the images of each class in a "
            "subfolder named after it."
        )
    if class_names is None:
        class_names = subfolders
    elif sorted(class_names) != subfolders:
        raise ValueError(
            f"`class_names` {list(class_names)} do not match the subfolders of "
            f"{directory!r}: {subfolders}."
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for root, dirs, files in os.walk(os.path.join(directory, name)):
            dirs.sort()
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, file))
                    labels.append(label)
    if not paths:
        raise ValueError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class subfolders of "
            f"{directory!r}."
        )
    return list(class_names), paths, labels


def _split(paths, labels, validation_split, subset, seed):
    """Keeps the files of `subset`, a seeded random `validation_split` of them."""
    if validation_split is None and subset is None:
        return paths, labels
    if not 0 < (validation_split or 0) < 1 or subset not in ("training", "validation"):
        raise ValueError(
            "`validation_split` in (0, 1) and `subset` in ('training', "
            f"'validation') go together, got {validation_split!r} and {subset!r}."
        )
    if seed is None:
        raise ValueError(
            "`validation_split` needs a `seed`, so that the training and "
            "validation subsets do not overlap."
        )
    order = np.random.default_rng(seed).permutation(len(paths))
    num_validation = int(validation_split * len(paths))
    chosen = order[:num_validation] if subset == "validation" else order[num_validation:]
    chosen = np.sort(chosen)
    return [paths[i] for i in chosen], [labels[i] for i in chosen]


def _check_files(paths):
    """Decodes every file once in eager mode.

    Returns:
        `(sizes, skipped)`: `(height, width)` per path, `None` for a file
        that failed, and a `SkippedFile` for each failure.
    """
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(_decoded_size, paths))
    sizes = [size for size, _ in results]
    skipped = [
        SkippedFile(path, reason)
        for path, (_, reason) in zip(paths, results)
        if reason is not None
    ]
    return sizes, skipped


def _decoded_size(path):
    """Returns `((height, width), None)`, or `(None, reason)` if decoding fails."""
    try:
        image = read_image(path, dtype=tf.uint8)
    except tf.errors.OpError as error:
        return None, clean_op_message(error.message)
    return (int(image.shape[0]), int(image.shape[1])), None


def _apply_min_side(sizes, min_side, small):
    """Applies the `min_side` rule to the decoded sizes.

    Args:
        sizes: `(height, width)` per file, `None` for a broken file.
        min_side: smallest allowed side in pixels.
        small: `"reject"` or `"upscale"`.

    Returns:
        `(sizes, too_small)`: the size each file is delivered at (`None` for
        broken and rejected files), and `(index, size)` of the rejected ones.
    """
    delivered, too_small = [], []
    for index, size in enumerate(sizes):
        if size is None or min(size) >= min_side:
            delivered.append(size)
        elif small == "upscale":
            scale = min_side / min(size)
            delivered.append(tuple(max(min_side, math.ceil(side * scale)) for side in size))
        else:
            delivered.append(None)
            too_small.append((index, size))
    return delivered, too_small


def _build_dataset(info, batch_size, image_size, crop_to_aspect_ratio, shuffle,
                   seed, augment):
    """Chains shuffling, in-graph loading, batching, augmentation, prefetch."""
    dataset = tf.data.Dataset.from_tensor_slices(
        (info.paths, np.array(info.sizes, np.int32), np.array(info.labels, np.int32))
    )
    if shuffle:
        dataset = dataset.shuffle(len(info.paths), seed=seed,
                                  reshuffle_each_iteration=True)
    single_size = info.sizes[0] if len(set(info.sizes)) == 1 else (None, None)
    load = _image_loader(image_size, crop_to_aspect_ratio, single_size)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size is not None:
        dataset = _batch_by_size(dataset, batch_size, info.sizes)
    if augment is not None:
        dataset = dataset.map(
            lambda images, labels: (augment(images, training=True), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _image_loader(image_size, crop_to_aspect_ratio, static_size):
    """Returns the map function `(path, size, label) -> (image, label)`.

    `size` is the `(height, width)` the image must come out at when
    `image_size` is `None` (it differs from the file's own only for an
    upscaled small image); `static_size` is the shape to declare, with
    `None` for sides that vary.
    """
    resizing = None
    if image_size is not None:
        resizing = keras.layers.Resizing(
            *image_size, crop_to_aspect_ratio=crop_to_aspect_ratio, antialias=True
        )

    def load(path, size, label):
        image = read_image(path)
        if resizing is not None:
            image = resizing(image)
        else:
            image = tf.cond(
                tf.reduce_all(tf.shape(image)[:2] == size),
                lambda: image,
                lambda: tf.image.resize(image, size),
            )
        image = tf.clip_by_value(image, 0.0, 1.0)
        return tf.ensure_shape(image, (*static_size, 3)), label

    return load


def _batch_by_size(dataset, batch_size, sizes):
    """Batches `(image, label)` pairs so that each batch holds one image size."""
    if len(set(sizes)) == 1:
        return dataset.batch(batch_size)
    batches_per_size = [
        math.ceil(sizes.count(size) / batch_size) for size in set(sizes)
    ]
    dataset = dataset.group_by_window(
        key_func=_size_key,
        reduce_func=lambda key, window: window.batch(batch_size),
        window_size=batch_size,
    )
    return dataset.apply(tf.data.experimental.assert_cardinality(sum(batches_per_size)))


def _size_key(image, label):
    """An int64 key unique to the image's `(height, width)`."""
    shape = tf.cast(tf.shape(image), tf.int64)
    return shape[0] * 2**32 + shape[1]
