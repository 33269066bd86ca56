"""Identities of needles: one object instance per identity, anywhere on any scene.

The identification variant of the needles data set (`dynpatch_tf.needles`).
An identity is one object instance: a shape (a needles kind), a texture
(solid, stripes, checks or dots, with its period and angle), two colours and a
side in pixels. Each image of an identity shows that one object at a random
place on a random background (the needles scenes, or crops of photos); its
label is the identity. As in the needles, the object is small and the scene
large and smooth, so an image is told apart from another by a few patches.

Identity `i` of seed `s` is drawn from its own random stream `(s, i)`, and
image `j` of it from `(s, i, j)`: identities with different indices are
different objects, so `identity_splits` makes training and test identities
disjoint (open set) by giving them different index ranges.

Example:

```python
splits = identity_splits(train_identities=32, test_identities=16, images_per_identity=6,
                         image_size=128, seed=0)
images, labels = splits["train"]
dataset = identity_batches(images, labels, identities_per_batch=4, images_per_identity=4)
```
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from dynpatch_tf.needles import NEEDLE_KINDS, _image_shape, _object_coverage, _scene_function

TEXTURES = ("solid", "stripes", "checks", "dots")
# Smallest and largest object side in pixels, inclusive.
IDENTITY_SIZES = (14, 24)


class Identity(NamedTuple):
    """The look of one identity: shape, texture and its period (px) and angle (radians),
    colours `[2, 3]` in 0..1 (ground and pattern) and side (px)."""

    kind: str
    texture: str
    period: float
    angle: float
    colours: tuple
    size: int


def identity(index, seed=0):
    """The `Identity` number `index` of `seed` (its own random stream)."""
    rng = np.random.default_rng([seed, index])
    colours = rng.uniform(0, 1, (2, 3))
    colours[1] = np.where(np.abs(colours[1] - colours[0]) < 0.3, 1 - colours[0], colours[1])
    return Identity(
        kind=NEEDLE_KINDS[rng.integers(len(NEEDLE_KINDS))], texture=TEXTURES[rng.integers(len(TEXTURES))],
        period=float(rng.uniform(4, 8)), angle=float(rng.uniform(0, np.pi)),
        colours=tuple(map(tuple, colours)), size=int(rng.integers(IDENTITY_SIZES[0], IDENTITY_SIZES[1] + 1)),
    )


def make_identities(num_identities, images_per_identity, image_size=128, first_identity=0, seed=0,
                    background="smooth"):
    """Images of identities `first_identity ... first_identity + num_identities - 1`.

    Args:
        num_identities: how many identities.
        images_per_identity: images of each.
        image_size: side of the square images, or `(height, width)`; at least 32.
        first_identity: index (and label) of the first identity.
        seed: the seed of the identities and the images.
        background: as in `make_needles`: `"smooth"`, `"photos"` or photo names.

    Returns:
        `(images, labels)`: uint8 `[N, H, W, 3]` and int32 `[N]`, the images of
        an identity together, `N = num_identities * images_per_identity`.

    Example:

    >>> images, labels = make_identities(3, 2, image_size=64)
    >>> images.shape, labels.tolist()
    ((6, 64, 64, 3), [0, 0, 1, 1, 2, 2])
    """
    height, width = _image_shape(image_size)
    scene = _scene_function(background)
    labels = np.repeat(np.arange(first_identity, first_identity + num_identities), images_per_identity)
    images = np.empty((len(labels), height, width, 3), np.uint8)
    for row, (label, image) in enumerate(zip(labels, np.tile(np.arange(images_per_identity), num_identities))):
        rng = np.random.default_rng([seed, label, image])
        canvas = scene(height, width, rng)
        _draw_identity(canvas, identity(label, seed), rng)
        images[row] = np.round(np.clip(canvas, 0, 1) * 255)
    return images, labels.astype(np.int32)


def identity_splits(train_identities, test_identities, images_per_identity, image_size=128, seed=0,
                    background="smooth", validation_identities=0):
    """Training, (validation) and test images of disjoint identities.

    The identities are consecutive index ranges of one seed: training first,
    then validation, then test.

    Returns:
        `{"train": (images, labels), "test": ..., "val": ...}` ("val" only with
        `validation_identities`).
    """
    counts = {"train": train_identities, "val": validation_identities, "test": test_identities}
    splits, first = {}, 0
    for name, count in counts.items():
        if count:
            splits[name] = make_identities(count, images_per_identity, image_size, first, seed, background)
        first += count
    return splits


def identity_batches(images, labels, identities_per_batch=4, images_per_identity=4, seed=0):
    """A `tf.data.Dataset` of batches of `P` identities with `K` images each, for triplets.

    Every epoch, each identity's images are shuffled and cut into groups of
    `K` (a shorter last group is kept if it has 2 images), the groups are
    shuffled and every `P` consecutive groups form a batch: each image comes
    once per epoch, and every image of a batch has a positive in it. The
    order changes from epoch to epoch (seeded). Meant for training only (the
    order comes from a Python generator).

    Returns:
        A dataset of `(images, labels)`: float32 `[b, H, W, 3]` in 0..1 and
        int32 `[b]`, `b <= P * K`.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)

    def groups():
        cut = []
        for identity_label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == identity_label))
            splits = range(images_per_identity, len(members), images_per_identity)
            cut += [group for group in np.array_split(members, splits) if len(group) >= 2]
        return cut

    def batches():
        cut = groups()
        order = rng.permutation(len(cut))
        for start in range(0, len(order), identities_per_batch):
            yield np.concatenate([cut[index] for index in order[start:start + identities_per_batch]])

    count = -(-len(groups()) // identities_per_batch)  # the same every epoch
    pixels, targets = tf.constant(images), tf.constant(labels, tf.int32)
    indices = tf.data.Dataset.from_generator(batches, output_signature=tf.TensorSpec([None], tf.int64))
    indices = indices.apply(tf.data.experimental.assert_cardinality(count))  # Keras knows the epoch's end
    return indices.map(lambda rows: (tf.image.convert_image_dtype(tf.gather(pixels, rows), tf.float32),
                                     tf.gather(targets, rows))).prefetch(tf.data.AUTOTUNE)


def texture_pattern(look, size):
    """float `[size, size]`: 1 where `look`'s texture shows its pattern colour, else 0."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    along = (x * np.cos(look.angle) + y * np.sin(look.angle)) / look.period
    across = (y * np.cos(look.angle) - x * np.sin(look.angle)) / look.period
    patterns = {
        "solid": lambda: np.zeros_like(x),
        "stripes": lambda: (along % 1.0) < 0.5,
        "checks": lambda: (np.floor(along) + np.floor(across)) % 2 == 1,
        "dots": lambda: np.hypot(along % 1.0 - 0.5, across % 1.0 - 0.5) < 0.3,
    }
    return patterns[look.texture]().astype(np.float64)


def _draw_identity(canvas, look, rng):
    """Draws `look` at a random place of `canvas`, in place."""
    height, width = canvas.shape[:2]
    y0, x0 = int(rng.integers(0, height - look.size + 1)), int(rng.integers(0, width - look.size + 1))
    ground, pattern = np.array(look.colours)
    weight = texture_pattern(look, look.size)[..., None]
    colour = ground * (1 - weight) + pattern * weight
    coverage = _object_coverage(look.kind, look.size)[..., None]
    region = canvas[y0:y0 + look.size, x0:x0 + look.size]
    region[...] = region * (1 - coverage) + colour * coverage
