"""DynamicPatcher: complexity-driven quadtree patches in RaggedTensors.

Learnable subdivision: the thresholds are a weight (trainable unless
`trainable_thresholds=False`). Adam moves a weight by about its learning rate
per step whatever the gradient's size, and thresholds live on a scale of 0.01,
so the weight is `log(threshold) / threshold_rate`: thresholds stay positive
and one step moves them by about `threshold_rate * learning_rate` of their
value (`docs/notes.md`, "Threshold steps"). Split decisions are hard; the
soft probability `sigmoid((mean - threshold) / temperature)` of every node
carries the gradient by a straight-through estimator
(`quadtree.straight_through`): each patch's `gates` value is exactly 1, and
multiplying the patch's weight by it lets the task loss reach the
thresholds, with the gradient of the patch region's share of the weighted
mean (`quadtree.straight_through_gates`: an unsplit node learns what its
children would add, a split one what merging would take away). `expected_patches`, for the subdivision penalty, is the
expected patch count down the tree (`quadtree.expected_patch_count`) of the
same straight-through indicators: its value is the hard patch count, the
count the image really costs (the soft count can sit far from it, e.g. at
0.18 of the finest grid while every patch is 8 px, and a budget on it
would then never bind), and its gradient flows through the soft
probabilities, as the gates' does. For the block rule, a node's soft
probability uses its base block's mean.

Threshold jitter (`threshold_jitter=j`), as FlexiViT trains across patch
sizes: thresholds change compute, not weights, so a model can be run at
another budget by scaling its thresholds (`dynpatch tune --thresholds-only`),
but only budgets it met in training serve it well. With `j > 0`, every call
with `training=True` multiplies the thresholds by one random factor `exp(u)`,
`u ~ Uniform(-j, j)` (`jittered_thresholds`): e.g. `j = 0.7` covers x0.5 to
x2. One factor per call, shared by the levels and the images of the batch:
a threshold scale is the one knob a budget sweep or `calibrate_thresholds`
turns at inference, so training sees exactly the models those run, and the
levels keep their order (a factor per level would train tree shapes that no
inference setting gives). The factor is a constant to the gradient: the
thresholds' straight-through gradient flows through it, times the factor.
Inference (`training` False or None) never jitters. Under `rule="budget"`
the thresholds decide nothing, so jitter changes only the soft probabilities.
"""

import keras
import numpy as np
import tensorflow as tf

from dynpatch_tf import image_ops, quadtree

# Calibrated for photos, at the default complexity map (`ComplexityMap()`, LoG
# sigma 2), to a budget of 15% of the finest count: 614 patches per 512x512
# image (of 4096 at 8 px) on average over the benchmarks' 8 scikit-image photos
# (astronaut, camera, brick, grass, gravel, moon, immunohistochemistry, retina;
# central 512 crops), by `calibrate_thresholds`, rounded to 3 significant
# figures: `python recipes/benchmarks/default_thresholds.py` (docs/benchmarks.md,
# "Default thresholds"). They give 607 patches per photo on average: 2437 on
# gravel, 1627 on grass, 214-322 on astronaut and camera, and one patch per
# 64 px block (64) on brick, moon, immunohistochemistry and retina. Other data
# want their own budget and thresholds (`calibrate_thresholds`); the needles
# task takes its own (`dynpatch_tf.needles.NEEDLES_THRESHOLDS`, at
# `NEEDLES_SIGMA`).
DEFAULT_THRESHOLDS = (0.0488, 0.0489, 0.0493)


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class DynamicPatcher(keras.layers.Layer):
    """Cuts each image into a quadtree of patches, fine where its complexity is high.

    The image is padded (SYMMETRIC, i.e. SciPy's `reflect`) at the bottom and right
    to multiples of `base_size` and cut into base blocks. Level `l` has patches of
    `base_size / 2**l` pixels, down to `min_size`; `thresholds[l]` decides the
    split from level `l` to `l + 1`, on the mean of the complexity map over a node.
    The decisions are the plain functions of `dynpatch_tf.quadtree`; this layer
    holds the thresholds and cuts, resamples and orders the patches.

    Rules:
        * `"quadtree"` (default): a node splits when its own mean exceeds its
          level's threshold; each child decides for itself.
        * `"block"`: the seed's literal rule. Each base block takes one level for
          all of it: the number of thresholds its mean exceeds.
        * `"budget"`: exactly `budget` patches per image. Starting from the base
          blocks, the busiest nodes split first (as in Quadformer): in the order
          of the node means made monotone down the tree
          (`quadtree.split_priorities`). Every split adds 3
          patches, so `budget - base_blocks` must be a non-negative multiple of 3;
          only nodes whose four children all lie in the image may split. The count
          is fixed, so the output is also a dense `[B, budget, ...]` batch
          (`ragged.to_tensor()` has no padding), for XLA and TFLite.

    `max_patches` caps the patches of one image (quadtree and block rules): past
    it, the least complex splits are undone first, in the monotone priority order
    above, so the tree stays consistent. Base blocks are never merged, so an image
    always has at least one patch per base block: a cap below an image's count of
    base blocks cannot hold, and the call fails with `InvalidArgumentError`
    naming both.

    Under `rule="budget"` the thresholds decide no split (the busiest nodes
    split until the count is met), so they are never trained there: their
    weight is non-trainable whatever `trainable_thresholds` says.

    Order within an image (deterministic): base blocks in raster order (row by
    row), and inside a block the quadtree's depth-first order (Z-order: top-left,
    top-right, bottom-left, bottom-right), i.e. patches sorted by the Morton code
    of their top-left corner.

    Every patch is resampled to `token_size` x `token_size`: exact area averaging
    when shrinking, bilinear (half-pixel centres) when enlarging. Boxes are
    `(y0, x0, y1, x1)`, half-open, in input pixels, clipped to the unpadded image;
    patches wholly in the padding are dropped, so the boxes of an image tile it
    exactly. Pixels of a patch that straddles the border come from the padded
    image.

    Learnable subdivision (thresholds as a weight, straight-through gates and
    patch count): see the module docstring.

    Args:
        base_size: side of the base blocks, a power of two (default 64).
        min_size: side of the smallest patches, a power of two (default 8).
        thresholds: one threshold per split level (`log2(base/min)` values), on
            the complexity map's scale (see `ComplexityMap`); by default
            `DEFAULT_THRESHOLDS`, calibrated on photos at the default map.
        token_size: side `P` every patch is resampled to, a power of two.
        rule: `"quadtree"`, `"block"` or `"budget"`.
        max_patches: optional cap on patches per image (quadtree, block), a
            positive integer.
        budget: the exact patch count per image for `rule="budget"`.
        temperature: softness of the split probabilities, on the complexity scale.
        trainable_thresholds: whether the thresholds are trained (never under
            `rule="budget"`, where they decide no split).
        threshold_rate: how fast training moves the thresholds (see above).
        threshold_jitter: `j >= 0`; training calls scale the thresholds by a
            random factor in `[exp(-j), exp(j)]` (module docstring).
        validate: check image values (NaN, Inf) and sizes when the graph runs.
        **kwargs: base `Layer` arguments.

    Call arguments:
        images: `[B, H, W, C]` uint8 (0..255) or float (0..1), `C` in {1, 3},
            `H, W >= base_size`.
        complexity: `[B, H, W, 1]` float, e.g. from `ComplexityMap`.
        training: jitter the thresholds (when `threshold_jitter > 0`).

    Returns:
        A dict:
        * `"pixels"`: RaggedTensor `[B, (N), P, P, C]` float32 in 0..1;
        * `"boxes"`: RaggedTensor `[B, (N), 4]` int32;
        * `"levels"`: RaggedTensor `[B, (N)]` int32, 0 for base blocks;
        * `"gates"`: RaggedTensor `[B, (N)]` float32, value 1, straight-through;
        * `"split_probs"`: list of `[B, h_l, w_l]` soft split probabilities, one
          per split level;
        * `"expected_patches"`: `[B]` the patch count, straight-through (its
          gradient flows through the soft split probabilities);
        * `"patch_fraction"`: `[B]` the same divided by the count of `min_size`
          patches that would tile the image (the penalty's normalisation).

    Example:

    >>> images = np.random.rand(2, 128, 192, 3).astype("float32")
    >>> complexity = ComplexityMap()(images)
    >>> patches = DynamicPatcher(token_size=8)(images, complexity)
    >>> patches["pixels"].shape
    TensorShape([2, None, 8, 8, 3])
    """

    def __init__(
        self,
        base_size=64,
        min_size=8,
        thresholds=DEFAULT_THRESHOLDS,
        token_size=16,
        rule="quadtree",
        max_patches=None,
        budget=None,
        temperature=0.005,
        trainable_thresholds=True,
        threshold_rate=10.0,
        threshold_jitter=0.0,
        validate=True,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(autocast=False, **kwargs)
        self.supports_jit = False  # ragged tensors do not compile with XLA
        self.num_levels = _checked_num_levels(
            base_size, min_size, thresholds, token_size, rule, budget, temperature, max_patches
        )
        self.base_size = base_size
        self.min_size = min_size
        self.initial_thresholds = tuple(float(t) for t in thresholds)
        self.token_size = token_size
        self.rule = rule
        self.max_patches = max_patches
        self.budget = budget
        self.temperature = float(temperature)
        self.trainable_thresholds = trainable_thresholds
        self.threshold_rate = float(threshold_rate)
        self.threshold_jitter = _checked_jitter(threshold_jitter)
        # Made only with jitter: its state is a variable, which older saved models lack.
        self.jitter_seed = keras.random.SeedGenerator() if self.threshold_jitter else None
        self.validate = validate
        self.sizes = [base_size >> level for level in range(self.num_levels)]

    def build(self, images_shape=None, complexity_shape=None):
        self.log_thresholds = self.add_weight(
            name="log_thresholds",
            shape=(self.num_levels - 1,),
            initializer=keras.initializers.Constant(
                np.log(self.initial_thresholds) / self.threshold_rate
            ),
            # Under the budget rule they decide no split: nothing to train.
            trainable=self.trainable_thresholds and self.rule != "budget",
            # Float32 under any policy (float64 and bfloat16 included), and read
            # so under a mixed one: thresholds are small numbers, and the
            # decisions compare them with float32 means.
            dtype="float32",
            autocast=False,
        )

    @property
    def thresholds(self):
        """The current thresholds, `[num_levels - 1]` float32."""
        return tf.exp(self.log_thresholds * self.threshold_rate)

    def set_thresholds(self, values):
        """Sets the thresholds, in the weight and in `get_config` (so a model made from
        the config starts with them), e.g. from `dynpatch_tf.calibrate_thresholds`."""
        _checked_num_levels(self.base_size, self.min_size, values, self.token_size,
                            self.rule, self.budget, self.temperature)
        self.initial_thresholds = tuple(float(t) for t in values)
        if self.built:
            self.log_thresholds.assign(np.log(self.initial_thresholds) / self.threshold_rate)

    def call(self, images, complexity, training=None):
        images = image_ops.prepare_images(images, self.base_size, self.validate)
        complexity = _checked_complexity(images, complexity, self.validate)
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        images = image_ops.pad_to_multiple(images, self.base_size, height, width)
        complexity = image_ops.pad_to_multiple(complexity, self.base_size, height, width)
        means = quadtree.node_means(complexity, self.min_size, self.num_levels)
        inside = quadtree.inside_masks(means, self.base_size, height, width)
        scores = quadtree.split_scores(means, self.rule)
        thresholds = self.thresholds
        if training and self.threshold_jitter:
            thresholds = jittered_thresholds(thresholds, self.threshold_jitter, self.jitter_seed)
        probs = quadtree.split_probabilities(scores, thresholds, self.temperature)
        splits = quadtree.split_decisions(
            scores, thresholds, inside, self.rule, self.max_patches, self.budget
        )
        leaves = quadtree.leaf_masks(splits, inside)
        gates = quadtree.straight_through_gates(probs, inside)
        patches = self._merge_levels(images, leaves, gates, height, width)
        # Value: the hard patch count; gradient: the soft count's (see the class docstring).
        expected = quadtree.expected_patch_count(quadtree.straight_through(splits, probs), inside)
        patches.update(
            split_probs=probs,
            expected_patches=expected,
            patch_fraction=expected / quadtree.finest_count(height, width, self.min_size),
        )
        return patches

    # -- patches ------------------------------------------------------------

    def _merge_levels(self, images, leaves, gates, height, width):
        """Cut, resample and order the leaves of all levels into ragged tensors."""
        batch = tf.shape(images, out_type=tf.int64)[0]
        sources = self._token_sources(images)
        parts = [
            self._level_patches(images, sources, leaf, gate, level, height, width)
            for level, (leaf, gate) in enumerate(zip(leaves, gates))
        ]
        merged = {key: tf.concat([part[key] for part in parts], 0) for key in parts[0]}
        order = tf.argsort(merged.pop("key"), stable=True)
        merged = {key: tf.gather(value, order) for key, value in merged.items()}
        rows = merged.pop("image")
        # One row partition for all outputs (each built from the row ids would count them again).
        ragged = tf.RaggedTensor.from_value_rowids(merged["levels"], rows, nrows=batch, validate=False)
        return {key: ragged.with_values(value) for key, value in merged.items()}

    def _level_patches(self, images, sources, leaf, gate, level, height, width):
        size = self.sizes[level]
        index = tf.where(leaf)
        image, row, col = index[:, 0], index[:, 1], index[:, 2]
        pixels = _cut_patches(sources[size], index, min(size, self.token_size))
        if size < self.token_size:
            pixels = tf.image.resize(pixels, (self.token_size, self.token_size), method="bilinear")
        y0, x0 = tf.cast(row, tf.int32) * size, tf.cast(col, tf.int32) * size
        boxes = tf.stack([y0, x0, tf.minimum(y0 + size, height), tf.minimum(x0 + size, width)], 1)
        return {
            "pixels": pixels,
            "boxes": boxes,
            "levels": tf.fill(tf.shape(row), level),
            "gates": tf.gather_nd(gate, index),
            "image": image,
            "key": _order_key(images, image, row, col, level, self.base_size, self.num_levels),
        }

    def _token_sources(self, images):
        """{patch side: the image its patches are cut from}, each at one token per patch.

        Levels of patches at least `token_size` wide read an area-mean pyramid
        of the whole padded image (`avg_pool2d` by 2, repeated): there a patch
        of `size` px is a `token_size` block of the image pooled by
        `size / token_size`, so shrinking costs a pass over the image, not a
        mean over every cut patch. Smaller patches read the image itself (and
        are enlarged after cutting).
        """
        sources, pooled, factor = {}, images, 1
        for size in reversed(self.sizes):  # finest first
            while factor < size // self.token_size:
                pooled, factor = tf.nn.avg_pool2d(pooled, 2, 2, "VALID"), factor * 2
            sources[size] = pooled if size >= self.token_size else images
        return sources

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "base_size": self.base_size,
                "min_size": self.min_size,
                "thresholds": list(self.initial_thresholds),
                "token_size": self.token_size,
                "rule": self.rule,
                "max_patches": self.max_patches,
                "budget": self.budget,
                "temperature": self.temperature,
                "trainable_thresholds": self.trainable_thresholds,
                "threshold_rate": self.threshold_rate,
                "threshold_jitter": self.threshold_jitter,
                "validate": self.validate,
            }
        )
        return config


def jittered_thresholds(thresholds, jitter, seed=None):
    """`thresholds` times one random factor `exp(u)`, `u ~ Uniform(-jitter, jitter)`,
    shared by all levels (see the module docstring for why one).

    Args:
        thresholds: `[L]` float32 thresholds.
        jitter: the half-width of the log-space range, `>= 0`.
        seed: a `keras.random.SeedGenerator` (a new draw each call, also in
            `tf.function`), an int, or None for Keras' global generator.

    Returns:
        `[L]` float32; its gradient with respect to `thresholds` is the factor.
    """
    log_factor = keras.random.uniform((), -jitter, jitter, dtype="float32", seed=seed)
    return thresholds * tf.exp(log_factor)


def _checked_jitter(jitter):
    jitter = float(jitter)
    if not (np.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"threshold_jitter must be a finite number >= 0; got {jitter}.")
    return jitter


def _checked_num_levels(base_size, min_size, thresholds, token_size, rule, budget, temperature,
                        max_patches=None):
    """The number of levels from `base_size` to `min_size`, after checking the arguments."""
    for name, value in (("base_size", base_size), ("min_size", min_size), ("token_size", token_size)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two; got {value}.")
    if min_size > base_size:
        raise ValueError(f"min_size {min_size} exceeds base_size {base_size}.")
    num_levels = int(np.log2(base_size // min_size)) + 1
    if len(thresholds) != num_levels - 1:
        raise ValueError(
            f"thresholds needs {num_levels - 1} values (one per split level "
            f"from {base_size} to {min_size} px); got {len(thresholds)}."
        )
    quadtree.check_rule(rule, budget)
    if max_patches is not None and not (isinstance(max_patches, (int, np.integer)) and max_patches > 0):
        raise ValueError(f"max_patches must be a positive integer or None; got {max_patches!r}.")
    if min(thresholds) <= 0:
        raise ValueError(f"thresholds must be positive; got {tuple(thresholds)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}.")
    return num_levels


def _checked_complexity(images, complexity, validate):
    """`complexity` as float32, after checking its rank and (when `validate`, in
    the graph) that it has the batch, height and width of `images`."""
    complexity = tf.cast(tf.convert_to_tensor(complexity), tf.float32)
    if complexity.shape.rank != 4 or complexity.shape[-1] != 1:
        raise ValueError(
            f"complexity must have shape [batch, height, width, 1]; got {complexity.shape}."
        )
    if not validate:
        return complexity
    same = tf.debugging.assert_equal(
        tf.shape(complexity)[:3],
        tf.shape(images)[:3],
        message="complexity must have the batch, height and width of images",
    )
    with tf.control_dependencies([same]):
        return tf.identity(complexity)


def _cut_patches(images, index, size):
    """The `size` x `size` blocks at `index` rows `(image, row, col)`: `[n, size, size, C]`.

    Views every image row as `W / size` runs of `size * C` values (a free
    reshape) and gathers the `size` runs of each patch, so only the patches'
    own pixels are copied, whatever the image size.
    """
    shape = tf.shape(images)
    channels = images.shape[-1]
    runs = tf.reshape(images, [shape[0], shape[1], shape[2] // size, size * channels])
    count = tf.shape(index)[0]
    image, row, col = (tf.broadcast_to(index[:, k : k + 1], [count, size]) for k in range(3))
    rows = row * size + tf.range(size, dtype=index.dtype)
    patches = tf.gather_nd(runs, tf.stack([image, rows, col], axis=-1))
    return tf.reshape(patches, [count, size, size, channels])


def _order_key(images, image, row, col, level, base_size, num_levels):
    """Sort key of the patches `(image, row, col)` of `level`: image, base block in
    raster order, then Morton code inside it (int64)."""
    per_block = 2**level
    # Divide in int32: TFLite's FLOOR_DIV has no int64 kernel.
    row, col = tf.cast(row, tf.int32), tf.cast(col, tf.int32)
    blocks_wide = tf.shape(images)[2] // base_size
    blocks_high = tf.shape(images)[1] // base_size
    block = (row // per_block) * blocks_wide + col // per_block
    scale = 2 ** (num_levels - 1 - level)
    morton = _interleave((row % per_block) * scale, (col % per_block) * scale, num_levels - 1)
    cells = 4 ** (num_levels - 1)
    per_image = tf.cast(blocks_high * blocks_wide * cells, tf.int64)
    return image * per_image + tf.cast(block * cells + morton, tf.int64)


def _interleave(rows, cols, bits):
    """Morton code: bits of `rows` and `cols` interleaved (row bit above col bit)."""
    code = tf.zeros_like(rows)
    for bit in range(bits):
        code += (rows // 2**bit % 2) * 2 ** (2 * bit + 1) + (cols // 2**bit % 2) * 2 ** (2 * bit)
    return code
