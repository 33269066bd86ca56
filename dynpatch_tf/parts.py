"""The default parts of a `DynamicPatchModel`, made from a few options.

A `DynamicPatchModel` is composed of parts (a complexity map, a patcher, an
attention CNN, an embedder, a position encoding and a head). Users who want
the common model pass a few options instead of building the parts; this
module turns those options into parts. Every other option of every part is
reachable by passing the part itself.

Example:

>>> parts = default_parts(num_classes=4, token_size=8)
>>> sorted(parts)
['attention', 'complexity', 'embedder', 'head', 'patcher', 'position']
"""

import keras

from dynpatch_tf.attention import PatchAttention
from dynpatch_tf.complexity import DEFAULT_SIGMA, ComplexityMap
from dynpatch_tf.embedder import DEFAULT_BLOCKS, PatchEmbedder
from dynpatch_tf.heads import ArcFaceHead, IdentificationEmbedding
from dynpatch_tf.patch_transformer import PatchTransformerHead
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS, DynamicPatcher
from dynpatch_tf.position import PatchPositionEncoding

PART_NAMES = ("complexity", "patcher", "attention", "embedder", "position", "head")

# The parts that each option of `default_parts` configures.
OPTION_PARTS = {
    "num_classes": ("head",),
    "head_type": ("head",),
    "identity_dim": ("head",),
    "sigma": ("complexity",),
    "thresholds": ("patcher",),
    "trainable_thresholds": ("patcher",),
    "threshold_rate": ("patcher",),
    "threshold_jitter": ("patcher",),
    "token_size": ("patcher",),
    "rule": ("patcher",),
    "max_patches": ("patcher",),
    "budget": ("patcher",),
    "base_size": ("patcher",),
    "min_size": ("patcher",),
    "temperature": ("patcher",),
    "attention_activation": ("attention",),
    "attention_filters": ("attention",),
    "width_multiplier": ("embedder",),
    "embedder_blocks": ("embedder",),
    "synchronized_batch_norm": ("embedder",),
    "embed_dim": ("embedder", "position"),
    "chunk_size": ("attention", "embedder"),
    "position_encoding": ("position",),
}


def default_parts(
    num_classes=None,
    head_type="pooled",
    identity_dim=None,
    thresholds=DEFAULT_THRESHOLDS,
    trainable_thresholds=True,
    threshold_rate=10.0,
    threshold_jitter=0.0,
    token_size=16,
    embed_dim=64,
    rule="quadtree",
    max_patches=None,
    budget=None,
    base_size=64,
    min_size=8,
    sigma=DEFAULT_SIGMA,
    temperature=0.005,
    attention_activation="sigmoid",
    attention_filters=(16, 32),
    width_multiplier=0.5,
    embedder_blocks=DEFAULT_BLOCKS,
    synchronized_batch_norm=False,
    position_encoding=True,
    chunk_size=1024,
    include=PART_NAMES,
    dtype=None,
):
    """The parts of the common `DynamicPatchModel`, configured by a few options.

    The complexity map and the patcher skip their own image checks
    (`validate=False`): the model checks and converts the images once.

    Args:
        num_classes: classes of the head; None for no head (an embedding
            model). For `head_type="arcface"`, the training identities;
            `"identification"` takes none.
        head_type: `"pooled"`, a Dense layer on the attention-weighted mean of
            the patch embeddings; `"transformer"`, a `PatchTransformerHead`
            (one self-attention block over the patch embeddings);
            `"identification"`, an `IdentificationEmbedding` (unit norm,
            trained with `TripletSemiHardLoss`); or `"arcface"`, an
            `ArcFaceHead` (trained with `ArcFaceLoss`). See `dynpatch_tf.heads`.
        identity_dim: size of the identification embedding of the
            `"identification"` and `"arcface"` heads; None for `embed_dim`.
        thresholds: the patcher's initial thresholds, one per split level.
        trainable_thresholds: whether training moves the thresholds.
        threshold_rate: how fast training moves the thresholds (see
            `DynamicPatcher`).
        threshold_jitter: in training, scale the thresholds by a random
            factor in `[exp(-j), exp(j)]` every step, so that one model
            serves a range of budgets (see `DynamicPatcher`); 0 for none.
        token_size: side every patch is resampled to.
        embed_dim: size of the patch embeddings.
        rule: `"quadtree"`, `"block"` or `"budget"` (see `DynamicPatcher`).
        max_patches: cap on patches per image.
        budget: patches per image for `rule="budget"`.
        base_size: side of the base blocks.
        min_size: side of the smallest patches.
        sigma: LoG scale(s) of the complexity map.
        temperature: softness of the split probabilities.
        attention_activation: `"sigmoid"` (a weight in (0, 1) per patch) or
            `"softmax"` (weights sum to 1 over an image's patches).
        attention_filters: conv filters of the attention CNN.
        width_multiplier: width of the inverted-residual embedder.
        embedder_blocks: the embedder's stages, (expansion, channels,
            repeats, stride) each (see `PatchEmbedder`); the default,
            `DEFAULT_BLOCKS`, has 8 blocks. Fewer suit small tokens and small
            models.
        synchronized_batch_norm: under a `tf.distribute` strategy, the
            embedder's BatchNorm normalises by the global batch's statistics
            (see `PatchEmbedder`).
        position_encoding: add a learned encoding of each patch's box (centre
            and size) to its embedding.
        chunk_size: at inference, the attention CNN and the embedder run over
            the flat patch batch this many patches at a time (see
            `map_chunks`), with the same outputs; None runs them on all
            patches at once. Training always runs the whole flat batch.
        include: the names of the parts to make (of `PART_NAMES`).
        dtype: the dtype policy of the parts but the head. The complexity map
            and the patcher compute in float32 under any policy (thresholds are
            small numbers on the map's scale); the head computes in float32
            (its logits feed the loss).

    Returns:
        A dict from part name to layer, for the names in `include`. `position`
        is None when `position_encoding` is False, and `head` when
        `num_classes` is None (but for the `"identification"` head).
    """
    makers = {
        "complexity": lambda: ComplexityMap(sigma=sigma, validate=False, dtype=dtype, name="complexity"),
        "patcher": lambda: DynamicPatcher(
            base_size=base_size, min_size=min_size, thresholds=thresholds, token_size=token_size,
            rule=rule, max_patches=max_patches, budget=budget, temperature=temperature,
            trainable_thresholds=trainable_thresholds, threshold_rate=threshold_rate,
            threshold_jitter=threshold_jitter, validate=False, dtype=dtype, name="patcher",
        ),
        "attention": lambda: PatchAttention(
            filters=attention_filters, activation=attention_activation, chunk_size=chunk_size,
            dtype=dtype, name="attention",
        ),
        "embedder": lambda: PatchEmbedder(
            embed_dim=embed_dim, width_multiplier=width_multiplier, blocks=embedder_blocks,
            synchronized_batch_norm=synchronized_batch_norm, chunk_size=chunk_size,
            dtype=dtype, name="embedder",
        ),
        "position": lambda: (
            PatchPositionEncoding(embed_dim, dtype=dtype, name="position") if position_encoding else None
        ),
        "head": lambda: _head(num_classes, head_type, identity_dim or embed_dim),
    }
    return {name: makers[name]() for name in include}


def check_options(options, given_parts):
    """Refuses options that configure a part which was passed as an object.

    Args:
        options: the short-path options, a dict.
        given_parts: the names of the parts passed as objects.

    Raises:
        ValueError: for an unknown option, or one whose parts were all given.
    """
    for name in options:
        if name not in OPTION_PARTS:
            raise ValueError(f"Unknown DynamicPatchModel argument {name!r}.")
        parts = OPTION_PARTS[name]
        if all(part in given_parts for part in parts):
            raise ValueError(
                f"{name!r} configures the default {' and '.join(parts)}, but "
                f"{'they were' if len(parts) > 1 else 'it was'} passed as an object: "
                "set it on the part you pass."
            )


HEAD_TYPES = ("pooled", "transformer", "identification", "arcface")


def _head(num_classes, head_type, identity_dim):
    """The default head: a float32 head of `head_type`; None without classes (but for
    the identification embedding, which takes none)."""
    if head_type not in HEAD_TYPES:
        raise ValueError(f"head_type must be one of {HEAD_TYPES}; got {head_type!r}.")
    if head_type == "identification":
        if num_classes:
            raise ValueError("head_type='identification' learns no classes: leave num_classes out "
                             "(head_type='arcface' learns a weight per training identity).")
        return IdentificationEmbedding(identity_dim, name="head")
    if not num_classes:
        return None
    if head_type == "arcface":
        return ArcFaceHead(num_classes, identity_dim, name="head")
    if head_type == "transformer":
        return PatchTransformerHead(num_classes, name="head")
    return keras.layers.Dense(num_classes, dtype="float32", name="head")
