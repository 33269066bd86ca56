"""Tests for dynpatch_tf.embedder: InvertedResidual and PatchEmbedder (small and fast)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.attention import PatchAttention
from dynpatch_tf.embedder import (
    DEFAULT_BLOCKS,
    InvertedResidual,
    PatchEmbedder,
    fit_strides,
    make_divisible,
)
from tests.layer_testing import ragged_pixels

P = 8
D = 8
TINY = dict(embed_dim=D, width_multiplier=0.25, expansion=2,
            blocks=((1, 8, 1, 1), (None, 16, 2, 2), (None, 16, 1, 1)))


def randomize_batchnorm(layer, seed=0):
    """Non-trivial moving statistics, so inference mode is not the identity."""
    rng = np.random.default_rng(seed)
    for var in layer.weights:
        if "moving_mean" in var.path:
            var.assign(rng.normal(scale=0.1, size=var.shape))
        if "moving_variance" in var.path:
            var.assign(rng.uniform(0.5, 1.5, size=var.shape))


def test_make_divisible_matches_mobilenet_v2():
    # MobileNetV2 channel counts at alpha 0.35 and 0.5 (keras.applications).
    alpha35 = [make_divisible(c * 0.35) for c in (32, 16, 24, 32, 64, 96, 160, 320)]
    assert alpha35 == [16, 8, 8, 16, 24, 32, 56, 112]
    alpha50 = [make_divisible(c * 0.5) for c in (32, 16, 24, 32, 64, 96)]
    assert alpha50 == [16, 8, 16, 16, 32, 48]
    assert make_divisible(4) == 8 and make_divisible(20) == 24


@pytest.mark.parametrize("size, expected", [
    (8, [2, 2, 1, 1]),     # 8 -> 4 -> 2
    (16, [2, 2, 2, 1]),    # 16 -> 8 -> 4 -> 2
    (32, [2, 2, 2, 2]),    # 32 -> 16 -> 8 -> 4 -> 2
    (64, [2, 2, 2, 2]),    # 64 -> ... -> 4
    (3, [2, 1, 1, 1]),     # 3 -> 2
    (2, [1, 1, 1, 1]),
])
def test_fit_strides_rule(size, expected):
    assert fit_strides(size, [2, 2, 2, 2]) == expected
    mixed = fit_strides(size, [1, 2, 1, 2, 1, 2, 1, 2])  # stride-1 layers change nothing
    assert mixed[0::2] == [1, 1, 1, 1] and mixed[1::2] == expected
    assert fit_strides(8, [2, 2, 2, 2], min_feature_size=1) == [2, 2, 2, 1]


@pytest.mark.parametrize("size, final", [(8, 2), (16, 2), (32, 2), (64, 4)])
def test_default_embedder_strides_fit_patch_size(size, final):
    layer = PatchEmbedder(embed_dim=D)
    layer.build((None, None, size, size, 3))
    assert len(layer.blocks) == sum(n for _, _, n, _ in DEFAULT_BLOCKS)
    shape = (None, size, size, 3)
    for sub in [layer.stem, *layer.blocks]:
        shape = sub.compute_output_shape(shape)
        assert min(shape[1:3]) >= 2
    assert shape[1:3] == (final, final)
    assert shape[3] == make_divisible(96 * 0.5)
    downsampled = [layer.stem.strides[0]] + [b.strides for b in layer.blocks]
    assert 2 ** np.log2(downsampled).sum() == size // final


def test_inverted_residual_structure():
    block = InvertedResidual(filters=8, expansion=6)
    block.build((None, 4, 4, 8))
    assert block.use_residual
    assert tuple(block.expand_conv.kernel.shape) == (1, 1, 8, 48)
    assert len(block.weights) == 1 + 4 + 1 + 4 + 1 + 4
    narrow = InvertedResidual(filters=8, expansion=1)
    narrow.build((None, 4, 4, 8))
    assert narrow.expand_conv is None and len(narrow.weights) == 1 + 4 + 1 + 4
    wider = InvertedResidual(16)
    assert wider(tf.zeros([1, 4, 4, 8])).shape.as_list() == [1, 4, 4, 16]
    assert not wider.use_residual
    down = InvertedResidual(8, strides=2)
    assert down(tf.zeros([1, 8, 8, 8])).shape.as_list() == [1, 4, 4, 8]
    assert not down.use_residual
    # The input channels come from the build shape: 3 in, 3 * 6 hidden.
    rgb = InvertedResidual(8)
    assert rgb(tf.zeros([1, 4, 4, 3])).shape.as_list() == [1, 4, 4, 8]
    assert tuple(rgb.expand_conv.kernel.shape) == (1, 1, 3, 18)
    assert rgb.compute_output_shape((None, 5, None, 3)) == (None, 5, None, 8)


def test_residual_block_adds_its_input():
    x = tf.random.stateless_normal([3, 4, 4, 8], seed=[1, 2])
    block = InvertedResidual(filters=8, expansion=2)
    block.build(x.shape)
    randomize_batchnorm(block)
    relu6 = keras.ops.relu6
    h = relu6(block.expand_bn(block.expand_conv(x), training=False))
    h = relu6(block.depthwise_bn(block.depthwise(h), training=False))
    branch = block.project_bn(block.project_conv(h), training=False)
    assert np.abs(branch).max() > 0.1
    np.testing.assert_allclose(block(x, training=False), x + branch, atol=1e-5)
    # With a zero projection (and beta 0, moving mean 0) the branch is 0.
    block.project_conv.kernel.assign(tf.zeros_like(block.project_conv.kernel))
    block.project_bn.moving_mean.assign(tf.zeros_like(block.project_bn.moving_mean))
    np.testing.assert_allclose(block(x, training=False), x, atol=1e-6)
    # Without residual the same zero projection gives zeros.
    down = InvertedResidual(filters=8, expansion=2, strides=2)
    down.build(x.shape)
    down.project_conv.kernel.assign(tf.zeros_like(down.project_conv.kernel))
    np.testing.assert_allclose(down(x, training=False), 0.0, atol=1e-6)


def test_ragged_output_keeps_row_splits_and_equals_flat_batch():
    pixels = ragged_pixels()
    layer = PatchEmbedder(**TINY)
    out = layer(pixels)
    assert isinstance(out, tf.RaggedTensor)
    assert out.shape.as_list() == [4, None, D]
    np.testing.assert_array_equal(out.row_splits, pixels.row_splits)
    randomize_batchnorm(layer)
    np.testing.assert_allclose(
        layer(pixels, training=False).values, layer(pixels.values, training=False), atol=1e-6
    )
    assert np.std(layer(pixels.values).numpy(), axis=0).max() > 0  # patches differ


def test_dense_inputs():
    layer = PatchEmbedder(**TINY)
    pixels = ragged_pixels([3, 3])
    assert layer(pixels.values).shape.as_list() == [6, D]
    batched = layer(pixels.to_tensor())
    assert batched.shape.as_list() == [2, 3, D]
    np.testing.assert_allclose(batched, layer(pixels).to_tensor(), atol=1e-6)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_patch_sizes(size):
    out = PatchEmbedder(**TINY)(ragged_pixels([1, 0, 2], size=size))
    assert out.shape.as_list() == [3, None, D]


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="static P"):
        PatchEmbedder(**TINY).build((None, None, None, 3))
    with pytest.raises(ValueError, match="expansion, channels, repeats, stride"):
        PatchEmbedder(blocks=((16, 1, 1),))
    with pytest.raises(ValueError, match=">= 1"):
        PatchEmbedder(blocks=((6, 16, 0, 1),))
    with pytest.raises(ValueError, match="chunk_size"):
        PatchEmbedder(chunk_size=0)


def test_chunked_inference_gives_the_same_embeddings_and_training_ignores_chunks():
    pixels = ragged_pixels([5, 0, 4, 8])
    whole, chunked = PatchEmbedder(**TINY), PatchEmbedder(**TINY, chunk_size=4)
    whole.build(pixels.shape)
    chunked.build(pixels.shape)
    randomize_batchnorm(whole)
    chunked.set_weights(whole.get_weights())
    expected = whole(pixels, training=False)
    np.testing.assert_allclose(chunked(pixels, training=False).values, expected.values, atol=1e-6)
    traced = tf.function(lambda x: chunked(x, training=False))
    np.testing.assert_allclose(traced(pixels).values, expected.values, atol=1e-6)
    # Training uses batch statistics: over all 17 patches, not over chunks of 4.
    np.testing.assert_allclose(
        chunked(pixels, training=True).values, whole(pixels, training=True).values, atol=1e-5
    )


def test_synchronized_batch_norm_changes_nothing_on_one_device_and_runs_zero_patches():
    pixels = ragged_pixels([5, 0, 4])
    local, synchronized = PatchEmbedder(**TINY), PatchEmbedder(**TINY, synchronized_batch_norm=True)
    for layer in (local, synchronized):
        layer.build(pixels.shape)
    randomize_batchnorm(local)
    synchronized.set_weights(local.get_weights())
    batch_norms = [layer for layer in synchronized._flatten_layers()
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 12 and all(bn.synchronized for bn in batch_norms)  # stem, 2+3+3+3
    for training in (False, True):
        np.testing.assert_allclose(synchronized(pixels, training=training).values,
                                   local(pixels, training=training).values, atol=1e-5)
    assert synchronized.get_config()["synchronized_batch_norm"]
    assert PatchEmbedder.from_config(synchronized.get_config()).synchronized_batch_norm
    # Training runs the network on every call (a blank patch for none): empty output.
    empty = tf.RaggedTensor.from_row_lengths(tf.zeros([0, P, P, 3]), tf.constant([0, 0], tf.int64))
    traced = tf.function(lambda x: synchronized(x, training=True))
    assert traced(empty).values.shape.as_list() == [0, D]


def test_gradients_finite_and_nonzero():
    pixels = ragged_pixels()
    layer = PatchEmbedder(**TINY)
    layer.build(pixels.shape)
    target = tf.random.stateless_normal([6, D], seed=[3, 4])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(pixels, training=True).values * target)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert len(grads) == len(layer.trainable_weights) > 10
    for var, grad in zip(layer.trainable_weights, grads):
        assert grad is not None, var.path
        assert np.all(np.isfinite(grad)), var.path
        assert np.any(grad.numpy() != 0), var.path


def test_scales_multiply_each_patch_inside_the_chunks():
    pixels = ragged_pixels([5, 0, 4, 8])
    scales = pixels.with_values(tf.linspace(0.1, 2.0, 17))
    scaled = pixels.with_values(pixels.values * scales.values[:, None, None, None])
    layer = PatchEmbedder(**TINY, chunk_size=4)
    layer.build(pixels.shape)
    randomize_batchnorm(layer)
    expected = layer(scaled, training=False).values
    np.testing.assert_allclose(layer(pixels, scales=scales, training=False).values, expected, atol=1e-6)
    np.testing.assert_allclose(layer(pixels.values, scales=scales.values), expected, atol=1e-6)
    assert np.abs(layer(pixels, training=False).values - expected).max() > 1e-3
    # Training: the same gradient reaches the scales as through scaled patches.
    factors = tf.Variable(scales.values)
    with tf.GradientTape(persistent=True) as tape:
        direct = tf.reduce_sum(layer(pixels, scales=factors, training=True).values ** 2)
        through = tf.reduce_sum(
            layer(pixels.with_values(pixels.values * factors[:, None, None, None]), training=True).values ** 2
        )
    np.testing.assert_allclose(tape.gradient(direct, factors), tape.gradient(through, factors), rtol=1e-4, atol=1e-6)


def test_config_saved_with_the_old_min_size_key_loads():
    config = PatchEmbedder(**TINY, min_feature_size=1).get_config()
    config["min_size"] = config.pop("min_feature_size")
    clone = PatchEmbedder.from_config(config)
    assert clone.min_feature_size == 1
    assert "min_size" not in clone.get_config()


def test_save_load_sequential(tmp_path):
    model = keras.Sequential([keras.Input((P, P, 3)), PatchEmbedder(**TINY)])
    randomize_batchnorm(model)
    pixels = ragged_pixels().values
    path = str(tmp_path / "embedder.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], PatchEmbedder)
    np.testing.assert_allclose(loaded(pixels), model(pixels), atol=1e-6)


@keras.saving.register_keras_serializable(package="dynpatch_tf_tests")
class WeightedEmbedding(keras.Model):
    """Attention-weighted patches -> embeddings, the way the full model uses them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = PatchAttention(filters=(4, 8))
        self.embedder = PatchEmbedder(**TINY)

    def build(self, input_shape):
        self.attention.build(input_shape)
        self.embedder.build(input_shape)

    def call(self, pixels, training=None):
        weights = self.attention(pixels)
        weighted = tf.ragged.map_flat_values(
            lambda v, w: v * w[:, None, None, None], pixels, weights
        )
        return self.embedder(weighted, training=training)


def test_save_load_subclassed_model_ragged(tmp_path):
    pixels = ragged_pixels()
    model = WeightedEmbedding()
    model.build(pixels.shape)
    randomize_batchnorm(model)
    path = str(tmp_path / "weighted.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    out, expected = loaded(pixels), model(pixels)
    np.testing.assert_array_equal(out.row_splits, pixels.row_splits)
    np.testing.assert_allclose(out.values, expected.values, atol=1e-6)
