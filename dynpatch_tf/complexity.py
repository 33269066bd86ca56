"""ComplexityMap: the scale-normalised |Laplacian of Gaussian| of image luminance."""

import keras
import numpy as np
import tensorflow as tf

from dynpatch_tf import images as image_ops

TRUNCATE = 4.0


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


GROUP = 16


def laplacian_of_gaussian(gray, sigma, truncate=TRUNCATE):
    """`scipy.ndimage.gaussian_laplace(gray, sigma, mode="reflect")` in TensorFlow.

    The Laplacian is `d2/dy2 (G * f) + d2/dx2 (G * f)`, computed separably: the
    image is padded once with SYMMETRIC padding (SciPy's `reflect`), filtered
    along x with the smoothing and the second-derivative kernel, then each
    result along y with the other kernel, and the two summed.

    One-channel convolutions are slow on CPUs, so the pixels of every row are
    grouped: each run of `GROUP` (16) neighbouring pixels becomes the 16 channels
    of one position (a free reshape). The x pass is then one convolution from 16
    to 32 channels over the neighbouring groups, and the y pass, sum of the two
    terms included, one convolution from 32 to 16 channels. This is about 2.8x
    faster on the CPU than weighted sums of shifted slices (batch 8 of 512^2,
    `docs/benchmarks.md`) and converts to builtin TFLite ops. Padding a border of
    `r` needs `H, W >= r`.

    Args:
        gray: `[B, H, W, 1]` float32.
        sigma: Gaussian standard deviation in pixels.
        truncate: kernel radius in standard deviations.

    Returns:
        `[B, H, W, 1]` float32, the signed LoG.
    """
    smooth, second = gaussian_kernels(sigma, truncate)
    radius = len(smooth) // 2
    span = -(-radius // GROUP)
    batch, height, width = tf.shape(gray)[0], tf.shape(gray)[1], tf.shape(gray)[2]
    groups = (width + GROUP - 1) // GROUP
    # Reflect `radius` pixels, then zero-fill to whole groups: `span` groups on
    # the left, and the right up to `groups + 2 * span` groups in all.
    padded = tf.pad(gray, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "SYMMETRIC")
    left = span * GROUP - radius
    right = (groups + 2 * span) * GROUP - (width + 2 * radius) - left
    padded = tf.pad(padded, [[0, 0], [0, 0], [left, right], [0, 0]])
    grouped = tf.reshape(padded, [batch, height + 2 * radius, groups + 2 * span, GROUP])
    along_x = tf.nn.conv2d(grouped, _row_kernel(smooth, second, span), 1, "VALID")
    log = tf.nn.conv2d(along_x, _column_kernel(smooth, second), 1, "VALID")
    return tf.reshape(log, [batch, height, groups * GROUP, 1])[:, :, :width]


def _row_kernel(smooth, second, span):
    """`[1, 2*span+1, GROUP, 2*GROUP]`: both 1-D kernels along x, on grouped pixels.

    Output channel `c` (smooth) or `GROUP + c` (second derivative) of group `j`
    is pixel `j*GROUP + c`; input group `j + k`, channel `i`, holds padded pixel
    `(j + k)*GROUP + i`, i.e. offset `k*GROUP + i - span*GROUP - c` from it.
    """
    radius = len(smooth) // 2
    kernel = np.zeros((1, 2 * span + 1, GROUP, 2 * GROUP), np.float32)
    for channel in range(GROUP):
        for offset in range(-radius, radius + 1):
            group, within = divmod(channel + offset + span * GROUP, GROUP)
            kernel[0, group, within, channel] = smooth[offset + radius]
            kernel[0, group, within, GROUP + channel] = second[offset + radius]
    return kernel


def _column_kernel(smooth, second):
    """`[2r+1, 1, 2*GROUP, GROUP]`: second derivative of the smooth half plus smooth of the other."""
    kernel = np.zeros((len(smooth), 1, 2 * GROUP, GROUP), np.float32)
    for channel in range(GROUP):
        kernel[:, 0, channel, channel] = second
        kernel[:, 0, GROUP + channel, channel] = smooth
    return kernel


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
        sigma: a float, or a sequence of floats for several scales. Each kernel
            radius `int(4 * sigma + 0.5)` must not exceed the image height or width.
        validate: check image values (NaN, Inf) and sizes when the graph runs.
        **kwargs: base `Layer` arguments.

    Input shape:
        `[B, H, W, C]` uint8 (0..255) or float (0..1), `C` in {1, 3}.

    Output shape:
        `[B, H, W, 1]` float32, non-negative.

    Example:

    >>> images = np.random.rand(2, 64, 96, 3).astype("float32")
    >>> ComplexityMap(sigma=1.0)(images).shape
    TensorShape([2, 64, 96, 1])
    """

    def __init__(self, sigma=1.0, validate=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(autocast=False, **kwargs)
        self.sigmas = tuple(float(s) for s in np.atleast_1d(sigma))
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError(f"sigma must be positive; got {sigma}.")
        self.sigma = sigma if np.ndim(sigma) == 0 else list(self.sigmas)
        self.validate = validate
        self.min_size = max(int(TRUNCATE * s + 0.5) for s in self.sigmas)

    def call(self, images):
        images = image_ops.prepare_images(images, max(self.min_size, 1), self.validate)
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
