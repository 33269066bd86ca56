"""The subdivision penalty: what a patch costs in the training loss.

The patcher's `patch_fraction` is the soft expected patch count of an image
over the count of finest (`min_size`) patches that would tile it: about
`1 / 4**(levels - 1)` when every base block stays whole, 1 when every patch is
of the finest size. Its gradient reaches the thresholds through the soft split
probabilities (see `dynpatch_tf.quadtree`).

Under a `tf.distribute` strategy, the mean is over the global batch: inside a
replica's step the fractions' sum and count are all-reduced over the replicas
(the all-reduce carries the gradient back to every replica), so the penalty
is the one a single device computes on the whole batch, and a replica adds
its `1 / num_replicas` share of it to its loss, as Keras scales the compiled
loss.

Example:

>>> subdivision_penalty(tf.constant([0.2, 0.4]), weight=2.0, budget=0.15)  # 2 * (0.3 / 0.15 - 1)
<tf.Tensor: shape=(), dtype=float32, numpy=2.0>
"""

import keras
import tensorflow as tf


def subdivision_penalty(patch_fraction, weight, budget=None, running_fraction=None, training=False):
    """The penalty of a batch, from its images' soft expected patch fractions.

    With `f` the batch's mean `patch_fraction` (the global batch's, inside a
    `tf.distribute` replica: see `global_batch_mean`) and `w` the `weight`:

    * linear (`budget=None`): `w * f`;
    * budget form: `w * max(0, f / budget - 1)`, the relative overshoot of the
      budget. Below the budget the task loss alone moves the thresholds (the
      penalty and its gradient are 0); above it the penalty pulls the count
      back. The budget is on the batch's mean, as a compute budget is: busy
      images may take more patches while flat ones take fewer.

    In training, `DynamicPatchModel` passes a `RunningFraction`: the budget
    form then reads `f` as the running mean of the batches' fractions (its
    value decides whether the penalty acts; the gradient is the batch's).
    Taken on each batch alone, the hinge settles below the budget: with
    batches that scatter around it, the batches over it each take a full
    Adam step down and the others a small task-driven step up (20-30% below
    on needles, `docs/notes.md`). On the running mean, the penalty stops as
    soon as the data's mean is under the budget, and the task loss can raise
    the count back to it.

    Scale: the penalty is in the task loss's units (nats for cross-entropy).
    In the budget form, `w = 1` makes a count of twice the budget cost 1 nat,
    as much as a wrong guess among e classes. With Adam, what matters is the
    penalty's gradient on the thresholds beside the task loss's, not its
    size: measured on needles (`docs/notes.md`), `w = 0.03` was too weak to
    reach a budget of 0.15 from a split-everything start in 24 epochs, and
    `w` of 0.1 and 1 reached it by about epoch 15. With the running mean's
    default momentum 0.9, `w = 0.1` ended within 6% of the budget on three
    seeds; `w = 1` overshot to a third of it before climbing back (the mean
    lags about 10 steps), and a momentum of 0.5-0.7 suits such weights.
    Start near the budget (`calibrate_thresholds`) and use `w` of about
    0.1-1. The linear form's gradient is `w` per unit of fraction.

    Args:
        patch_fraction: `[B]` float, as `DynamicPatchModel.embed` returns it.
        weight: `w`; 0 turns the penalty off.
        budget: None for the linear form, or the budget, a patch fraction in
            (0, 1].
        running_fraction: None, or a `RunningFraction` that the budget form
            reads `f` through.
        training: passed to `running_fraction`: only training updates and
            reads the running mean.

    Returns:
        A float32 scalar, the same on every replica.
    """
    fraction = global_batch_mean(patch_fraction)
    if budget is None:
        return weight * fraction
    if running_fraction is not None:
        fraction = running_fraction(fraction, training=training)
    return weight * tf.nn.relu(fraction / budget - 1.0)


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class RunningFraction(keras.layers.Layer):
    """The running mean of the batches' patch fraction, for the budget penalty.

    In training, each call folds the batch's mean fraction into an
    exponential moving average, `mean = momentum * mean + (1 - momentum) *
    fraction` (the first batch sets it), and returns the new mean with the
    gradient of the batch's fraction (straight through): the penalty's value
    and whether it acts follow the data's mean, its gradient the batch at
    hand. Outside training it returns `fraction` unchanged.

    The mean is a non-trainable weight (saved with the model, -1 until the
    first training step). Under a `tf.distribute` strategy every replica
    computes the same global fraction (`global_batch_mean`), and the first
    replica's update is kept.

    Args:
        momentum: weight of the old mean, in [0, 1); 0 returns each batch's
            fraction (the hinge on each batch alone). 0.9 averages about
            the last 10 steps.

    Input shape:
        A float32 scalar, the batch's mean patch fraction.

    Output shape:
        A float32 scalar.

    Example:

    >>> running = RunningFraction(momentum=0.5)
    >>> [float(running(tf.constant(f), training=True)) for f in (0.4, 0.2, 0.2)]
    [0.4, 0.3, 0.25]
    """

    def __init__(self, momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= momentum < 1:
            raise ValueError(f"budget momentum must be in [0, 1); got {momentum}.")
        self.momentum = float(momentum)

    def build(self, input_shape=()):
        self.mean = self.add_weight(shape=(), initializer=keras.initializers.Constant(-1.0),
                                    trainable=False, aggregation="only_first_replica", name="mean")

    def call(self, fraction, training=False):
        if not training or self.momentum == 0:
            return fraction
        batch = tf.stop_gradient(fraction)
        mean = tf.where(self.mean < 0, batch, self.momentum * self.mean + (1 - self.momentum) * batch)
        self.mean.assign(mean)
        return fraction + (mean - batch)

    def compute_output_shape(self, input_shape):
        return ()

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum)
        return config


def global_batch_mean(values):
    """The float32 mean of `values` `[B]` over the global batch.

    In a replica context of a strategy with several replicas (inside
    `strategy.run`, as Keras runs train and test steps), the local sum and
    count are summed over the replicas with `all_reduce`, whose gradient is
    the all-reduced gradient: the mean and its gradient are those of the
    concatenated batch, whatever share of it each replica holds (none
    included). Elsewhere it is `reduce_mean`. An empty batch gives 0.
    """
    values = tf.cast(values, tf.float32)
    totals = tf.stack([tf.reduce_sum(values), tf.cast(tf.size(values), tf.float32)])
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        totals = context.all_reduce(tf.distribute.ReduceOp.SUM, totals)
    return tf.math.divide_no_nan(totals[0], totals[1])


def check_budget(budget):
    """`budget` as a float in (0, 1], or None; anything else is refused with its value."""
    if budget is None:
        return None
    if not 0 < budget <= 1:
        raise ValueError(f"patch_budget must be a patch fraction in (0, 1]; got {budget}.")
    return float(budget)
