"""DynamicPatchModel: complexity map -> quadtree patches -> attention -> embedder -> head.

Training. The patcher's thresholds are weights, and the straight-through gates
of the patcher multiply each patch's attention weight (value 1, gradient of the
soft split probabilities), so the task loss reaches the thresholds. The
subdivision penalty (`DynamicPatchModel.penalty`) is added to the loss by the
model's train and test steps, which also log it as `penalty` and the hard patch
count per image as `patches`. No metric is updated in `call`, so `call` is a
pure function that exports as it is. A custom training loop adds
`model.penalty(outputs["patch_fraction"])` to its loss itself.

Mixed precision. The model's dtype policy (`dtype="mixed_bfloat16"` or
`"mixed_float16"`) reaches every default part but the head; the complexity map
and the patcher's decisions, the reductions over patches (weighted mean,
softmax, penalty) and the head compute in float32.

Distribution. Under a `tf.distribute` strategy Keras runs the steps on every
replica and sums the gradients; each replica adds its `1 / num_replicas`
share of the global batch's penalty (`dynpatch_tf.distribute`). Two steps
work around Keras 3.15 under `MultiWorkerMirroredStrategy` (see
`_maybe_symbolic_build` and `_step_metrics`).

XLA. Ragged tensors do not compile with XLA: the patcher, attention and
embedder say `supports_jit = False`, so Keras' `jit_compile="auto"` leaves XLA
off and `jit_compile=True` falls back with a warning.
"""

import keras
import tensorflow as tf

from dynpatch_tf import image_ops
from dynpatch_tf.distribute import first_replica_batch, is_multi_worker
from dynpatch_tf.heads import identifies
from dynpatch_tf.parts import PART_NAMES, check_options, default_parts
from dynpatch_tf.patch_ops import weighted_mean
from dynpatch_tf.penalty import RunningFraction, check_budget, subdivision_penalty


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class DynamicPatchModel(keras.Model):
    """An adaptive-resolution image classifier and embedder, composed of its parts.

    Each image goes through the `complexity` map and the `patcher`; all patches
    of all images then go through the `attention` CNN and, multiplied by their
    weight, through the `embedder` as ONE flat batch (the ragged tensors'
    values), and the results go back to their images through the row splits.
    Nothing is padded to a common patch count.

    Parts are passed as objects (as keras-hub composes a task from a backbone
    and a head) and serialised nested, so every option of every part is
    reachable. The short path: leave a part out and it is made by
    `default_parts` from the options among `**kwargs` (`num_classes`,
    `thresholds`, `token_size`, `embed_dim`, ...; see `default_parts`). An
    option for a part that was passed as an object is an error.

    `embed(images)` returns the embeddings: `patches(images)` (the adaptive
    part), then `embed_patches` (the networks). `call(images)` returns the logits
    of the head on the attention-weighted mean of the patch embeddings (or
    that pooled embedding itself when there is no head). Training, mixed
    precision and XLA: see the module docstring.

    Args:
        complexity: a `ComplexityMap`, or None for the default.
        patcher: a `DynamicPatcher`, or None for the default.
        attention: a `PatchAttention`, or None for the default. (A string is
            read as the option `attention_activation`, as files saved by
            version 0.1.0 have it.)
        embedder: a `PatchEmbedder`, or None for the default.
        position: a `PatchPositionEncoding` (or a layer with its call
            signature), None for the default, or False for none.
        head: a layer mapping the pooled embedding `[B, D]` to logits (or to
            an identification embedding or cosines, `dynpatch_tf.heads`), or
            one with `reads_patches = True` (`PatchTransformerHead`) mapping
            the patch embeddings `[B, (N), D]`; None for the default
            (`head_type`: `"pooled"`, `Dense(num_classes)` on the pooled
            embedding, `"transformer"`, `"identification"` or `"arcface"`; no
            head when `num_classes` is None, but for `"identification"`).
        penalty_weight: weight of the subdivision penalty (0: off).
        patch_budget: None for the linear penalty, or a patch fraction in
            (0, 1] for the budget form (see `subdivision_penalty`).
        budget_momentum: in training, the budget form acts on a running mean
            of the batches' patch fractions with this momentum
            (`RunningFraction`); 0 for each batch's own.
        validate: check image values (NaN, Inf) and sizes when the graph runs.
        **kwargs: options of the default parts (see `default_parts`) and base
            `keras.Model` arguments (`name`, `dtype`, ...).

    Input shape:
        `[B, H, W, C]` uint8 (0..255), uint16 (0..65535) or float (0..1), `C` in
        {1, 3}, `H, W >= base_size`; H and W may change from batch to batch. The
        model is built for the channel count it first sees; grey images given to a
        model built on RGB are repeated to 3 channels.

    Output shape:
        `[B, num_classes]` float32 logits (or `[B, embed_dim]` without a head).

    Example:

    >>> model = DynamicPatchModel(num_classes=3, token_size=8, embed_dim=16)
    >>> model.compile()  # Adam, sparse cross-entropy on logits, accuracy
    >>> model(np.random.rand(2, 128, 128, 3).astype("float32")).shape
    TensorShape([2, 3])
    >>> custom = DynamicPatchModel(patcher=DynamicPatcher(rule="block", token_size=8),
    ...                            head=keras.layers.Dense(3))
    """

    def __init__(self, complexity=None, patcher=None, attention=None, embedder=None,
                 position=None, head=None, penalty_weight=0.0, patch_budget=None, budget_momentum=0.9,
                 validate=True, **kwargs):
        options = {name: kwargs.pop(name) for name in list(kwargs) if name not in _MODEL_ARGUMENTS}
        if isinstance(attention, str):
            options["attention_activation"], attention = attention, None
        super().__init__(**kwargs)
        parts = dict(zip(PART_NAMES, (complexity, patcher, attention, embedder, position, head)))
        check_options(options, [name for name, part in parts.items() if part is not None])
        if embedder is not None:  # a default position encoding takes the given embedder's size
            options.setdefault("embed_dim", embedder.embed_dim)
        missing = [name for name, part in parts.items() if part is None]
        parts.update(default_parts(include=missing, dtype=self.dtype_policy, **options))
        for name, part in parts.items():  # position=False: no position encoding
            setattr(self, name, None if part is False else part)
        self.penalty_weight = float(penalty_weight)
        self.patch_budget = check_budget(patch_budget)
        self.running_fraction = None if self.patch_budget is None else RunningFraction(
            budget_momentum, dtype="float32", name="running_fraction")
        self.validate = validate
        self.image_channels = None  # set by `build`
        self.penalty_tracker = keras.metrics.Mean(name="penalty")
        self.patches_tracker = keras.metrics.Mean(name="patches")

    @property
    def num_classes(self):
        """The head's output size, or None for an embedding model."""
        if self.head is None:
            return None
        return self.head.compute_output_shape((None, self.embedder.embed_dim))[-1]

    @property
    def thresholds(self):
        """The patcher's current thresholds, one value per split level."""
        return self.patcher.thresholds

    def build(self, input_shape):
        """Builds every part that is not built yet (a part passed in may be), for
        images of `input_shape`'s channel count (checked first: a bad first input
        must not build the model)."""
        image_ops.check_image_shape(input_shape, self._min_image_size())
        self.image_channels = input_shape[-1]
        token = self.patcher.token_size
        patch_shape = (None, None, token, token, input_shape[-1])
        shapes = [(self.patcher, ()), (self.attention, (patch_shape,)), (self.embedder, (patch_shape,))]
        if self.position is not None:
            shapes.append((self.position, ((None, 4), (2,))))
        if self.head is not None:
            head_shape = (None, None) if _reads_patches(self.head) else (None,)
            shapes.append((self.head, (head_shape + (self.embedder.embed_dim,),)))
        if self.running_fraction is not None:
            shapes.append((self.running_fraction, ((),)))
        for layer, args in shapes:
            if not layer.built:
                layer.build(*args)

    def compile(self, optimizer="auto", loss="auto", metrics="auto", **kwargs):
        """`keras.Model.compile` with working defaults: `model.compile()` trains the head.

        Args:
            optimizer: `"auto"` for `Adam(1e-3)`, or any optimizer.
            loss: `"auto"` for the head's `default_loss()` where it has one
                (the identification heads, `dynpatch_tf.heads`), else
                `SparseCategoricalCrossentropy(from_logits=True)` on a model
                with a head (none without one); or any loss.
            metrics: `"auto"` for the head's `default_metrics()` where it has
                one, else `["accuracy"]` on a model with a head; or any metrics.
            **kwargs: other `keras.Model.compile` arguments.
        """
        classifier = self.head is not None
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) if classifier else None
            loss = self._head_default("default_loss", loss)
        if metrics == "auto":
            metrics = self._head_default("default_metrics", ["accuracy"] if classifier else None)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def _head_default(self, hook, otherwise):
        """The head's `hook()` (`default_loss`, `default_metrics`) if it has one, else `otherwise`."""
        method = getattr(self.head, hook, None)
        return method() if callable(method) else otherwise

    def compile_from_config(self, config):
        """Restore the compile settings of a saved model (as `keras.Model` does)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def patches(self, images, training=None):
        """The patcher's output for `images`: the adaptive part of the model.

        The images are checked and converted to float once, here, then go
        through the complexity map and the patcher. Builds the model on first
        use, so any entry point may come first.

        Args:
            images: `[B, H, W, C]` uint8, uint16 or float images.
            training: the patcher's mode (threshold jitter acts in training).

        Returns:
            `DynamicPatcher`'s dict (`pixels`, `boxes`, `levels`, `gates`, ...).
        """
        images = tf.convert_to_tensor(images)
        if not self.built:
            self.build(tuple(images.shape))  # plain values: the build config is JSON
        images = image_ops.prepare_images(images, self._min_image_size(), self.validate)
        images = self._built_channels(images)
        return self.patcher(images, self.complexity(images), training=training)

    def _min_image_size(self):
        return max(self.patcher.base_size, self.complexity.min_image_size)

    def _built_channels(self, images):
        """Grey `images` for a model built on RGB repeated to 3 channels, as image files are
        read; RGB images for a grey model are refused."""
        channels = images.shape[-1]
        if channels == self.image_channels:
            return images
        if channels == 1:
            return tf.repeat(images, self.image_channels, axis=-1)
        raise ValueError(
            f"this model was built for {self.image_channels}-channel images; got {channels} "
            f"channels (shape {images.shape}): convert them to grey first."
        )

    def embed(self, images, training=False):
        """Embeddings of a batch of images.

        Args:
            images: `[B, H, W, C]` uint8, uint16 or float images.
            training: run BatchNorm in training mode.

        Returns:
            A dict:
            * `patch_embeddings`: RaggedTensor `[B, (N), D]`, compute dtype;
            * `global_embedding`: RaggedTensor `[B, (N*D)]`, the concatenation of
              an image's patch embeddings in patch order;
            * `pooled_embedding`: `[B, D]` float32, their attention-weighted mean;
            * `attention`: RaggedTensor `[B, (N)]` patch weights;
            * `boxes`, `levels`: RaggedTensors from the patcher;
            * `patch_fraction`: `[B]` soft expected patch count over the count of
              finest patches (what the penalty uses).
        """
        images = tf.convert_to_tensor(images)
        patches = self.patches(images, training=training)
        return self.embed_patches(patches, tf.shape(images)[1:3], training=training)

    def embed_patches(self, patches, image_size, training=False):
        """`embed` from the patcher's output: the networks alone, without the adaptive part.

        For patches computed once and embedded several times, or to time the
        networks on their own (`recipes/benchmarks/throughput.py`).

        Args:
            patches: the dict of `patches(images)` (`pixels`, `gates`, `boxes`,
                `levels`, `patch_fraction`).
            image_size: the images' `(height, width)`, ints or a `[2]` int
                tensor (for the position encoding).
            training: run BatchNorm in training mode.

        Returns:
            `embed`'s dict.
        """
        pixels = patches["pixels"]
        pixels = pixels.with_flat_values(tf.cast(pixels.flat_values, self.embedder.compute_dtype))
        attention = self.attention(pixels, training=training)
        # In float32: the gates carry the thresholds' straight-through gradient.
        weights = tf.cast(attention.values, tf.float32) * patches["gates"].values
        embeddings = self.embedder(pixels, scales=weights, training=training).values
        boxes = patches["boxes"]
        if self.position is not None:
            image_size = tf.cast(image_size, tf.int32)
            embeddings += tf.cast(self.position(boxes.values, image_size), embeddings.dtype)
        embed_dim = self.embedder.embed_dim
        return {
            "patch_embeddings": pixels.with_values(embeddings),
            "global_embedding": tf.RaggedTensor.from_row_splits(
                tf.reshape(embeddings, [-1]), pixels.row_splits * embed_dim, validate=False
            ),
            "pooled_embedding": weighted_mean(embeddings, weights, pixels),
            "attention": attention,
            "boxes": boxes,
            "levels": patches["levels"],
            "patch_fraction": patches["patch_fraction"],
        }

    def penalty(self, patch_fraction, training=False):
        """`subdivision_penalty` of `patch_fraction` `[B]` (as `embed` returns it)
        with this model's `penalty_weight` and `patch_budget`: a float32 scalar.
        In training, the budget form reads the running mean of the fraction,
        which the call updates (`RunningFraction`)."""
        return subdivision_penalty(patch_fraction, self.penalty_weight, self.patch_budget,
                                   self.running_fraction, training=training)

    def call(self, images, training=False):
        return self._forward(images, training)[0]

    def _forward(self, images, training):
        """`(head output, embed's dict)`: what `call` returns and what the steps log."""
        outputs = self.embed(images, training=training)
        return self.head_output(outputs, training=training), outputs

    def head_output(self, embedded, training=False):
        """The head on `embed`'s dict: on the patch embeddings for a head that
        reads patches (`PatchTransformerHead`), else on the pooled embedding;
        the pooled embedding itself when the model has no head."""
        if self.head is None:
            return embedded["pooled_embedding"]
        if _reads_patches(self.head):
            return self.head(embedded["patch_embeddings"], training=training)
        return self.head(embedded["pooled_embedding"])

    def retrieval_embedding(self, embedded):
        """The embedding to compare images by, from `embed`'s dict: the head's unit-norm
        identification embedding (`dynpatch_tf.heads`) where it has one, else the
        pooled embedding. float32 `[B, E]`."""
        if identifies(self.head):
            return tf.cast(self.head.identity_embedding(embedded["pooled_embedding"]), tf.float32)
        return embedded["pooled_embedding"]

    def train_step(self, data):
        """Keras' train step, plus the penalty in the loss and its metrics."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred, outputs = self._forward(x, training=True)
            penalty = self.penalty(outputs["patch_fraction"], training=True)
            loss = self._step_loss(x, y, y_pred, penalty, sample_weight, training=True)
            scaled = self.optimizer.scale_loss(loss)
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        return self._step_metrics(x, y, y_pred, outputs, penalty, loss, sample_weight)

    def test_step(self, data):
        """Keras' test step, plus the penalty in the loss and its metrics."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred, outputs = self._forward(x, training=False)
        penalty = self.penalty(outputs["patch_fraction"])
        loss = self._step_loss(x, y, y_pred, penalty, sample_weight, training=False)
        return self._step_metrics(x, y, y_pred, outputs, penalty, loss, sample_weight)

    def _step_loss(self, x, y, y_pred, penalty, sample_weight, training):
        """The compiled loss plus the penalty, per replica (as Keras scales losses).

        Keras divides the compiled loss by the number of replicas and sums the
        replicas' gradients; the penalty, the global batch's on every replica
        (`subdivision_penalty`), is divided likewise, so that its gradient
        counts once, whatever the number of replicas.
        """
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        penalty = penalty / tf.distribute.get_strategy().num_replicas_in_sync
        return penalty if loss is None else tf.cast(loss, tf.float32) + penalty

    def _step_metrics(self, x, y, y_pred, outputs, penalty, loss, sample_weight):
        """Updates the trackers and compiled metrics; returns the step's logs.

        Under a multi-worker strategy each log is a `[1]` vector: Keras 3.15
        averages a multi-worker step's logs over the replicas with
        `strategy.reduce(MEAN, value, axis=0)`, which fails on scalars
        (tensorflow/tensorflow#72388), and gives the scalar mean of `[1]`s.
        """
        strategy = tf.distribute.get_strategy()
        self._loss_tracker.update_state(loss * strategy.num_replicas_in_sync,
                                        sample_weight=tf.shape(x)[0])
        self.penalty_tracker.update_state(penalty)
        self.patches_tracker.update_state(tf.cast(outputs["boxes"].row_lengths(), tf.float32))
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if is_multi_worker(strategy):
            logs = tf.nest.map_structure(lambda value: tf.reshape(value, [1]), logs)
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' build of the compiled state before `fit`, `evaluate` or `predict`.

        Keras 3.15 builds the metrics, the loss and the optimizer from one
        batch of the data, which it averages over the replicas with a single
        `strategy.reduce` of the whole `(x, y)` structure; a
        `MultiWorkerMirroredStrategy` cannot reduce a structure
        (keras-team/keras#20585). The build needs only the batch's shapes and
        dtypes: under a multi-worker strategy it is given the first replica's
        batch instead, taken as Keras takes its own.
        """
        if iterator is not None and data_batch is None and is_multi_worker(self.distribute_strategy):
            for _, _, batches in iterator:
                data_batch = first_replica_batch(next(batches))
                break
            iterator = None
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_config(self):
        config = super().get_config()
        config.update({name: _serialize(getattr(self, name)) for name in PART_NAMES})
        if self.position is None:
            config["position"] = False
        config.update(penalty_weight=self.penalty_weight, patch_budget=self.patch_budget,
                      validate=self.validate)
        if self.running_fraction is not None:
            config["budget_momentum"] = self.running_fraction.momentum
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for name in PART_NAMES:
            if isinstance(config.get(name), dict):
                config[name] = keras.layers.deserialize(config[name], custom_objects)
        return cls(**config)


# Arguments of `keras.Model` itself; every other keyword is a part option.
_MODEL_ARGUMENTS = ("name", "dtype", "trainable", "autocast")


def _reads_patches(head):
    """Whether `head` takes the patch embeddings (`PatchTransformerHead`) rather than the pooled one."""
    return getattr(head, "reads_patches", False)


def _serialize(layer):
    return None if layer is None else keras.layers.serialize(layer)
