"""dynpatch_tf.losses against plain NumPy implementations of the same definitions."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.losses import ArcFaceLoss, TripletSemiHardLoss


def arcface_reference(labels, cosines, scale, margin):
    """Per-sample ArcFace loss in float64, through the angle itself (arccos)."""
    cosines = np.clip(cosines.astype(np.float64), -1, 1)
    losses = []
    for label, row in zip(labels, cosines):
        logits = scale * row.copy()
        theta = np.arccos(row[label])
        target = np.cos(theta + margin) if theta + margin <= np.pi else row[label] - margin * np.sin(margin)
        logits[label] = scale * target
        logits -= logits.max()
        losses.append(np.log(np.exp(logits).sum()) - logits[label])
    return np.array(losses)


def triplet_reference(labels, embeddings, margin, squared):
    """The semi-hard triplet loss with loops over every anchor-positive pair."""
    embeddings = embeddings.astype(np.float64)
    n = len(labels)
    distance = np.zeros((n, n))
    for a, b in itertools.product(range(n), repeat=2):
        squares = np.sum((embeddings[a] - embeddings[b]) ** 2)
        distance[a, b] = squares if squared else np.sqrt(squares)
    terms = []
    for anchor, positive in itertools.product(range(n), repeat=2):
        if anchor == positive or labels[anchor] != labels[positive]:
            continue
        negatives = [distance[anchor, k] for k in range(n) if labels[k] != labels[anchor]]
        if not negatives:
            continue
        farther = [d for d in negatives if d > distance[anchor, positive]]
        negative = min(farther) if farther else max(negatives)
        terms.append(max(distance[anchor, positive] - negative + margin, 0.0))
    return float(np.mean(terms)) if terms else 0.0


def random_batch(seed, size=12, classes=4, dim=6, singletons=False):
    """Labels with every class at least twice, or with classes of a single member too."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(size) % classes)
    if singletons:
        labels[:3] = classes + np.arange(3)  # three classes of one member
    embeddings = rng.normal(size=(size, dim))
    return labels.astype(np.int32), (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("scale, margin", [(30.0, 0.5), (16.0, 0.2), (64.0, 1.2)])
def test_arcface_matches_numpy(seed, scale, margin):
    rng = np.random.default_rng(seed)
    cosines = rng.uniform(-1, 1, (16, 7)).astype(np.float32)
    cosines[:3, 0], cosines[:3, 1] = -0.99, 0.999  # angles near pi (the fallback) and near 0
    labels = np.r_[[0, 0, 1], rng.integers(0, 7, 13)].astype(np.int32)
    expected = arcface_reference(labels, cosines, scale, margin)
    loss = ArcFaceLoss(scale, margin, reduction=None)
    np.testing.assert_allclose(loss(labels, cosines).numpy(), expected, rtol=1e-4, atol=1e-4)
    mean = ArcFaceLoss(scale, margin)(labels[:, None], cosines)  # [B, 1] labels too
    np.testing.assert_allclose(float(mean), expected.mean(), rtol=1e-4)


def test_arcface_margin_zero_is_scaled_softmax_cross_entropy():
    rng = np.random.default_rng(5)
    cosines = rng.uniform(-1, 1, (8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, 10 * cosines)
    np.testing.assert_allclose(float(ArcFaceLoss(10.0, 0.0)(labels, cosines)), float(expected), rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("singletons", [False, True])
@pytest.mark.parametrize("distance", ["l2", "squared_l2"])
def test_triplet_semihard_matches_numpy(seed, singletons, distance):
    labels, embeddings = random_batch(seed, singletons=singletons)
    expected = triplet_reference(labels, embeddings, 0.5, distance == "squared_l2")
    loss = TripletSemiHardLoss(margin=0.5, distance=distance)
    np.testing.assert_allclose(float(loss(labels, embeddings)), expected, rtol=1e-5, atol=1e-6)
    assert expected > 0  # the batch has violating triplets: a loss of 0 would not pass


def test_triplet_semihard_edge_batches():
    embeddings = random_batch(0, size=4)[1]
    loss = TripletSemiHardLoss(margin=0.3)
    assert float(loss(np.arange(4), embeddings)) == 0.0  # no positive pair at all
    assert float(loss(np.zeros(4, np.int32), embeddings)) == 0.0  # no negative at all
    labels = np.array([0, 0, 1, 2])  # one pair, two singleton negatives
    np.testing.assert_allclose(float(loss(labels, embeddings)),
                               triplet_reference(labels, embeddings, 0.3, False), rtol=1e-5)


def test_triplet_semihard_gradient_is_finite_with_equal_embeddings():
    embeddings = tf.Variable(np.repeat(random_batch(1, size=3)[1], 2, axis=0))  # pairs at distance 0
    with tf.GradientTape() as tape:
        value = TripletSemiHardLoss(margin=2.0)(np.array([0, 0, 1, 1, 2, 2]), embeddings)
    gradient = tape.gradient(value, embeddings).numpy()
    assert np.isfinite(gradient).all() and np.abs(gradient).sum() > 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_losses_under_mixed_precision_inputs(dtype):
    """Half-precision inputs (what a mixed_float16 model gives): float32 losses, equal to
    the reference on the half-precision values."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(f"mixed_{dtype}")
    try:
        labels, embeddings = random_batch(7, singletons=True)
        half = tf.cast(embeddings, dtype)
        rounded = tf.cast(half, tf.float32).numpy()
        triplet = TripletSemiHardLoss(margin=0.5)(labels, half)
        cosines = tf.cast(tf.random.stateless_uniform([12, 9], (1, 2), -1, 1), dtype)
        arcface = ArcFaceLoss(reduction=None)(labels % 9, cosines)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert triplet.dtype == arcface.dtype == tf.float32
    np.testing.assert_allclose(float(triplet), triplet_reference(labels, rounded, 0.5, False), rtol=1e-4)
    expected = arcface_reference(labels % 9, tf.cast(cosines, tf.float32).numpy(), 30.0, 0.5)
    np.testing.assert_allclose(arcface.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_losses_serialise_with_their_arguments():
    for loss in (ArcFaceLoss(scale=12.0, margin=0.3), TripletSemiHardLoss(margin=0.2, distance="squared_l2")):
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="distance"):
        TripletSemiHardLoss(distance="cosine")
    with pytest.raises(ValueError, match="margin"):
        ArcFaceLoss(margin=2.0)
