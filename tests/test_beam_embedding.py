"""dynpatch_tf.beam_embedding: image files -> Parquet embeddings on Apache Beam.

One pipeline runs (Beam's in-process runner) on an exported SavedModel over a
folder that mixes good and bad files; the `.keras` path of the same pipeline
runs through `dynpatch embed` in tests/test_cli.py.
"""

import os

import numpy as np
import pyarrow.parquet
import pytest
import tensorflow as tf

from dynpatch_tf import DynamicPatchModel, make_needles
from dynpatch_tf.beam_embedding import (
    DynamicPatchModelHandler,
    check_model_path,
    file_patterns,
    read_errors,
    run_embedding_job,
)
from dynpatch_tf.export import export_saved_model
from dynpatch_tf.image_files import IMAGE_EXTENSIONS, read_image

GOOD = ("wide.png", "sub/square.JPG", "sub/deeper/tall.png")
BAD = {"corrupt.png": "corrupt PNG header", "text.jpg": "Unknown image file format",
       "small.png": "images height and width must be at least 64 (one base patch)"}


@pytest.fixture(scope="module")
def model():
    """An untrained tiny model whose thresholds split needles objects down to 8 px."""
    model = DynamicPatchModel(num_classes=2, thresholds=(0.001, 0.002, 0.004), token_size=8,
                              embed_dim=8, width_multiplier=0.25, attention_filters=(4,))
    model.build((None, None, None, 3))
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Good images of three sizes in nested folders, three bad files and a text file."""
    root = tmp_path_factory.mktemp("images")
    for index, (name, size) in enumerate(zip(GOOD, ((64, 128), (128, 128), (192, 64)))):
        image = make_needles(1, image_size=size, num_classes=2, seed=index)[0][0]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        encode = tf.io.encode_jpeg if name.endswith(".JPG") else tf.io.encode_png
        tf.io.write_file(str(root / name), encode(image))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "text.jpg").write_text("a text file named .jpg")
    tf.io.write_file(str(root / "small.png"), tf.io.encode_png(np.zeros((32, 48, 3), np.uint8)))
    (root / "notes.txt").write_text("not an image extension: left out of a folder")
    return root


def test_the_pipeline_embeds_every_good_image_and_writes_the_bad_ones_apart(model, folder, tmp_path):
    saved = export_saved_model(model, str(tmp_path / "saved_models"), "dynpatch")
    output = tmp_path / "embedded"
    job = run_embedding_job([str(folder)], saved, str(output))

    rows = sorted(pyarrow.parquet.read_table(output / "embeddings").to_pylist(), key=lambda r: r["path"])
    assert [row["path"] for row in rows] == sorted(str(folder / name) for name in GOOD)
    for row in rows:
        image = read_image(row["path"])  # the decoded file, as the pipeline decodes it
        expected = model.embed(image[None])
        assert (row["height"], row["width"]) == tuple(image.shape[:2])
        assert row["num_patches"] == int(expected["boxes"].row_lengths()[0])
        np.testing.assert_allclose(row["embedding"], expected["pooled_embedding"][0], rtol=1e-4, atol=1e-5)
    assert max(row["num_patches"] for row in rows) > 4, "the needles objects are split"

    errors = dict(read_errors(str(output)))
    assert set(errors) == {str(folder / name) for name in BAD}
    for name, reason in BAD.items():  # the reason alone, without TensorFlow's decorations
        assert errors[str(folder / name)].startswith(reason)
        assert "node" not in errors[str(folder / name)]
    assert (job.embedded, job.failed) == (len(GOOD), len(BAD))


def test_the_handler_runs_each_size_once_and_isolates_a_failing_image(model):
    calls = []

    def embed(images):
        calls.append(images.shape)
        if images.shape[1] < 64:
            raise ValueError("too small")
        return {"pooled_embedding": images.mean(axis=(1, 2)), "num_patches": np.full(len(images), 7)}

    rng = np.random.default_rng(0)
    batch = [rng.random(shape, np.float32) for shape in
             ((64, 64, 3), (64, 128, 3), (32, 64, 3), (64, 64, 3), (64, 128, 3))]
    results = DynamicPatchModelHandler("unused").run_inference(batch, embed)
    assert [result.example is image for result, image in zip(results, batch)] == [True] * 5
    for result, image in zip(results, batch):
        if image.shape[0] == 32:
            assert result.inference == {"error": "too small"}
        else:
            np.testing.assert_allclose(result.inference["pooled_embedding"], image.mean(axis=(0, 1)))
    assert sorted(calls) == sorted([(2, 64, 64, 3), (2, 64, 128, 3), (1, 32, 64, 3)])


def test_file_patterns_and_model_paths_are_checked_before_the_job(folder, tmp_path):
    patterns = file_patterns([str(folder), "gs://bucket/photos/*.jpg"])
    assert patterns[-1] == "gs://bucket/photos/*.jpg"
    assert len(patterns) == len(IMAGE_EXTENSIONS) + 1
    assert f"{folder}/**.[jJ][pP][gG]" in patterns
    with pytest.raises(ValueError, match="neither a file, a folder nor a file pattern"):
        file_patterns([str(folder / "missing.png")])
    (tmp_path / "model.h5").write_text("")
    for path in (str(tmp_path), str(tmp_path / "model.h5"), str(tmp_path / "missing.keras")):
        with pytest.raises(ValueError, match="neither a SavedModel folder"):
            check_model_path(path)
    os.makedirs(tmp_path / "1")
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"")
    assert check_model_path(str(tmp_path / "1")) == "saved_model"
