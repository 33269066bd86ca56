"""SavedModel signatures, TF Serving requests and TFLite export of DynamicPatchModel.

Every artifact is built once per module on a tiny model; the references are the
Keras model's own `embed` outputs on real photos from scikit-image.
"""

import base64
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as tflite_schema
from ai_edge_litert.interpreter import Interpreter
from tensorflow.core.protobuf import saved_model_pb2

from dynpatch_tf import DynamicPatchModel
from dynpatch_tf import export
from dynpatch_tf.image_files import clean_op_message
from tests.conftest import TWO_BLOCKS, photo
from tests.encoded_images import jpeg_declaring

PHOTOS = ("astronaut", "coffee", "chelsea")
SQUARE = (128, 128)
NON_SQUARE = (160, 224)  # not a multiple of the 64 px base blocks: padded and clipped
BYTES_SIZE = (192, 192)
TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 1e-2}
# (quantization, input size) of the TFLite files; each conversion takes about 8 s.
TFLITE = [(None, NON_SQUARE), ("float16", SQUARE), ("dynamic", NON_SQUARE)]
PY_FUNC_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def tiny_model(**kwargs):
    """A small model whose networks run in several chunks (a TFLite WHILE loop)."""
    keras.utils.set_random_seed(0)
    kwargs.setdefault("chunk_size", 100)
    model = DynamicPatchModel(
        token_size=8, embed_dim=16, width_multiplier=0.35, attention_filters=(8,),
        embedder_blocks=TWO_BLOCKS, **kwargs
    )
    model.build((None, None, None, 3))
    return model


def photos(size):
    """The `PHOTOS` resized (antialiased) to `size`: `[3, h, w, 3]` float32 in 0..1."""
    resized = [tf.image.resize(photo(name), size, antialias=True) / 255.0 for name in PHOTOS]
    return tf.stack(resized).numpy()


def keras_outputs(model, images):
    """`model.embed(images)` (and the head), one dict of NumPy arrays per image."""
    embedded = model.embed(images)
    logits = model.head(embedded["pooled_embedding"])
    return [
        {
            "pooled_embedding": embedded["pooled_embedding"][i].numpy(),
            "logits": logits[i].numpy(),
            "probabilities": tf.nn.softmax(logits[i]).numpy(),
            "patch_embeddings": embedded["patch_embeddings"][i].numpy(),
            "boxes": embedded["boxes"][i].numpy(),
        }
        for i in range(len(images))
    ]


def assert_matches(outputs, expected, atol=1e-4):
    """Dense `outputs` of an exported graph agree with `keras_outputs` `expected`."""
    outputs = {key: np.asarray(value) for key, value in outputs.items()}
    length = outputs["patch_mask"].shape[1]
    for i, image in enumerate(expected):
        count = len(image["boxes"])
        assert outputs["num_patches"][i] == count
        np.testing.assert_array_equal(outputs["patch_mask"][i], np.arange(length) < count)
        for key in ("pooled_embedding", "logits", "probabilities"):
            np.testing.assert_allclose(outputs[key][i], image[key], atol=atol)
        for key in ("patch_embeddings", "boxes"):
            np.testing.assert_allclose(outputs[key][i, :count], image[key], atol=atol)
            assert not outputs[key][i, count:].any()


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_classes=3)


@pytest.fixture(scope="module")
def expected(model):
    """`(images, keras_outputs)` of the photos at each test size, computed once."""
    return {
        size: (photos(size), keras_outputs(model, photos(size))) for size in (SQUARE, NON_SQUARE)
    }


@pytest.fixture(scope="module")
def saved_model_path(model, tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("saved_models")
    os.makedirs(base_dir / "dynpatch" / "7")
    os.makedirs(base_dir / "dynpatch" / "notes")
    return export.export_saved_model(model, str(base_dir), bytes_size=BYTES_SIZE)


@pytest.fixture(scope="module")
def loaded(saved_model_path):
    return tf.saved_model.load(saved_model_path)


@pytest.fixture(scope="module")
def tflite_files(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    return {
        (quantization, size): export.export_tflite(
            model,
            str(folder / f"{quantization}_{size[0]}x{size[1]}.tflite"),
            image_size=size,
            quantization=quantization,
        )
        for quantization, size in TFLITE
    }


def run_litert(path, image):
    """The outputs of the `.tflite` file at `path` on one image `[h, w, 3]`."""
    runner = Interpreter(model_path=path).get_signature_runner()
    return runner(images=image[None])


# -- SavedModel ---------------------------------------------------------------


def test_version_is_one_past_the_largest_integer_folder(saved_model_path, tmp_path):
    assert os.path.basename(saved_model_path) == "8"
    assert os.path.isfile(os.path.join(saved_model_path, "saved_model.pb"))
    assert export.next_version(str(tmp_path / "missing")) == 1
    for entry in ("2", "10", "11.bak", "latest"):
        os.makedirs(tmp_path / entry)
    assert export.next_version(str(tmp_path)) == 11


def test_saved_model_cli_shows_both_signatures(saved_model_path):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = [cli, "show", "--all", "--dir", saved_model_path]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    tensors = {}
    for block in re.split(r"\nsignature_def\['", shown)[1:]:
        name = block[: block.index("'")]
        for kind, key, dtype, shape in re.findall(
            r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([-\d, ]*\))",
            block,
        ):
            tensors[name, kind, key] = (dtype, shape)
    outputs = {
        "pooled_embedding": ("DT_FLOAT", "(-1, 16)"),
        "logits": ("DT_FLOAT", "(-1, 3)"),
        "probabilities": ("DT_FLOAT", "(-1, 3)"),
        "num_patches": ("DT_INT32", "(-1)"),
        "patch_embeddings": ("DT_FLOAT", "(-1, -1, 16)"),
        "patch_mask": ("DT_BOOL", "(-1, -1)"),
        "boxes": ("DT_INT32", "(-1, -1, 4)"),
    }
    expected = {("serving_default", "inputs", "images"): ("DT_FLOAT", "(-1, -1, -1, 3)")}
    expected[("predict_bytes", "inputs", "image_bytes")] = ("DT_STRING", "(-1)")
    for signature in ("serving_default", "predict_bytes"):
        expected.update({(signature, "outputs", key): value for key, value in outputs.items()})
    assert tensors == expected


@pytest.mark.parametrize("size", [SQUARE, NON_SQUARE])
def test_serving_default_matches_keras(loaded, expected, size):
    images, reference = expected[size]
    assert_matches(loaded.signatures["serving_default"](images=tf.constant(images)), reference)


def test_serving_default_answers_an_empty_batch_with_empty_outputs(loaded):
    outputs = loaded.signatures["serving_default"](images=tf.zeros([0, 128, 128, 3]))
    assert outputs["pooled_embedding"].shape[0] == 0 and outputs["num_patches"].shape == (0,)
    assert outputs["patch_embeddings"].shape[:2] == (0, 0) and outputs["patch_mask"].shape == (0, 0)


def test_predict_bytes_decodes_and_resizes_in_graph(model, loaded):
    encoded = [
        tf.io.encode_png(photo("astronaut")).numpy(),  # 512 x 512
        tf.io.encode_jpeg(photo("coffee"), quality=90).numpy(),  # 400 x 600
        tf.io.encode_png(photo("chelsea")[:100, :150]).numpy(),  # enlarged
    ]
    outputs = loaded.signatures["predict_bytes"](image_bytes=tf.constant(encoded))
    # The documented rule, written out: decode to RGB, resize to bytes_size, / 255.
    images = np.stack([
        tf.image.resize(tf.io.decode_image(data, channels=3), BYTES_SIZE, antialias=True) / 255.0
        for data in encoded
    ])
    assert_matches(outputs, keras_outputs(model, images))


def test_bytes_size_below_the_base_size_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="below the model's base size 64"):
        export.export_saved_model(model, str(tmp_path), bytes_size=(32, 512))


def test_fixed_max_patches_pads_and_truncates(model, expected):
    images, reference = expected[SQUARE]
    images = images[:2]
    counts = np.array([len(image["boxes"]) for image in reference[:2]])
    for length in (int(counts.max()) + 5, int(counts.min()) - 1):
        outputs = export.serving_outputs(model, images, max_patches=length)
        assert outputs["patch_embeddings"].shape == (2, length, 16)
        assert outputs["boxes"].shape == (2, length, 4)
        np.testing.assert_array_equal(outputs["num_patches"], counts)
        np.testing.assert_array_equal(
            outputs["patch_mask"].numpy().sum(1), np.minimum(counts, length)
        )


def test_embedding_model_has_no_class_outputs():
    model = tiny_model()
    outputs = export.serving_outputs(model, photos(SQUARE)[:1])
    keys = {"pooled_embedding", "num_patches", "patch_embeddings", "boxes", "patch_mask"}
    assert set(outputs) == keys


def test_saved_model_keeps_the_runtime_image_checks(loaded):
    nan = np.full((1,) + SQUARE + (3,), np.nan, "float32")
    for images, message in ((nan, "NaN or Inf"), (photos(SQUARE)[:1] * 255, "must lie in 0..1")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.signatures["serving_default"](images=tf.constant(images))


# -- Under load ---------------------------------------------------------------


def test_signatures_answer_concurrent_calls_as_they_answer_single_ones(
        loaded, expected, request_inputs):
    """4 threads make 3 requests each at once, both signatures and two image sizes,
    one of them bad: every answer is the one a single call gives."""
    requests = [
        ("serving_default", {"images": tf.constant(expected[SQUARE][0])}),
        ("serving_default", {"images": tf.constant(expected[NON_SQUARE][0][:2])}),
        ("predict_bytes", {"image_bytes": tf.constant(request_inputs["encoded"][0])}),
        ("predict_bytes", {"image_bytes": tf.constant([b"not an image"])}),
    ]

    def answer(index):
        name, inputs = requests[index]
        try:
            return loaded.signatures[name](**inputs)
        except tf.errors.InvalidArgumentError as error:
            return clean_op_message(error.message)

    single = [answer(index) for index in range(len(requests))]
    assert single[3].startswith("Unknown image file format")
    start = threading.Barrier(4)

    def client(first):
        start.wait()
        return [(index, answer(index)) for index in np.roll(np.arange(4), first)[:3]]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [pair for pairs in pool.map(client, range(4)) for pair in pairs]
    assert len(answers) == 12
    for index, got in answers:
        if isinstance(single[index], str):
            assert got == single[index]
            continue
        for key, value in single[index].items():
            np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-6, err_msg=key)


def test_predict_bytes_fails_a_bad_request_and_serves_the_next(loaded, request_inputs):
    encoded, reference = request_inputs["encoded"]
    png = encoded[0]
    bad_images = {
        "truncated": (png[: len(png) // 2], "PNG"),
        "text": (b"not an image", "Unknown image file format"),
        "empty": (b"", "image data is empty"),
        "bomb": (jpeg_declaring(tf.io.encode_jpeg(photo("coffee")).numpy(), 60000, 60000),
                 "image too large: its header declares 60000x60000"),
    }
    serve = loaded.signatures["predict_bytes"]
    for name, (bad, message) in bad_images.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            serve(image_bytes=tf.constant([encoded[0], bad, encoded[1]]))
        assert message in clean_op_message(error.value.message), name
        assert_matches(serve(image_bytes=tf.constant(encoded)), reference)


# -- TF Serving requests ------------------------------------------------------


def tensors_from_rest(body, signature):
    """The input tensors TF Serving's REST API makes of a predict `body`.

    The mapping followed: `{"b64": text}` becomes the bytes it encodes (tf.string);
    row format, `instances` is a list of per-example values (bare, for a
    signature with one input) stacked along a new batch axis; columnar format,
    `inputs` maps each input name to its whole batched value.
    """
    body = json.loads(json.dumps(body))  # what goes over HTTP
    specs = signature.structured_input_signature[1]

    def batch(name, values):
        decoded = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in values]
        return tf.constant(decoded, specs[name].dtype)

    if "instances" in body:
        [name] = specs  # one input: the instances are its bare values
        return {name: batch(name, body["instances"])}
    return {name: batch(name, values) for name, values in body["inputs"].items()}


def tensors_from_grpc(request):
    """The input tensors TF Serving makes of a `PredictRequest`: `tf.make_ndarray` of each."""
    return {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}


@pytest.fixture(scope="module")
def request_inputs(model, expected):
    """Two photos as float images and as PNG bytes, each with its `keras_outputs`."""
    images, reference = expected[SQUARE]
    pixels = np.round(images[:2] * 255).astype("uint8")
    encoded = [tf.io.encode_png(image).numpy() for image in pixels]
    decoded = tf.image.resize(pixels, BYTES_SIZE, antialias=True) / 255.0
    return {
        "images": (images[:2], reference[:2]),
        "encoded": (encoded, keras_outputs(model, decoded)),
    }


@pytest.mark.parametrize("kind", ["images", "encoded"])
@pytest.mark.parametrize("format", ["instances", "inputs"])
def test_rest_requests_match_keras(loaded, request_inputs, kind, format):
    value, reference = request_inputs[kind]
    body = export.rest_request(**{kind: value}, format=format)
    signature = loaded.signatures[body["signature_name"]]
    assert_matches(signature(**tensors_from_rest(body, signature)), reference)


@pytest.mark.parametrize("kind", ["images", "encoded"])
def test_grpc_requests_match_keras(loaded, request_inputs, kind):
    value, reference = request_inputs[kind]
    request = export.grpc_request(**{kind: value}, model_name="dynpatch", version=8)
    assert request.model_spec.name == "dynpatch" and request.model_spec.version.value == 8
    signature = loaded.signatures[request.model_spec.signature_name]
    assert_matches(signature(**tensors_from_grpc(request)), reference)


def test_request_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        export.rest_request()
    with pytest.raises(ValueError, match="exactly one"):
        export.grpc_request(images=np.zeros((1, 64, 64, 3)), encoded=[b""])
    with pytest.raises(ValueError, match="format must be one of"):
        export.rest_request(encoded=[b""], format="rows")


# -- TFLite -------------------------------------------------------------------


@pytest.mark.parametrize("quantization, size", TFLITE)
def test_litert_matches_keras(tflite_files, expected, quantization, size):
    images, reference = expected[size]
    for image, keras_image in zip(images, reference):
        outputs = run_litert(tflite_files[quantization, size], image)
        np.testing.assert_array_equal(outputs["num_patches"], [len(keras_image["boxes"])])
        np.testing.assert_allclose(
            outputs["pooled_embedding"][0],
            keras_image["pooled_embedding"],
            atol=TOLERANCE[quantization],
        )


def test_keras_saved_model_and_litert_agree(loaded, tflite_files, expected):
    images, reference = expected[NON_SQUARE]
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    assert_matches(served, reference)
    for i, image in enumerate(images):
        outputs = run_litert(tflite_files[None, NON_SQUARE], image)
        assert_matches(outputs, reference[i : i + 1])
        np.testing.assert_allclose(
            outputs["pooled_embedding"][0], served["pooled_embedding"][i], atol=1e-4
        )


def test_budget_rule_converts_with_a_fixed_patch_count(tmp_path):
    """The dense variant: `budget` (and `max_patches`, the same selection) convert too.

    72 patches in chunks of 24: the count is a multiple of the chunk size, which
    must not leave an empty last chunk (XNNPACK cannot run one).
    """
    model = tiny_model(num_classes=3, rule="budget", budget=12 + 3 * 20, chunk_size=24)
    image = photos(NON_SQUARE)[:1]
    path = export.export_tflite(model, str(tmp_path / "budget.tflite"), image_size=NON_SQUARE)
    outputs = run_litert(path, image[0])
    assert_matches(outputs, keras_outputs(model, image))
    assert outputs["patch_mask"].shape == (1, 72) and outputs["patch_mask"].all()


def test_litert_has_no_runtime_image_checks(tflite_files):
    """The converter drops `tf.debugging.Assert`: NaN pixels give NaN, not an error."""
    image = np.full(NON_SQUARE + (3,), np.nan, "float32")
    assert np.isnan(run_litert(tflite_files[None, NON_SQUARE], image)["pooled_embedding"]).all()


def test_quantization_is_checked(model, tmp_path):
    with pytest.raises(ValueError, match="quantization must be one of"):
        export.export_tflite(model, str(tmp_path / "m.tflite"), quantization="int8")


# -- No Python ops ------------------------------------------------------------


def saved_model_ops(path):
    """Every op type in `saved_model.pb`: graph nodes and all library functions."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as file:
        proto.ParseFromString(file.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def tflite_ops(path):
    """`(builtin op names, custom op codes)` of a `.tflite` flatbuffer."""
    with open(path, "rb") as file:
        model = tflite_schema.Model.GetRootAs(file.read(), 0)
    names = {
        code: name for name, code in vars(tflite_schema.BuiltinOperator).items() if name.isupper()
    }
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    builtins = {names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())] for code in codes}
    customs = {code.CustomCode().decode() for code in codes if code.CustomCode()}
    return builtins, customs


def test_saved_model_has_no_python_ops(saved_model_path):
    ops = saved_model_ops(saved_model_path)
    assert {"DecodeImage", "Conv2D"} <= ops  # the walk reaches the function bodies
    assert not ops & PY_FUNC_OPS


@pytest.mark.parametrize("quantization, size", TFLITE)
def test_tflite_has_builtin_ops_only(tflite_files, quantization, size):
    builtins, customs = tflite_ops(tflite_files[quantization, size])
    assert {"CONV_2D", "WHERE", "TOPK_V2", "UNSORTED_SEGMENT_SUM"} <= builtins
    # A Python op could only come through as a select TF op, i.e. custom "FlexPyFunc".
    assert not customs
