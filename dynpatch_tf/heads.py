"""Identification heads: a unit-norm embedding, and ArcFace class cosines on it.

A head of `DynamicPatchModel` maps the pooled embedding `[B, D]` to what the
loss takes. Besides the plain classification heads (a Dense layer,
`PatchTransformerHead`), two heads serve identification, where the classes at
test time are not those of training (open set) and images are compared by
their embeddings:

* `IdentificationEmbedding`: a Dense projection, L2-normalised. Its output is
  the embedding; trained with `TripletSemiHardLoss`.
* `ArcFaceHead`: the same embedding, and the cosines between it and a learned
  weight vector per training identity; trained with `ArcFaceLoss`. Only the
  embedding is used after training.

Hooks the model reads (any head may define them):

* `identity_embedding(pooled)`: the unit-norm embedding for retrieval; a head
  with it "identifies" (`identifies(head)`). The model's
  `retrieval_embedding`, the export's `identity_embedding` output, `dynpatch
  embed` and `dynpatch search` use it.
* `default_loss()` and `default_metrics()`: what `model.compile(loss="auto",
  metrics="auto")` picks for this head.

Example:

>>> model = DynamicPatchModel(head_type="identification", identity_dim=32, token_size=8)
>>> model.compile()                       # Adam, TripletSemiHardLoss
>>> model(np.random.rand(2, 64, 64, 3).astype("float32")).shape
TensorShape([2, 32])
>>> arcface = DynamicPatchModel(head=ArcFaceHead(num_classes=100, units=32))
"""

import keras
import tensorflow as tf

from dynpatch_tf.losses import ArcFaceLoss, TripletSemiHardLoss


def identifies(head):
    """Whether `head` gives an identification embedding (`identity_embedding`)."""
    return callable(getattr(head, "identity_embedding", None))


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class IdentificationEmbedding(keras.layers.Layer):
    """A unit-norm identification embedding: `l2_normalize(Dense(units)(pooled))`.

    Computes in float32 by default (its output feeds the loss and the
    distances of retrieval); the model's dtype policy does not reach it.

    Args:
        units: the size of the embedding.
        **kwargs: base `Layer` arguments.

    Input shape:
        `[B, D]`, any float dtype.

    Output shape:
        `[B, units]`, each row of norm 1, in the compute dtype.

    Example:

    >>> IdentificationEmbedding(16)(tf.random.normal([4, 64])).shape
    TensorShape([4, 16])
    """

    def __init__(self, units=64, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.units = int(units)
        self.projection = keras.layers.Dense(self.units, dtype=self.dtype_policy, name="projection")

    def build(self, input_shape):
        self.projection.build(input_shape)

    def call(self, pooled):
        projected = self.projection(tf.cast(pooled, self.compute_dtype))
        return tf.math.l2_normalize(projected, axis=-1, epsilon=1e-6)

    def identity_embedding(self, pooled):
        return self(pooled)

    def default_loss(self):
        return TripletSemiHardLoss()

    def default_metrics(self):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class ArcFaceHead(keras.layers.Layer):
    """Cosines between an `IdentificationEmbedding` and one unit weight vector per class.

    The margin is the loss's (`ArcFaceLoss`); `scale` and `margin` here only
    configure the loss `default_loss` makes, so that `model.compile()` alone
    trains it. Computes in float32 by default.

    Args:
        num_classes: the training identities.
        units: the size of the embedding.
        scale, margin: of the default `ArcFaceLoss`.
        **kwargs: base `Layer` arguments.

    Input shape:
        `[B, D]`, any float dtype.

    Output shape:
        `[B, num_classes]` cosines in [-1, 1]; `identity_embedding` gives
        `[B, units]`.

    Example:

    >>> head = ArcFaceHead(num_classes=10, units=16)
    >>> head(tf.random.normal([4, 64])).shape
    TensorShape([4, 10])
    """

    def __init__(self, num_classes, units=64, scale=30.0, margin=0.5, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.units = int(units)
        self.scale = float(scale)
        self.margin = float(margin)
        self.embedding = IdentificationEmbedding(self.units, dtype=self.dtype_policy, name="embedding")

    def build(self, input_shape):
        self.embedding.build(input_shape)
        self.class_weights = self.add_weight(shape=(self.units, self.num_classes),
                                             initializer="glorot_uniform", name="class_weights")

    def call(self, pooled):
        weights = tf.math.l2_normalize(tf.cast(self.class_weights, self.compute_dtype), axis=0, epsilon=1e-6)
        return tf.matmul(self.embedding(pooled), weights)

    def identity_embedding(self, pooled):
        return self.embedding(pooled)

    def default_loss(self):
        return ArcFaceLoss(self.scale, self.margin)

    def default_metrics(self):
        return ["accuracy"]  # the nearest class weight, on the training identities

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, units=self.units, scale=self.scale,
                      margin=self.margin)
        return config
