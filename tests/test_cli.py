"""The `dynpatch` command line, end to end on a tiny needles set.

One training run serves every test (module fixture `run`); its model then goes
through `evaluate`, `embed` and `visualize`. Resuming a killed run is
`fit_and_save`'s (tests/test_training.py).
"""

import json
import os
import re
import types

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from dynpatch_tf import DynamicPatchModel, cli, demo, make_needles
from dynpatch_tf.cli import main
from dynpatch_tf.image_files import read_image
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS
from dynpatch_tf.visualize import COMPLEXITY_PERCENTILE, apply_colormap
from tests.cli_testing import run_main

SIZE = 128
EPOCHS = 3
TINY_TRAINING = [
    "--needles", "12", "--image-size", str(SIZE), "--classes", "2", "--batch-size", "4",
    "--validation-split", "0.25", "--epochs", str(EPOCHS),
    "--thresholds", "0.001", "0.002", "0.004",
    "--token-size", "8", "--embed-dim", "16", "--width-multiplier", "0.25",
    "--attention-filters", "4",
]
# Evaluation images: other seed than training's, same size and classes.
EVALUATION_DATA = ["--needles", "8", "--image-size", str(SIZE), "--classes", "2",
                   "--batch-size", "4", "--seed", "5"]
GAP = 8


def read_history(output):
    return json.loads((output / "history.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A training run of the command."""
    output = tmp_path_factory.mktemp("run")
    status, log = run_main(["train", *TINY_TRAINING, "--output", str(output)])
    assert status == 0, log
    return types.SimpleNamespace(output=output, model=str(output / "model.keras"), log=log)


@pytest.fixture(scope="module")
def model(run):
    return keras.models.load_model(run.model)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three needles PNGs, a corrupt file, a text file named .jpg and an image too small for the model."""
    folder = tmp_path_factory.mktemp("images")
    images, _ = make_needles(3, image_size=(SIZE, SIZE + 64), num_classes=2, seed=7)
    for index, image in enumerate(images):
        tf.io.write_file(str(folder / f"needles_{index}.png"), tf.io.encode_png(image))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "text.jpg").write_text("a text file named .jpg")
    tf.io.write_file(str(folder / "small.png"), tf.io.encode_png(images[0][:32, :48]))
    return folder, images


def test_train_writes_the_model_checkpoints_and_history(run):
    assert "Classes: plus, ring" in run.log
    assert re.findall(rf"^Epoch (\d+)/{EPOCHS}$", run.log, flags=re.M) == ["1", "2", "3"]
    assert f"Saved the model to {run.model}" in run.log
    assert [record["epoch"] for record in read_history(run.output)] == [1, 2, 3]
    checkpoints = sorted(os.listdir(run.output / "checkpoints"))
    assert checkpoints == [f"epoch-{epoch:03d}.keras" for epoch in range(1, EPOCHS + 1)]


def test_evaluate_prints_accuracy_loss_and_patch_counts(run, model):
    status, log = run_main(["evaluate", "--model", run.model, *EVALUATION_DATA])
    assert status == 0
    accuracy = float(re.search(r"^accuracy: ([\d.]+)$", log, re.M).group(1))
    assert 0 <= accuracy <= 1
    assert float(re.search(r"^loss: ([\d.]+)$", log, re.M).group(1)) > 0
    mean, p95, most = re.search(
        r"^patches per image: mean ([\d.]+), p95 (\d+), max (\d+)$", log, re.M).groups()
    images, _ = make_needles(8, image_size=SIZE, num_classes=2, seed=5)
    counts = model.embed(images)["boxes"].row_lengths().numpy()
    assert float(mean) == pytest.approx(counts.mean(), abs=0.05)
    assert int(most) == counts.max()
    assert counts.min() <= int(p95) <= counts.max()
    assert counts.max() > (SIZE // 64) ** 2, "the needles objects should be split"


def test_embed_runs_a_beam_job_that_writes_good_and_bad_files_apart(run, model, image_folder,
                                                                   tmp_path, capsys):
    folder, images = image_folder
    output = tmp_path / "embedded"
    status, log = run_main(["embed", "--model", run.model, str(folder), "--output", str(output)])
    assert status == 0
    errors = capsys.readouterr().err
    assert re.search(rf"Skipped {re.escape(str(folder / 'corrupt.png'))}: \S", errors)
    assert re.search(rf"Skipped {re.escape(str(folder / 'text.jpg'))}: Unknown image file format", errors)
    assert re.search(rf"Skipped {re.escape(str(folder / 'small.png'))}: images height and width "
                     "must be at least 64", errors)
    assert f"Embedded 3 images into {output / 'embeddings'}; 3 files could not be embedded" in log
    rows = sorted(pq.read_table(output / "embeddings").to_pylist(), key=lambda row: row["path"])
    assert [row["path"] for row in rows] == [str(folder / f"needles_{i}.png") for i in range(3)]
    expected = model.embed(images.astype(np.float32) / 255)
    np.testing.assert_allclose([row["embedding"] for row in rows], expected["pooled_embedding"],
                               rtol=1e-4, atol=1e-5)
    assert [row["num_patches"] for row in rows] == list(expected["boxes"].row_lengths())


def test_embed_passes_the_runner_and_the_options_after_a_double_dash_to_beam(
        run, monkeypatch, tmp_path, capsys):
    from dynpatch_tf import beam_embedding

    calls = []
    monkeypatch.setattr(beam_embedding, "run_embedding_job",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or
                        beam_embedding.EmbeddingJob(embedded=1, failed=0))
    argv = ["embed", "--model", run.model, "photos/", "--output", "gs://b/out",
            "--runner", "DataflowRunner", "--", "--project=p", "--region=r"]
    assert run_main(argv)[0] == 0
    assert calls == [((["photos/"], run.model, "gs://b/out"),
                      {"runner": "DataflowRunner", "pipeline_args": ["--project=p", "--region=r"]})]
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", run.model, "--needles", "4", "--", "--runner=X"])
    assert "arguments after -- are Beam pipeline options, for embed only" in capsys.readouterr().err


def test_visualize_draws_a_picture_per_image(run, image_folder, tmp_path):
    folder, images = image_folder
    output = tmp_path / "pictures"
    status, _ = run_main(["visualize", "--model", run.model, str(folder), "--output", str(output)])
    assert status == 0
    assert sorted(os.listdir(output)) == [f"needles_{i}.png" for i in range(3)]
    height, width = images.shape[1:3]
    for index, image in enumerate(images):
        picture = tf.io.decode_png(tf.io.read_file(str(output / f"needles_{index}.png"))).numpy()
        assert picture.shape == (height, 3 * width + 2 * GAP, 3)
        boxes_panel = picture[:, :width]
        changed = np.any(boxes_panel != image, axis=-1)
        assert 0.05 < changed.mean() < 0.9, "box outlines cover part of the image"
        assert changed[0].all() and changed[:, 0].all(), "the border is an outline"
        for panel in (picture[:, width + GAP:2 * width + GAP], picture[:, -width:]):
            assert panel.std() > 5, "complexity and attention panels are not blank"


def test_visualize_without_a_model_says_so(image_folder, tmp_path):
    folder, _ = image_folder
    output = tmp_path / "pictures"
    status, log = run_main(["visualize", str(folder / "needles_0.png"), "--output", str(output)])
    assert status == 0
    assert "untrained" in log
    assert os.listdir(output) == ["needles_0.png"]


@pytest.mark.parametrize("options, called", [
    (["--format", "saved_model", "--version", "3"],
     ("export_saved_model", ("BASE", "demo"), {"version": 3})),
    (["--format", "tflite", "--image-size", "128", "192", "--quantization", "float16"],
     ("export_tflite", (os.path.join("BASE", "demo.tflite"),),
      {"image_size": (128, 192), "quantization": "float16"})),
])
def test_export_calls_the_export_module(run, monkeypatch, tmp_path, options, called):
    from dynpatch_tf import export

    calls = []

    def recorder(name):
        def record(model, *args, **kwargs):
            calls.append((name, model, args, kwargs))
            return "PATH"
        return record

    for name in ("export_saved_model", "export_tflite"):
        monkeypatch.setattr(export, name, recorder(name))
    base = str(tmp_path)
    status, log = run_main(["export", "--model", run.model, "--output", base, "--name", "demo",
                            *options])
    assert status == 0 and "Exported to PATH" in log
    (name, model, args, kwargs), = calls
    expected_name, expected_args, expected_kwargs = called
    assert name == expected_name
    assert model.num_classes == 2
    assert args == tuple(arg.replace("BASE", base) for arg in expected_args)
    assert kwargs == expected_kwargs


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--model", "missing.keras", "--needles", "4"], "no model file 'missing.keras'"),
    (["train", "--needles", "8", "--validation-split", "1.5", "--output", "x"],
     "--validation-split must be in"),
    (["export", "--model", "m.keras", "--format", "tflite", "--output", "x", "--name", "n",
      "--version", "2"], "--version is for --format saved_model"),
    (["embed", "--model", "m.keras", "no/such/file.png", "--output", "x"],
     "neither a file, a folder nor a file pattern"),
    (["train", "--needles", "8", "--thresholds", "0.001", "0.002", "--output", "x"],
     "--thresholds needs one value per split level: 3 for patches of 64, 32, 16, 8 px, got 2."),
    (["train", "--needles", "8", "--min-patch-size", "16", "--output", "x"],
     "--thresholds needs one value per split level: 2 for patches of 64, 32, 16 px, got none."),
    (["train", "--needles", "8", "--base-size", "48", "--output", "x"],
     "--base-size must be a power of two, got 48."),
    (["train", "--needles", "8", "--zoom", "0.2", "--output", "x"], "--zoom is for --augment."),
])
def test_bad_input_is_reported_by_name(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.keras").write_bytes(b"")
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"dynpatch {argv[0]}: error: ") and message in error


@pytest.mark.parametrize("command", ["train", "evaluate", "embed", "search", "visualize", "export", "demo"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert f"usage: dynpatch {command}" in help_text
    assert "--verbose" in help_text


@pytest.mark.parametrize("argv, message", [
    (["train", "--output", "x"], "one of the arguments --data --needles is required"),
    (["train", "--needles", "8", "--classes", "9", "--output", "x"], "--classes: invalid choice"),
])
def test_argument_errors_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def fitted(monkeypatch):
    """Replaces training by recording what `train` would fit: a list of namespaces."""
    calls = []

    def record(model, training, validation, output, *args, **kwargs):
        calls.append(types.SimpleNamespace(model=model, training=training, validation=validation))

    monkeypatch.setattr(cli, "fit_and_save", record)
    return calls


def test_train_takes_one_threshold_per_split_level(fitted):
    base = ["train", "--needles", "8", "--image-size", str(SIZE), "--output", "x"]
    assert run_main(base)[0] == 0
    assert run_main([*base, "--min-patch-size", "16", "--thresholds", "0.01", "0.02"])[0] == 0
    default, coarse = (call.model for call in fitted)
    for model in (default, coarse):
        model.build((None, None, None, 3))
    np.testing.assert_allclose(default.patcher.thresholds, DEFAULT_THRESHOLDS, rtol=1e-5)
    assert default.patcher.min_size == 8
    np.testing.assert_allclose(coarse.patcher.thresholds, [0.01, 0.02], rtol=1e-5)
    assert (coarse.patcher.base_size, coarse.patcher.min_size) == (64, 16)


def test_train_augment_changes_the_training_images_only(fitted):
    base = ["train", "--needles", "8", "--image-size", str(SIZE), "--classes", "2",
            "--batch-size", "4", "--validation-split", "0.5", "--output", "x"]
    assert run_main(base)[0] == 0
    assert run_main([*base, "--augment", "--rotation", "0.1", "--zoom", "0"])[0] == 0
    plain, augmented = fitted
    (plain_x, plain_y), (x, y) = next(iter(plain.training)), next(iter(augmented.training))
    np.testing.assert_array_equal(y, plain_y)  # the same images, in the same order
    assert np.mean(np.abs(x - plain_x)) > 0.01
    np.testing.assert_array_equal(next(iter(augmented.validation))[0],
                                  next(iter(plain.validation))[0])


def test_demo_writes_everything_under_its_output(monkeypatch, tmp_path):
    from dynpatch_tf import export

    exported = []
    monkeypatch.setattr(demo, "fit_and_save", lambda model, *args, **kwargs: cli.compile_classifier(model))
    monkeypatch.setattr(export, "export_saved_model",
                        lambda model, base, name: exported.append((base, name)) or "PATH")
    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    monkeypatch.setattr(demo, "sample_photo", lambda name: noise)  # calibration needs detail
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out"
    status, log = run_main(["demo", "--output", str(output), "--images", "12", "--epochs", "1"])
    assert status == 0, log
    assert exported == [(str(output / "saved_models"), "dynpatch_demo")]
    pictures = sorted(os.listdir(output / "pictures"))
    assert pictures == sorted([*(f"{name}.png" for name in demo.PHOTOS),
                               "needles_0.png", "needles_1.png"])
    assert os.listdir(tmp_path) == ["out"], "nothing is written outside --output"


def test_visualize_draws_the_complexity_of_the_models_sigma(image_folder, tmp_path):
    folder, images = image_folder
    path = str(tmp_path / "sigma_1.keras")
    model = DynamicPatchModel(num_classes=2, sigma=1.0, token_size=8, embed_dim=16,
                              width_multiplier=0.25, attention_filters=(4,))
    model.build((None, None, None, 3))
    model.save(path)
    status, _ = run_main(["visualize", "--model", path, str(folder / "needles_0.png"),
                          "--output", str(tmp_path)])
    assert status == 0
    picture = tf.io.decode_png(tf.io.read_file(str(tmp_path / "needles_0.png"))).numpy()
    height, width = images.shape[1:3]
    image = read_image(str(folder / "needles_0.png"))  # as the command reads it
    complexity = keras.models.load_model(path).complexity(image[None])
    values = np.asarray(complexity).reshape(height, width)
    expected = apply_colormap(values / np.percentile(values, COMPLEXITY_PERCENTILE))
    np.testing.assert_array_equal(picture[:, width + GAP:2 * width + GAP], expected)
