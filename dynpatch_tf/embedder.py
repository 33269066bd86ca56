"""Patch embedder: a MobileNetV2-like CNN that maps every patch to a vector.

Stem conv, inverted residual blocks, global average pooling, Dense(D). Like
`PatchAttention`, it runs on all patches of all images as one flat batch and
puts the embeddings back into the ragged structure of its input.
"""

import keras
import tensorflow as tf

from dynpatch_tf.patch_ops import (
    build_sequence, call_on_rows, check_chunk_size, flat_patches, flat_shape, map_chunks,
)

# (expansion, channels, repeats, stride) per stage, as in the MobileNetV2
# paper's table; expansion None means the embedder's `expansion` argument.
# A lighter version of MobileNetV2's stages: patches are 8 to 64 pixels, not 224.
DEFAULT_BLOCKS = (
    (1, 16, 1, 1),
    (None, 24, 2, 2),
    (None, 32, 2, 2),
    (None, 64, 2, 2),
    (None, 96, 1, 1),
)


def make_divisible(value, divisor=8, min_value=None):
    """Rounds a channel count to a multiple of `divisor`, as MobileNetV2 does.

    Rounds to the nearest multiple (at least `min_value`, default `divisor`)
    and adds one `divisor` when rounding down lost more than 10%.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def fit_strides(size, strides, min_feature_size=2):
    """Fits the requested strides of a layer sequence to the patch size.

    The stride rule: layers run in order and the spatial size after a strided
    layer is ceil(size / stride) ("same" padding). A layer keeps its stride
    only if that shrinks the feature map and leaves at least
    `min_feature_size` pixels; otherwise it runs with stride 1. With
    `min_feature_size=2` and strides of 2 this means: downsample by 2 while
    the feature map is larger than 2x2. The last feature map is thus at least
    min_feature_size x min_feature_size (or P x P when P < min_feature_size).

    Example: the stem and default stages request strides 2, 2, 2, 2; P=8 gives
    2, 2, 1, 1 (8->4->2), P=16 gives 2, 2, 2, 1 (16->8->4->2), P=32 gives
    2, 2, 2, 2 (32->16->8->4->2) and P=64 gives 2, 2, 2, 2 (64->...->4).

    Args:
        size: the patch size P (an int).
        strides: the requested stride of each layer, in order.
        min_feature_size: the side, in pixels, of the smallest feature map a
            stride may produce.

    Returns:
        The list of fitted strides.
    """
    fitted = []
    for stride in strides:
        smaller = -(-size // stride)
        keep = min_feature_size <= smaller < size
        fitted.append(stride if keep else 1)
        size = smaller if keep else size
    return fitted


def batch_norm(layer, name):
    """A BatchNormalization with `layer`'s momentum, epsilon, synchronization and dtype."""
    return keras.layers.BatchNormalization(
        momentum=layer.bn_momentum, epsilon=layer.bn_epsilon,
        synchronized=layer.synchronized_batch_norm, dtype=layer.dtype_policy, name=name,
    )


def conv_bn(conv, bn, x, training, relu6=True):
    """conv -> BatchNorm (-> ReLU6)."""
    x = bn(conv(x), training=training)
    return keras.ops.relu6(x) if relu6 else x


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class InvertedResidual(keras.layers.Layer):
    """MobileNetV2's inverted residual block.

    1x1 expansion conv + BN + ReLU6 (skipped when `expansion` is 1), 3x3
    depthwise conv (with `strides`) + BN + ReLU6, 1x1 linear projection conv
    + BN, and the input added to the result when `strides` is 1 and the input
    has `filters` channels. Convs have no bias (BatchNorm follows). The input
    channels come from the build shape, as in Keras' own layers, so the
    expansion conv (whose width follows them) is made in `build`.

    Args:
        filters: channels of the output.
        expansion: the hidden width is the input channels times `expansion`.
        strides: stride of the depthwise conv (1 or 2).
        bn_momentum: BatchNormalization momentum. MobileNetV2 uses 0.999, but
            the moving statistics then lag far behind in short runs and
            inference breaks; 0.9 settles within a few dozen steps.
        bn_epsilon: BatchNormalization epsilon.
        synchronized_batch_norm: BatchNormalization's `synchronized` (see
            `PatchEmbedder`).
        **kwargs: standard `keras.layers.Layer` arguments.

    Input shape:
        [n, H, W, C].

    Output shape:
        [n, ceil(H / strides), ceil(W / strides), filters].

    Example:

    >>> block = InvertedResidual(filters=16, expansion=6)
    >>> block(tf.zeros([2, 8, 8, 16])).shape
    TensorShape([2, 8, 8, 16])
    >>> block.use_residual
    True
    """

    def __init__(self, filters, expansion=6, strides=1, bn_momentum=0.9, bn_epsilon=1e-3,
                 synchronized_batch_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.expansion = int(expansion)
        self.strides = int(strides)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.synchronized_batch_norm = bool(synchronized_batch_norm)
        if self.expansion < 1 or self.strides < 1:
            raise ValueError(
                f"expansion and strides must be >= 1; got {expansion}, {strides}."
            )
        self.use_residual = None  # known once the input channels are (build)
        self.expand_conv, self.expand_bn = None, None
        self.depthwise = keras.layers.DepthwiseConv2D(
            3, strides=self.strides, padding="same", use_bias=False,
            dtype=self.dtype_policy, name="depthwise",
        )
        self.depthwise_bn = batch_norm(self, "depthwise_bn")
        self.project_conv = self._conv(self.filters, "project_conv")
        self.project_bn = batch_norm(self, "project_bn")

    def _conv(self, filters, name):
        return keras.layers.Conv2D(
            filters, 1, use_bias=False, dtype=self.dtype_policy, name=name
        )

    def _sublayers(self):
        layers = [self.expand_conv, self.expand_bn, self.depthwise, self.depthwise_bn,
                  self.project_conv, self.project_bn]
        return [layer for layer in layers if layer is not None]

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name} needs a known channel count; got {tuple(input_shape)}.")
        self.use_residual = self.strides == 1 and channels == self.filters
        if self.expansion > 1:
            self.expand_conv = self._conv(channels * self.expansion, "expand_conv")
            self.expand_bn = batch_norm(self, "expand_bn")
        build_sequence(self._sublayers(), input_shape)

    def call(self, inputs, training=None):
        x = inputs
        if self.expand_conv is not None:
            x = conv_bn(self.expand_conv, self.expand_bn, x, training)
        x = conv_bn(self.depthwise, self.depthwise_bn, x, training)
        x = conv_bn(self.project_conv, self.project_bn, x, training, relu6=False)
        return inputs + x if self.use_residual else x

    def compute_output_shape(self, input_shape):
        batch, height, width = tuple(input_shape)[:3]
        shrink = lambda size: None if size is None else -(-size // self.strides)  # noqa: E731
        return (batch, shrink(height), shrink(width), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            expansion=self.expansion,
            strides=self.strides,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            synchronized_batch_norm=self.synchronized_batch_norm,
        )
        return config


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class PatchEmbedder(keras.layers.Layer):
    """MobileNetV2-like embedding of every patch.

    Stem Conv2D 3x3 (stride 2) + BN + ReLU6, the `InvertedResidual` blocks
    of `blocks`, global average pooling and Dense(`embed_dim`) (linear).
    Channel counts are scaled by `width_multiplier` and rounded with
    `make_divisible` (multiples of 8), as in MobileNetV2.

    Strides are fitted to the token size P when the layer is built (see
    `fit_strides`): a strided layer (the stem, or the first block of a stage
    with stride 2) keeps its stride only while the feature map would stay at
    least `min_feature_size` pixels wide, i.e. by default it downsamples by 2 while
    the map is larger than 2x2. With the default blocks: P=8 -> 2x2 final map,
    P=16 -> 2x2, P=32 -> 2x2, P=64 -> 4x4. That is why the stem and blocks
    are created in `build` (they depend on P); the pooling and Dense head
    are created in `__init__`. P must be static.

    All patches of all images run through the network as one flat batch; with
    `chunk_size` set, at inference it runs `chunk_size` patches at a time
    (`map_chunks`), which bounds the activations in memory (BatchNorm uses its
    moving statistics then, so the embeddings are the same). Training always
    runs the whole batch at once, since BatchNorm's batch statistics depend on
    it and the gradient tape keeps every chunk's activations anyway.

    Under a `tf.distribute` strategy, BatchNorm in training normalises each
    replica's patches by their own statistics, and each replica keeps its own
    moving statistics (Keras' default). `synchronized_batch_norm=True` uses
    the global batch's (an all-reduce per layer and step), so a step equals
    one device's; every replica must then join each all-reduce, and the
    network runs through `call_on_rows` instead of `map_chunks`' `tf.cond`.

    Args:
        embed_dim: D, the size of each patch embedding.
        width_multiplier: MobileNetV2's alpha; scales every channel count.
        expansion: expansion factor of the blocks whose spec says None.
        blocks: the stages, a sequence of (expansion, channels, repeats,
            stride) as in the MobileNetV2 paper's table (t, c, n, s):
            `repeats` blocks with `channels` (before the width multiplier)
            output channels, the first with `stride` (before fitting to P),
            the rest with stride 1. An expansion of None means `expansion`;
            an expansion of 1 skips the expand conv. Default `DEFAULT_BLOCKS`.
        stem_filters: channels of the stem conv (before the width multiplier).
        min_feature_size: the side, in pixels, of the smallest feature map a
            stride may produce (see `fit_strides`). Configs saved before it
            was renamed call it `min_size`; `from_config` still reads that.
        bn_momentum: BatchNormalization momentum. MobileNetV2 uses 0.999, but
            the moving statistics then lag far behind in short runs and
            inference breaks; 0.9 settles within a few dozen steps.
        bn_epsilon: BatchNormalization epsilon.
        synchronized_batch_norm: in training under a `tf.distribute`
            strategy, normalise by the statistics of the global batch (see
            above); no effect on one device.
        chunk_size: patches per network call at inference, or None (default)
            for all at once.
        **kwargs: standard `keras.layers.Layer` arguments.

    Input shape:
        `tf.RaggedTensor` [B, (N), P, P, C] (ragged_rank 1), dense
        [B, N, P, P, C], or dense [n, P, P, C].

    Output shape:
        RaggedTensor [B, (N), D] sharing the input's row_splits, dense
        [B, N, D], or dense [n, D] respectively; in the compute dtype.

    Example:

    >>> pixels = tf.RaggedTensor.from_row_lengths(
    ...     tf.random.uniform([5, 16, 16, 3]), row_lengths=[0, 2, 3])
    >>> PatchEmbedder(embed_dim=32)(pixels).shape
    TensorShape([3, None, 32])
    """

    def __init__(self, embed_dim=64, width_multiplier=0.5, expansion=6,
                 blocks=DEFAULT_BLOCKS, stem_filters=32, min_feature_size=2,
                 bn_momentum=0.9, bn_epsilon=1e-3, synchronized_batch_norm=False,
                 chunk_size=None, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False  # ragged tensors do not compile with XLA
        self.embed_dim = int(embed_dim)
        self.width_multiplier = float(width_multiplier)
        self.expansion = int(expansion)
        self.blocks_spec = tuple(self._check_stage(stage) for stage in blocks)
        self.stem_filters = int(stem_filters)
        self.min_feature_size = int(min_feature_size)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.synchronized_batch_norm = bool(synchronized_batch_norm)
        self.chunk_size = check_chunk_size(chunk_size)
        self.stem, self.stem_bn, self.blocks = None, None, []
        self.global_pool = keras.layers.GlobalAveragePooling2D(dtype=self.dtype_policy)
        self.embedding = keras.layers.Dense(
            self.embed_dim, dtype=self.dtype_policy, name="embedding"
        )

    @staticmethod
    def _check_stage(stage):
        if len(stage) != 4:
            raise ValueError(
                "Each entry of blocks must be (expansion, channels, repeats, "
                f"stride); got {stage!r}."
            )
        expansion, channels, repeats, stride = stage
        if min(channels, repeats, stride) < 1 or (expansion is not None and expansion < 1):
            raise ValueError(f"Block spec values must be >= 1; got {stage!r}.")
        expansion = None if expansion is None else int(expansion)
        return (expansion, int(channels), int(repeats), int(stride))

    def _channels(self, channels):
        return make_divisible(channels * self.width_multiplier)

    def _block_plan(self):
        """(expansion, out channels, requested stride) of every block."""
        return [
            (self.expansion if t is None else t, self._channels(c), s if i == 0 else 1)
            for t, c, n, s in self.blocks_spec
            for i in range(n)
        ]

    def build(self, input_shape):
        shape = flat_shape(input_shape)
        if shape[1] is None or shape[2] is None:
            raise ValueError(
                "PatchEmbedder fits its strides to the patch size and needs a "
                f"static P; got input shape {tuple(input_shape)}."
            )
        plan = self._block_plan()
        strides = fit_strides(min(shape[1:3]), [2] + [s for _, _, s in plan], self.min_feature_size)
        self.stem = keras.layers.Conv2D(
            self._channels(self.stem_filters), 3, strides=strides[0], padding="same", use_bias=False,
            dtype=self.dtype_policy, name="stem_conv",
        )
        self.stem_bn = batch_norm(self, "stem_bn")
        self.blocks = [
            InvertedResidual(
                c, expansion=t, strides=stride, bn_momentum=self.bn_momentum,
                bn_epsilon=self.bn_epsilon, synchronized_batch_norm=self.synchronized_batch_norm,
                dtype=self.dtype_policy, name=f"block_{i}",
            )
            for i, ((t, c, _), stride) in enumerate(zip(plan, strides[1:]))
        ]
        build_sequence(
            [self.stem, self.stem_bn, *self.blocks, self.global_pool, self.embedding],
            shape,
        )

    def call(self, pixels, scales=None, training=None):
        """Embeds every patch, after multiplying it by its entry of `scales`.

        Args:
            pixels: the patches (see the class docstring).
            scales: optional per-patch factors: a RaggedTensor `[B, (N)]`, or
                a dense tensor with one value per patch (`[B, N]` or `[n]`).
                Each patch is multiplied by its factor just before the network,
                a chunk at a time, so the scaled patches are never all in
                memory at once.
            training: BatchNorm mode.
        """
        flat, restore = flat_patches(pixels)
        inputs = (flat,)
        if scales is not None:
            scales = scales.values if isinstance(scales, tf.RaggedTensor) else scales
            inputs += (tf.reshape(tf.cast(scales, self.compute_dtype), [-1]),)

        def embed(chunk):
            x = tf.cast(chunk[0], self.compute_dtype)
            if len(chunk) == 2:
                x *= chunk[1][:, None, None, None]
            x = conv_bn(self.stem, self.stem_bn, x, training)
            for block in self.blocks:
                x = block(x, training=training)
            return self.embedding(self.global_pool(x))

        if training and self.synchronized_batch_norm:
            return restore(call_on_rows(embed, inputs))
        chunk_size = None if training else self.chunk_size
        return restore(map_chunks(embed, inputs, chunk_size, (self.embed_dim,), self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-3] + (self.embed_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim,
            width_multiplier=self.width_multiplier,
            expansion=self.expansion,
            blocks=[list(stage) for stage in self.blocks_spec],
            stem_filters=self.stem_filters,
            min_feature_size=self.min_feature_size,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            synchronized_batch_norm=self.synchronized_batch_norm,
            chunk_size=self.chunk_size,
        )
        return config

    @classmethod
    def from_config(cls, config):
        """Also reads configs saved before `min_feature_size` was called `min_size`."""
        config = dict(config)
        if "min_size" in config:
            config.setdefault("min_feature_size", config.pop("min_size"))
        return super().from_config(config)
