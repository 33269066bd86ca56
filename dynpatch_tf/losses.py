"""Identification losses: additive angular margin (ArcFace) and semi-hard triplets.

Both are written natively for Keras 3 (tensorflow-addons, where Keras users
took `TripletSemiHardLoss` from, is end of life and does not run with Keras 3).
They compute in float32 whatever the dtype of their inputs, so they serve
models under a `mixed_float16` or `mixed_bfloat16` policy as they are.

* `ArcFaceLoss` takes integer labels and the cosines between each embedding
  and every class weight (what `dynpatch_tf.heads.ArcFaceHead` returns): the
  margin is added to the angle of the true class only, then softmax
  cross-entropy on the scaled cosines. The head owns the class weights and the
  loss owns the margin, the clean Keras split: `model.compile(loss=ArcFaceLoss())`.
* `TripletSemiHardLoss` takes integer labels and embeddings (unit-norm ones
  from `dynpatch_tf.heads.IdentificationEmbedding`) and mines its triplets in
  the batch, as FaceNet and tensorflow-addons do.

Example:

```python
model = DynamicPatchModel(head_type="identification")   # compile() picks TripletSemiHardLoss
model.compile(loss=TripletSemiHardLoss(margin=0.2, distance="squared_l2"))
arcface = DynamicPatchModel(num_classes=100, head_type="arcface")   # compile() picks ArcFaceLoss
```
"""

import math

import keras
import tensorflow as tf

DISTANCES = ("l2", "squared_l2")


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class ArcFaceLoss(keras.losses.Loss):
    """Additive angular margin softmax loss (ArcFace, Deng et al. 2019).

    For a sample of class `y` with cosines `c_j = cos(theta_j)` to the class
    weights, the logits are `s * cos(theta_y + m)` for the true class and
    `s * c_j` for the others, and the loss is softmax cross-entropy on them.
    Where `theta_y + m` would pass pi (`cos(theta_y + m)` stops decreasing),
    the true logit is `s * (c_y - m * sin(m))` instead, as in InsightFace, so
    that the logit keeps falling with the angle.

    Args:
        scale: `s`, the radius of the hypersphere the logits live on.
        margin: `m`, the angular margin in radians, in [0, pi/2).
        reduction: Keras' reduction of the per-sample losses.
        name: the loss's name.
        dtype: the dtype of the loss computation (float32 by default).

    Inputs:
        y_true: integer labels `[B]` or `[B, 1]`, in `[0, K)`.
        y_pred: cosines `[B, K]` in [-1, 1] (clipped), any float dtype.

    Returns:
        The reduced loss (per sample `[B]` with `reduction=None`), float32.

    Example:

    >>> loss = ArcFaceLoss(scale=30.0, margin=0.5)
    >>> loss(tf.constant([0, 2]), tf.constant([[0.9, 0.1, 0.0], [0.2, 0.1, 0.7]]))
    """

    def __init__(self, scale=30.0, margin=0.5, reduction="sum_over_batch_size", name="arcface_loss",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if scale <= 0:
            raise ValueError(f"ArcFaceLoss scale must be positive, got {scale}.")
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"ArcFaceLoss margin must be in [0, pi/2) radians, got {margin}.")
        self.scale = float(scale)
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        cosines = tf.clip_by_value(tf.cast(y_pred, tf.float32), -1.0, 1.0)
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        target = tf.gather(cosines, labels, axis=1, batch_dims=1)
        # sin(theta) >= 0 on [0, pi]; the floor keeps the gradient of sqrt finite at |c| = 1.
        sine = tf.sqrt(tf.maximum(1.0 - tf.square(target), 1e-12))
        with_margin = target * math.cos(self.margin) - sine * math.sin(self.margin)
        # theta + m > pi exactly when cos(theta) < cos(pi - m).
        with_margin = tf.where(target > math.cos(math.pi - self.margin), with_margin,
                               target - self.margin * math.sin(self.margin))
        one_hot = tf.one_hot(labels, tf.shape(cosines)[1], dtype=tf.float32)
        logits = self.scale * (cosines + one_hot * (with_margin - target)[:, None])
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, margin=self.margin)
        return config


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class TripletSemiHardLoss(keras.losses.Loss):
    """Triplet loss with semi-hard negatives mined in the batch (FaceNet; tensorflow-addons).

    For every anchor-positive pair `(a, p)` (two different samples with the
    same label), the negative `n` (a sample with another label) is the closest
    one farther from the anchor than the positive, `d(a, n) > d(a, p)`; where
    there is none, the farthest negative from the anchor. The loss is the mean
    over all anchor-positive pairs of `max(d(a, p) - d(a, n) + margin, 0)`.

    Distances: `distance="l2"` (default, as tensorflow-addons' `"L2"`) is the
    plain Euclidean distance; `"squared_l2"` its square (as FaceNet and the
    original `tf.contrib` loss). Differences from tensorflow-addons: a pair
    whose anchor has no negative in the batch (the whole batch one class) is
    left out rather than compared with a zero distance, and a batch without any
    pair gives 0 rather than NaN. Samples of a class with one member in the
    batch are never anchors, but serve as negatives. The loss is one number
    for the batch (sample weights do not apply); batches need several samples
    of each identity (`dynpatch_tf.needle_identities.identity_batches`).

    Args:
        margin: the margin between positive and negative distances.
        distance: `"l2"` or `"squared_l2"`.
        reduction, name, dtype: as for any Keras loss.

    Inputs:
        y_true: integer labels `[B]` or `[B, 1]`.
        y_pred: embeddings `[B, D]`, any float dtype (not normalised here:
            give unit-norm ones for the usual margins).

    Returns:
        A float32 scalar.

    Example:

    >>> loss = TripletSemiHardLoss(margin=0.2)
    >>> loss(tf.constant([0, 0, 1, 1]), tf.math.l2_normalize(tf.random.normal([4, 8]), axis=1))
    """

    def __init__(self, margin=1.0, distance="l2", reduction="sum_over_batch_size",
                 name="triplet_semihard_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if distance not in DISTANCES:
            raise ValueError(f"TripletSemiHardLoss distance must be one of {DISTANCES}, got {distance!r}.")
        self.margin = float(margin)
        self.distance = distance

    def call(self, y_true, y_pred):
        embeddings = tf.cast(y_pred, tf.float32)
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        distances = pairwise_distances(embeddings, squared=self.distance == "squared_l2")
        same = tf.equal(labels[:, None], labels[None, :])
        different = tf.logical_not(same)
        positives = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
        # [anchor, positive, negative]: the negatives farther than the positive.
        to_negative = distances[:, None, :]
        farther = tf.logical_and(different[:, None, :], to_negative > distances[:, :, None])
        big = tf.reduce_max(distances) + 1.0
        nearest_farther = tf.reduce_min(tf.where(farther, to_negative, big), axis=2)
        farthest = tf.reduce_max(tf.where(different, distances, -1.0), axis=1)
        negative = tf.where(tf.reduce_any(farther, axis=2), nearest_farther, farthest[:, None])
        pairs = tf.logical_and(positives, tf.reduce_any(different, axis=1)[:, None])
        hinge = tf.maximum(self.margin + distances - negative, 0.0)
        total = tf.reduce_sum(tf.where(pairs, hinge, 0.0))
        return total / tf.maximum(tf.reduce_sum(tf.cast(pairs, tf.float32)), 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, distance=self.distance)
        return config


def pairwise_distances(embeddings, squared=False):
    """Euclidean distances between the rows of `embeddings` `[B, D]`: `[B, B]` float32.

    Computed from dot products (`|a|^2 - 2 a.b + |b|^2`, clipped at 0), with an
    exact zero diagonal. The plain distance's gradient at a zero distance is 0
    rather than NaN (the square root is taken of a tiny positive number there).
    """
    embeddings = tf.cast(embeddings, tf.float32)
    norms = tf.reduce_sum(tf.square(embeddings), axis=1)
    squares = norms[:, None] - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True) + norms[None, :]
    squares = tf.maximum(squares, 0.0)
    off_diagonal = 1.0 - tf.eye(tf.shape(embeddings)[0])
    if squared:
        return squares * off_diagonal
    zero = tf.cast(squares <= 0.0, tf.float32)
    return tf.sqrt(squares + zero * 1e-16) * (1.0 - zero) * off_diagonal
