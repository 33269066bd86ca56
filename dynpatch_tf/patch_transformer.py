"""PatchTransformerHead: a small self-attention head over an image's patch embeddings."""

import keras
import tensorflow as tf

from dynpatch_tf.patch_ops import padded_patches


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class PatchTransformerHead(keras.layers.Layer):
    """Classifies an image from its patch embeddings, letting the patches attend to each other.

    The default head of `DynamicPatchModel` sees only the attention-weighted
    mean of independent patch embeddings, so a few object patches can drown
    among many background patches. This head reads the patches themselves, as
    Quadformer and APT feed a ViT: a learned class token is put in front of
    each image's patch embeddings (which already carry the box position
    encoding, see `PatchPositionEncoding`), `num_layers` pre-norm Transformer
    encoder blocks run over them with padding masked out, and a Dense layer
    maps the class token to the logits.

    Ragged patches become a padded `[B, 1 + N_max, D]` batch, so attention
    costs `O(N_max^2)` per image: cheap for an adaptive model (tens to hundreds
    of patches), heavy on a fine grid of thousands. Its dtype policy defaults
    to float32 (its logits feed the loss), and the model's policy does not
    reach it (as with the default Dense head).

    `DynamicPatchModel` calls a head with `reads_patches = True` on the
    `patch_embeddings` RaggedTensor instead of the pooled embedding.

    Args:
        num_classes: size of the logits.
        num_heads: attention heads per block.
        num_layers: encoder blocks.
        mlp_ratio: hidden size of each block's MLP over the embedding size.
        dropout: dropout rate in attention and MLP (training only).
        **kwargs: base `Layer` arguments.

    Input shape:
        RaggedTensor `[B, (N), D]`, any float dtype.

    Output shape:
        `[B, num_classes]` logits in the compute dtype (float32 by default). An image with no patches is
        classified from the class token alone.

    Example:

    >>> head = PatchTransformerHead(num_classes=3)
    >>> patches = tf.RaggedTensor.from_row_lengths(tf.random.normal([5, 16]), [2, 3])
    >>> head(patches).shape
    TensorShape([2, 3])
    >>> model = DynamicPatchModel(head=PatchTransformerHead(3), token_size=8, embed_dim=16)
    """

    reads_patches = True

    def __init__(self, num_classes, num_heads=2, num_layers=1, mlp_ratio=2, dropout=0.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.mlp_ratio = mlp_ratio
        self.dropout = dropout
        self.blocks = []
        self.final_norm = keras.layers.LayerNormalization(dtype=self.dtype_policy, name="final_norm")
        self.logits = keras.layers.Dense(num_classes, dtype=self.dtype_policy, name="logits")

    def build(self, input_shape):
        dim = input_shape[-1]
        self.class_token = self.add_weight(shape=(1, 1, dim), initializer="zeros", name="class_token")
        for index in range(self.num_layers):
            block = _EncoderBlock(dim, self.num_heads, self.mlp_ratio, self.dropout,
                                  dtype=self.dtype_policy, name=f"block_{index}")
            block.build((None, None, dim))
            self.blocks.append(block)
        self.final_norm.build((None, dim))
        self.logits.build((None, dim))

    def call(self, patch_embeddings, training=False):
        tokens, valid, _ = padded_patches(patch_embeddings)
        tokens = tf.cast(tokens, self.compute_dtype)
        batch = tf.shape(tokens)[0]
        tokens = tf.concat([tf.tile(self.class_token, [batch, 1, 1]), tokens], axis=1)
        valid = tf.concat([tf.ones([batch, 1], tf.bool), valid], axis=1)
        mask = tf.logical_and(valid[:, :, None], valid[:, None, :])
        for block in self.blocks:
            tokens = block(tokens, mask, training=training)
        return self.logits(self.final_norm(tokens[:, 0]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_heads=self.num_heads,
                      num_layers=self.num_layers, mlp_ratio=self.mlp_ratio, dropout=self.dropout)
        return config


class _EncoderBlock(keras.layers.Layer):
    """Pre-norm Transformer encoder block: `x + MHA(LN(x))`, then `x + MLP(LN(x))`."""

    def __init__(self, dim, num_heads, mlp_ratio, dropout, **kwargs):
        super().__init__(**kwargs)
        policy = self.dtype_policy
        self.attention_norm = keras.layers.LayerNormalization(dtype=policy, name="attention_norm")
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, key_dim=max(dim // num_heads, 1), dropout=dropout, dtype=policy, name="attention"
        )
        self.mlp_norm = keras.layers.LayerNormalization(dtype=policy, name="mlp_norm")
        self.hidden = keras.layers.Dense(dim * mlp_ratio, activation="gelu", dtype=policy, name="hidden")
        self.output_dense = keras.layers.Dense(dim, dtype=policy, name="output")
        self.drop = keras.layers.Dropout(dropout, dtype=policy)

    def build(self, input_shape):
        self.attention_norm.build(input_shape)
        self.attention.build(input_shape, input_shape)
        self.mlp_norm.build(input_shape)
        self.hidden.build(input_shape)
        self.output_dense.build((None, None, self.hidden.units))

    def call(self, tokens, mask, training=False):
        normed = self.attention_norm(tokens)
        tokens = tokens + self.attention(normed, normed, attention_mask=mask, training=training)
        hidden = self.hidden(self.mlp_norm(tokens))
        return tokens + self.drop(self.output_dense(hidden), training=training)
