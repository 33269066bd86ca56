"""Tests for dynpatch_tf.attention.PatchAttention (small and fast)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.attention import PatchAttention, fit_pools
from tests.layer_testing import ragged_pixels

P = 8
ROW_LENGTHS = [2, 0, 1, 3]  # several, none, one, several patches


def np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("activation", ["sigmoid", "softmax", None])
def test_ragged_output_keeps_row_splits(activation):
    pixels = ragged_pixels()
    weights = PatchAttention(filters=(4, 8), activation=activation)(pixels)
    assert isinstance(weights, tf.RaggedTensor)
    assert weights.shape.as_list() == [4, None]
    assert weights.values.shape.as_list() == [6]
    np.testing.assert_array_equal(weights.row_splits, pixels.row_splits)


def test_dense_inputs():
    layer = PatchAttention(filters=(4, 8))
    pixels = ragged_pixels([3, 3])
    flat = layer(pixels.values)
    assert flat.shape.as_list() == [6]
    batched = layer(pixels.to_tensor())
    assert batched.shape.as_list() == [2, 3]
    np.testing.assert_allclose(batched, layer(pixels).to_tensor(), atol=1e-6)
    softmax = PatchAttention(filters=(4, 8), activation="softmax")
    np.testing.assert_allclose(
        softmax(pixels.to_tensor()), softmax(pixels).to_tensor(), atol=1e-6
    )


def test_sigmoid_open_interval_and_equal_to_flat_batch():
    pixels = ragged_pixels()
    layer = PatchAttention(filters=(4, 8))
    weights = layer(pixels).values.numpy()
    assert np.all(weights > 0) and np.all(weights < 1)
    np.testing.assert_allclose(weights, layer(pixels.values), atol=1e-6)


def twin_logits(layer, pixels):
    """The logits of `layer`: a layer without activation and the same weights."""
    twin = PatchAttention(filters=layer.filters, activation=None)
    twin.build(pixels.shape)
    twin.set_weights(layer.get_weights())
    return twin(pixels)


@pytest.mark.parametrize("bias", [0.0, 1e4])  # 1e4: exp overflows unless shifted
def test_softmax_equals_numpy_softmax_per_image(bias):
    pixels = ragged_pixels(ROW_LENGTHS)
    layer = PatchAttention(filters=(4, 8), activation="softmax")
    layer.build(pixels.shape)
    layer.score.bias.assign([bias])
    layer.score.kernel.assign(layer.score.kernel * 50.0)  # spread the logits
    weights = layer(pixels)
    logits = twin_logits(layer, pixels)
    for w, z, n in zip(weights, logits, ROW_LENGTHS):
        assert len(w) == n
        if n:
            np.testing.assert_allclose(np.sum(w), 1.0, atol=1e-6)
            np.testing.assert_allclose(w, np_softmax(z.numpy().astype("float64")), atol=1e-6)
    assert len(np.unique(weights.values.numpy().round(4))) > 1  # not uniform


def test_softmax_on_flat_batch_raises():
    layer = PatchAttention(filters=(4,), activation="softmax")
    with pytest.raises(ValueError, match="grouped by image"):
        layer(ragged_pixels().values)


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="activation"):
        PatchAttention(activation="relu")
    values = tf.zeros([4, P, P, 3])
    nested = tf.RaggedTensor.from_nested_row_lengths(values, [[1, 1], [2, 2]])
    with pytest.raises(ValueError, match="ragged_rank"):
        PatchAttention(filters=(4,))(nested)
    with pytest.raises(ValueError, match="rank 3"):
        PatchAttention(filters=(4,))(tf.zeros([P, P, 3]))
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="chunk_size"):
            PatchAttention(chunk_size=bad)


def test_pools_fit_the_patch_size():
    assert fit_pools(8, 3) == [True, True, True]  # 8 -> 4 -> 2 -> 1
    assert fit_pools(4, 3) == [True, True, False]  # 4 -> 2 -> 1, no third pool
    assert fit_pools(1, 2) == [False, False]
    assert fit_pools(6, 3) == [True, True, True]  # 6 -> 3 -> 2 -> 1
    assert fit_pools(None, 2) == [True, True]
    for size in (2, 8, 16):
        layer = PatchAttention(filters=(4, 4, 4))
        out = layer(ragged_pixels(size=size))
        assert out.shape.as_list() == [4, None]
        assert layer._pooled == fit_pools(size, 3)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_gradients_finite_and_nonzero(activation):
    pixels = ragged_pixels()
    layer = PatchAttention(filters=(4, 8), activation=activation)
    layer.build(pixels.shape)
    target = tf.constant(np.random.default_rng(1).normal(size=6), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(pixels).values * target)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert len(grads) == 2 * 2 + 2
    for var, grad in zip(layer.trainable_weights, grads):
        assert grad is not None, var.path
        assert np.all(np.isfinite(grad)), var.path
        if activation == "softmax" and var is layer.score.bias:
            # Softmax ignores a shift of all logits: the bias gets no gradient
            # (zero up to rounding), whatever the loss.
            np.testing.assert_allclose(grad, 0.0, atol=1e-6)
        else:
            assert np.any(grad.numpy() != 0), var.path


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_chunked_inference_gives_the_same_weights(activation):
    pixels = ragged_pixels([5, 0, 4, 8])
    whole = PatchAttention(filters=(4, 8), activation=activation)
    chunked = PatchAttention(filters=(4, 8), activation=activation, chunk_size=3)
    expected = whole(pixels)
    chunked.build(pixels.shape)
    chunked.set_weights(whole.get_weights())
    out = chunked(pixels)
    np.testing.assert_array_equal(out.row_splits, expected.row_splits)
    np.testing.assert_allclose(out.values, expected.values, atol=1e-6)
    traced = tf.function(lambda x: chunked(x, training=False))
    np.testing.assert_allclose(traced(pixels).values, expected.values, atol=1e-6)


def test_save_load_sequential(tmp_path):
    model = keras.Sequential([keras.Input((P, P, 3)), PatchAttention(filters=(4, 8))])
    pixels = ragged_pixels().values
    path = str(tmp_path / "attention.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], PatchAttention)
    np.testing.assert_allclose(loaded(pixels), model(pixels), atol=1e-6)


def test_softmax_sums_to_one_under_mixed_bfloat16(mixed_bfloat16):
    pixels = ragged_pixels(ROW_LENGTHS)
    weights = PatchAttention(filters=(4, 8), activation="softmax")(pixels)
    assert weights.dtype == tf.bfloat16
    values = weights.values.numpy().astype("float32")
    assert np.all(values > 0) and np.all(values <= 1)
    sums = tf.reduce_sum(tf.cast(weights, tf.float32), axis=1).numpy()
    np.testing.assert_allclose(sums[np.array(ROW_LENGTHS) > 0], 1.0, atol=1e-2)
