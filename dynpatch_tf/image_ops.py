"""Image tensor helpers shared by the layers: validation, conversion to float, padding, block means.

Images enter the library as `[B, H, W, C]` tensors, `uint8` in 0..255 or floating
point in 0..1, with `C` in {1, 3}. Checks that can be made from the static shape
raise `ValueError` when the graph is traced; checks on values (NaN, Inf) and on
dynamic sizes raise `tf.errors.InvalidArgumentError` when the graph runs. Every
message names the problem.
"""

import tensorflow as tf

VALID_CHANNELS = (1, 3)


def check_image_shape(shape, min_image_size, name="images"):
    """Raise `ValueError` when a static image shape is not `[B, H, W, C]`.

    Args:
        shape: a `tf.TensorShape` or tuple; unknown dimensions are `None`.
        min_image_size: the smallest height and width accepted.
        name: how the tensor is called in messages.
    """
    shape = tf.TensorShape(shape)
    if shape.rank != 4:
        raise ValueError(
            f"{name} must have rank 4 [batch, height, width, channels]; got shape {shape}."
        )
    channels = shape[-1]
    if channels is None:
        raise ValueError(f"{name} must have a known channel count (1 or 3); got shape {shape}.")
    if channels not in VALID_CHANNELS:
        raise ValueError(f"{name} must have 1 or 3 channels; got {channels} (shape {shape}).")
    for axis, label in ((1, "height"), (2, "width")):
        size = shape[axis]
        if size is not None and size < min_image_size:
            raise ValueError(
                f"{name} {label} {size} is below the minimum {min_image_size} "
                f"(one base patch); got shape {shape}."
            )


def runtime_image_checks(images, min_image_size, name="images"):
    """Graph assertions on sizes and values that the static shape cannot show.

    Returns a list of ops to use as control dependencies. NaN and Inf are only
    possible for floating images.
    """
    shape = tf.shape(images)
    checks = [
        tf.debugging.assert_greater_equal(
            tf.reduce_min(shape[1:3]),
            tf.cast(min_image_size, shape.dtype),
            message=f"{name} height and width must be at least {min_image_size} (one base patch)",
        )
    ]
    if images.dtype.is_floating:
        finite = tf.reduce_all(tf.math.is_finite(images))
        checks.append(
            tf.debugging.Assert(finite, [f"{name} contain NaN or Inf values"])
        )
    return checks


def to_unit_float(images):
    """Convert images to float32 in 0..1: `uint8` is divided by 255, floats are cast."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    if not images.dtype.is_floating:
        raise ValueError(f"images must be uint8 or floating point; got dtype {images.dtype.name}.")
    return tf.cast(images, tf.float32)


def prepare_images(images, min_image_size, validate=True, name="images"):
    """Validate `images` and return them as float32 in 0..1.

    Args:
        images: `[B, H, W, C]` uint8 or float tensor (or array).
        min_image_size: the smallest height and width accepted.
        validate: add the value checks (NaN/Inf, dynamic sizes) to the graph.
        name: how the tensor is called in messages.
    """
    images = tf.convert_to_tensor(images)
    check_image_shape(images.shape, min_image_size, name)
    images = to_unit_float(images)
    if not validate:
        return images
    with tf.control_dependencies(runtime_image_checks(images, min_image_size, name)):
        return tf.identity(images)


def luminance(images):
    """ITU-R BT.601 luma of `[B, H, W, 3]` images; single-channel images as they are.

    Output: `[B, H, W, 1]`, same dtype.
    """
    if images.shape[-1] == 1:
        return images
    weights = tf.constant([0.299, 0.587, 0.114], dtype=images.dtype)
    # matvec is several times faster than a multiply and reduce on the CPU.
    return tf.linalg.matvec(images, weights)[..., None]


def pad_to_multiple(tensor, multiple, height, width):
    """Pad `[B, H, W, C]` at the bottom and right to multiples of `multiple`.

    SYMMETRIC padding, i.e. SciPy's `reflect` (the edge pixel is repeated).
    `height, width` are the tensor's own (dynamic) sizes.
    """
    pad_h = -height % multiple
    pad_w = -width % multiple
    return tf.pad(tensor, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], "SYMMETRIC")


def block_mean(tensor, factor):
    """Mean over `factor` x `factor` blocks of `[N, H, W, C]` (H, W multiples of it).

    A reshape and a mean: much faster on the CPU than `avg_pool2d` on one channel.

    Returns:
        `[N, H / factor, W / factor, C]`.
    """
    shape = tf.shape(tensor)
    channels = tensor.shape[-1]
    grouped = tf.reshape(
        tensor, [shape[0], shape[1] // factor, factor, shape[2] // factor, factor, channels]
    )
    return tf.reduce_mean(grouped, axis=[2, 4])
