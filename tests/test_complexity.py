import numpy as np
import pytest
import scipy.ndimage as ndi
import tensorflow as tf

from dynpatch_tf import ComplexityMap
from tests.conftest import photo

BT601 = np.array([0.299, 0.587, 0.114])


def reference(image_uint8, sigma):
    """sigma^2 |LoG| of the BT.601 luminance, by SciPy in float64."""
    gray = image_uint8.astype(np.float64) / 255.0
    gray = gray @ BT601 if gray.shape[-1] == 3 else gray[..., 0]
    return np.abs(ndi.gaussian_laplace(gray, sigma, mode="reflect")) * sigma**2


@pytest.mark.parametrize("name", ["astronaut", "camera", "brick", "coffee", "hubble_deep_field"])
@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_matches_scipy_on_real_photos(name, sigma):
    image = photo(name)
    out = ComplexityMap(sigma=sigma)(image[None]).numpy()[0, ..., 0]
    expected = reference(image, sigma)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 1e-5
    # Borders are where the padding rule shows; check them on their own too.
    border = np.ones_like(expected, bool)
    border[8:-8, 8:-8] = False
    assert np.abs(out - expected)[border].max() <= 1e-5


# The LoG runs on groups of 16 pixels of a row: cover a kernel wider than one
# group (sigma 5: radius 20), an image narrower than one group, and widths that
# are not multiples of 16.
@pytest.mark.parametrize(
    "shape, sigma", [((40, 37), 5.0), ((30, 9), 1.0), ((23, 5), 0.5), ((64, 130), 4.1)]
)
def test_grouped_filter_matches_scipy_on_any_width(rng, shape, sigma):
    gray = rng.random(shape)
    out = ComplexityMap(sigma=sigma)(gray[None, ..., None].astype("float32"))
    expected = np.abs(ndi.gaussian_laplace(gray, sigma, mode="reflect")) * sigma**2
    np.testing.assert_allclose(out.numpy()[0, ..., 0], expected, atol=1e-5)


def test_several_sigmas_take_the_maximum():
    image = photo("camera")[:128, :160]
    out = ComplexityMap(sigma=[1.0, 2.0])(image[None]).numpy()[0, ..., 0]
    expected = np.maximum(reference(image, 1.0), reference(image, 2.0))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_multi_scale_map_works_on_the_smallest_patcher_image():
    # The map of docs/benchmarks.md ("Complexity scores"): sigma 4 has radius 16,
    # within a 64 px image, the smallest the default patcher takes.
    image = photo("astronaut")[200:264, 200:264]
    layer = ComplexityMap(sigma=[1, 2, 4])
    assert layer.min_image_size == 16
    out = layer(image[None]).numpy()[0, ..., 0]
    expected = np.max([reference(image, sigma) for sigma in (1.0, 2.0, 4.0)], axis=0)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_uint8_and_unit_float_agree(rng):
    image = rng.integers(0, 256, (1, 70, 90, 3), dtype=np.uint8)
    layer = ComplexityMap()
    np.testing.assert_allclose(
        layer(image).numpy(), layer(image.astype("float32") / 255.0).numpy(), atol=1e-6
    )


def test_float32_under_global_mixed_policy(rng, mixed_bfloat16):
    out = ComplexityMap()(rng.random((1, 64, 64, 3)).astype("float32"))
    assert out.dtype == tf.float32


@pytest.mark.parametrize("sigma", [1.0, 5.0])
def test_dynamic_range_tflite_keeps_the_map_exact(rng, sigma):
    """Dynamic-range quantisation stores large conv kernels as int8; the LoG's must stay float."""
    from ai_edge_litert.interpreter import Interpreter

    layer = ComplexityMap(sigma=sigma, validate=False)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([1, 96, 80, 3], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], layer)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    images = rng.random((1, 96, 80, 3)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, layer(images).numpy(), atol=1e-6)
