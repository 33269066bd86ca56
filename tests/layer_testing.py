"""A shared check of every layer of the library, after Keras' own `run_layer_test`.

`run_layer_test(layer_cls, init_kwargs, inputs)` builds the layer from
`init_kwargs`, calls it on the inputs that `inputs` makes, and checks what every
Keras layer must survive: its config round trip and serialisation, a `.keras`
save and load, `tf.function` with unknown sizes, training and gradients, and
dtype policies. Each check is also a function of its own.

A layer is always called as `layer(*args, training=...)`, with `args` from
`LayerInputs.make`: that is the one hook, so images, ragged patches and
`(boxes, image_size)` pairs all fit without special cases. Layers whose `call`
has no `training` argument never see it (Keras drops it).

Also the test data the layer tests share (`ragged_pixels`).
"""

import dataclasses
import inspect
import os
import tempfile
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def ragged_pixels(row_lengths=(2, 0, 1, 3), size=8, seed=0, channels=3):
    """Random patches in 0..1: RaggedTensor `[len(row_lengths), (N), size, size, channels]`.

    The default row lengths cover several, none and one patch per image; `()`
    gives a batch of zero images.
    """
    rng = np.random.default_rng(seed)
    values = rng.uniform(size=(sum(row_lengths), size, size, channels)).astype("float32")
    return tf.RaggedTensor.from_row_lengths(values, tf.constant(row_lengths, tf.int64))


@dataclasses.dataclass(frozen=True)
class LayerInputs:
    """What a layer is called on in `run_layer_test`.

    Attributes:
        make: `make(size, seed)` -> tuple of the positional call arguments.
        sizes: the `size` values to make inputs of. The first must give a
            non-empty batch: every check uses it. All of them (an empty batch
            among them where the layer accepts one) go through `tf.function`.
        signature: one `tf.TensorSpec` or `tf.RaggedTensorSpec` per positional
            argument, with None where sizes vary: the input signature of the
            `tf.function` and the `keras.Input`s of the saved model.
    """

    make: Callable
    sizes: Sequence
    signature: Sequence


def run_layer_test(layer_cls, init_kwargs, inputs, expected_output_dtype=None,
                   policies=POLICIES):
    """Runs every check below on one layer configuration.

    Args:
        layer_cls: the layer class; it must be registered serializable.
        init_kwargs: constructor arguments, without `dtype` (the policy check
            sets it).
        inputs: a `LayerInputs`.
        expected_output_dtype: the dtype of every floating output whatever the
            policy, for layers that compute in float32 by design; None: the
            policy's compute dtype.
        policies: the dtype policies to check, given as the layer's `dtype=`.
    """
    args = inputs.make(inputs.sizes[0], 0)
    check_config(layer_cls, init_kwargs, args)
    check_saving(layer_cls, init_kwargs, inputs)
    check_tf_function(layer_cls, init_kwargs, inputs)
    check_training(layer_cls, init_kwargs, args)
    check_dtype_policies(layer_cls, init_kwargs, args, expected_output_dtype, policies)


# -- checks ------------------------------------------------------------------


def check_config(layer_cls, init_kwargs, args):
    """Config round trip, registered serialisation, and weights into a clone.

    The config names every constructor argument; `from_config(get_config())`
    gives the same config;
    `keras.layers.deserialize(keras.layers.serialize(layer))` (safe mode, no
    custom objects: the class must be registered) gives the same class and
    config; and a clone from the config, given the layer's weights, gives the
    same outputs.
    """
    layer = built_layer(layer_cls, init_kwargs, args)
    config = layer.get_config()
    missing = constructor_arguments(layer_cls) - set(config)
    assert not missing, f"get_config lacks {sorted(missing)}"
    assert layer_cls.from_config(config).get_config() == config
    registered = keras.saving.get_registered_name(layer_cls)
    assert registered.startswith("dynpatch_tf>"), f"{layer_cls.__name__} is not registered"
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is layer_cls
    assert restored.get_config() == config
    clone = layer_cls.from_config(config)
    call(clone, args)
    clone.set_weights(layer.get_weights())
    assert_same_outputs(call(clone, args), call(layer, args))


def check_saving(layer_cls, init_kwargs, inputs):
    """A functional model around the layer gives the same outputs after `.keras` save and load."""
    args = inputs.make(inputs.sizes[0], 0)
    layer = built_layer(layer_cls, init_kwargs, args)
    symbolic = [
        keras.Input(batch_shape=tuple(spec.shape.as_list()), dtype=spec.dtype.name,
                    ragged=isinstance(spec, tf.RaggedTensorSpec))
        for spec in inputs.signature
    ]
    model = keras.Model(symbolic, call(layer, symbolic))
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)  # safe mode, no custom objects
    assert_same_outputs(loaded(list(args), training=False), call(layer, args))


def check_tf_function(layer_cls, init_kwargs, inputs):
    """One `tf.function` traced with `inputs.signature` matches eager on every size."""
    layer = built_layer(layer_cls, init_kwargs, inputs.make(inputs.sizes[0], 0))
    traced = tf.function(lambda *args: call(layer, args), input_signature=list(inputs.signature))
    for seed, size in enumerate(inputs.sizes):
        args = inputs.make(size, seed)
        outputs = traced(*args)
        assert_finite(outputs)
        assert_same_outputs(outputs, call(layer, args))


def check_training(layer_cls, init_kwargs, args):
    """training=False and True give finite outputs; gradients reach every trainable weight."""
    layer = layer_cls(**init_kwargs)
    for training in (False, True):
        assert_finite(call(layer, args, training))
    if not layer.trainable_weights:
        return
    with tf.GradientTape() as tape:
        loss = scalar_loss(call(layer, args, training=True))
    grads = tape.gradient(loss, layer.trainable_weights)
    for weight, grad in zip(layer.trainable_weights, grads):
        assert grad is not None, f"no gradient reaches {weight.path}"
        assert np.all(np.isfinite(grad)), f"non-finite gradient of {weight.path}"
    assert any(np.any(grad.numpy() != 0) for grad in grads), "all gradients are zero"


def check_dtype_policies(layer_cls, init_kwargs, args, expected_output_dtype=None,
                         policies=POLICIES):
    """With `dtype=policy`: finite outputs in the expected dtype (training or
    not), float32 weights, and every sublayer (those made in `build` too)
    under the same policy.

    Args:
        expected_output_dtype: see `run_layer_test`.
        policies: policy names, each given as the layer's `dtype=` argument
            (not as the global policy).
    """
    for policy in policies:
        layer = layer_cls(**init_kwargs, dtype=policy)
        expected = expected_output_dtype or keras.DTypePolicy(policy).compute_dtype
        for training in (False, True):
            outputs = call(layer, args, training)
            for tensor in floating(outputs):
                assert tensor.dtype == expected, f"{policy}: output {tensor.dtype}, not {expected}"
            assert_finite(outputs)
        for weight in layer.weights:
            assert weight.dtype == "float32", f"{policy}: {weight.path} is {weight.dtype}"
        # Keras has no public list of a layer's sublayers (`Model.layers` is for models).
        for sublayer in layer._flatten_layers(include_self=False):
            assert sublayer.dtype_policy.name == policy, f"{policy}: {sublayer.name} is not"


# -- helpers -----------------------------------------------------------------


def call(layer, args, training=False):
    """`layer(*args, training=training)`: the harness's one call convention."""
    return layer(*args, training=training)


def constructor_arguments(layer_cls):
    """The names of the arguments of `layer_cls.__init__`, but `**kwargs`."""
    parameters = list(inspect.signature(layer_cls.__init__).parameters.values())[1:]
    return {p.name for p in parameters if p.kind != inspect.Parameter.VAR_KEYWORD}


def built_layer(layer_cls, init_kwargs, args, seed=0):
    """A layer from `init_kwargs`, called once on `args`, its weights perturbed."""
    layer = layer_cls(**init_kwargs)
    call(layer, args)
    perturb_weights(layer, seed)
    return layer


def perturb_weights(layer, seed=0):
    """Moves every weight off its initial value, so weights that fail to travel show.

    BatchNorm statistics start at 0 and 1 and thresholds at fixed values: a
    clone that kept them would otherwise pass for a copy. Multiplies by 0.8 to
    1.2 and adds N(0, 0.02) (moving variances stay positive).
    """
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = keras.ops.convert_to_numpy(weight)
        weight.assign(value * rng.uniform(0.8, 1.2, value.shape) + rng.normal(0, 0.02, value.shape))


def floating(outputs):
    """The floating tensors of a nest of outputs, ragged ones as their values."""
    flat = tf.nest.flatten(outputs, expand_composites=True)
    return [tensor for tensor in flat if tensor.dtype.is_floating]


def as_numpy(outputs):
    """Every tensor of a nest of outputs as NumPy, floating ones in float32."""
    flat = tf.nest.flatten(outputs, expand_composites=True)
    return [tf.cast(t, tf.float32).numpy() if t.dtype.is_floating else t.numpy() for t in flat]


def assert_same_outputs(actual, expected, atol=1e-6):
    """Same structure, shapes (row splits included) and values."""
    actual, expected = as_numpy(actual), as_numpy(expected)
    assert len(actual) == len(expected), "the outputs differ in structure"
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=atol)


def assert_finite(outputs):
    for tensor in floating(outputs):
        assert np.all(np.isfinite(tf.cast(tensor, tf.float32))), "non-finite output"


def scalar_loss(outputs):
    """A loss every floating output feeds into: `sum(sin(3 x))`.

    Not a plain sum, whose gradient is zero for outputs that sum to a
    constant (softmax weights per image).
    """
    return tf.add_n([tf.reduce_sum(tf.sin(3.0 * tf.cast(t, tf.float32))) for t in floating(outputs)])
