"""The quadtree functions alone, against hand-made cases and NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf import quadtree

SMALL = (1e-4, 1e-4, 1e-4)


def decide(complexity, thresholds=SMALL, rule="quadtree", size=None, **kwargs):
    """The decisions of `DynamicPatcher.call` (64 to 8 px) on a padded complexity map."""
    complexity = tf.constant(complexity, tf.float32)
    height, width = size or complexity.shape[1:3]
    means = quadtree.node_means(complexity, 8, 4)
    inside = quadtree.inside_masks(means, 64, height, width)
    scores = quadtree.split_scores(means, rule)
    thresholds = tf.constant(thresholds, tf.float32)
    splits = quadtree.split_decisions(scores, thresholds, inside, rule, **kwargs)
    return means, inside, scores, splits


def random_tree(rng, batch=2, grid=(3, 4), levels=4, size=(19, 29), base_size=8):
    """Random scores on a `grid` of base blocks, `levels` levels, `size` unpadded pixels."""
    scores = [
        tf.constant(rng.random((batch, grid[0] << level, grid[1] << level)), tf.float32)
        for level in range(levels - 1)
    ]
    finest = tf.zeros((batch, grid[0] << (levels - 1), grid[1] << (levels - 1)))
    inside = quadtree.inside_masks(scores + [finest], base_size, *size)
    return scores, inside


def coverage(leaves):
    """How many leaves cover each finest cell, and the level of the (last) one."""
    finest = len(leaves) - 1
    count, level = 0, np.full(np.shape(leaves[-1]), -1)
    for depth, leaf in enumerate(leaves):
        up = quadtree.upsample(tf.cast(leaf, tf.int32), 2 ** (finest - depth)).numpy()
        count = count + up
        level = np.where(up > 0, depth, level)
    return count, level


def reference_leaves(scores, thresholds, inside, image):
    """The quadtree rule by recursion: the leaves `(level, row, col)` of one image."""
    leaves = []

    def visit(level, row, col):
        if not inside[level][0, row, col]:
            return
        if level < len(scores) and scores[level][image, row, col] > thresholds[level]:
            for dy in (0, 1):
                for dx in (0, 1):
                    visit(level + 1, 2 * row + dy, 2 * col + dx)
        else:
            leaves.append((level, row, col))

    for row in range(inside[0].shape[1]):
        for col in range(inside[0].shape[2]):
            visit(0, row, col)
    return sorted(leaves)


def reference_expected(probs, inside, image):
    """Expected leaf count by recursion: E(node) = 1 - p + p * sum E(children inside)."""

    def expect(level, row, col):
        if not inside[level][0, row, col]:
            return 0.0
        if level == len(probs):
            return 1.0
        p = probs[level][image, row, col]
        children = sum(
            expect(level + 1, 2 * row + dy, 2 * col + dx) for dy in (0, 1) for dx in (0, 1)
        )
        return 1.0 - p + p * children

    grid = inside[0].shape[1:]
    return sum(expect(0, row, col) for row in range(grid[0]) for col in range(grid[1]))


def leaf_count(leaves):
    """`[B]`: the patches of each image."""
    return sum(tf.reduce_sum(tf.cast(leaf, tf.int32), [1, 2]) for leaf in leaves).numpy()


def split_count(splits):
    return sum(int(np.sum(split)) for split in splits)


def assert_consistent(splits, inside):
    """A node splits only inside the image, and only if its parent split."""
    for level, split in enumerate(splits):
        split = np.asarray(split)
        assert not (split & ~np.asarray(inside[level])).any()
        if level:
            parent = quadtree.upsample(splits[level - 1], 2).numpy()
            assert not (split & ~parent).any()


def test_node_means_are_the_means_over_each_node():
    complexity = np.random.default_rng(0).random((2, 128, 192, 1)).astype("float32")
    means = quadtree.node_means(tf.constant(complexity), 8, 4)
    for level, mean in enumerate(means):
        size = 64 >> level
        grouped = complexity[..., 0].reshape(2, 128 // size, size, 192 // size, size)
        reference = grouped.mean(axis=(2, 4))
        np.testing.assert_allclose(mean.numpy(), reference, rtol=1e-5)


def test_inside_masks_keep_nodes_whose_corner_is_in_the_image():
    means = quadtree.node_means(tf.zeros((1, 128, 192, 1)), 8, 4)
    inside = quadtree.inside_masks(means, 64, 100, 150)
    assert [m.shape.as_list() for m in inside] == [[1, 2, 3], [1, 4, 6], [1, 8, 12], [1, 16, 24]]
    assert inside[0].numpy()[0].all()  # 100 > 64 and 150 > 128
    # Column 4 starts at 128 < 150, column 5 at 160.
    assert inside[1].numpy()[0].tolist()[3] == [True] * 5 + [False]
    assert inside[1].numpy()[0, :, 0].tolist() == [True, True, True, True]  # rows 0..96 < 100
    assert inside[3].numpy()[0].sum() == 13 * 19  # ceil(100 / 8) * ceil(150 / 8)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_quadtree_decisions_match_a_recursive_reference(threshold, rng):
    scores, inside = random_tree(rng)
    thresholds = [threshold] * 3
    splits = quadtree.split_decisions(scores, tf.constant(thresholds), inside, "quadtree")
    assert_consistent(splits, inside)
    leaves = quadtree.leaf_masks(splits, inside)
    numpy_scores = [s.numpy() for s in scores]
    numpy_inside = [m.numpy() for m in inside]
    for image in range(2):
        found = sorted(
            (level, int(row), int(col))
            for level, leaf in enumerate(leaves)
            for row, col in np.argwhere(leaf[image].numpy())
        )
        assert found == reference_leaves(numpy_scores, thresholds, numpy_inside, image)


def test_a_child_never_splits_unless_its_parent_does(rng):
    scores, inside = random_tree(rng)
    # Children want to split everywhere, parents almost nowhere.
    wanted = [tf.constant(rng.random(s.shape) < q) for s, q in zip(scores, (0.2, 1.0, 1.0))]
    splits = quadtree.tree_consistent(wanted, inside)
    assert_consistent(splits, inside)
    assert split_count(splits[1:]) > 0  # the children of split parents do split
    np.testing.assert_array_equal(splits[0].numpy(), wanted[0].numpy() & inside[0].numpy())


@pytest.mark.parametrize("rule", ["quadtree", "block", "budget"])
def test_leaves_tile_the_image_exactly(rule, rng):
    complexity = rng.random((2, 128, 192, 1)) * rng.random((2, 1, 1, 1))
    kwargs = {"budget": 6 + 3 * 7} if rule == "budget" else {}
    _, inside, _, splits = decide(complexity, (0.3, 0.35, 0.4), rule, size=(100, 150), **kwargs)
    count, _ = coverage(quadtree.leaf_masks(splits, inside))
    finest_inside = np.broadcast_to(inside[-1].numpy(), count.shape)
    assert (count[finest_inside] == 1).all()  # every pixel of the image in one patch
    assert (count[~finest_inside] <= 1).all()  # patches that straddle the border reach the padding


def test_block_rule_gives_each_block_one_level():
    thresholds = (0.1, 0.2, 0.3)
    block_means = np.array([[0.05, 0.15, 0.25], [0.35, 0.12, 0.0]])
    complexity = np.kron(block_means, np.ones((64, 64)))[None, ..., None]
    # Detail inside a block must not matter to the block rule: this raises the
    # block's mean to 0.15 (still one threshold), its top-left 32 px node's to 0.245.
    complexity[0, 64:80, 64:80] += 0.5
    _, inside, _, splits = decide(complexity, thresholds, "block")
    _, level = coverage(quadtree.leaf_masks(splits, inside))
    expected = [[sum(m > t for t in thresholds) for m in row] for row in block_means]
    assert decide(complexity, thresholds, "quadtree")[3][1].numpy()[0, 2, 2]  # the quadtree rule splits
    np.testing.assert_array_equal(level[0], np.kron(expected, np.ones((8, 8), int)))


def test_priorities_are_monotone_down_the_tree(rng):
    scores, _ = random_tree(rng)
    priorities = quadtree.split_priorities(scores)
    np.testing.assert_array_equal(priorities[0].numpy(), scores[0].numpy())
    for level in range(1, len(scores)):
        parent = quadtree.upsample(priorities[level - 1], 2).numpy()
        expected = np.minimum(scores[level].numpy(), parent)
        np.testing.assert_array_equal(priorities[level].numpy(), expected)


@pytest.mark.parametrize("max_count", [12, 13, 30, 80, 1000])
def test_priority_selection_keeps_a_tree_of_the_busiest_splits(max_count, rng):
    scores, inside = random_tree(rng)  # 12 base blocks per image
    candidates = quadtree.tree_consistent([s > 0.2 for s in scores], inside)
    kept = quadtree.select_by_priority(scores, candidates, inside, max_count)
    assert_consistent(kept, inside)
    counts = leaf_count(quadtree.leaf_masks(kept, inside))
    priorities = quadtree.split_priorities(scores)
    for image, count in enumerate(counts):
        levels = [(p[image].numpy(), k[image].numpy(), c[image].numpy())
                  for p, k, c in zip(priorities, kept, candidates)]
        assert all((c | ~k).all() for _, k, c in levels)  # only candidates split
        dropped = np.concatenate([p[c & ~k] for p, k, c in levels])
        assert count <= max_count
        assert (len(dropped) > 0) == (max_count < 1000)  # the cap binds, except the largest
        if len(dropped):
            # A split adds at most 3 patches, so the cap leaves less than 3 unused.
            assert count > max_count - 3
            kept_priority = np.concatenate([p[k] for p, k, _ in levels])
            assert not len(kept_priority) or kept_priority.min() >= dropped.max()


def test_max_patches_undoes_the_least_complex_splits_first():
    complexity = np.zeros((1, 64, 128, 1))
    complexity[0, :, :64] = 1.0
    complexity[0, :, 64:] = 0.5
    _, inside, _, splits = decide(complexity, max_patches=2 + 3)
    assert splits[0].numpy()[0].tolist() == [[True, False]]  # the busier left block kept its split
    assert split_count(splits[1:]) == 0


def test_budget_splits_the_busiest_nodes_first():
    complexity = np.zeros((1, 128, 128, 1))
    complexity[0, :64, 64:] = 1.0  # the busiest base block: top right
    complexity[0, 64:, :64] = 0.5
    _, inside, _, splits = decide(complexity, rule="budget", budget=4 + 3)
    assert splits[0].numpy()[0].tolist() == [[False, True], [False, False]]
    assert split_count(splits[1:]) == 0


@pytest.mark.parametrize("budget", [4 + 3 * 5, 4, 4 + 3 * 84])
def test_budget_gives_exactly_the_budget(budget, rng):
    complexity = rng.random((3, 128, 128, 1))
    _, inside, _, splits = decide(complexity, rule="budget", budget=budget)
    assert leaf_count(quadtree.leaf_masks(splits, inside)).tolist() == [budget] * 3


def test_budget_splits_only_nodes_with_all_children_inside():
    complexity = np.ones((1, 128, 128, 1))
    _, inside, _, splits = decide(complexity, rule="budget", budget=4 + 3 * 21, size=(90, 128))
    # The bottom base blocks have their lower children in the padding: only the top two may split.
    assert splits[0].numpy()[0].tolist() == [[True, True], [False, False]]
    assert_consistent(splits, inside)


@pytest.mark.parametrize(
    "budget, message", [(4 + 2, "multiple of 3"), (1, "below"), (4 + 3 * 85, "exceeds")]
)
def test_budget_that_cannot_be_met_is_named(budget, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"budget {budget} .*{message}"):
        decide(np.ones((1, 128, 128, 1)), rule="budget", budget=budget)


def test_rule_arguments_are_checked():
    with pytest.raises(ValueError, match="rule must be one of"):
        quadtree.check_rule("grid")
    with pytest.raises(ValueError, match="needs `budget`"):
        quadtree.split_decisions([], [], [], "budget")
    with pytest.raises(ValueError, match="rule must be one of"):
        quadtree.split_scores([tf.zeros((1, 1, 1))], "grid")


def reference_gate_gradients(leaves, inside, weights):
    """d(sum over leaves of weight * gate) / d(prob) per split level, in NumPy, from
    the definition: a leaf's own node gets `(c - 1) * weight`, each ancestor `k`
    `(1 - 1 / c_k) * weight`, with `c` the node's children inside the image."""
    def children(level):
        child = inside[level + 1][0].astype(int)
        h, w = child.shape
        return np.maximum(child.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3)), 1)

    grads = [np.zeros(leaves[level].shape) for level in range(len(leaves) - 1)]
    for level, leaf in enumerate(leaves):
        for b, i, j in zip(*np.nonzero(leaf)):
            if level < len(grads):
                grads[level][b, i, j] += (children(level)[i, j] - 1) * weights[level][b, i, j]
            for k in range(level):
                ai, aj = i >> (level - k), j >> (level - k)
                grads[k][b, ai, aj] += (1 - 1 / children(k)[ai, aj]) * weights[level][b, i, j]
    return grads


def test_gates_are_one_with_the_gradient_of_the_region_share(rng):
    scores, inside = random_tree(rng)
    splits = quadtree.split_decisions(scores, tf.constant([0.4, 0.5, 0.6]), inside, "quadtree")
    leaves = [leaf.numpy() for leaf in quadtree.leaf_masks(splits, inside)]
    weights = [rng.random(leaf.shape) for leaf in leaves]
    probs = [tf.Variable(rng.random(score.shape), dtype=tf.float32) for score in scores]
    with tf.GradientTape() as tape:
        gates = quadtree.straight_through_gates(probs, inside)
        gated = sum(tf.reduce_sum(tf.where(leaf, gate * w, 0.0)) for leaf, gate, w in zip(leaves, gates, weights))
    for leaf, gate in zip(leaves, gates):
        np.testing.assert_array_equal(gate.numpy()[leaf], 1.0)
    expected = reference_gate_gradients(leaves, [m.numpy() for m in inside], weights)
    for grad, reference in zip(tape.gradient(gated, probs), expected):
        np.testing.assert_allclose(grad.numpy(), reference, rtol=1e-5, atol=1e-6)
    assert all(np.abs(r).max() > 0 for r in expected)


def test_gates_summed_over_leaves_move_like_the_patch_count_at_unsplit_nodes(rng):
    # An unsplit node's split adds its children and removes itself: the leaves'
    # gates must see the same change as the straight-through count does.
    scores, inside = random_tree(rng)
    splits = quadtree.split_decisions(scores, tf.constant([0.4, 0.5, 0.6]), inside, "quadtree")
    leaves = quadtree.leaf_masks(splits, inside)
    probs = [tf.Variable(rng.random(score.shape), dtype=tf.float32) for score in scores]
    with tf.GradientTape(persistent=True) as tape:
        gates = quadtree.straight_through_gates(probs, inside)
        gate_sum = sum(tf.reduce_sum(tf.where(leaf, gate, 0.0)) for leaf, gate in zip(leaves, gates))
        count = tf.reduce_sum(quadtree.expected_patch_count(quadtree.straight_through(splits, probs), inside))
    for level, prob in enumerate(probs):
        unsplit = (leaves[level] & inside[level]).numpy()
        assert unsplit.any()
        np.testing.assert_allclose(tape.gradient(gate_sum, prob).numpy()[unsplit],
                                   tape.gradient(count, prob).numpy()[unsplit], rtol=1e-5)


def test_expected_count_matches_a_recursive_reference(rng):
    scores, inside = random_tree(rng)
    probs = [tf.constant(rng.random(s.shape), tf.float32) for s in scores]
    expected = quadtree.expected_patch_count(probs, inside).numpy()
    numpy_probs, numpy_inside = [p.numpy() for p in probs], [m.numpy() for m in inside]
    for image in range(2):
        reference = reference_expected(numpy_probs, numpy_inside, image)
        np.testing.assert_allclose(expected[image], reference, rtol=1e-5)


@pytest.mark.parametrize("rule", ["quadtree", "block"])
def test_expected_count_is_the_hard_count_at_zero_temperature(rule, rng):
    # Busy and calm 8 px cells, so that trees go to every depth.
    cells = np.kron(rng.random((2, 16, 24)), np.ones((8, 8)))[..., None]
    complexity = rng.random((2, 128, 192, 1)) * cells
    thresholds = (0.24, 0.26, 0.3)
    _, inside, scores, splits = decide(complexity, thresholds, rule, size=(100, 150))
    probs = quadtree.split_probabilities(scores, tf.constant(thresholds), 1e-9)
    assert all(np.isin(p.numpy(), (0.0, 1.0)).all() for p in probs)
    hard = leaf_count(quadtree.leaf_masks(splits, inside))
    assert ((hard > 6) & (hard < 13 * 19)).all()  # neither base blocks only nor the finest only
    np.testing.assert_array_equal(quadtree.expected_patch_count(probs, inside).numpy(), hard)


def test_finest_count():
    assert quadtree.finest_count(100, 150, 8).numpy() == 13 * 19
    assert quadtree.finest_count(tf.constant(64), tf.constant(64), 8).numpy() == 64


def test_functions_run_in_tf_function_with_unknown_shapes(rng):
    scalar = tf.TensorSpec([], tf.int32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1]), scalar, scalar])
    def count(complexity, height, width):
        means = quadtree.node_means(complexity, 8, 4)
        inside = quadtree.inside_masks(means, 64, height, width)
        scores = quadtree.split_scores(means, "quadtree")
        splits = quadtree.split_decisions(
            scores, tf.constant(SMALL), inside, "quadtree", max_patches=50
        )
        leaves = quadtree.leaf_masks(splits, inside)
        return sum(tf.reduce_sum(tf.cast(leaf, tf.int32), [1, 2]) for leaf in leaves)

    complexity = rng.random((2, 128, 192, 1)).astype("float32")
    counts = count(complexity, tf.constant(100), tf.constant(150)).numpy()
    assert (counts <= 50).all() and (counts > 47).all()
