"""Tests for dynpatch_tf.penalty: the subdivision penalty against a NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.penalty import RunningFraction, check_budget, global_batch_mean, subdivision_penalty

FRACTIONS = np.array([0.1, 0.5, 0.3, 0.2], np.float32)  # mean 0.275


def reference(fractions, weight, budget):
    mean = fractions.astype(np.float64).mean()
    return weight * (mean if budget is None else max(0.0, mean / budget - 1.0))


@pytest.mark.parametrize("weight, budget", [(0.5, None), (2.0, 0.1), (2.0, 0.25), (3.0, 0.5)])
def test_penalty_matches_numpy(weight, budget):
    value = subdivision_penalty(tf.constant(FRACTIONS), weight, budget)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(value.numpy(), reference(FRACTIONS, weight, budget), rtol=1e-6)


def test_budget_form_is_free_below_the_budget_and_pulls_above_it():
    fractions = tf.Variable(FRACTIONS)
    for budget, pulls in ((0.5, False), (0.1, True)):
        with tf.GradientTape() as tape:
            value = subdivision_penalty(fractions, 2.0, budget)
        grad = tape.gradient(value, fractions).numpy()
        if pulls:  # d/df_i of 2 * (mean / 0.1 - 1) = 2 / (0.1 * n)
            np.testing.assert_allclose(grad, 2.0 / (0.1 * len(FRACTIONS)), rtol=1e-6)
        else:
            assert float(value) == 0.0 and not grad.any()


def test_bfloat16_fractions_are_reduced_in_float32():
    fractions = tf.constant(np.full(300, 0.3), tf.bfloat16)
    value = subdivision_penalty(fractions, 1.0)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(float(value), float(tf.cast(fractions[0], tf.float32)), rtol=1e-6)


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_budget_outside_0_1_is_refused(budget):
    with pytest.raises(ValueError, match="patch_budget must be a patch fraction in \\(0, 1\\]"):
        check_budget(budget)
    assert check_budget(None) is None and check_budget(1) == 1.0


def test_global_batch_mean_on_one_replica_is_the_mean_and_0_for_no_images():
    # Its all-reduce over several replicas: tests/test_distribute.py.
    np.testing.assert_allclose(global_batch_mean(tf.constant(FRACTIONS)), FRACTIONS.mean(), rtol=1e-6)
    assert float(global_batch_mean(tf.zeros([0]))) == 0.0


def numpy_running_means(batches, momentum):
    means, mean = [], None
    for batch in batches:
        mean = batch if mean is None else momentum * mean + (1 - momentum) * batch
        means.append(mean)
    return means


def test_running_fraction_is_the_moving_average_with_the_batchs_gradient():
    running = RunningFraction(momentum=0.8)
    batches = [0.6, 0.2, 0.1, 0.3]
    for batch, expected in zip(batches, numpy_running_means(batches, 0.8)):
        fraction = tf.Variable(batch)
        with tf.GradientTape() as tape:
            value = running(fraction, training=True)
        np.testing.assert_allclose(float(value), expected, rtol=1e-6)
        assert float(tape.gradient(value, fraction)) == 1.0  # straight through to the batch
    np.testing.assert_allclose(float(running.mean), numpy_running_means(batches, 0.8)[-1], rtol=1e-6)
    # Outside training, and with momentum 0, the batch's own fraction; nothing updated.
    assert float(running(tf.constant(0.9), training=False)) == pytest.approx(0.9)
    assert float(running.mean) == pytest.approx(numpy_running_means(batches, 0.8)[-1])
    assert float(RunningFraction(momentum=0.0)(tf.constant(0.9), training=True)) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="budget momentum must be in \\[0, 1\\); got 1.0"):
        RunningFraction(momentum=1.0)


def test_with_a_running_mean_under_the_budget_an_over_budget_batch_is_not_penalised():
    running = RunningFraction(momentum=0.9)
    subdivision_penalty(tf.constant([0.1, 0.1]), 1.0, 0.2, running, training=True)  # mean 0.1
    fractions = tf.Variable([0.3, 0.5])  # this batch alone: 0.4, twice the budget
    with tf.GradientTape() as tape:
        value = subdivision_penalty(fractions, 1.0, 0.2, running, training=True)
    assert float(value) == 0.0 and not tape.gradient(value, fractions).numpy().any()
    assert float(running.mean) == pytest.approx(0.9 * 0.1 + 0.1 * 0.4)
    # The running mean over the budget: the penalty of the mean, the gradient of this batch.
    running.mean.assign(0.3)
    with tf.GradientTape() as tape:
        value = subdivision_penalty(fractions, 1.0, 0.2, running, training=True)
    np.testing.assert_allclose(float(value), (0.9 * 0.3 + 0.1 * 0.4) / 0.2 - 1, rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(value, fractions), [1 / (0.2 * 2)] * 2, rtol=1e-6)
