"""Tests for dynpatch_tf.patch_ops: flat batches, chunked calls, reductions over patches."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.attention import PatchAttention
from dynpatch_tf.embedder import PatchEmbedder
from dynpatch_tf.patch_ops import call_on_rows, map_chunks, padded_patches, row_sums, segment_softmax, weighted_mean

P = 8


def rows_fn(chunk):
    return tf.concat([chunk * 2.0, tf.reduce_sum(chunk, 1, keepdims=True)], 1)


def refuse_empty(fn):
    """`fn`, with a graph assertion that fails when it is called on zero rows."""

    def guarded(chunk):
        first = tf.nest.flatten(chunk)[0]
        check = tf.debugging.assert_positive(tf.shape(first)[0], message="called on zero rows")
        with tf.control_dependencies([check]):
            return fn(chunk)

    return guarded


@pytest.mark.parametrize("count", [0, 1, 6, 7, 19])
def test_map_chunks_equals_one_call_for_any_remainder(count):
    rows = tf.reshape(tf.range(count * 2, dtype=tf.float32), [count, 2])

    def pair_fn(chunk):
        values, offsets = chunk
        return values[:, 0] + offsets

    offsets = tf.range(count, dtype=tf.float32) * 100.0
    for chunk_size in (None, 1, 3, 6, 50):
        expected = np.concatenate([rows.numpy() * 2, rows.numpy().sum(1, keepdims=True)], 1)
        np.testing.assert_array_equal(map_chunks(rows_fn, rows, chunk_size, (3,), tf.float32), expected)
        traced = tf.function(lambda x: map_chunks(rows_fn, x, chunk_size, (3,), tf.float32))
        np.testing.assert_array_equal(traced(rows), expected)
        np.testing.assert_array_equal(
            map_chunks(pair_fn, (rows, offsets), chunk_size, (), tf.float32),
            rows.numpy()[:, 0] + offsets.numpy(),
        )


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_map_chunks_never_calls_fn_on_zero_rows(chunk_size):
    spec = tf.TensorSpec([None, 2], tf.float32)
    traced = tf.function(
        lambda x: map_chunks(refuse_empty(rows_fn), x, chunk_size, (3,), tf.float32),
        input_signature=[spec],
    )
    for count in (0, 1, 3, 6, 7):  # 3 and 6: multiples of the chunk size
        rows = tf.reshape(tf.range(count * 2, dtype=tf.float32), [count, 2])
        out = traced(rows)
        assert out.shape == (count, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="zero rows"):
        tf.function(refuse_empty(rows_fn), input_signature=[spec])(tf.zeros([0, 2]))


def test_call_on_rows_calls_fn_once_and_on_a_blank_row_for_none():
    def offset_rows(pair):
        rows, offsets = pair
        return rows_fn(rows) + offsets[:, None]

    spec = tf.TensorSpec([None, 2], tf.float32)
    traced = tf.function(lambda x, y: call_on_rows(offset_rows, (x, y)),
                         input_signature=[spec, tf.TensorSpec([None], tf.float32)])
    rows = tf.reshape(tf.range(10, dtype=tf.float32), [5, 2])
    offsets = tf.range(5, dtype=tf.float32)
    np.testing.assert_array_equal(traced(rows, offsets), rows_fn(rows) + offsets[:, None])
    assert traced(tf.zeros([0, 2]), tf.zeros([0])).shape == (0, 3)
    seen = []
    call_on_rows(lambda x: seen.append(x.numpy()) or x, tf.zeros([0, 2]))
    np.testing.assert_array_equal(seen, [np.zeros((1, 2), "float32")])


class RefuseEmpty(keras.layers.Layer):
    """Passes its input through; raises (in the graph) when it has zero rows."""

    def call(self, inputs):
        check = tf.debugging.assert_positive(tf.shape(inputs)[0], message="network called on zero patches")
        with tf.control_dependencies([check]):
            return tf.identity(inputs)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_layers_never_run_a_network_on_zero_patches(training, chunk_size):
    """Any CPU, GPU or LiteRT: an empty batch gives empty outputs and no network call.

    A convolution on zero rows fails on some oneDNN paths (AVX-512) and in
    XNNPACK; a first sublayer that refuses zero rows proves no call is made.
    """
    attention = PatchAttention(filters=(4,), chunk_size=chunk_size)
    embedder = PatchEmbedder(embed_dim=8, width_multiplier=0.25, blocks=[(1, 8, 1, 1)],
                             chunk_size=chunk_size)
    spec = tf.RaggedTensorSpec([None, None, P, P, 3], tf.float32, ragged_rank=1)
    for layer, width in ((attention, ()), (embedder, (8,))):
        layer.build(spec.shape)
        first = layer.convs[0] if layer is attention else layer.stem
        original = first.call
        guard = RefuseEmpty()
        first.call = lambda x, *args, _call=original, **kwargs: _call(guard(x), *args, **kwargs)
        fn = tf.function(lambda x: layer(x, training=training), input_signature=[spec])
        for lengths in ([0], [0, 0, 0], [], [2, 0, 1]):
            values = np.ones((sum(lengths), P, P, 3), "float32")
            pixels = tf.RaggedTensor.from_row_lengths(values, tf.constant(lengths, tf.int64))
            out = fn(pixels)
            assert out.values.shape.as_list() == [sum(lengths), *width]
            np.testing.assert_array_equal(out.row_splits, pixels.row_splits)


def test_row_sums_and_weighted_mean_match_numpy_with_empty_rows():
    lengths = [2, 0, 3, 0]  # an empty image in the middle and at the end
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 4)).astype("float32")
    weights = rng.uniform(0.1, 1, size=5).astype("float32")
    ragged = tf.RaggedTensor.from_row_lengths(values, lengths)
    splits = np.cumsum([0] + lengths)
    sums = np.stack([values[a:b].sum(0) for a, b in zip(splits[:-1], splits[1:])])
    np.testing.assert_allclose(row_sums(values, ragged), sums, rtol=1e-6)
    means = [
        (values[a:b] * weights[a:b, None]).sum(0) / weights[a:b].sum() if b > a else np.zeros(4)
        for a, b in zip(splits[:-1], splits[1:])
    ]
    np.testing.assert_allclose(weighted_mean(values, weights, ragged), np.stack(means), rtol=1e-5)


def test_reductions_run_in_float32_for_bfloat16_inputs():
    rng = np.random.default_rng(1)
    values = tf.constant(rng.normal(size=(300, 2)), tf.bfloat16)
    ragged = tf.RaggedTensor.from_row_lengths(values, [300])
    mean = weighted_mean(values, tf.ones([300], tf.bfloat16), ragged)
    assert mean.dtype == tf.float32
    expected = values.numpy().astype("float32").mean(0)
    np.testing.assert_allclose(mean[0], expected, rtol=1e-5, atol=1e-6)
    logits = tf.RaggedTensor.from_row_lengths(tf.zeros([300], tf.bfloat16), [300])
    softmax = segment_softmax(logits)
    assert softmax.dtype == tf.bfloat16
    np.testing.assert_allclose(softmax.values.numpy().astype("float32"), 1 / 300, rtol=1e-2)


@pytest.mark.parametrize("lengths, longest", [([2, 0, 3], None), ([2, 0, 3], 2), ([0, 0], None), ([], None)])
def test_padded_patches_match_to_tensor(lengths, longest):
    values = np.arange(sum(lengths) * 2, dtype="float32").reshape(-1, 2) + 1
    ragged = tf.RaggedTensor.from_row_lengths(values, lengths)
    padded, mask, counts = padded_patches(ragged, longest)
    expected = ragged.to_tensor(shape=[len(lengths), longest, 2] if longest else None).numpy()
    np.testing.assert_array_equal(padded.numpy().reshape(expected.shape), expected)
    np.testing.assert_array_equal(mask.numpy(), expected[..., 0] > 0)
    np.testing.assert_array_equal(counts.numpy(), lengths)
