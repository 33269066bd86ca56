"""Every layer of the library through the shared harness (`tests/layer_testing.py`)."""

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf import (
    ComplexityMap, DynamicPatcher, InvertedResidual, PatchAttention, PatchEmbedder,
    PatchPositionEncoding, PatchTransformerHead,
)
from dynpatch_tf.augment import RandomCornerWarp
from dynpatch_tf.heads import ArcFaceHead, IdentificationEmbedding
from tests.layer_testing import POLICIES, LayerInputs, ragged_pixels, run_layer_test

P = 8  # token size
TINY_EMBEDDER = dict(embed_dim=8, width_multiplier=0.25, expansion=2,
                     blocks=((1, 8, 1, 1), (None, 16, 1, 2)))
# Several, none and one patch per image; images with no patches; no images.
ROW_LENGTHS = ([2, 0, 1, 3], [5, 1], [0, 0], [])


def random_images(shape, seed):
    return (np.random.default_rng(seed).random(shape).astype("float32"),)


def images_and_complexity(shape, seed):
    """Images and a blocky complexity map: 16 px blocks of 0 to 0.012, so some split."""
    batch, height, width = shape
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0, 0.012, (batch, height // 16, width // 16, 1))
    complexity = np.kron(blocks, np.ones((1, 16, 16, 1))).astype("float32")
    return random_images((batch, height, width, 3), seed) + (complexity,)


def patches_and_scales(row_lengths, seed):
    pixels = ragged_pixels(row_lengths, P, seed)
    scales = pixels.with_values(tf.linspace(0.5, 1.5, sum(row_lengths)))
    return pixels, scales


def boxes_and_size(count, seed):
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, 48, (count, 2))
    boxes = np.concatenate([starts, starts + rng.integers(8, 17, (count, 2))], 1)
    return tf.constant(boxes, tf.int32), tf.constant([64, 128], tf.int32)


def image_spec(channels):
    return tf.TensorSpec([None, None, None, channels], tf.float32)


PATCH_SPEC = tf.RaggedTensorSpec([None, None, P, P, 3], tf.float32, ragged_rank=1)
PATCHES = LayerInputs(lambda lengths, seed: (ragged_pixels(lengths, P, seed),),
                      ROW_LENGTHS, [PATCH_SPEC])
SCALED_PATCHES = LayerInputs(
    patches_and_scales, ROW_LENGTHS,
    [PATCH_SPEC, tf.RaggedTensorSpec([None, None], tf.float32, ragged_rank=1)],
)
IMAGES = LayerInputs(random_images, [(2, 64, 128, 3), (1, 80, 64, 3), (0, 64, 64, 3)],
                     [image_spec(3)])
# Every size has two 64 px base blocks, so the budget of 8 (2 + 2 splits) fits all.
PATCHER_IMAGES = LayerInputs(images_and_complexity, [(2, 64, 128), (1, 128, 64), (0, 64, 128)],
                             [image_spec(3), image_spec(1)])
# Convolutions on zero rows fail on some CPU paths (see dynpatch_tf.patch_ops), and the
# embedder never runs its blocks on zero patches: no empty batch here.
FEATURES = LayerInputs(lambda n, seed: random_images((n, 8, 8, 8), seed), [3, 1],
                       [image_spec(8)])
BOXES = LayerInputs(boxes_and_size, [5, 1, 0],
                    [tf.TensorSpec([None, 4], tf.int32), tf.TensorSpec([2], tf.int32)])

def ragged_embeddings(row_lengths, seed):
    values = np.random.default_rng(seed).normal(size=(sum(row_lengths), 8)).astype("float32")
    return (tf.RaggedTensor.from_row_lengths(values, tf.constant(row_lengths, tf.int64)),)


EMBEDDINGS = LayerInputs(ragged_embeddings, ROW_LENGTHS,
                         [tf.RaggedTensorSpec([None, None, 8], tf.float32, ragged_rank=1)])

POOLED = LayerInputs(lambda n, seed: (np.random.default_rng(seed).normal(size=(n, 8)).astype("float32"),),
                     [4, 1, 0], [tf.TensorSpec([None, 8], tf.float32)])

PATCHER = dict(base_size=64, min_size=16, thresholds=(0.002, 0.004), token_size=P)

def case(name, layer_cls, init_kwargs, inputs, output_dtype=None, policies=POLICIES, marks=()):
    """One parameter set of `test_layer`; see `run_layer_test` for the arguments."""
    return pytest.param(layer_cls, init_kwargs, inputs, output_dtype, policies, id=name, marks=marks)


CASES = [
    case("ComplexityMap", ComplexityMap, dict(sigma=1.0), IMAGES, "float32"),
    case("ComplexityMap-sigmas", ComplexityMap, dict(sigma=[1.0, 2.0], validate=False), IMAGES,
         "float32"),
    *[
        case(f"DynamicPatcher-{rule}", DynamicPatcher, dict(PATCHER, rule=rule, **extra),
             PATCHER_IMAGES, "float32")
        for rule, extra in [("quadtree", dict(max_patches=6)), ("block", {}),
                            ("budget", dict(budget=8))]
    ],
    *[
        case(f"PatchAttention-{activation}-chunk{chunk}", PatchAttention,
             dict(filters=(4, 8), activation=activation, chunk_size=chunk), PATCHES)
        for activation in ("sigmoid", "softmax")
        for chunk in (None, 2)
    ],
    case("PatchEmbedder", PatchEmbedder, TINY_EMBEDDER, PATCHES),
    case("PatchEmbedder-chunk2", PatchEmbedder, dict(TINY_EMBEDDER, chunk_size=2), PATCHES),
    case("PatchEmbedder-scales", PatchEmbedder, dict(TINY_EMBEDDER, chunk_size=2),
         SCALED_PATCHES),
    case("InvertedResidual-residual", InvertedResidual,
         dict(filters=8, expansion=2), FEATURES),
    case("InvertedResidual-strided", InvertedResidual,
         dict(filters=16, expansion=2, strides=2), FEATURES),
    case("PatchPositionEncoding", PatchPositionEncoding, dict(dim=8), BOXES),
    case("PatchTransformerHead", PatchTransformerHead, dict(num_classes=3, num_layers=2),
         EMBEDDINGS),
    case("IdentificationEmbedding", IdentificationEmbedding, dict(units=6), POOLED),
    case("ArcFaceHead", ArcFaceHead, dict(num_classes=5, units=6, scale=16.0, margin=0.3), POOLED),
    case("RandomCornerWarp", RandomCornerWarp, dict(factor=0.1, seed=3), IMAGES),
]


@pytest.mark.parametrize("layer_cls, init_kwargs, inputs, output_dtype, policies", CASES)
def test_layer(layer_cls, init_kwargs, inputs, output_dtype, policies):
    run_layer_test(layer_cls, init_kwargs, inputs, output_dtype, policies)
