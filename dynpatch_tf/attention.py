"""Patch attention: a shallow CNN that gives every patch one scalar weight.

The CNN runs on all patches of all images as one flat batch (`pixels.values`
of the ragged patch tensor); `row_splits` maps the weights back to images.

The module also holds the helpers that every per-patch layer of the library
shares: `flat_patches` (ragged or dense patches -> one flat batch, and back),
`map_chunks` (run a network over the flat batch a chunk at a time) and
`build_sequence` (build a chain of sublayers shape by shape).
"""

import keras
import tensorflow as tf

ACTIVATIONS = ("sigmoid", "softmax", None)


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


def map_chunks(fn, flat, chunk_size):
    """`fn` over a flat batch, at most `chunk_size` rows at a time.

    The results are concatenated along the first axis, so for a per-patch
    network the output equals `fn(flat)` while the activations in memory are
    those of one chunk. All chunks but the last run one after the other in a
    `tf.while_loop` (the TFLite `WHILE` op) that writes each result into a
    `tf.TensorArray`; the last chunk, 1 to `chunk_size` rows, runs after the
    loop. No call is empty (XNNPACK, LiteRT's CPU delegate, cannot run a
    convolution on zero rows) unless `flat` is, and a batch of at most
    `chunk_size` rows costs one call and an empty loop.

    Args:
        fn: maps a structure like `flat` of `m` rows to an `[m, ...]` tensor,
            row by row.
        flat: an `[n, ...]` tensor, or a tuple of them with the same `n`
            (sliced alike).
        chunk_size: rows per call, or None for one call on all of `flat`.

    Returns:
        `[n, ...]`, the rows of `fn`'s results in order.
    """
    if chunk_size is None:
        return fn(flat)
    count = tf.shape(tf.nest.flatten(flat)[0])[0]
    looped = tf.maximum((count + chunk_size - 1) // chunk_size - 1, 0)

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


def fit_pools(size, num_convs):
    """Which conv layers are followed by a 2x2 max pool, for patches size P.

    A pool follows a conv while the feature map is still larger than 1x1, so
    the map never shrinks below 1x1: P=8 with 3 convs pools 8->4->2->1, P=4
    with 3 convs pools twice (4->2->1) and skips the third pool. Pools use
    "same" padding (an odd size s becomes ceil(s/2)). An unknown size
    (None) pools after every conv; "same" padding keeps that safe too.

    Returns:
        A list of `num_convs` booleans.
    """
    flags = []
    for _ in range(num_convs):
        flags.append(size is None or size > 1)
        if size is not None and size > 1:
            size = -(-size // 2)
    return flags


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


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class PatchAttention(keras.layers.Layer):
    """One scalar weight per patch from a shallow CNN.

    Architecture: for each entry of `filters`, Conv2D(3x3, "same") + ReLU,
    followed by MaxPool(2, "same") while the feature map is larger than 1x1
    (see `fit_pools`); then global average pooling and Dense(1) giving one
    logit per patch, turned into a weight by `activation`.

    All patches of all images run through the CNN as one flat batch; with
    `chunk_size` set, at inference it runs `chunk_size` patches at a time
    (`map_chunks`), which bounds the activations in memory and gives the same
    weights. Training always runs the whole batch at once: the gradient tape
    keeps every chunk's activations anyway.

    Args:
        filters: number of filters of each conv layer; its length is the
            number of conv layers (2 or 3 is the intended range).
        kernel_size: size of the square conv kernels.
        activation: "sigmoid" (default): an independent weight in (0, 1) per
            patch. "softmax": weights that sum to 1 over the patches of each
            image (needs patches grouped by image: ragged [B, (N), ...] or
            dense [B, N, ...] input). None: the raw logits.
        chunk_size: patches per CNN call at inference, or None (default) for
            all at once.
        **kwargs: standard `keras.layers.Layer` arguments (name, dtype, ...).

    Input shape:
        `tf.RaggedTensor` [B, (N), P, P, C] (ragged_rank 1), dense
        [B, N, P, P, C], or dense [n, P, P, C] (a flat patch batch).

    Output shape:
        RaggedTensor [B, (N)] sharing the input's row_splits, dense [B, N], or
        dense [n] respectively; in the layer's compute dtype.

    Raises:
        ValueError: "softmax" on a flat [n, P, P, C] batch (there are no
            images to normalise over), or an unknown activation.

    Example:

    >>> pixels = tf.RaggedTensor.from_row_lengths(
    ...     tf.random.uniform([5, 8, 8, 3]), row_lengths=[0, 2, 3])
    >>> weights = PatchAttention(filters=(16, 32), activation="softmax")(pixels)
    >>> weights.shape
    TensorShape([3, None])
    """

    def __init__(self, filters=(16, 32), kernel_size=3, activation="sigmoid",
                 chunk_size=None, **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}; got {activation!r}."
            )
        self.filters = tuple(int(f) for f in filters)
        if not self.filters:
            raise ValueError("filters must name at least one conv layer.")
        self.kernel_size = int(kernel_size)
        self.activation = activation
        self.chunk_size = check_chunk_size(chunk_size)
        self.convs = [
            keras.layers.Conv2D(
                f, self.kernel_size, padding="same", activation="relu",
                dtype=self.dtype_policy, name=f"conv_{i}",
            )
            for i, f in enumerate(self.filters)
        ]
        self.pools = [
            keras.layers.MaxPooling2D(2, padding="same", dtype=self.dtype_policy, name=f"pool_{i}")
            for i in range(len(self.filters))
        ]
        self.global_pool = keras.layers.GlobalAveragePooling2D(dtype=self.dtype_policy)
        self.score = keras.layers.Dense(1, dtype=self.dtype_policy, name="score")
        self._pooled = [True] * len(self.filters)

    def _stack(self):
        """The sublayers in the order they run, pools fitted to the patch size."""
        layers = []
        for conv, pool, pooled in zip(self.convs, self.pools, self._pooled):
            layers += [conv, pool] if pooled else [conv]
        return layers + [self.global_pool, self.score]

    def build(self, input_shape):
        shape = flat_shape(input_shape)
        sizes = [s for s in shape[1:3] if s is not None]
        self._pooled = fit_pools(min(sizes) if sizes else None, len(self.convs))
        build_sequence(self._stack(), shape)

    def call(self, pixels, training=None):
        flat, restore = flat_patches(pixels)
        logits = map_chunks(self._logits, flat, None if training else self.chunk_size)
        return self._activate(restore(logits))

    def _logits(self, flat):
        """`[n, P, P, C]` -> `[n]`: the CNN's logit per patch."""
        x = tf.cast(flat, self.compute_dtype)
        for layer in self._stack():
            x = layer(x)
        return x[:, 0]

    def _activate(self, logits):
        if self.activation is None:
            return logits
        if self.activation == "sigmoid":
            return tf.sigmoid(logits)
        if isinstance(logits, tf.RaggedTensor):
            return segment_softmax(logits)
        if logits.shape.rank != 2:
            raise ValueError(
                'activation="softmax" normalises over the patches of one image '
                "and needs them grouped by image: pass a RaggedTensor "
                "[B, (N), P, P, C] or a dense [B, N, P, P, C] tensor, not a flat "
                "patch batch [n, P, P, C]."
            )
        return tf.cast(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), logits.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-3]

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=list(self.filters),
            kernel_size=self.kernel_size,
            activation=self.activation,
            chunk_size=self.chunk_size,
        )
        return config
