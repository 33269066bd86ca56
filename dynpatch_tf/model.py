"""DynamicPatchModel: complexity map -> quadtree patches -> attention -> embedder."""

import keras
import tensorflow as tf

from dynpatch_tf import image_ops
from dynpatch_tf.attention import PatchAttention
from dynpatch_tf.complexity import ComplexityMap
from dynpatch_tf.embedder import PatchEmbedder
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS, DynamicPatcher
from dynpatch_tf.position import PatchPositionEncoding


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class DynamicPatchModel(keras.Model):
    """An adaptive-resolution image classifier and embedder.

    Each image goes through `ComplexityMap` and `DynamicPatcher`; all patches of
    all images then go through `PatchAttention` and, multiplied by their weight,
    through `PatchEmbedder` as ONE flat batch (the ragged tensors' values), and the
    results go back to their images through the row splits. Nothing is padded to a
    common patch count.

    `embed(images)` returns the embeddings; `call(images)` returns the logits of a
    Dense head on the attention-weighted mean of the patch embeddings (or that
    pooled embedding itself when `num_classes` is None).

    Subdivision is learned: the patcher's thresholds are weights, and the
    straight-through gates of the patcher multiply each patch's attention weight
    (value 1, gradient of the soft split probabilities), so the task loss reaches
    the thresholds. The subdivision penalty, `penalty_weight` times the soft
    expected patch count per image divided by the count of `min_size` patches that
    would tile the image, is added with `add_loss`, so `fit` minimises it too.
    `fit`, `evaluate` show it as `penalty`, and the mean hard patch count per image
    as `patches`.

    Ragged tensors do not compile with XLA, so `compile` defaults to
    `jit_compile=False` (Keras' `"auto"` would pick XLA on a GPU).

    Args:
        num_classes: classes of the Dense head; None for an embedding model.
        thresholds: the patcher's initial thresholds, one per split level.
        trainable_thresholds: whether training moves the thresholds.
        threshold_rate: how fast training moves the thresholds (see
            `DynamicPatcher`).
        penalty_weight: weight of the subdivision penalty (0 turns it off).
        token_size: side every patch is resampled to.
        embed_dim: size of the patch embeddings.
        rule: `"quadtree"`, `"block"` or `"budget"` (see `DynamicPatcher`).
        max_patches: cap on patches per image.
        budget: patches per image for `rule="budget"`.
        base_size: side of the base blocks.
        min_size: side of the smallest patches.
        sigma: LoG scale(s) of the complexity map.
        temperature: softness of the split probabilities.
        attention: `"sigmoid"` (a weight in (0, 1) per patch) or `"softmax"`
            (weights sum to 1 over an image's patches).
        attention_filters: conv filters of the attention CNN.
        width_multiplier: width of the inverted-residual embedder.
        position_encoding: add a learned encoding of each patch's box (centre
            and size) to its embedding.
        chunk_size: at inference, the attention CNN and the embedder run over
            the flat patch batch this many patches at a time (see
            `map_chunks`), with the same outputs; None runs them on all patches
            at once. The default, 1024, bounds the activations in memory
            whatever the image size or batch, and on the CPU it is also faster
            than one call over tens of thousands of patches
            (`docs/benchmarks.md`, "Scaling"); on a GPU a larger value may be
            faster. Training always runs the whole flat batch.
        validate: check image values (NaN, Inf) and sizes when the graph runs.
        **kwargs: base `keras.Model` arguments.

    Input shape:
        `[B, H, W, C]` uint8 (0..255) or float (0..1), `C` in {1, 3},
        `H, W >= base_size`; H and W may change from batch to batch.

    Output shape:
        `[B, num_classes]` float32 logits (or `[B, embed_dim]`).

    Example:

    >>> model = DynamicPatchModel(num_classes=3, token_size=8, embed_dim=16)
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> model(np.random.rand(2, 128, 128, 3).astype("float32")).shape
    TensorShape([2, 3])
    """

    def __init__(
        self,
        num_classes=None,
        thresholds=DEFAULT_THRESHOLDS,
        trainable_thresholds=True,
        threshold_rate=10.0,
        penalty_weight=0.0,
        token_size=16,
        embed_dim=64,
        rule="quadtree",
        max_patches=None,
        budget=None,
        base_size=64,
        min_size=8,
        sigma=1.0,
        temperature=0.005,
        attention="sigmoid",
        attention_filters=(16, 32),
        width_multiplier=0.5,
        position_encoding=True,
        chunk_size=1024,
        validate=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.penalty_weight = float(penalty_weight)
        self.token_size = token_size
        self.embed_dim = embed_dim
        self.position_encoding = position_encoding
        # The model checks and converts the images once (see `embed`); its
        # complexity map and patcher then skip their own checks.
        self.complexity = ComplexityMap(sigma=sigma, validate=False, name="complexity")
        self.patcher = DynamicPatcher(
            base_size=base_size,
            min_size=min_size,
            thresholds=thresholds,
            token_size=token_size,
            rule=rule,
            max_patches=max_patches,
            budget=budget,
            temperature=temperature,
            trainable_thresholds=trainable_thresholds,
            threshold_rate=threshold_rate,
            validate=False,
            name="patcher",
        )
        self.attention = PatchAttention(
            filters=attention_filters, activation=attention, chunk_size=chunk_size, name="attention"
        )
        self.embedder = PatchEmbedder(
            embed_dim=embed_dim, width_multiplier=width_multiplier, chunk_size=chunk_size,
            name="embedder",
        )
        self.position = PatchPositionEncoding(embed_dim, name="position") if position_encoding else None
        self.head = keras.layers.Dense(num_classes, dtype="float32", name="head") if num_classes else None
        self.penalty_tracker = keras.metrics.Mean(name="penalty")
        self.patches_tracker = keras.metrics.Mean(name="patches")
        self.validate = validate

    def build(self, input_shape):
        patch_shape = (None, self.token_size, self.token_size, input_shape[-1])
        self.patcher.build()
        self.attention.build(patch_shape)
        self.embedder.build(patch_shape)
        if self.position is not None:
            self.position.build()
        if self.head is not None:
            self.head.build((None, self.embed_dim))

    def compile(self, *args, jit_compile=False, **kwargs):
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config):
        """Restore the compile settings of a saved model (as `keras.Model` does)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def patches(self, images):
        """The patcher's output for `images`: the adaptive part of the model.

        The images are checked and converted to float once, here (the
        complexity map and the patcher of the model skip their own checks),
        then go through `ComplexityMap` and `DynamicPatcher`.

        Args:
            images: `[B, H, W, C]` uint8 or float images.

        Returns:
            `DynamicPatcher`'s dict (`pixels`, `boxes`, `levels`, `gates`, ...).
        """
        min_size = max(self.patcher.base_size, self.complexity.min_image_size)
        images = image_ops.prepare_images(images, min_size, self.validate)
        return self.patcher(images, self.complexity(images))

    def embed(self, images, training=False):
        """Embeddings of a batch of images.

        Args:
            images: `[B, H, W, C]` uint8 or float images.
            training: run BatchNorm in training mode.

        Returns:
            A dict:
            * `patch_embeddings`: RaggedTensor `[B, (N), D]`;
            * `global_embedding`: RaggedTensor `[B, (N*D)]`, the concatenation of
              an image's patch embeddings in patch order;
            * `pooled_embedding`: `[B, D]`, their attention-weighted mean;
            * `attention`: RaggedTensor `[B, (N)]` patch weights;
            * `boxes`, `levels`: RaggedTensors from the patcher;
            * `patch_fraction`: `[B]` soft expected patch count over the count of
              finest patches (what the penalty uses).
        """
        images = tf.convert_to_tensor(images)
        patches = self.patches(images)
        pixels = patches["pixels"]
        pixels = pixels.with_flat_values(tf.cast(pixels.flat_values, self.compute_dtype))
        attention = self.attention(pixels, training=training)
        weights = attention.values * tf.cast(patches["gates"].values, attention.dtype)
        embeddings = self.embedder(pixels, scales=weights, training=training).values
        boxes = patches["boxes"]
        if self.position is not None:
            embeddings += self.position(boxes.values, tf.shape(images)[1:3])
        return {
            "patch_embeddings": pixels.with_values(embeddings),
            "global_embedding": tf.RaggedTensor.from_row_splits(
                tf.reshape(embeddings, [-1]), pixels.row_splits * self.embed_dim, validate=False
            ),
            "pooled_embedding": _weighted_mean(embeddings, weights, pixels),
            "attention": attention,
            "boxes": boxes,
            "levels": patches["levels"],
            "patch_fraction": patches["patch_fraction"],
        }

    def call(self, images, training=False):
        outputs = self.embed(images, training=training)
        penalty = self.penalty_weight * tf.reduce_mean(outputs["patch_fraction"])
        if self.penalty_weight:
            self.add_loss(penalty)
        self.penalty_tracker.update_state(penalty)
        self.patches_tracker.update_state(tf.cast(outputs["boxes"].row_lengths(), tf.float32))
        pooled = outputs["pooled_embedding"]
        return pooled if self.head is None else self.head(pooled)

    @property
    def thresholds(self):
        """The patcher's current thresholds, one value per split level."""
        return self.patcher.thresholds

    def get_config(self):
        config = super().get_config()
        patcher = self.patcher.get_config()
        attention = self.attention.get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "thresholds": patcher["thresholds"],
                "trainable_thresholds": patcher["trainable_thresholds"],
                "threshold_rate": patcher["threshold_rate"],
                "penalty_weight": self.penalty_weight,
                "token_size": self.token_size,
                "embed_dim": self.embed_dim,
                "rule": patcher["rule"],
                "max_patches": patcher["max_patches"],
                "budget": patcher["budget"],
                "base_size": patcher["base_size"],
                "min_size": patcher["min_size"],
                "sigma": self.complexity.get_config()["sigma"],
                "temperature": patcher["temperature"],
                "attention": attention["activation"],
                "attention_filters": list(attention["filters"]),
                "width_multiplier": self.embedder.get_config()["width_multiplier"],
                "position_encoding": self.position_encoding,
                "chunk_size": attention["chunk_size"],
                "validate": self.validate,
            }
        )
        return config


def _weighted_mean(values, weights, ragged):
    """Per-image mean of `values` `[n, D]` weighted by `weights` `[n]`."""
    rows = ragged.value_rowids()
    count = ragged.nrows()
    weights = tf.cast(weights, values.dtype)
    total = tf.math.unsorted_segment_sum(values * weights[:, None], rows, count)
    norm = tf.math.unsorted_segment_sum(weights, rows, count)
    return tf.math.divide_no_nan(total, norm[:, None])
