"""Quadtree split decisions as plain functions: the algorithm under `DynamicPatcher`.

A padded image of `Hp x Wp` pixels is cut into base blocks of `base_size` pixels;
level `l` of the tree has nodes of `base_size / 2**l` pixels, down to `min_size`
at the finest of `num_levels` levels. Every per-level quantity is a list with one
tensor per level, coarsest first, each a grid over that level's nodes:

* per node: `[B, h_l, w_l]` with `h_l = Hp / size_l`, `w_l = Wp / size_l`, so the
  four children of node `(i, j)` are `(2i + a, 2j + b)`, `a, b` in {0, 1};
* `inside[l]`: `[1, h_l, w_l]` bool, the node's top-left pixel lies in the
  unpadded image (the others are padding and never become patches);
* per split level: lists of `num_levels - 1` grids, where `splits[l]` says
  whether a node of level `l` splits into four of level `l + 1`.

A tree is consistent when a node splits only if it lies in the image and its
parent split. The leaves of a consistent tree tile the image: level `l`'s leaves
are the nodes that exist (the base blocks, or children of a split) and do not
split.

Learnable subdivision: a node's soft split probability is
`p = sigmoid((score - threshold_l) / temperature)`. The hard decisions are used in
the forward pass, and the gradient flows through `p` (a straight-through
estimator): see `straight_through_gates` and `expected_patch_count`.

Everything here is tensor ops with no data-dependent Python control flow, so it
runs inside `tf.function`, SavedModel and TFLite; Python branches only on static
arguments (the rule, whether a cap is given, the number of levels).
"""

import numpy as np
import tensorflow as tf

from dynpatch_tf import image_ops

RULES = ("quadtree", "block", "budget")


def check_rule(rule, budget=None):
    """Raise `ValueError` for a rule not in `RULES`, or `"budget"` with no `budget`."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}.")
    if rule == "budget" and budget is None:
        raise ValueError('rule="budget" needs `budget`, the patch count per image.')


def upsample(grid, factor):
    """Repeat every cell of `[B, h, w]` into a `factor` x `factor` square: `[B, h*f, w*f]`.

    With `factor=2` this hands each node's value to its four children. A
    broadcast and a reshape: a few ops, where `tf.repeat` on dynamic shapes
    builds dozens, and the patcher upsamples about twenty times per call.
    """
    shape = tf.shape(grid)
    squares = tf.broadcast_to(grid[:, :, None, :, None], [shape[0], shape[1], factor, shape[2], factor])
    return tf.reshape(squares, [shape[0], shape[1] * factor, shape[2] * factor])


def node_means(complexity, min_size, num_levels):
    """Mean complexity over every node's area, per level.

    The finest level averages `min_size` x `min_size` pixels; each coarser level
    averages its four children, so `means[l]` is the exact mean over the node's
    `size_l x size_l` pixels.

    Args:
        complexity: `[B, Hp, Wp, 1]` float32, sides multiples of the base size.
        min_size: side of the finest nodes in pixels.
        num_levels: number of levels, base blocks included.

    Returns:
        A list of `num_levels` tensors `[B, Hp / size_l, Wp / size_l]`, coarsest first.
    """
    means = [image_ops.block_mean(complexity, min_size)]
    for _ in range(num_levels - 1):
        means.insert(0, image_ops.block_mean(means[0], 2))
    return [mean[..., 0] for mean in means]


def inside_masks(means, base_size, height, width):
    """Which nodes lie in the unpadded image: their top-left pixel does.

    Args:
        means: the per-level node grids (only their shapes are used).
        base_size: side of the level-0 nodes; level `l` has `base_size >> l`.
        height, width: the unpadded image size (scalar int32 tensors or ints).

    Returns:
        A list of `[1, h_l, w_l]` bool tensors, one per level.
    """
    masks = []
    for level, grid in enumerate(means):
        size = base_size >> level
        rows = tf.range(tf.shape(grid)[1]) * size < height
        cols = tf.range(tf.shape(grid)[2]) * size < width
        masks.append(tf.logical_and(rows[:, None], cols[None, :])[None])
    return masks


def split_scores(means, rule):
    """The per-node statistic compared with each split level's threshold.

    * `"quadtree"`, `"budget"`: the node's own mean, `score_l = means[l]`;
    * `"block"`: the mean of the node's base block, for every level, so a base
      block takes one level for all of it: the number of thresholds its mean
      exceeds.

    Returns:
        A list of `len(means) - 1` tensors `[B, h_l, w_l]`, one per split level.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}; got {rule!r}.")
    if rule == "block":
        return [upsample(means[0], 2**level) for level in range(len(means) - 1)]
    return means[: len(means) - 1]


def split_probabilities(scores, thresholds, temperature):
    """Soft split probabilities `sigmoid((score_l - thresholds[l]) / temperature)`.

    Args:
        scores: per split level `[B, h_l, w_l]`, from `split_scores`.
        thresholds: `[num_levels - 1]` float32.
        temperature: positive float, on the complexity scale.

    Returns:
        A list of `[B, h_l, w_l]` float32 in (0, 1).
    """
    return [
        tf.sigmoid((score - thresholds[level]) / temperature)
        for level, score in enumerate(scores)
    ]


def split_decisions(scores, thresholds, inside, rule, max_patches=None, budget=None):
    """Hard, tree-consistent split decisions per split level.

    * `"quadtree"`, `"block"`: a node wants to split when `score_l > thresholds[l]`
      and splits when it also lies in the image and its parent split
      (`tree_consistent`). With `max_patches`, `select_by_priority` then undoes
      the least complex splits until an image has at most `max_patches` patches;
      a cap below an image's count of base blocks fails with
      `InvalidArgumentError` naming both.
    * `"budget"`: exactly `budget` patches per image; the thresholds are not
      used, nor is `max_patches`. Candidates are the nodes whose four children
      lie in the image (`budget_candidates`); the busiest split first until the
      count is met (`select_by_priority`).

    Args:
        scores: per split level `[B, h_l, w_l]`, from `split_scores`.
        thresholds: `[num_levels - 1]` float32.
        inside: per level `[1, h_l, w_l]` bool, from `inside_masks`.
        rule: `"quadtree"`, `"block"` or `"budget"`.
        max_patches: optional cap on the patches of one image (quadtree, block).
        budget: the exact patch count per image, needed by `rule="budget"`.

    Returns:
        A list of `[B, h_l, w_l]` bool, one per split level, a consistent tree.
    """
    check_rule(rule, budget)
    if rule == "budget":
        candidates = budget_candidates(scores, inside)
        return select_by_priority(scores, candidates, inside, budget, exact=True)
    wanted = [score > thresholds[level] for level, score in enumerate(scores)]
    splits = tree_consistent(wanted, inside)
    if max_patches is None:
        return splits
    return select_by_priority(scores, splits, inside, max_patches, exact=False)


def tree_consistent(wanted, inside):
    """A node splits only if it is wanted, lies in the image, and its parent split.

    Args:
        wanted: per split level `[B, h_l, w_l]` bool.
        inside: per level `[1, h_l, w_l]` bool (the finest level is not used).

    Returns:
        A list like `wanted`: `wanted[l] & inside[l] & upsample(splits[l - 1], 2)`.
    """
    splits, exists = [], None
    for level, want in enumerate(wanted):
        split = want & inside[level]
        if exists is not None:
            split &= exists
        splits.append(split)
        exists = upsample(split, 2)
    return splits


def children_inside(inside):
    """How many of each parent's four children lie inside.

    `[1, 2h, 2w]` bool (the children's `inside`) -> `[1, h, w]` int32 in 0..4.
    """
    pooled = image_ops.block_mean(tf.cast(inside, tf.float32)[..., None], 2)
    return tf.cast(tf.round(pooled[..., 0] * 4), tf.int32)


def budget_candidates(scores, inside):
    """Nodes whose four children lie in the image, and whose ancestors' do too.

    Only those may split under the budget rule, so that every split adds exactly
    3 patches. Returns a consistent tree of `[B, h_l, w_l]` bool (`scores` gives
    the batch size).
    """
    full = [
        (children_inside(child) == 4) & tf.ones_like(score, tf.bool)
        for score, child in zip(scores, inside[1:])
    ]
    return tree_consistent(full, inside)


def split_priorities(scores):
    """The scores made monotone down the tree: `prio_0 = score_0`,
    `prio_l = min(score_l, prio_{l-1} of the parent)`.

    A child's priority never exceeds its parent's, so splitting in decreasing
    priority never splits a child before its parent.
    """
    priorities = [scores[0]]
    for score in scores[1:]:
        priorities.append(tf.minimum(score, upsample(priorities[-1], 2)))
    return priorities


def select_by_priority(scores, candidates, inside, max_count, exact=False):
    """Keep the highest-priority candidate splits while the patch count stays <= max_count.

    Candidates are sorted by `split_priorities` (descending), and kept while the
    running count, the base blocks in the image plus the patches each kept split
    adds (its children inside the image minus itself), stays within `max_count`.
    The stable sort keeps a parent ahead of its children on ties (parents come
    first in the flattened order), so every kept prefix is a consistent tree.
    Base blocks never merge: an image always has at least its base blocks.

    Args:
        scores: per split level `[B, h_l, w_l]`.
        candidates: per split level `[B, h_l, w_l]` bool, a consistent tree.
        inside: per level `[1, h_l, w_l]` bool.
        max_count: patches per image (a Python int or int32 scalar).
        exact: the count must be met exactly (the budget rule): adds graph
            assertions that `max_count` minus the base blocks is a non-negative
            multiple of 3 and no more than the candidates can give, failing with
            `InvalidArgumentError` naming the budget. Otherwise (a cap) the
            assertion is that `max_count` is not below the base blocks.

    Returns:
        A list of `[B, h_l, w_l]` bool, one per split level, a subset of
        `candidates` that is a consistent tree.
    """
    priorities = split_priorities(scores)
    shapes = [tf.shape(p) for p in priorities]
    batch = shapes[0][0]
    flat_priority = tf.concat([tf.reshape(p, [batch, -1]) for p in priorities], 1)
    flat_candidate = tf.concat([tf.reshape(c, [batch, -1]) for c in candidates], 1)
    # A split adds its children that lie in the image, minus itself.
    gains = tf.concat([tf.reshape(children_inside(child) - 1, [1, -1]) for child in inside[1:]], 1)
    flat_priority = tf.where(flat_candidate, flat_priority, -np.inf)
    order = tf.argsort(flat_priority, axis=1, direction="DESCENDING", stable=True)
    sorted_gain = tf.gather(tf.where(flat_candidate, gains, 0), order, batch_dims=1)
    base_blocks = tf.reduce_prod(shapes[0][1:])
    allowed = max_count - base_blocks
    if exact:
        allowed = _checked_budget(allowed, tf.reduce_sum(sorted_gain, 1), max_count)
    else:
        allowed = _checked_cap(allowed, base_blocks, max_count)
    keep_sorted = tf.logical_and(
        tf.cumsum(sorted_gain, axis=1) <= allowed,
        tf.gather(flat_candidate, order, batch_dims=1),
    )
    keep = tf.gather(keep_sorted, tf.argsort(order, axis=1), batch_dims=1)
    sizes = [tf.reduce_prod(shape[1:]) for shape in shapes]
    # Split as int32: TFLite has no bool kernel for SplitV.
    parts = tf.split(tf.cast(keep, tf.int32), sizes, axis=1)
    return [tf.reshape(part, shape) > 0 for part, shape in zip(parts, shapes)]


def _checked_budget(allowed, available, budget):
    """`allowed` (patches the splits may add), after graph checks that `budget` can be met."""
    checks = [
        tf.debugging.assert_equal(
            allowed % 3, 0,
            message=f"budget {budget} minus the base block count must be a multiple of 3",
        ),
        tf.debugging.assert_greater_equal(
            allowed, 0, message=f"budget {budget} is below the base block count"
        ),
        tf.debugging.assert_less_equal(
            allowed, tf.reduce_min(available),
            message=f"budget {budget} exceeds what the image can be split into",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(allowed)


def _checked_cap(allowed, base_blocks, max_patches):
    """`allowed`, after a graph check that the cap `max_patches` is not below the image's
    base blocks (they never merge, so such a cap could not hold)."""
    check = tf.debugging.Assert(
        allowed >= 0,
        [f"max_patches {max_patches} is below the", base_blocks,
         "base blocks of the image (one patch each at least: they never merge); raise "
         "max_patches or pass smaller images"],
    )
    with tf.control_dependencies([check]):
        return tf.identity(allowed)


def leaf_masks(splits, inside):
    """Leaf masks per level: the nodes that become patches.

    `leaf_l = exists_l & ~split_l & inside_l`, where `exists_0` is every base
    block and `exists_l = upsample(split_{l-1}, 2)`; the finest level's leaves are
    all its existing nodes in the image.

    Returns:
        A list of `num_levels` tensors `[B, h_l, w_l]` bool.
    """
    leaves, exists = [], tf.ones_like(splits[0])
    for level, split in enumerate(splits):
        leaves.append(exists & ~split & inside[level])
        exists = upsample(split, 2)
    leaves.append(exists & inside[-1])
    return leaves


def straight_through(splits, probs):
    """Split indicators `s_l = hard_l + (p_l - stop_gradient(p_l))` per split level.

    The value of `s_l` is the hard decision (0 or 1), its gradient that of the
    soft probability `p_l`: the straight-through estimator.

    Args:
        splits: per split level `[B, h_l, w_l]` bool, a consistent tree.
        probs: per split level `[B, h_l, w_l]` float32, from `split_probabilities`.

    Returns:
        A list of `[B, h_l, w_l]` float32.
    """
    return [tf.cast(split, tf.float32) + (prob - tf.stop_gradient(prob)) for split, prob in zip(splits, probs)]


def straight_through_gates(probs, inside):
    """Straight-through gates per level: value 1 on leaves, gradient of the region's share.

    A patch's gate multiplies its weight in the attention-weighted mean, so its
    gradient says whether the image would be better off with more or less of
    that patch's region in the mean. Splitting a node replaces one patch by
    its `c` children inside the image, so the region weighs `c` times as much;
    merging a split parent leaves each of its children `1 / c` of one patch.
    The gate is therefore, with `r_l = p_l - stop_gradient(p_l)` (value 0,
    gradient of the soft split probability):

        gate = (1 + (c_l - 1) * r_l) * prod over ancestors k of (1 + (1 - 1 / c_k) * r_k)

    (the finest level has no own factor). Its value is exactly 1; its first
    order is the change in the region's weight when the node or an ancestor
    flips. Summed over an image's leaves, the own and parent factors give the
    change in the patch count, the gradient that `expected_patch_count`'s
    straight-through count has. Both sides of every decision get a gradient:
    an unsplit node learns from what its children would add, and a split one
    from what merging would take away. (Gates of the form
    `ancestors * (1 - s_l)` value only the patches that exist, so they
    reward whatever the tree already does, and on needles they raised the
    thresholds with no penalty at all: `docs/notes.md`.)

    Args:
        probs: per split level `[B, h_l, w_l]` float32, from `split_probabilities`.
        inside: per level `[1, h_l, w_l]` bool, from `inside_masks`.

    Returns:
        A list of `num_levels` tensors `[B, h_l, w_l]` float32; read them on the
        leaves.
    """
    gates, ancestors = [], tf.ones_like(probs[0])
    for prob, child in zip(probs, inside[1:]):
        rest = prob - tf.stop_gradient(prob)
        children = tf.maximum(tf.cast(children_inside(child), tf.float32), 1.0)
        gates.append(ancestors * (1.0 + (children - 1.0) * rest))
        ancestors = upsample(ancestors * (1.0 + (1.0 - 1.0 / children) * rest), 2)
    gates.append(ancestors)
    return gates


def expected_patch_count(probs, inside):
    """Soft expected patch count per image, down the tree.

    With `reach_0 = 1` and `reach_l = upsample(reach_{l-1} * p_{l-1}, 2)` (the
    probability that a node exists), the count is
    `sum_l sum_inside reach_l * (1 - p_l) + sum_inside reach_L`, the expected
    number of leaves when every node splits independently with probability `p`.
    When every `p` is 0 or 1 it is the hard leaf count (`leaf_masks`) of the
    tree that splits where `p` is 1.

    Args:
        probs: per split level `[B, h_l, w_l]` float32.
        inside: per level `[1, h_l, w_l]` bool.

    Returns:
        `[B]` float32.
    """
    total, exists = 0.0, tf.ones_like(probs[0])
    for level, prob in enumerate(probs):
        total += _masked_sum(exists * (1.0 - prob), inside[level])
        exists = upsample(exists * prob, 2)
    return total + _masked_sum(exists, inside[-1])


def finest_count(height, width, min_size):
    """How many `min_size` patches would tile an unpadded `height x width` image (float32).

    `ceil(height / min_size) * ceil(width / min_size)`: the normalisation of the
    patch fraction, the most patches an image can have.
    """
    rows = tf.math.ceil(tf.cast(height, tf.float32) / min_size)
    return rows * tf.math.ceil(tf.cast(width, tf.float32) / min_size)


def _masked_sum(values, mask):
    return tf.reduce_sum(tf.where(mask, values, 0.0), axis=[1, 2])
