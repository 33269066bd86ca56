import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf import ComplexityMap, DynamicPatcher, DynamicPatchModel
from dynpatch_tf.patcher import jittered_thresholds
from tests.conftest import photo

SMALL = (1e-4, 1e-4, 1e-4)


def patch(images, complexity=None, **kwargs):
    images = np.asarray(images)
    if complexity is None:
        complexity = ComplexityMap()(images)
    return DynamicPatcher(**kwargs)(images, complexity)


def assert_tiles(boxes, height, width):
    """Every pixel of the image lies in exactly one box."""
    cover = np.zeros((height, width), np.int32)
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        cover[y0:y1, x0:x1] += 1
    assert cover.min() == 1 and cover.max() == 1


def base_blocks(height, width):
    return -(-height // 64) * -(-width // 64)


def real_batch():
    return np.stack([photo(name)[:384, :512] for name in ("astronaut", "coffee", "retina")])


@pytest.mark.parametrize("rule", ["quadtree", "block", "budget"])
@pytest.mark.parametrize("shape", [(2, 64, 64), (2, 100, 150), (1, 200, 72), (3, 128, 192)])
def test_boxes_tile_random_images(rule, shape, rng):
    height, width = shape[1:]
    images = rng.random(shape + (3,)).astype("float32") * rng.random((shape[0], 1, 1, 1))
    kwargs = {"budget": base_blocks(height, width) + 3} if rule == "budget" else {}
    out = patch(images, rule=rule, thresholds=(0.2, 0.3, 0.4), token_size=8, **kwargs)
    for boxes in out["boxes"].to_list():
        assert_tiles(boxes, height, width)


@pytest.mark.parametrize("rule", ["quadtree", "block", "budget"])
def test_boxes_tile_real_photos(rule):
    images = real_batch()
    kwargs = {"budget": 48 + 3 * 40} if rule == "budget" else {}
    out = patch(images, rule=rule, token_size=8, **kwargs)
    for boxes in out["boxes"].to_list():
        assert_tiles(boxes, 384, 512)
    levels = out["levels"].flat_values.numpy()
    assert len(np.unique(levels)) >= 3  # real photos use several patch sizes


def test_non_multiple_photo_tiles_and_drops_padding():
    image = photo("coffee")  # 400 x 600: pads to 448 x 640
    out = patch(image[None], max_patches=400)
    boxes = out["boxes"][0].numpy()
    assert_tiles(boxes, 400, 600)
    assert out["pixels"].shape[0] == 1 and out["pixels"][0].shape[0] <= 400


def test_constant_image_gives_base_blocks_only():
    images = np.full((2, 128, 192, 3), 120, np.uint8)
    # A flat image's map is not 0 but the residue of the truncated LoG kernel, as
    # SciPy's: 7e-5 here at sigma 1, below SMALL (3e-4 at sigma 2, the default).
    out = patch(images, ComplexityMap(sigma=1.0)(images), thresholds=SMALL)
    assert set(out["levels"].flat_values.numpy()) == {0}
    assert out["levels"].row_lengths().numpy().tolist() == [6, 6]


def test_white_noise_gives_finest_patches_only(rng):
    images = rng.random((1, 128, 128, 3)).astype("float32")
    out = patch(images, thresholds=SMALL)
    assert set(out["levels"].flat_values.numpy()) == {3}
    assert out["levels"].row_lengths().numpy().tolist() == [(128 // 8) ** 2]


def test_raising_a_threshold_never_raises_the_count():
    images = real_batch()[:2]
    complexity = ComplexityMap()(images)
    for level in range(3):
        counts = []
        for value in np.linspace(0.001, 0.08, 9):
            thresholds = [0.02, 0.02, 0.02]
            thresholds[level] = value
            out = patch(images, complexity, thresholds=thresholds)
            counts.append(out["levels"].row_lengths().numpy())
        counts = np.array(counts)
        assert (np.diff(counts, axis=0) <= 0).all()
        assert counts[0].sum() > counts[-1].sum()  # the threshold matters at all


@pytest.mark.parametrize("budget", [48, 48 + 3, 48 + 3 * 57, 48 + 3 * 300])
def test_budget_gives_exactly_n(budget):
    out = patch(real_batch()[:2], rule="budget", budget=budget)
    assert out["levels"].row_lengths().numpy().tolist() == [budget, budget]
    assert out["pixels"].to_tensor().shape[1] == budget


@pytest.mark.parametrize("budget", [65, 30])
def test_budget_that_cannot_be_met_is_an_error(budget):
    with pytest.raises(tf.errors.InvalidArgumentError, match="budget"):
        patch(np.zeros((1, 512, 512, 3), "float32"), rule="budget", budget=budget)


def test_max_patches_holds_on_large_white_noise(rng):
    images = rng.random((1, 2048, 2048, 1)).astype("float32")
    cap = 2000
    uncapped = patch(images[:, :256, :256], thresholds=SMALL)
    assert uncapped["levels"].row_lengths().numpy()[0] == 32 * 32  # noise splits fully
    out = patch(images, thresholds=SMALL, max_patches=cap, token_size=8)
    count = out["levels"].row_lengths().numpy()[0]
    assert cap - 3 < count <= cap
    assert_tiles(out["boxes"][0].numpy(), 2048, 2048)


def area_average(image, box, token):
    y0, x0, y1, x1 = box
    region = image[y0:y1, x0:x1]
    factor = region.shape[0] // token
    return region.reshape(token, factor, token, factor, -1).mean(axis=(1, 3))


def bilinear_half_pixel(region, token):
    """NumPy bilinear resize with half-pixel centres and edge clamping."""
    size = region.shape[0]
    coords = np.clip((np.arange(token) + 0.5) * size / token - 0.5, 0, size - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, size - 1)
    frac = coords - low
    rows = region[low] * (1 - frac)[:, None, None] + region[high] * frac[:, None, None]
    return rows[:, low] * (1 - frac)[None, :, None] + rows[:, high] * frac[None, :, None]


@pytest.mark.parametrize("token", [8, 16])
def test_patch_pixels_are_resampled_source_regions(token):
    image = photo("astronaut")[:256, :256]
    out = patch(image[None], token_size=token)
    source = image.astype(np.float64) / 255.0
    pixels, boxes = out["pixels"][0].numpy(), out["boxes"][0].numpy()
    for box, pixel in zip(boxes, pixels):
        size = box[2] - box[0]
        if size >= token:
            expected = area_average(source, box, token)
        else:
            expected = bilinear_half_pixel(source[box[0] : box[2], box[1] : box[3]], token)
        np.testing.assert_allclose(pixel, expected, atol=2e-6)


def test_quadtree_splits_only_busy_nodes():
    complexity = np.zeros((1, 64, 64, 1), "float32")
    complexity[0, :8, :8] = 1.0  # one busy 8 px cell in the top-left corner
    out = patch(np.zeros((1, 64, 64, 3), "float32"), complexity, thresholds=(0.001, 0.001, 0.001))
    levels = out["levels"][0].numpy().tolist()
    assert levels == [3, 3, 3, 3, 2, 2, 2, 1, 1, 1]  # depth-first (Z) order
    assert out["boxes"][0].numpy()[:4].tolist() == [[0, 0, 8, 8], [0, 8, 8, 16], [8, 0, 16, 8], [8, 8, 16, 16]]


def test_order_is_raster_over_blocks_then_z_order():
    images = real_batch()[:1]
    boxes = patch(images)["boxes"][0].numpy()
    blocks = (boxes[:, 0] // 64) * 8 + boxes[:, 1] // 64
    assert (np.diff(blocks) >= 0).all()

    def morton(y, x):
        code = 0
        for bit in range(3):
            code |= ((y >> bit) & 1) << (2 * bit + 1) | ((x >> bit) & 1) << (2 * bit)
        return code

    for block in np.unique(blocks):
        inside = boxes[blocks == block]
        codes = [morton((y % 64) // 8, (x % 64) // 8) for y, x in inside[:, :2]]
        assert codes == sorted(codes)


def test_gates_are_one_and_carry_gradient_to_thresholds():
    images = real_batch()[:1, :256, :256]
    complexity = ComplexityMap()(images)
    layer = DynamicPatcher(thresholds=(0.02, 0.02, 0.02), temperature=0.01)
    with tf.GradientTape(persistent=True) as tape:
        out = layer(images, complexity)
        gated = tf.reduce_sum(out["gates"].flat_values * tf.reduce_mean(out["pixels"].flat_values, [1, 2, 3]))
        expected = tf.reduce_sum(out["expected_patches"])
    np.testing.assert_array_equal(out["gates"].flat_values.numpy(), 1.0)
    for target in (gated, expected):
        grad = tape.gradient(target, layer.log_thresholds).numpy()
        assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    # Raising thresholds lowers the expected count.
    assert (tape.gradient(expected, layer.log_thresholds).numpy() <= 0).all()


@pytest.mark.parametrize("temperature", [1e-6, 0.005, 0.05])
def test_expected_patches_value_is_the_hard_count_at_any_temperature(temperature):
    """Straight-through: the penalty sees what an image costs, however soft the splits."""
    images = real_batch()
    out = patch(images, temperature=temperature)
    np.testing.assert_array_equal(
        out["expected_patches"].numpy(), out["levels"].row_lengths().numpy()
    )
    finest = (384 // 8) * (512 // 8)
    np.testing.assert_allclose(out["patch_fraction"].numpy(), out["expected_patches"].numpy() / finest)


def test_unknown_shapes_in_tf_function_and_saved_model(tmp_path):
    cmap, layer = ComplexityMap(), DynamicPatcher(token_size=8)
    module = tf.Module()
    module.layers = [cmap, layer]
    module.boxes = tf.function(
        lambda x: layer(x, cmap(x))["boxes"].to_tensor(-1),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
    )
    tf.saved_model.save(module, str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    for images in (real_batch()[:2, :192, :256], photo("coffee")[None, :130, :300]):
        eager = layer(images, cmap(images))["boxes"].to_tensor(-1).numpy()
        np.testing.assert_array_equal(module.boxes(images).numpy(), eager)
        np.testing.assert_array_equal(loaded.boxes(images).numpy(), eager)


def test_mismatched_complexity_is_named():
    with pytest.raises(tf.errors.InvalidArgumentError, match="complexity must have the batch"):
        DynamicPatcher()(np.zeros((1, 64, 128, 3), "float32"), np.zeros((1, 64, 64, 1), "float32"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"thresholds": (0.1, 0.2)}, "needs 3 values"),
        ({"rule": "grid"}, "rule must be one of"),
        ({"rule": "budget"}, "needs `budget`"),
        ({"token_size": 12}, "power of two"),
        ({"thresholds": (0.1, 0.0, 0.2)}, "must be positive"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicPatcher(**kwargs)


def test_config_round_trip():
    layer = DynamicPatcher(thresholds=(0.1, 0.2, 0.3), token_size=8, rule="block", max_patches=99)
    clone = DynamicPatcher.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


# -- threshold jitter ------------------------------------------------------------


def counts(out):
    return out["levels"].row_lengths().numpy()


def test_jitter_varies_counts_in_training_only():
    keras.utils.set_random_seed(0)  # the layer's SeedGenerator starts from Python's generator
    images = real_batch()[:1]  # astronaut
    complexity = ComplexityMap()(images)
    plain = counts(DynamicPatcher()(images, complexity))[0]
    layer = DynamicPatcher(threshold_jitter=0.7)
    trained = [counts(layer(images, complexity, training=True))[0] for _ in range(12)]
    assert len(set(trained)) > 3
    assert min(trained) < plain < max(trained)  # budgets on both sides of the un-jittered one
    for training in (None, False):
        for _ in range(3):
            np.testing.assert_array_equal(counts(layer(images, complexity, training=training)), [plain])


def test_jitter_in_tf_function_draws_anew_each_call():
    keras.utils.set_random_seed(0)
    images = real_batch()[:1, :256, :256]
    complexity = ComplexityMap()(images)
    layer = DynamicPatcher(threshold_jitter=0.7)
    count = tf.function(lambda x, c: layer(x, c, training=True)["levels"].row_lengths())
    assert len({int(count(images, complexity)[0]) for _ in range(8)}) > 2


def test_jitter_factor_is_shared_by_levels_and_spans_its_range():
    thresholds = tf.constant([0.002, 0.004, 0.008])
    seed = keras.random.SeedGenerator(0)
    factors = np.stack([(jittered_thresholds(thresholds, 0.5, seed) / thresholds).numpy() for _ in range(400)])
    np.testing.assert_allclose(factors, factors[:, :1].repeat(3, 1), rtol=1e-6)  # one factor per call
    logs = np.log(factors[:, 0])
    assert logs.min() >= -0.5 - 1e-6 and logs.max() <= 0.5 + 1e-6
    assert logs.min() < -0.45 and logs.max() > 0.45  # uniform in log space: reaches both ends
    np.testing.assert_array_equal(jittered_thresholds(thresholds, 0.0, seed).numpy(), thresholds.numpy())


def test_jitter_keeps_the_gradient_to_thresholds():
    images = real_batch()[:1, :256, :256]
    complexity = ComplexityMap()(images)
    layer = DynamicPatcher(thresholds=(0.02, 0.02, 0.02), temperature=0.01, threshold_jitter=0.5)
    with tf.GradientTape() as tape:
        expected = tf.reduce_sum(layer(images, complexity, training=True)["expected_patches"])
    grad = tape.gradient(expected, layer.log_thresholds).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0 and (grad <= 0).all()
    # d(jittered)/d(thresholds) is the factor itself.
    thresholds = tf.constant([0.002, 0.004, 0.008])
    with tf.GradientTape() as tape:
        tape.watch(thresholds)
        jittered = jittered_thresholds(thresholds, 0.5, keras.random.SeedGenerator(1))
        total = tf.reduce_sum(jittered)
    np.testing.assert_allclose(tape.gradient(total, thresholds).numpy(), (jittered / thresholds).numpy(), rtol=1e-6)


@pytest.mark.parametrize("jitter", [-0.1, float("nan")])
def test_bad_jitter_is_named(jitter):
    with pytest.raises(ValueError, match="threshold_jitter must be"):
        DynamicPatcher(threshold_jitter=jitter)


def test_jitter_config_round_trip_and_model_option():
    layer = DynamicPatcher(threshold_jitter=0.7)
    clone = DynamicPatcher.from_config(layer.get_config())
    assert clone.threshold_jitter == 0.7 and clone.get_config() == layer.get_config()
    assert DynamicPatcher().jitter_seed is None  # no seed state without jitter
    model = DynamicPatchModel(num_classes=2, threshold_jitter=0.5)
    assert model.patcher.threshold_jitter == 0.5
    rebuilt = DynamicPatchModel.from_config(model.get_config())
    assert rebuilt.patcher.threshold_jitter == 0.5
