"""Image tensor helpers shared by the layers: validation, conversion to float, padding, block means.

Images enter the library as `[B, H, W, C]` tensors, `uint8` in 0..255, `uint16`
in 0..65535 or floating point in 0..1, with `C` in {1, 3}. Checks that can be made
from the static shape and dtype raise `ValueError` when the graph is traced;
checks on values (NaN, Inf, floats outside 0..1) and on dynamic sizes raise
`tf.errors.InvalidArgumentError` when the graph runs. Every message names the
problem.

Floats outside 0..1 are refused rather than guessed at: a float image in 0..255
would otherwise pass for a very busy one (scikit-image's astronaut splits into
3934 patches instead of 2695), and one in -1..1 for a dark one. Values up to
`FLOAT_TOLERANCE` outside the range pass, for rounding and resampling overshoot.
"""

import tensorflow as tf

VALID_CHANNELS = (1, 3)
FLOAT_TOLERANCE = 0.01
# Integer dtypes taken as images, and the value that means full intensity.
UNSIGNED_MAXIMA = {tf.uint8: 255.0, tf.uint16: 65535.0}


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
        raise ValueError(
            f"{name} must have 1 or 3 channels; got {channels} (shape {shape}). For grey+alpha "
            f"or RGBA, drop the alpha channel: {name}[..., :1] or {name}[..., :3]."
        )
    for axis, label in ((1, "height"), (2, "width")):
        size = shape[axis]
        if size is not None and size < min_image_size:
            raise ValueError(
                f"{name} {label} {size} is below the minimum {min_image_size} "
                f"(one base patch); got shape {shape}."
            )


def runtime_image_checks(images, min_image_size, name="images"):
    """Graph assertions on sizes and values that the static shape cannot show.

    Float images must be finite and lie in 0..1 (within `FLOAT_TOLERANCE`);
    integer images cannot fail those. Returns a list of ops to use as control
    dependencies.
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
        finite = tf.math.is_finite(images)
        checks.append(
            tf.debugging.Assert(tf.reduce_all(finite), [f"{name} contain NaN or Inf values"])
        )
        # Finite values only: NaN and Inf get the message above.
        values = tf.where(finite, images, 0.5)
        low, high = tf.reduce_min(values), tf.reduce_max(values)
        checks.append(tf.debugging.Assert(
            (low >= -FLOAT_TOLERANCE) & (high <= 1 + FLOAT_TOLERANCE),
            [f"{name} must lie in 0..1 as floats (divide 0..255 images by 255, or pass them as "
             "uint8); got values from", low, "to", high],
        ))
    return checks


def to_unit_float(images):
    """Convert images to float32 in 0..1: `uint8` is divided by 255, `uint16` by 65535,
    floats are cast."""
    images = tf.convert_to_tensor(images)
    if images.dtype in UNSIGNED_MAXIMA:
        return tf.cast(images, tf.float32) / UNSIGNED_MAXIMA[images.dtype]
    if not images.dtype.is_floating:
        raise ValueError(
            f"images must be uint8, uint16 or floating point; got dtype {images.dtype.name}."
        )
    return tf.cast(images, tf.float32)


def prepare_images(images, min_image_size, validate=True, name="images"):
    """Validate `images` and return them as float32 in 0..1.

    Args:
        images: `[B, H, W, C]` uint8, uint16 or float tensor (or array).
        min_image_size: the smallest height and width accepted.
        validate: add the value checks (NaN/Inf, range, dynamic sizes) to the graph.
        name: how the tensor is called in messages.
    """
    images = tf.convert_to_tensor(images)
    check_image_shape(images.shape, min_image_size, name)
    converted = to_unit_float(images)
    if not validate:
        return converted
    with tf.control_dependencies(runtime_image_checks(images, min_image_size, name)):
        return tf.identity(converted)


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
