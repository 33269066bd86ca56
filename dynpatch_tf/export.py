"""Export a `DynamicPatchModel` for TF Serving (SavedModel) and LiteRT (TFLite).

Serving signatures carry dense tensors, so every exported graph returns the
same dense outputs (see `serving_outputs`): the pooled embedding, the logits and
class probabilities when the model has a classification head (the unit-norm
`identity_embedding` when its head identifies), the patch count per image, and
the patch embeddings and boxes padded to a common length with a mask. The
padding is plain gather/where arithmetic on the flat patch batch, with no ragged
ops, so the TFLite converter takes the same graph with builtin ops only.

`serving_default` and the TFLite file take float32 images in 0..1;
`predict_bytes` takes encoded images. `rest_request` and `grpc_request` build
example TF Serving requests for both.

Example:

>>> model = DynamicPatchModel(num_classes=3, token_size=8, embed_dim=16)
>>> model.build((None, None, None, 3))
>>> export_saved_model(model, "saved_models")
'saved_models/dynpatch/1'
>>> export_tflite(model, "dynpatch.tflite", image_size=(256, 384))
'dynpatch.tflite'
"""

import base64
import os

import numpy as np
import tensorflow as tf

from dynpatch_tf.heads import identifies
from dynpatch_tf.image_headers import MAX_IMAGE_PIXELS, decode_image
from dynpatch_tf.patch_ops import padded_patches

IMAGES_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "predict_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
QUANTIZATIONS = (None, "float16", "dynamic")
REQUEST_FORMATS = ("instances", "inputs")


def serving_outputs(model, images, max_patches=None):
    """The dense outputs of every exported graph.

    Args:
        model: a built `DynamicPatchModel`.
        images: `[B, H, W, 3]` float32 images in 0..1.
        max_patches: the padded patch length `M`; None pads to the largest patch
            count in the batch. Patches past `M` are left out of the patch
            outputs (not of `pooled_embedding`, `logits` or `num_patches`).

    Returns:
        A dict of tensors:
        * `pooled_embedding`: `[B, D]` float32;
        * `logits`, `probabilities` (softmax): `[B, classes]` float32, only when
          the model has a classification head;
        * `identity_embedding`: `[B, E]` float32, unit norm, instead of those when
          the head identifies (`dynpatch_tf.heads`);
        * `num_patches`: `[B]` int32, the patch count of each image;
        * `patch_embeddings`: `[B, M, D]` float32, zero past an image's patches;
        * `boxes`: `[B, M, 4]` int32 `(y0, x0, y1, x1)`, zero past its patches;
        * `patch_mask`: `[B, M]` bool, True for the real patches.

    Example:

    >>> outputs = serving_outputs(model, tf.zeros([2, 128, 192, 3]))
    >>> outputs["patch_embeddings"].shape  # 6 base blocks of 64 px each
    TensorShape([2, 6, 16])
    """
    embedded = model.embed(images)
    embeddings = embedded["patch_embeddings"]
    embeddings = embeddings.with_values(tf.cast(embeddings.values, tf.float32))
    patch_embeddings, mask, counts = padded_patches(embeddings, max_patches)
    outputs = {
        "pooled_embedding": tf.cast(embedded["pooled_embedding"], tf.float32),
        "num_patches": counts,
        "patch_embeddings": patch_embeddings,
        "boxes": padded_patches(embedded["boxes"], max_patches)[0],
        "patch_mask": mask,
    }
    if identifies(model.head):
        outputs["identity_embedding"] = model.retrieval_embedding(embedded)
    elif model.head is not None:
        logits = tf.cast(model.head_output(embedded), tf.float32)
        outputs.update(logits=logits, probabilities=tf.nn.softmax(logits))
    return outputs


def decode_images(image_bytes, size, max_pixels=MAX_IMAGE_PIXELS):
    """Decode a batch of encoded images to one size, inside the graph.

    Every image is decoded by `image_headers.decode_image` (JPEG, PNG, GIF
    (first frame) or BMP; grayscale becomes RGB, alpha is dropped; an image
    whose header declares more than `max_pixels` pixels is refused before
    decoding) and resized to exactly `size`, ignoring its aspect ratio, with
    `tf.image.resize(method="bilinear", antialias=True)` (an area-weighted
    triangle filter when shrinking, bilinear when enlarging). The result is
    divided by 255. One undecodable image fails the whole batch with
    `tf.errors.InvalidArgumentError` naming the problem.

    Args:
        image_bytes: `[B]` tf.string, one encoded image each.
        size: `(height, width)` of the output.
        max_pixels: the most pixels an image's header may declare; None for
            no limit.

    Returns:
        `[B, height, width, 3]` float32 in 0..1.

    Example:

    >>> data = tf.io.encode_png(tf.zeros([300, 400, 3], tf.uint8))
    >>> decode_images(tf.stack([data, data]), (256, 256)).shape
    TensorShape([2, 256, 256, 3])
    """

    def decode(data):
        image = decode_image(data, max_pixels=max_pixels)
        return tf.image.resize(image, size, antialias=True) / 255.0

    spec = tf.TensorSpec([*size, 3], tf.float32)
    return tf.map_fn(decode, image_bytes, fn_output_signature=spec)


def next_version(model_dir):
    """1 + the largest integer-named folder in `model_dir`, or 1 if there is none."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(entry) for entry in os.listdir(model_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(
    model,
    base_dir="saved_models",
    name="dynpatch",
    version=None,
    bytes_size=(512, 512),
    max_patches=None,
):
    """Write `model` as a SavedModel in TF Serving's layout, `base_dir/name/version/`.

    Signatures (outputs as in `serving_outputs`, runtime image checks kept):
    * `serving_default`: input `images`, `[B, H, W, 3]` float32 in 0..1, any
      `H, W` from the model's base size up (the same for a whole batch);
    * `predict_bytes`: input `image_bytes`, `[B]` tf.string of encoded images,
      each decoded and resized to `bytes_size` by `decode_images`.

    Args:
        model: a built `DynamicPatchModel`.
        base_dir: TF Serving's model base folder.
        name: the model name (TF Serving's `MODEL_NAME`).
        version: an integer version; None takes 1 + the largest existing one.
        bytes_size: `(height, width)` that encoded images are resized to.
        max_patches: a fixed padded patch length `M`; None pads each batch to its
            largest patch count.

    Returns:
        The path of the version folder.

    Raises:
        ValueError: if `bytes_size` is below the model's base patch size.

    Example:

    >>> path = export_saved_model(model, "saved_models", version=3)
    >>> tf.saved_model.load(path).signatures["serving_default"](
    ...     images=tf.zeros([1, 128, 128, 3]))["pooled_embedding"].shape
    TensorShape([1, 16])
    """
    base_size = model.patcher.base_size
    if min(bytes_size) < base_size:
        raise ValueError(
            f"bytes_size {tuple(bytes_size)} is below the model's base size {base_size}."
        )
    model_dir = os.path.join(base_dir, name)
    path = os.path.join(model_dir, str(next_version(model_dir) if version is None else version))
    images_spec = tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES_INPUT)
    serve_images = tf.function(
        lambda images: serving_outputs(model, images, max_patches),
        input_signature=[images_spec],
        autograph=False,
    )
    serve_bytes = tf.function(
        lambda image_bytes: serve_images(decode_images(image_bytes, tuple(bytes_size))),
        input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)],
        autograph=False,
    )
    signatures = {
        IMAGES_SIGNATURE: serve_images.get_concrete_function(),
        BYTES_SIGNATURE: serve_bytes.get_concrete_function(),
    }
    tf.saved_model.save(_variables_module(signatures.values()), path, signatures=signatures)
    return path


def export_tflite(model, path, image_size=(512, 512), quantization=None):
    """Convert `model` to a TFLite file for LiteRT, builtin ops only.

    The ragged graph converts as it is, at a fixed input shape `[1, height,
    width, 3]` float32 in 0..1, with one signature, `serving_default`. Its
    outputs are those of `serving_outputs` with `M` = the image's patch count,
    so `patch_embeddings`, `boxes` and `patch_mask` have a dynamic length.

    All rules convert, and so does a `max_patches` cap; the `budget` rule gives
    a fixed patch count, so its patch outputs have a fixed length. The converter drops the runtime image checks (`tf.debugging.Assert`
    and the `assert_*` ops) without error: LiteRT does not reject NaN or Inf
    pixels, it returns NaN.

    Args:
        model: a built `DynamicPatchModel`.
        path: the `.tflite` file to write.
        image_size: `(height, width)` of the input, at least the base size.
        quantization: None (float32), `"float16"` (weights stored as float16)
            or `"dynamic"` (dynamic-range: int8 weights, float activations).

    Returns:
        `path`.

    Example:

    >>> export_tflite(model, "dynpatch.tflite", image_size=(256, 384))
    >>> runner = ai_edge_litert.interpreter.Interpreter(
    ...     model_path="dynpatch.tflite").get_signature_runner()
    >>> runner(images=np.zeros([1, 256, 384, 3], "float32"))["num_patches"]
    array([24], dtype=int32)
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}; got {quantization!r}.")
    spec = tf.TensorSpec([1, *image_size, 3], tf.float32, name=IMAGES_INPUT)
    function = tf.function(
        lambda images: serving_outputs(model, images), input_signature=[spec], autograph=False
    ).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function], _variables_module([function])
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    with open(path, "wb") as file:
        file.write(converter.convert())
    return path


def _variables_module(functions):
    """The root object to save: a `tf.Module` holding the variables `functions` read.

    Not `model.weights`: the SavedModel of those Keras variable wrappers loads
    in TensorFlow, but the TFLite converter binds the captured variables
    wrongly (NaN outputs). The `tf.Variable`s of the concrete functions, as
    `keras.export.ExportArchive` keeps them (it traces every endpoint twice,
    this traces once), work for both.

    Args:
        functions: concrete functions.
    """
    module = tf.Module()
    module.captured_variables = [
        variable for function in functions for variable in function.variables
    ]
    return module


def _request_input(images, encoded):
    """`(signature name, input name, batch)` of a request: float32 images or bytes (object)."""
    if (images is None) == (encoded is None):
        raise ValueError(
            "Pass exactly one of `images` (float arrays) and `encoded` (image bytes)."
        )
    if images is not None:
        return IMAGES_SIGNATURE, IMAGES_INPUT, np.asarray(images, np.float32)
    return BYTES_SIGNATURE, BYTES_INPUT, np.array([bytes(data) for data in encoded], object)


def rest_request(images=None, encoded=None, format="instances"):
    """A TF Serving REST predict body (a JSON-able dict) for `.../v1/models/<name>:predict`.

    Bytes are sent as `{"b64": <base64 text>}`, which TF Serving decodes to
    tf.string. The mapping TF Serving applies:
    * `format="instances"` (row format): `instances` is a list of per-example
      values (one input, so bare values), stacked along a new batch axis;
    * `format="inputs"` (columnar format): `inputs` maps each input name to its
      whole batched value.

    Args:
        images: `[B, H, W, 3]` float images in 0..1, for `serving_default`.
        encoded: a sequence of encoded images (bytes), for `predict_bytes`.
        format: `"instances"` or `"inputs"`.

    Returns:
        A dict with `signature_name` and `instances` or `inputs`.

    Example:

    >>> rest_request(encoded=[b"abc"])
    {'signature_name': 'predict_bytes', 'instances': [{'b64': 'YWJj'}]}
    """
    if format not in REQUEST_FORMATS:
        raise ValueError(f"format must be one of {REQUEST_FORMATS}; got {format!r}.")
    signature, name, batch = _request_input(images, encoded)
    if images is None:
        rows = [{"b64": base64.b64encode(data).decode("ascii")} for data in batch]
    else:
        rows = batch.tolist()
    body = {"instances": rows} if format == "instances" else {"inputs": {name: rows}}
    return {"signature_name": signature, **body}


def grpc_request(images=None, encoded=None, model_name="dynpatch", version=None):
    """A TF Serving gRPC `PredictRequest` (needs `tensorflow-serving-api`).

    Args:
        images: `[B, H, W, 3]` float images in 0..1, for `serving_default`.
        encoded: a sequence of encoded images (bytes), for `predict_bytes`.
        model_name: the served model's name.
        version: a model version to ask for; None means the latest.

    Returns:
        A `tensorflow_serving.apis.predict_pb2.PredictRequest` with one input,
        `tf.make_tensor_proto` of the batch (float32 or string).

    Example:

    >>> from tensorflow_serving.apis import prediction_service_pb2_grpc
    >>> stub = prediction_service_pb2_grpc.PredictionServiceStub(
    ...     grpc.insecure_channel("localhost:8500"))
    >>> stub.Predict(grpc_request(encoded=[png_bytes]), timeout=10)
    """
    from tensorflow_serving.apis import predict_pb2

    signature, name, batch = _request_input(images, encoded)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[name].CopyFrom(tf.make_tensor_proto(batch))
    return request
