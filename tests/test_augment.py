"""Tests of dynpatch_tf.augment: the corner warp's transform, training switch and config."""

import keras
import numpy as np
import tensorflow as tf

from dynpatch_tf.augment import RandomCornerWarp, _square_to_quad_transform


def test_corner_warp_maps_the_image_corners_to_the_drawn_corners():
    height, width = 63.0, 95.0
    corners = tf.constant([[[3, -2], [97, 4], [90, 60], [-5, 66]]], tf.float32)
    transform = _square_to_quad_transform(corners, tf.constant(height), tf.constant(width))
    a0, a1, a2, b0, b1, b2, c0, c1 = transform[0].numpy()
    for (x, y), expected in zip([(0, 0), (width, 0), (width, height), (0, height)],
                                corners[0].numpy()):
        k = c0 * x + c1 * y + 1
        np.testing.assert_allclose([(a0 * x + a1 * y + a2) / k, (b0 * x + b1 * y + b2) / k],
                                   expected, atol=1e-3)


def test_corner_warp_is_identity_when_not_training_and_serializes():
    images = tf.random.uniform((2, 64, 80, 3), seed=0)
    warp = RandomCornerWarp(0.1, seed=3)
    np.testing.assert_array_equal(warp(images, training=False), images)
    warped = warp(images, training=True)
    assert warped.shape == images.shape
    assert float(tf.reduce_mean(tf.abs(warped - images))) > 0.01
    restored = keras.layers.deserialize(keras.layers.serialize(warp))
    assert isinstance(restored, RandomCornerWarp)
    assert (restored.factor, restored.seed) == (0.1, 3)
