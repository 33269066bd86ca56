"""Operations on batches of patches that every per-patch layer shares.

Patches of a batch of images come as a `tf.RaggedTensor` `[B, (N), P, P, C]`
(a different number per image), a dense `[B, N, P, P, C]` tensor (the same
number per image) or a flat `[n, P, P, C]` batch. The networks run on the flat
batch (`flat_patches`), a chunk at a time at inference (`map_chunks`), and the
per-patch results go back to their images; reductions over the patches of an
image (`segment_softmax`, `weighted_mean`) run in float32 whatever the compute
dtype, on the sorted row ids of the ragged tensor.

No network ever runs on zero patches: `map_chunks` returns an empty result
without calling the network when the batch is empty. Convolutions on zero rows
fail on some CPU paths (oneDNN on AVX-512 machines, XNNPACK in LiteRT), so an
empty batch of images (or of patches) must never reach one.
"""

import tensorflow as tf


def flat_patches(pixels):
    """Splits patches into one flat batch and a function that restores them.

    Args:
        pixels: a `tf.RaggedTensor` [B, (N), P, P, C] with ragged_rank 1, a
            dense [B, N, P, P, C] tensor (a fixed number of patches per
            image), or a dense [n, P, P, C] tensor (a flat patch batch).

    Returns:
        `(flat, restore)`: `flat` is the dense [n, P, P, C] patch batch and
        `restore(values)` puts per-patch results `values` [n, ...] back into
        the structure of `pixels`: a RaggedTensor [B, (N), ...] sharing
        `pixels.row_splits`, a dense [B, N, ...] tensor, or `values` itself.

    Raises:
        ValueError: for any other rank or ragged structure.
    """
    if isinstance(pixels, tf.RaggedTensor):
        if pixels.ragged_rank != 1 or pixels.shape.rank != 5:
            raise ValueError(
                "Patches must be a RaggedTensor [B, (N), P, P, C] with "
                f"ragged_rank 1; got shape {pixels.shape} with ragged_rank "
                f"{pixels.ragged_rank}."
            )
        return pixels.values, pixels.with_values
    rank = pixels.shape.rank
    if rank == 4:
        return pixels, lambda values: values
    if rank == 5:
        outer = tf.shape(pixels)[:2]
        flat = tf.reshape(pixels, tf.concat([[-1], tf.shape(pixels)[2:]], 0))
        flat = tf.ensure_shape(flat, [None] + pixels.shape[2:].as_list())

        def restore(values):
            shape = tf.concat([outer, tf.shape(values)[1:]], 0)
            static = pixels.shape[:2].concatenate(values.shape[1:])
            return tf.ensure_shape(tf.reshape(values, shape), static)

        return flat, restore
    raise ValueError(
        "Patches must be a RaggedTensor [B, (N), P, P, C] or a dense tensor "
        f"[B, N, P, P, C] or [n, P, P, C]; got rank {rank}, shape "
        f"{pixels.shape}."
    )


def map_chunks(fn, flat, chunk_size, row_shape, dtype):
    """`fn` over a flat batch, at most `chunk_size` rows at a time, never on zero rows.

    The results are concatenated along the first axis, so for a per-patch
    network the output equals `fn(flat)` while the activations in memory are
    those of one chunk. All chunks but the last run one after the other in a
    `tf.while_loop` (the TFLite `WHILE` op) that writes each result into a
    `tf.TensorArray`; the last chunk, 1 to `chunk_size` rows, runs after the
    loop, so a batch of at most `chunk_size` rows costs one call and an empty
    loop. An empty batch returns an empty `[0, *row_shape]` result from a
    `tf.cond` branch that does not call `fn` at all (the TFLite `IF` op).

    Args:
        fn: maps a structure like `flat` of `m >= 1` rows to an `[m, *row_shape]`
            tensor, row by row.
        flat: an `[n, ...]` tensor, or a tuple of them with the same `n`
            (sliced alike).
        chunk_size: rows per call, or None for one call on all of `flat`.
        row_shape: the static shape of one row of `fn`'s result.
        dtype: the dtype of `fn`'s result.

    Returns:
        `[n, *row_shape]`, the rows of `fn`'s results in order.
    """
    count = tf.shape(tf.nest.flatten(flat)[0])[0]

    def run():
        if chunk_size is None:
            return fn(flat)
        return _chunked(fn, flat, chunk_size, count)

    return tf.cond(count > 0, run, lambda: tf.zeros([0, *row_shape], dtype))


def call_on_rows(fn, flat):
    """`fn` on all rows of a flat batch in one call that always runs.

    For a network that must run on every call, as one whose BatchNorm
    all-reduces its statistics over `tf.distribute` replicas (every replica
    must join each all-reduce, and none can run inside a `tf.cond` branch, as
    `map_chunks` runs `fn`). Zero rows are run as one blank (zero) row, cut
    from the result, since oneDNN and XNNPACK fail on zero-row convolutions;
    that row joins the batch statistics.

    Args:
        fn: maps a structure like `flat` of `m >= 1` rows to `m` result rows.
        flat: an `[n, ...]` tensor, or a tuple of them with the same `n`.

    Returns:
        The `n` rows of `fn`'s result.
    """
    count = tf.shape(tf.nest.flatten(flat)[0])[0]
    blank = tf.maximum(1 - count, 0)

    def pad(rows):
        return tf.pad(rows, [[0, blank]] + [[0, 0]] * (rows.shape.rank - 1))

    return fn(tf.nest.map_structure(pad, flat))[:count]


def _chunked(fn, flat, chunk_size, count):
    """`map_chunks` for `count >= 1` rows: a loop over full chunks, then the last one."""
    looped = (count + chunk_size - 1) // chunk_size - 1

    def rows(start, stop):
        return tf.nest.map_structure(lambda tensor: tensor[start:stop], flat)

    last = fn(rows(looped * chunk_size, count))
    outputs = tf.TensorArray(
        last.dtype, size=looped, element_shape=tf.TensorShape([chunk_size]).concatenate(last.shape[1:])
    )

    def step(index, outputs):
        start = index * chunk_size
        return index + 1, outputs.write(index, fn(rows(start, start + chunk_size)))

    _, outputs = tf.while_loop(lambda index, _: index < looped, step, [tf.constant(0), outputs])
    stacked = tf.reshape(outputs.stack(), tf.concat([[-1], tf.shape(last)[1:]], 0))
    return tf.concat([tf.ensure_shape(stacked, [None] + last.shape[1:].as_list()), last], 0)


def check_chunk_size(chunk_size):
    """`chunk_size` as an int, or None; anything else is refused with its value."""
    if chunk_size is None:
        return None
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size!r}.")
    return int(chunk_size)


def flat_shape(input_shape):
    """The shape [None, P, P, C] of the flat patch batch for `input_shape`."""
    return (None,) + tuple(input_shape)[-3:]


def build_sequence(layers, input_shape):
    """Builds `layers` one after the other; returns the last output shape."""
    shape = tuple(input_shape)
    for layer in layers:
        layer.build(shape)
        shape = tuple(layer.compute_output_shape(shape))
    return shape


def row_sums(values, ragged):
    """Per-image sums of per-patch `values` `[n, ...]`: `[B, ...]` in float32.

    `tf.math.segment_sum` on the ragged tensor's sorted row ids (deterministic
    on GPUs, unlike the unsorted form), padded with zeros for trailing images
    without patches.
    """
    sums = tf.math.segment_sum(tf.cast(values, tf.float32), ragged.value_rowids())
    missing = ragged.nrows(out_type=tf.int32) - tf.shape(sums)[0]
    return tf.pad(sums, [[0, missing]] + [[0, 0]] * (sums.shape.rank - 1))


def padded_patches(ragged, longest=None):
    """Per-patch values of a ragged `[B, (N), ...]` as a dense `[B, M, ...]` batch and its mask.

    Built from the row ids with ops that TFLite has (unlike `to_tensor` or
    `row_lengths` on a tensor built from row ids, which need `bincount`).

    Args:
        ragged: a RaggedTensor `[B, (N), ...]` with ragged_rank 1.
        longest: the padded length `M`; None pads to the largest patch count
            in the batch. Patches past `M` are left out.

    Returns:
        `(padded, mask, counts)`: `padded` `[B, M, ...]` with zeros past an
        image's patches, `mask` `[B, M]` bool (True for real patches), and
        `counts` `[B]` int32, every image's patch count.
    """
    rows = tf.cast(ragged.value_rowids(), tf.int32)
    # Integer counts: exact and deterministic in any order.
    counts = tf.math.unsorted_segment_sum(tf.ones_like(rows), rows, ragged.nrows(out_type=tf.int32))
    # max(..., 0): the largest count of an empty batch is the lowest int32.
    longest = tf.maximum(tf.reduce_max(counts), 0) if longest is None else longest
    slots = tf.range(longest)
    mask = slots[None, :] < counts[:, None]
    # Slot m of image b holds its flat patch starts[b] + m; slots past its count are masked.
    starts = tf.cumsum(counts, exclusive=True)
    index = tf.minimum(starts[:, None] + slots[None, :], tf.size(rows) - 1)
    gathered = tf.gather(ragged.values, index)
    expanded = tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([gathered.shape.rank - 2], tf.int32)], 0))
    return tf.where(expanded, gathered, tf.zeros_like(gathered)), mask, counts


def weighted_mean(values, weights, ragged):
    """Per-image mean of `values` `[n, D]` weighted by `weights` `[n]`: `[B, D]` float32.

    Images whose weights sum to zero (or that have no patches) get zeros.
    """
    weights = tf.cast(weights, tf.float32)
    total = row_sums(tf.cast(values, tf.float32) * weights[:, None], ragged)
    return tf.math.divide_no_nan(total, row_sums(weights, ragged)[:, None])


def segment_softmax(logits):
    """Softmax over the patches of each image of a ragged [B, (N)] tensor.

    Numerically stable: each image's maximum logit is subtracted first
    (`tf.math.segment_max` over the value row ids). Computed in float32 and
    returned in the dtype of `logits`, sharing its row_splits. Images with
    no patches give empty rows.
    """
    values = tf.cast(logits.values, tf.float32)
    rows = logits.value_rowids()
    peak = tf.stop_gradient(tf.math.segment_max(values, rows))
    exp = tf.exp(values - tf.gather(peak, rows))
    total = tf.math.segment_sum(exp, rows)
    return logits.with_values(tf.cast(exp / tf.gather(total, rows), logits.dtype))
