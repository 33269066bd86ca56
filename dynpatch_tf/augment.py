"""Data augmentation for the input pipeline: random rotation, zoom and distortion.

`make_augmentation` builds the Keras layers that `image_folder_dataset` (in
`dynpatch_tf.data`) applies to each batch with `augment=`; `RandomCornerWarp` is
the perspective distortion among them.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class RandomCornerWarp(keras.layers.Layer):
    """Random perspective distortion that moves each corner of the image.

    Each of the four corners is displaced by a uniform random offset of up
    to `factor` times the image's height (vertically) and width
    (horizontally), and the image is warped with the projective transform
    that maps the corners to their new places. Pixels that come from
    outside the image are filled by reflection, so no flat border appears
    for the complexity map to mistake for an edge. Only active when called
    with `training=True`.

    Written here instead of using `keras.layers.RandomPerspective` (Keras
    3.15), which needs the height and width known when the graph is built
    (it fails on images that keep their own sizes), keeps the top-left
    corner fixed and fills with a constant.

    Args:
        factor: largest corner displacement as a fraction of the image side,
            in [0, 0.5).
        interpolation: `"bilinear"` or `"nearest"`.
        seed: integer seed, or `None`.

    Input and output shape: `[B, H, W, C]` or `[H, W, C]`, with `H` and `W`
    possibly unknown until run time.

    Example:

    >>> warp = RandomCornerWarp(0.05, seed=0)
    >>> warp(tf.random.uniform((2, 64, 96, 3)), training=True).shape
    TensorShape([2, 64, 96, 3])
    """

    def __init__(self, factor, interpolation="bilinear", seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= factor < 0.5:
            raise ValueError(f"`factor` must be in [0, 0.5), got {factor}.")
        self.factor = factor
        self.interpolation = interpolation
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_jit = False  # like Keras's own warping layers

    def call(self, images, training=True):
        if not training or self.factor == 0:
            return images
        batched = len(images.shape) == 4
        batch = images if batched else images[None]
        shape = tf.shape(batch)
        height = tf.cast(shape[1] - 1, tf.float32)
        width = tf.cast(shape[2] - 1, tf.float32)
        unit_square = tf.constant([[0, 0], [1, 0], [1, 1], [0, 1]], tf.float32)
        offsets = keras.random.uniform(
            (shape[0], 4, 2), -self.factor, self.factor, seed=self.seed_generator
        )
        corners = (unit_square + offsets) * tf.stack([width, height])
        transform = _square_to_quad_transform(corners, height, width)
        warped = keras.ops.image.affine_transform(
            batch, transform, interpolation=self.interpolation, fill_mode="reflect"
        )
        return warped if batched else warped[0]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "factor": self.factor,
                "interpolation": self.interpolation, "seed": self.seed}


def _square_to_quad_transform(corners, height, width):
    """The projective transforms that map the image onto given corners.

    Heckbert's closed form for the unit square to a quadrilateral, rescaled
    to pixel coordinates, in the 8-number layout of
    `keras.ops.image.affine_transform` (output pixel -> input pixel).

    Args:
        corners: `[B, 4, 2]` float32, `(x, y)` in input pixels of the
            places where the output's top-left, top-right, bottom-right and
            bottom-left pixels are sampled.
        height, width: float32 scalars, the image's height and width minus 1.

    Returns:
        `[B, 8]` float32 transforms.
    """
    x0, x1, x2, x3 = tf.unstack(corners[..., 0], axis=1)
    y0, y1, y2, y3 = tf.unstack(corners[..., 1], axis=1)
    dx1, dx2, dx3 = x1 - x2, x3 - x2, x0 - x1 + x2 - x3
    dy1, dy2, dy3 = y1 - y2, y3 - y2, y0 - y1 + y2 - y3
    det = dx1 * dy2 - dx2 * dy1
    g = (dx3 * dy2 - dx2 * dy3) / det
    h = (dx1 * dy3 - dx3 * dy1) / det
    return tf.stack([
        (x1 - x0 + g * x1) / width, (x3 - x0 + h * x3) / height, x0,
        (y1 - y0 + g * y1) / width, (y3 - y0 + h * y3) / height, y0,
        g / width, h / height,
    ], axis=1)


def make_augmentation(rotation=0.03, zoom=0.1, distortion=0.03, seed=None):
    """Builds the data augmentation: random rotation, zoom and distortion.

    Layers whose setting is 0 are left out; with all three 0 the result is
    the identity. Rotation and zoom fill by reflection, like the
    distortion. Apply it with `training=True` (as `image_folder_dataset`
    does) to batches `[B, H, W, 3]` or single images `[H, W, 3]`; sizes may
    vary from call to call.

    Args:
        rotation: largest rotation as a fraction of a full turn (the
            `keras.layers.RandomRotation` convention: 0.03 is about 11
            degrees either way).
        zoom: largest zoom in or out, as a fraction of the image size
            (`keras.layers.RandomZoom`).
        distortion: largest corner displacement of the perspective warp, as a
            fraction of the image side (`RandomCornerWarp`).
        seed: integer seed, or `None`; each layer gets its own seed from it.

    Returns:
        A `keras.Sequential` named `"augmentation"`.

    Example:

    >>> augment = make_augmentation(rotation=0.05, zoom=0.1, seed=0)
    >>> augment(tf.random.uniform((2, 64, 64, 3)), training=True).shape
    TensorShape([2, 64, 64, 3])
    """
    def layer_seed(offset):
        return None if seed is None else seed + offset

    layers = []
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=layer_seed(0)))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, seed=layer_seed(1)))
    if distortion:
        layers.append(RandomCornerWarp(distortion, seed=layer_seed(2)))
    return keras.Sequential(layers or [keras.layers.Identity()], name="augmentation")
