"""ComplexityMap: the scale-normalised |Laplacian of Gaussian| of image luminance."""

import keras
import numpy as np
import tensorflow as tf

from dynpatch_tf import image_ops

TRUNCATE = 4.0
# The default LoG scale. At a fixed budget of 8 px patches on photo
# backgrounds, sigma 2 puts more pixels of 8-24 px objects into them than
# sigma 1, which spends them on texture (39% against 17% on textures at 15%),
# and is the best or within 7.4 points of the best of the maps compared, at
# the cost of sigma 1 (docs/benchmarks.md, "Complexity scores").
DEFAULT_SIGMA = 2.0


def gaussian_kernels(sigma, truncate=TRUNCATE):
    """The 1-D Gaussian and its second derivative, exactly as SciPy builds them.

    `scipy.ndimage.gaussian_filter1d` uses `radius = int(truncate * sigma + 0.5)`,
    `phi(x) = exp(-x^2 / (2 sigma^2))` normalised to sum 1, and for order 2 the
    kernel `(x^2 / sigma^4 - 1 / sigma^2) * phi(x)`.

    Returns:
        `(smooth, second_derivative)`, two float64 NumPy arrays of length `2r+1`.
    """
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    sigma2 = sigma * sigma
    phi = np.exp(-0.5 / sigma2 * x**2)
    phi /= phi.sum()
    second = (x**2 / sigma2**2 - 1.0 / sigma2) * phi
    return phi, second


# TFLite's dynamic-range quantisation stores conv kernels of 1024 or more
# elements as int8; the LoG's kernels stay below it, so the map stays exact.
MAX_KERNEL_ELEMENTS = 1023


def laplacian_of_gaussian(gray, sigma, truncate=TRUNCATE):
    """`scipy.ndimage.gaussian_laplace(gray, sigma, mode="reflect")` in TensorFlow.

    The Laplacian is `d2/dy2 (G * f) + d2/dx2 (G * f)`, computed separably: the
    image is padded once with SYMMETRIC padding (SciPy's `reflect`), filtered
    along x with the smoothing and the second-derivative kernel, then each
    result along y with the other kernel, and the two summed.

    One-channel convolutions are slow on CPUs, so the pixels of every row are
    grouped: each run of `g` neighbouring pixels (16 for sigma up to 4.1; see
    `group_size`) becomes the `g` channels of one position, a free reshape. The
    x filters are then ordinary `g`-to-`g` channel convolutions over the
    neighbouring groups, and the y filters depthwise convolutions. It is
    faster on the CPU than weighted sums of shifted slices (`docs/benchmarks.md`,
    "Core"), and converts to builtin TFLite ops. Padding a border of `r` needs
    `H, W >= r`.

    Args:
        gray: `[B, H, W, 1]` float32.
        sigma: Gaussian standard deviation in pixels.
        truncate: kernel radius in standard deviations.

    Returns:
        `[B, H, W, 1]` float32, the signed LoG.
    """
    smooth, second = gaussian_kernels(sigma, truncate)
    radius = len(smooth) // 2
    group = group_size(radius)
    span = -(-radius // group)
    batch, height, width = tf.shape(gray)[0], tf.shape(gray)[1], tf.shape(gray)[2]
    groups = (width + group - 1) // group
    # Reflect `radius` pixels, then zero-fill to whole groups: `span` groups on
    # the left, and the right up to `groups + 2 * span` groups in all.
    padded = tf.pad(gray, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "SYMMETRIC")
    left = span * group - radius
    right = (groups + 2 * span) * group - (width + 2 * radius) - left
    padded = tf.pad(padded, [[0, 0], [0, 0], [left, right], [0, 0]])
    grouped = tf.reshape(padded, [batch, height + 2 * radius, groups + 2 * span, group])

    def along_x(kernel):
        return tf.nn.conv2d(grouped, _row_kernel(kernel, group, span), 1, "VALID")

    def along_y(rows, kernel):
        column = np.tile(kernel.astype(np.float32)[:, None, None, None], (1, 1, group, 1))
        return tf.nn.depthwise_conv2d(rows, column, [1, 1, 1, 1], "VALID")

    log = along_y(along_x(smooth), second) + along_y(along_x(second), smooth)
    return tf.reshape(log, [batch, height, groups * group, 1])[:, :, :width]


def group_size(radius):
    """Pixels per group for a kernel of `radius`: 16, or less for wide kernels.

    The largest power of two up to 16 whose x kernel (`(2 * span + 1) * g * g`
    elements, `span = ceil(radius / g)`) and y kernel (`(2 * radius + 1) * g`)
    stay within `MAX_KERNEL_ELEMENTS`.
    """

    def elements(group):
        span = -(-radius // group)
        return max((2 * span + 1) * group * group, (2 * radius + 1) * group)

    group = 16
    while group > 1 and elements(group) > MAX_KERNEL_ELEMENTS:
        group //= 2
    return group


def _row_kernel(kernel, group, span):
    """`[1, 2*span+1, g, g]`: the 1-D `kernel` along x, on groups of `g` pixels.

    Output channel `c` of group `j` is pixel `j*g + c`; input group `j + k`,
    channel `i`, holds padded pixel `(j + k)*g + i`, at offset
    `k*g + i - span*g - c` from it.
    """
    radius = len(kernel) // 2
    weights = np.zeros((1, 2 * span + 1, group, group), np.float32)
    for channel in range(group):
        for offset in range(-radius, radius + 1):
            index, within = divmod(channel + offset + span * group, group)
            weights[0, index, within, channel] = kernel[offset + radius]
    return weights


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class ComplexityMap(keras.layers.Layer):
    """Per-pixel complexity: `sigma^2 * |LoG(luminance)|`, max over scales.

    Luminance is ITU-R BT.601 for RGB, the channel itself for grayscale, on values
    in 0..1 (uint8 images are divided by 255). The LoG matches
    `scipy.ndimage.gaussian_laplace(gray, sigma, mode="reflect")` (truncate 4.0).
    Multiplying by `sigma^2` normalises the scale, so thresholds keep their meaning
    when `sigma` changes. With several sigmas the map is the maximum over them.

    The layer has no weights and always computes in float32, whatever the dtype
    policy, because thresholds on it are small numbers (about 0.001 to 0.05 for 64
    pixel block means of real photos at sigma 1).

    Args:
        sigma: a float, or a sequence of floats for several scales (default
            `DEFAULT_SIGMA`, 2). Each kernel radius `int(4 * sigma + 0.5)` must
            not exceed the image height or width.
        validate: check image values (NaN, Inf) and sizes when the graph runs.
        **kwargs: base `Layer` arguments.

    Attributes:
        min_image_size: the smallest image height and width accepted: the
            largest kernel radius, since the image is padded once by the
            radius (SYMMETRIC), which cannot exceed the image's size.

    Input shape:
        `[B, H, W, C]` uint8 (0..255) or float (0..1), `C` in {1, 3}.

    Output shape:
        `[B, H, W, 1]` float32, non-negative.

    Example:

    >>> images = np.random.rand(2, 64, 96, 3).astype("float32")
    >>> ComplexityMap(sigma=1.0)(images).shape
    TensorShape([2, 64, 96, 1])
    """

    def __init__(self, sigma=DEFAULT_SIGMA, validate=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(autocast=False, **kwargs)
        self.sigmas = tuple(float(s) for s in np.atleast_1d(sigma))
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError(f"sigma must be positive; got {sigma}.")
        self.sigma = sigma if np.ndim(sigma) == 0 else list(self.sigmas)
        self.validate = validate
        self.min_image_size = max(int(TRUNCATE * s + 0.5) for s in self.sigmas)

    def call(self, images):
        images = image_ops.prepare_images(images, max(self.min_image_size, 1), self.validate)
        gray = image_ops.luminance(images)
        scores = [
            tf.abs(laplacian_of_gaussian(gray, s)) * (s * s) for s in self.sigmas
        ]
        return tf.reduce_max(tf.stack(scores), axis=0) if len(scores) > 1 else scores[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update({"sigma": self.sigma, "validate": self.validate})
        return config
