"""Calibration: thresholds that meet a patch budget on the user's data, without training.

The complexity map has no weights, so the node means the patcher compares with
its thresholds are fixed for given images. `calibrate_thresholds` computes them
once (`node_scores`), then searches thresholds whose mean patch count per image
hits a target, counting patches with the plain functions of
`dynpatch_tf.quadtree` on those means, with no pixels cut.

Example:

```python
model = dp.DynamicPatchModel(num_classes=4)
result = dp.calibrate_thresholds(model, photos, patch_fraction=0.15)  # photos: [N, 512, 512, 3]
result.thresholds         # one per split level, now also model.patcher's
result.patches_per_image  # about 614 (0.15 x 4096) on `photos`
```
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from dynpatch_tf import image_ops, quadtree
from dynpatch_tf.complexity import ComplexityMap
from dynpatch_tf.patcher import DynamicPatcher

# Bisection steps on the quantile: 2**-40 separates any two node means of a
# data set of practical size.
STEPS = 40
# The smallest threshold (thresholds are positive): every node whose mean
# exceeds it splits, so the quantile 0 gives the most patches the data can give.
FLOOR = 1e-12


class NodeScores(NamedTuple):
    """One batch's split statistics: all that counting its patches needs.

    Attributes:
        scores: per split level, `[B, h_l, w_l]` float32, the values the
            patcher compares with the thresholds (`quadtree.split_scores`).
        inside: per level, `[1, h_l, w_l]` bool (`quadtree.inside_masks`).
        finest: `[B]` float32, the `min_size` patches that tile each image.
    """

    scores: list
    inside: list
    finest: tf.Tensor


class Calibration(NamedTuple):
    """What `calibrate_thresholds` set and achieved.

    Attributes:
        thresholds: the new thresholds, one per split level (as the patcher
            reads them from its weight).
        previous: the thresholds before.
        patches_per_image: the mean patch count per image on the data with
            the new thresholds.
        patch_fraction: that count over the mean count of `min_size` patches.
        target: the target mean patch count per image.
        quantile: the quantile `q` the thresholds were taken at.
    """

    thresholds: tuple
    previous: tuple
    patches_per_image: float
    patch_fraction: float
    target: float
    quantile: float


def calibrate_thresholds(model_or_patcher, images_or_dataset, patch_fraction=None,
                         patches_per_image=None, complexity=None, batch_size=32):
    """Sets a patcher's thresholds so that the mean patch count on the data hits a target.

    Method. Let `m_l` be the pooled scores of all level-`l` nodes inside the
    images (the node means for the quadtree rule, the base block means for the
    block rule) and `Q_l(q)` their quantile `q`, with `FLOOR` counted as one
    more value. The thresholds at `q` are

        `t_l(q) = max(Q_0(q), ..., Q_l(q))`,

    the per-level quantiles made non-decreasing from the 64 -> 32 split to the
    finest one. Each `t_l` rises with `q`, so the mean patch count `n(q)`
    falls: `n(0)` splits every node whose mean is positive (the most the data
    can give under `max_patches`), `n(1)` splits none (one patch per base
    block). Bisection on `q` finds `n(q)` closest to the target. A quantile
    keeps the thresholds on the scale of each level's means: at `q = 0.9`
    about the busiest tenth of each level's nodes want to split.

    Args:
        model_or_patcher: a `DynamicPatchModel` (its `complexity` and
            `patcher` are used), or a bare `DynamicPatcher`.
        images_or_dataset: `[N, H, W, C]` images (NumPy array or tensor,
            uint8 or float), a `tf.data.Dataset` of image batches or of
            `(images, labels, ...)` batches, or any iterable of such batches
            or of `NodeScores`. Sizes may differ between batches.
        patch_fraction: the target as a fraction of the finest count: the
            patches over the data divided by the `min_size` patches that
            would tile its images (for images of one size, the mean of the
            patcher's `patch_fraction` output).
        patches_per_image: the target as a mean patch count per image.
            Give exactly one of the two.
        complexity: for a bare patcher, the complexity map (default
            `ComplexityMap()`, the model's default).
        batch_size: batch size for array input.

    Returns:
        A `Calibration`. The thresholds are written into the patcher with
        `DynamicPatcher.set_thresholds`: its weight and its config.

    Raises:
        ValueError: for the budget rule (its count is fixed), for not exactly
            one target, and for a target outside the counts the data can
            give (the message names that range).
    """
    patcher, complexity = _parts(model_or_patcher, complexity)
    if patcher.rule == "budget":
        raise ValueError(f'rule="budget" fixes the count at budget={patcher.budget} patches '
                         'per image; thresholds are calibrated for the quadtree and block rules.')
    if (patch_fraction is None) == (patches_per_image is None):
        raise ValueError("give exactly one of patch_fraction and patches_per_image.")
    batches = [batch if isinstance(batch, NodeScores) else node_scores(patcher, batch, complexity)
               for batch in _batches(images_or_dataset, batch_size)]
    if not batches:
        raise ValueError("no images to calibrate on.")
    finest = float(np.mean(np.concatenate([batch.finest.numpy() for batch in batches])))
    target = patches_per_image if patch_fraction is None else patch_fraction * finest
    values = _level_values(batches)

    def mean_count(thresholds):
        return _mean_patch_count(batches, thresholds, patcher.rule, patcher.max_patches)

    counts = {q: mean_count(_thresholds_at(values, q)) for q in (0.0, 1.0)}
    if not counts[1.0] <= target <= counts[0.0]:
        raise ValueError(_range_message(patcher, target, patch_fraction, counts, finest))
    low, high = 0.0, 1.0  # n(low) >= target >= n(high)
    for _ in range(STEPS):
        middle = (low + high) / 2
        counts[middle] = count = mean_count(_thresholds_at(values, middle))
        if count == target:
            break
        low, high = (middle, high) if count > target else (low, middle)
    quantile = min(counts, key=lambda q: abs(counts[q] - target))
    previous = tuple(float(t) for t in _current_thresholds(patcher))
    patcher.set_thresholds(_thresholds_at(values, quantile).tolist())
    thresholds = _current_thresholds(patcher)
    achieved = mean_count(thresholds)
    return Calibration(tuple(float(t) for t in thresholds), previous, achieved,
                       achieved / finest, float(target), quantile)


def node_scores(model_or_patcher, images, complexity=None):
    """The `NodeScores` of one batch of images `[B, H, W, C]` (or one image `[H, W, C]`).

    For data too large to hold at once (e.g. one file at a time), pass a
    list of these to `calibrate_thresholds` in place of the images.
    """
    patcher, complexity = _parts(model_or_patcher, complexity)
    images = tf.convert_to_tensor(images)
    if images.shape.rank == 3:
        images = images[None]
    images = image_ops.prepare_images(images, max(patcher.base_size, complexity.min_image_size))
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    cmap = image_ops.pad_to_multiple(complexity(images), patcher.base_size, height, width)
    means = quadtree.node_means(cmap, patcher.min_size, patcher.num_levels)
    finest = quadtree.finest_count(height, width, patcher.min_size)
    return NodeScores(
        scores=quadtree.split_scores(means, patcher.rule),
        inside=quadtree.inside_masks(means, patcher.base_size, height, width),
        finest=tf.fill(tf.shape(images)[:1], finest),
    )


def _parts(model_or_patcher, complexity):
    """`(patcher, complexity map)` of a model or a bare patcher."""
    if isinstance(model_or_patcher, DynamicPatcher):
        patcher = model_or_patcher
        complexity = ComplexityMap() if complexity is None else complexity
    else:
        patcher = getattr(model_or_patcher, "patcher", None)
        if not isinstance(patcher, DynamicPatcher):
            raise TypeError(f"expected a DynamicPatchModel or a DynamicPatcher; got "
                            f"{type(model_or_patcher).__name__}.")
        if complexity is not None:
            raise ValueError("`complexity` is for a bare patcher; a model uses its own.")
        complexity = model_or_patcher.complexity
    return patcher, complexity


def _batches(data, batch_size):
    """Image batches (or `NodeScores`) from an array, a dataset or an iterable of batches."""
    if hasattr(data, "shape") and not isinstance(data, tf.data.Dataset):
        data = data if len(data.shape) == 4 else data[None]
        yield from (data[start:start + batch_size] for start in range(0, len(data), batch_size))
        return
    for batch in data:
        labelled = isinstance(batch, (tuple, list)) and not isinstance(batch, NodeScores)
        yield batch[0] if labelled else batch


def _level_values(batches):
    """Per split level, the scores of the nodes inside the images, with `FLOOR`."""
    levels = len(batches[0].scores)
    return [
        np.concatenate([[FLOOR]] + [
            tf.boolean_mask(batch.scores[level], tf.broadcast_to(
                batch.inside[level], tf.shape(batch.scores[level]))).numpy()
            for batch in batches
        ])
        for level in range(levels)
    ]


def _thresholds_at(values, quantile):
    """`t_l(q)`: the per-level quantiles, made non-decreasing and positive, float32."""
    thresholds = np.maximum.accumulate([np.quantile(level, quantile) for level in values])
    return np.maximum(thresholds, FLOOR).astype(np.float32)


def _current_thresholds(patcher):
    """The thresholds as the patcher reads them (through its float32 log weight)."""
    if patcher.built:
        return patcher.thresholds.numpy()
    logs = tf.constant(np.log(patcher.initial_thresholds) / patcher.threshold_rate, tf.float32)
    return tf.exp(logs * patcher.threshold_rate).numpy()


def _mean_patch_count(batches, thresholds, rule, max_patches):
    thresholds = tf.constant(thresholds, tf.float32)
    counts = [_patch_counts(batch.scores, batch.inside, thresholds, rule, max_patches)
              for batch in batches]
    return float(np.mean(np.concatenate([count.numpy() for count in counts])))


@tf.function(reduce_retracing=True)
def _patch_counts(scores, inside, thresholds, rule, max_patches):
    """`[B]` int32 patches per image, as the patcher would cut them."""
    splits = quadtree.split_decisions(scores, thresholds, inside, rule, max_patches)
    leaves = quadtree.leaf_masks(splits, inside)
    return tf.add_n([tf.reduce_sum(tf.cast(leaf, tf.int32), [1, 2]) for leaf in leaves])


def _range_message(patcher, target, patch_fraction, counts, finest):
    low, high = counts[1.0], counts[0.0]
    cap = f", at most max_patches={patcher.max_patches}" if patcher.max_patches else ""
    reach = (f"{low:.1f} (every block at {patcher.base_size} px) to {high:.1f} (every node "
             f"with positive complexity split, down to {patcher.min_size} px{cap}) patches per image")
    if patch_fraction is None:
        return f"patches_per_image {target:g} is outside what this data can give: {reach}."
    return (f"patch_fraction {patch_fraction:g} is outside what this data can give: "
            f"{low / finest:.4f} to {high / finest:.4f}, i.e. {reach}.")
