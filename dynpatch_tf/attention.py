"""Patch attention: a shallow CNN that gives every patch one scalar weight.

The CNN runs on all patches of all images as one flat batch (`pixels.values`
of the ragged patch tensor); `row_splits` maps the weights back to images.
"""

import keras
import tensorflow as tf

from dynpatch_tf.patch_ops import (
    build_sequence, check_chunk_size, flat_patches, flat_shape, map_chunks, segment_softmax,
)

ACTIVATIONS = ("sigmoid", "softmax", None)


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
        self.supports_jit = False  # ragged tensors do not compile with XLA
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
        chunk_size = None if training else self.chunk_size
        logits = map_chunks(self._logits, flat, chunk_size, (), self.compute_dtype)
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
