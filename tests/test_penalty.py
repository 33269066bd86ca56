"""Tests for dynpatch_tf.penalty: the subdivision penalty against a NumPy reference."""

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.penalty import check_budget, global_batch_mean, subdivision_penalty

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
