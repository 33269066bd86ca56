"""The bad-input matrix (issue 12): what each kind of bad input gets, from the Python
API, the data pipeline and the command line.

`ROWS` is the table that README.md shows under "What bad input gets", one row per
kind of input with what it gets. Each row is tested here (`covers`) or by the test
named in `TESTED_ELSEWHERE`, and `test_the_readme_table_is_the_matrix` checks both
that and that the README lists exactly these rows.
"""

import importlib
import itertools
import os
import re

import keras
import numpy as np
import pyarrow.parquet
import pytest
import tensorflow as tf

from dynpatch_tf import ComplexityMap, DynamicPatcher, DynamicPatchModel, image_folder_dataset
from dynpatch_tf.image_files import clean_op_message, read_image
from dynpatch_tf.image_headers import MAX_IMAGE_PIXELS
from dynpatch_tf.inference import embed_files, embed_function
from tests.cli_testing import run_main
from tests.encoded_images import (
    cmyk_jpeg_bytes, jpeg_declaring, png_bomb_bytes, random_image, webp_bytes, write,
)
from tests.test_patcher import assert_tiles
from tests.conftest import TWO_BLOCKS

ROWS = {
    "rank": ("Array of rank other than 4, e.g. one image `[H, W, 3]`",
             "`ValueError`: *must have rank 4 [batch, height, width, channels]*"),
    "channels": ("Array with 2 or 4 channels (grey+alpha, RGBA)",
                 "`ValueError`: *must have 1 or 3 channels*, with how to drop alpha"),
    "grey": ("Grey array `[B, H, W, 1]` for a model built on RGB",
             "Repeated to 3 channels, as grey files are read; RGB for a grey model: `ValueError`"),
    "dtype": ("Other dtypes: int32, bool, ...", "`ValueError` naming the dtype"),
    "integers": ("uint8 or uint16 arrays", "Divided by 255 or 65535"),
    "floats": ("float16, float32 or float64 arrays in 0..1", "Used as they are (cast to float32)"),
    "float_range": ("Float arrays outside 0..1 (0..255, or negative)",
                    "`InvalidArgumentError`: *must lie in 0..1 as floats (divide 0..255 images by "
                    "255, or pass them as uint8)*, with the range found; up to 0.01 outside passes"),
    "non_finite": ("NaN or Inf pixels", "`InvalidArgumentError`: *contain NaN or Inf values*"),
    "small": ("Image below the base size (64 px a side)",
              "Array: `ValueError` (static shape) or `InvalidArgumentError` (in a graph) naming "
              "the size; file: skipped, *too small: HxW px*"),
    "non_multiple": ("Sides that are not multiples of 64",
                     "Padded (reflect); the boxes tile the original image"),
    "empty_batch": ("Empty batch (B = 0)", "Empty outputs"),
    "alpha_files": ("Grey+alpha or RGBA PNG file", "Read as RGB: alpha dropped (not composited)"),
    "deep_files": ("16-bit PNG file", "Read as its values / 65535"),
    "cmyk": ("CMYK JPEG file", "Read as RGB (the JPEG decoder converts it)"),
    "broken_files": ("Corrupt, truncated or zero-byte file; a text file named `.jpg`; WebP or "
                     "JPEG XL data",
                     "`InvalidArgumentError` from `read_image`: *image data is empty*, *Unknown "
                     "image file format*, *corrupt PNG header* or the decoder's message"),
    "bomb": ("Decompression bomb: a header that declares a huge image",
             f"Refused before decoding: *image too large ... over the limit of {MAX_IMAGE_PIXELS}* "
             "(`image_headers.MAX_IMAGE_PIXELS`; `max_pixels=` sets another)"),
    "batch_job": ("Any of these files in a batch job (`dynpatch embed`, `evaluate`, `calibrate`, "
                  "`visualize`; `embed_files`, `image_folder_dataset`)",
                  "Reported with its path and reason and skipped; every good file's result is "
                  "written"),
    "empty_folder": ("Empty folder, or a class folder with no class subfolders",
                     "`ValueError`: *no image files in ...* / *has no class subfolders*; the "
                     "command line prints it and exits with 1"),
    "cap": ("`max_patches` below an image's count of 64 px blocks",
            "`InvalidArgumentError`: *max_patches N is below the M base blocks of the image*"),
    "budget": ('`rule="budget"` with `trainable_thresholds=True`',
               "The thresholds are not trained: they decide no split under that rule"),
    "noise": ("4096^2 white noise",
              "With `max_patches`: the cap's patch count, memory bounded (peak in "
              "`docs/benchmarks.md`)"),
    "serving": ("Corrupt bytes or a bomb in a `predict_bytes` request",
                "`InvalidArgumentError` for that request, naming the problem; the process "
                "serves the next request"),
}
TESTED_ELSEWHERE = {
    "non_multiple": "tests/test_patcher.py::test_non_multiple_photo_tiles_and_drops_padding",
    "empty_batch": "tests/test_model.py::test_an_empty_batch_gives_empty_outputs",
    "serving": "tests/test_export.py::test_predict_bytes_fails_a_bad_request_and_serves_the_next",
}
COVERED = set()


def covers(*rows):
    """Marks a test as the one for `rows` of `ROWS`."""

    def mark(test):
        COVERED.update(rows)
        return test

    return mark


TINY = dict(token_size=8, embed_dim=16, width_multiplier=0.35, attention_filters=(8,), embedder_blocks=TWO_BLOCKS)
README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = DynamicPatchModel(num_classes=2, thresholds=(0.001, 0.002, 0.004), **TINY)
    model.build((None, None, None, 3))
    return model


# -- arrays: the Python API -------------------------------------------------------


def entry_points(model):
    """Every public way an image batch goes in, by name."""
    return {
        "model": model,
        "embed": model.embed,
        "patches": model.patches,
        "patcher": lambda images: DynamicPatcher(token_size=8)(
            images, np.zeros(np.shape(images)[:-1] + (1,), "float32")),
        "complexity": ComplexityMap(),
    }


def noise(shape, dtype="float32", scale=1.0, offset=0.0):
    return (np.random.default_rng(0).random(shape) * scale + offset).astype(dtype)


ENTRIES = ("model", "embed", "patches", "patcher", "complexity")
# (row, images, error, message); the message is what the cleaned error must contain.
STATIC_ERRORS = [
    ("rank", noise((64, 64, 3)), ValueError, "must have rank 4"),
    ("channels", noise((1, 64, 64, 2)), ValueError, r"1 or 3 channels; got 2 .* images\[..., :1\]"),
    ("channels", noise((1, 64, 64, 4)), ValueError, r"1 or 3 channels; got 4 .* images\[..., :3\]"),
    ("dtype", noise((1, 64, 64, 3), "int32", 255), ValueError, "uint8, uint16 or floating point; got dtype int32"),
    ("dtype", noise((1, 64, 64, 3), "bool"), ValueError, "got dtype bool"),
    ("small", noise((1, 40, 64, 3)), ValueError, "height 40 is below the minimum 64"),
]
RUNTIME_ERRORS = [
    ("float_range", noise((1, 64, 64, 3), scale=255), r"must lie in 0..1 as floats \(divide 0..255 "
     r"images by 255, or pass them as uint8\); got values from 0.0\d* to 254.9"),
    ("float_range", noise((1, 64, 64, 3), offset=-0.5), "must lie in 0..1 as floats .* from -0.49"),
    ("non_finite", np.where(noise((1, 64, 64, 3)) > 0.9, np.nan, 0.5).astype("float32"),
     "contain NaN or Inf values"),
    ("non_finite", np.where(noise((1, 64, 64, 3)) > 0.9, -np.inf, 0.5).astype("float32"),
     "contain NaN or Inf values"),
]


@covers("rank", "channels", "dtype", "small")
@pytest.mark.parametrize("row, images, error, message, entry", [
    (*case, entry) for case in STATIC_ERRORS for entry in ENTRIES
    # The complexity map alone needs only its kernel radius.
    if not (case[0] == "small" and entry == "complexity")
])
def test_arrays_of_the_wrong_shape_or_dtype_are_refused_by_name(model, row, images, error, message,
                                                                entry):
    with pytest.raises(error, match=message):
        entry_points(model)[entry](images)


@pytest.fixture(scope="module")
def traced(model):
    """`model.embed` traced once for any batch size, height and width."""
    return embed_function(model)


@covers("float_range", "non_finite", "small")
@pytest.mark.parametrize("row, images, message, entry", [
    (*case, entry) for case in RUNTIME_ERRORS for entry in ENTRIES + ("traced",)
] + [("small", noise((1, 64, 40, 3)), "height and width must be at least 64", "traced")])
def test_bad_values_fail_when_the_graph_runs_with_a_clean_message(model, traced, row, images,
                                                                  message, entry):
    call = traced if entry == "traced" else entry_points(model)[entry]
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        call(images)
    assert re.search(message, clean_op_message(error.value.message)), error.value.message


@covers("float_range")
def test_floats_just_outside_0_1_pass_and_validate_false_skips_the_check(model):
    images = noise((1, 64, 64, 3))
    images[0, 0, :2, 0] = [-0.009, 1.009]  # resampling overshoot
    assert np.isfinite(model(images).numpy()).all()
    unchecked = DynamicPatchModel(num_classes=2, validate=False, **TINY)
    assert np.isfinite(unchecked(images * 255).numpy()).all()


def numbers(output):
    """The numbers of an entry point's output to compare: the pooled embedding, the
    patch pixels or the tensor itself."""
    if isinstance(output, dict):
        output = output["pooled_embedding"] if "pooled_embedding" in output else output["pixels"]
    return (output.flat_values if isinstance(output, tf.RaggedTensor) else output).numpy()


@covers("integers", "floats")
@pytest.mark.parametrize("dtype, scale", [("uint8", 255), ("uint16", 65535), ("float16", 1),
                                          ("float64", 1)])
def test_integer_and_float_dtypes_are_converted_to_0_1(model, dtype, scale):
    values = noise((2, 64, 96, 3), "float64")
    images = np.round(values * scale).astype(dtype) if scale > 1 else values.astype(dtype)
    reference = images.astype("float32") / np.float32(scale)  # what the model must see
    for name, call in entry_points(model).items():
        got, expected = numbers(call(images)), numbers(call(reference))
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=name)


@covers("grey")
def test_grey_arrays_are_repeated_for_an_rgb_model_and_rgb_is_refused_by_a_grey_one(model):
    grey = noise((2, 64, 128, 1))
    np.testing.assert_allclose(model(grey), model(np.repeat(grey, 3, axis=-1)), atol=1e-6)
    grey_model = DynamicPatchModel(num_classes=2, **TINY)
    grey_model(grey)
    with pytest.raises(ValueError, match="built for 1-channel images; got 3 channels"):
        grey_model(np.repeat(grey, 3, axis=-1))
    unbuilt = DynamicPatchModel(num_classes=2, **TINY)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        unbuilt(noise((1, 64, 64, 4)))
    assert not unbuilt.built, "a refused first input must not build the model"


@covers("cap")
def test_a_cap_below_the_base_blocks_is_an_error_naming_both(model, tmp_path):
    capped = DynamicPatchModel(num_classes=2, max_patches=3, thresholds=(1e-9,) * 3, **TINY)
    counts = capped.embed(noise((1, 64, 192, 3)))["boxes"].row_lengths().numpy()
    assert counts.tolist() == [3], "3 base blocks: the cap holds exactly"
    for call in (capped.embed, embed_function(capped)):  # eager and in a graph
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            call(noise((1, 128, 128, 3)))
        assert clean_op_message(error.value.message).startswith(
            "max_patches 3 is below the 4 base blocks of the image")
    with pytest.raises(ValueError, match="max_patches must be a positive integer"):
        DynamicPatcher(max_patches=0)


@covers("budget")
def test_budget_rule_never_trains_its_thresholds():
    keras.utils.set_random_seed(0)
    budgeted = DynamicPatchModel(num_classes=2, rule="budget", budget=4, penalty_weight=1.0,
                                 trainable_thresholds=True, **TINY)
    budgeted.build((None, None, None, 3))
    budgeted.compile(keras.optimizers.Adam(0.1))
    images, labels = noise((4, 64, 64, 3)), np.array([0, 1, 0, 1])
    before, head = budgeted.thresholds.numpy(), budgeted.head.kernel.numpy()
    budgeted.train_step((images, labels))  # the step fit runs, eagerly
    np.testing.assert_array_equal(budgeted.thresholds.numpy(), before)
    assert np.abs(budgeted.head.kernel.numpy() - head).max() > 1e-3, "the step trained the rest"
    assert not any("threshold" in weight.path for weight in budgeted.trainable_weights)
    quadtree = DynamicPatchModel(num_classes=2, **TINY)
    quadtree.build((None, None, None, 3))
    assert any("threshold" in weight.path for weight in quadtree.trainable_weights)


@covers("noise")
def test_capped_4096_white_noise_costs_the_cap():
    images = random_image(4096, 4096)[None]
    # Thresholds below any noise block's mean: every block wants to split, the cap decides.
    capped = DynamicPatchModel(num_classes=2, max_patches=5000, thresholds=(1e-4,) * 3, **TINY)  # 4096 base blocks
    out = capped.embed(images)
    count = int(out["boxes"].row_lengths()[0])
    assert 5000 - 3 < count <= 5000, "each undone split frees 3 patches"
    assert_tiles(out["boxes"][0].numpy(), 4096, 4096)
    assert np.isfinite(out["pooled_embedding"].numpy()).all()


# -- files: reader, pipeline, command line -------------------------------------------

GOOD = random_image(96, 128, seed=1)


def good_files():
    """`{name: (bytes, the RGB image read_image must give, as float)}` of readable files."""
    grey_alpha, rgba = random_image(64, 80, 2, seed=2), random_image(72, 64, 4, seed=3)
    deep = np.random.default_rng(4).integers(0, 65536, (64, 64, 3), np.uint16)
    cmyk, cmyk_as_pillow_reads_it = cmyk_jpeg_bytes(random_image(64, 96, seed=5))
    return {
        "a/good.png": (tf.io.encode_png(GOOD).numpy(), GOOD / 255),
        "a/grey_alpha.png": (tf.io.encode_png(grey_alpha).numpy(),
                             np.repeat(grey_alpha[..., :1], 3, axis=-1) / 255),
        "b/rgba.png": (tf.io.encode_png(rgba).numpy(), rgba[..., :3] / 255),
        "b/deep.png": (tf.io.encode_png(deep).numpy(), deep / 65535),
        "b/cmyk.jpg": (cmyk, cmyk_as_pillow_reads_it / 255),
    }


def bad_files():
    """`{name: (bytes, the reason each reader must give)}` of files to skip."""
    png, jpeg = tf.io.encode_png(GOOD).numpy(), tf.io.encode_jpeg(GOOD).numpy()
    return {
        "a/empty.jpg": (b"", "image data is empty"),
        "a/notes.jpg": (b"a text file named like a photo\n", "Unknown image file format"),
        "a/webp.png": (webp_bytes(GOOD), "Unknown image file format"),
        "a/corrupt.png": (png[:8] + os.urandom(200), "corrupt PNG header"),
        "b/truncated.png": (png[: len(png) // 2], "PNG"),
        "b/truncated.jpg": (jpeg[: len(jpeg) // 2], "JPEG"),
        "b/bomb.png": (png_bomb_bytes(9500, 9500), "image too large: its header declares 9500x9500"),
        "a/bomb.jpg": (jpeg_declaring(jpeg, 60000, 60000), "declares 60000x60000 pixels"),
        "b/small.png": (tf.io.encode_png(GOOD[:40, :100]).numpy(), "too small: 40x100 px"),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A class folder (`a`, `b`) of the good and bad files: `(path, good, bad)`."""
    root = tmp_path_factory.mktemp("mixed")
    good, bad = good_files(), bad_files()
    for name, (data, _) in {**good, **bad}.items():
        write(root / name, data)
    return str(root), good, bad


def path_of(folder, name):
    return os.path.join(folder[0], name)


@covers("alpha_files", "deep_files", "cmyk", "broken_files", "bomb")
def test_read_image_converts_or_refuses_every_file_by_name(folder):
    _, good, bad = folder
    for name, (_, expected) in good.items():
        image = read_image(path_of(folder, name)).numpy()
        tolerance = 0.015 if name.endswith("cmyk.jpg") else 1e-6  # two JPEG decoders
        assert np.abs(image - expected).mean() <= tolerance, name
    for name, (_, reason) in bad.items():
        if "small" in name:
            continue  # readable; too small for the model
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            read_image(path_of(folder, name))
        assert reason in clean_op_message(error.value.message), (name, error.value.message)


def assert_skipped(skipped, folder, leave_out=()):
    """`skipped` lists exactly the bad files (but those in `leave_out`), each with its reason."""
    reasons = {os.path.relpath(path, folder[0]): reason for path, reason in skipped}
    bad = {name: value for name, value in folder[2].items() if name not in leave_out}
    assert set(reasons) == set(bad)
    for name, (_, expected) in bad.items():
        assert expected in reasons[name] and "Traceback" not in reasons[name], (name, reasons[name])


@covers("batch_job", "bomb", "broken_files")
def test_folder_pipeline_skips_the_bad_files_and_yields_the_good_ones(folder):
    dataset, info = image_folder_dataset(folder[0], batch_size=None, shuffle=False)
    assert_skipped(info.skipped, folder)
    read = {os.path.relpath(path, folder[0]): image.numpy() for path, (image, _) in
            zip(info.paths, dataset)}
    assert set(read) == set(folder[1])
    for name, image in read.items():
        np.testing.assert_allclose(image, read_image(path_of(folder, name)), atol=1e-6)


@covers("batch_job")
def test_embed_files_skips_the_bad_files_and_embeds_the_good_ones(model, folder):
    embedded = embed_files(model, [folder[0]])
    assert_skipped(embedded.skipped, folder)
    assert sorted(os.path.relpath(path, folder[0]) for path in embedded.paths) == sorted(folder[1])
    for path, embedding in zip(embedded.paths, embedded.embeddings):
        expected = model.embed(read_image(path)[None])["pooled_embedding"][0]
        np.testing.assert_allclose(embedding, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model.save(path)
    return path


@covers("batch_job")
def test_command_line_embed_reports_the_bad_files_and_writes_the_good_ones(
        model, model_file, folder, tmp_path, capsys):
    status, log = run_main(["embed", "--model", model_file, folder[0], "--output", str(tmp_path)])
    errors = capsys.readouterr().err
    assert status == 0 and f"Embedded {len(folder[1])} images" in log
    skipped = dict(re.findall(r"^Skipped (.*?): (.*)$", errors, re.M))
    # The Beam job names a small image by the model's own check (its base size).
    small = {name for name, (_, reason) in folder[2].items() if reason.startswith("too small")}
    assert_skipped([(path, reason) for path, reason in skipped.items()
                    if os.path.relpath(path, folder[0]) not in small], folder, leave_out=small)
    for path, reason in skipped.items():
        if os.path.relpath(path, folder[0]) in small:
            assert "must be at least 64" in reason, reason
    assert "Traceback" not in errors
    rows = pyarrow.parquet.read_table(tmp_path / "embeddings").to_pylist()
    for row in rows:
        expected = model.embed(read_image(row["path"])[None])["pooled_embedding"][0]
        np.testing.assert_allclose(row["embedding"], expected, rtol=1e-4, atol=1e-5)
    assert sorted(os.path.relpath(row["path"], folder[0]) for row in rows) == sorted(folder[1])


@covers("batch_job")
def test_command_line_evaluate_skips_the_bad_files(model_file, folder, caplog, capsys):
    # One image size, one trace: the small file is then resized, not skipped.
    status, log = run_main(["evaluate", "--model", model_file, "--data", folder[0],
                            "--batch-size", "2", "--image-size", "64"])
    assert status == 0, capsys.readouterr().err
    assert re.search(r"^accuracy: [\d.]+$", log, re.M)
    assert re.search(r"^patches per image: mean [\d.]+, p95 \d+, max \d+$", log, re.M)
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == len(folder[2]) - 1
    for name, (_, reason) in folder[2].items():
        if name == "b/small.png":
            continue
        assert any(path_of(folder, name) in message and reason in message for message in warned)


@covers("empty_folder")
def test_an_empty_folder_is_named_by_the_api_and_the_command_line(model_file, tmp_path, capsys):
    empty, classes = tmp_path / "empty", tmp_path / "classes"
    (classes / "a").mkdir(parents=True)
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files in"):
        embed_files(DynamicPatchModel(**TINY), [str(empty)])
    with pytest.raises(ValueError, match="has no class subfolders"):
        image_folder_dataset(str(empty))
    with pytest.raises(ValueError, match=r"no image files \(.bmp, .gif, .jpeg, .jpg, .png\) in"):
        image_folder_dataset(str(classes))
    for argv, message in ((["embed", str(empty), "--output", str(tmp_path / "out")],
                           f"no image files in {empty}"),
                          (["evaluate", "--data", str(classes)], "no image files (")):
        assert run_main([argv[0], "--model", model_file, *argv[1:]])[0] == 1
        error = capsys.readouterr().err
        assert error.startswith(f"dynpatch {argv[0]}: error: ") and message in error
        assert "Traceback" not in error


# -- the table in the README ----------------------------------------------------------


def readme_table():
    """The rows of README.md's "What bad input gets" table, as `(input, outcome)` pairs."""
    with open(README) as file:
        lines = file.read().split("### What bad input gets", 1)[1].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    return [tuple(cell.strip() for cell in row.strip("|").split(" | ")) for row in list(table)[2:]]


def test_the_readme_table_is_the_matrix():
    assert set(COVERED) | set(TESTED_ELSEWHERE) == set(ROWS), "every row has its test"
    for node in TESTED_ELSEWHERE.values():
        path, name = node.split("::")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, name, None)), node
    expected = ["| Input | What it gets |", "|---|---|"]
    expected += [f"| {given} | {outcome} |" for given, outcome in ROWS.values()]
    assert readme_table() == list(ROWS.values()), (
        "README.md's table should read:\n\n" + "\n".join(expected))
