"""`dynpatch calibrate`: thresholds to a patch budget on a folder of images, written back."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import dynpatch_tf as dp
from dynpatch_tf.cli import main
from dynpatch_tf.image_files import read_image, sample_photo
from tests.cli_testing import run_main

# Crops of scikit-image photos, of several sizes: (photo, height, width).
CROPS = [("astronaut", 256, 256), ("coffee", 400, 600), ("camera", 192, 320),
         ("rocket", 128, 448), ("chelsea", 300, 451), ("coins", 303, 384),
         ("brick", 128, 128), ("moon", 256, 192)]
NAMES = [name for name, _, _ in CROPS]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The crops as PNGs (half in a subfolder), a corrupt file and an image too small."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "more").mkdir()
    for index, (name, height, width) in enumerate(CROPS):
        where = folder / "more" if index % 2 else folder
        image = sample_photo(name)[:height, :width]
        tf.io.write_file(str(where / f"{name}.png"), tf.io.encode_png(image))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    tf.io.write_file(str(folder / "small.png"), tf.io.encode_png(image[:32, :48]))
    return folder


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.keras"
    model = dp.DynamicPatchModel(num_classes=2, token_size=8, embed_dim=8,
                                 width_multiplier=0.25, attention_filters=[4])
    model(np.zeros((1, 64, 64, 3), np.float32))
    model.save(path)
    return path


def mean_count(model, folder):
    """The mean patch count of the model over the readable crops, one file at a time."""
    counts = [model.patches(read_image(str(path))[None])["boxes"].row_lengths().numpy()[0]
              for path in sorted(folder.rglob("*.png")) if path.stem in NAMES]
    assert len(counts) == len(CROPS)
    return float(np.mean(counts))


def printed_thresholds(log, when):
    line = re.search(rf"^thresholds {when}: +(.*)$", log, re.M).group(1)
    return [float(value) for value in line.split()]


def test_calibrate_writes_the_model_back_and_prints_what_it_did(folder, model_file, capsys):
    before = keras.models.load_model(model_file).thresholds.numpy()
    status, log = run_main(["calibrate", str(folder), "--model", str(model_file),
                            "--patch-fraction", "0.15"])
    assert status == 0, log
    assert "Calibrated on 8 images." in log and f"Wrote {model_file}" in log
    errors = capsys.readouterr().err
    assert re.search(rf"Skipped {re.escape(str(folder / 'corrupt.png'))}: \S", errors)
    assert re.search(rf"Skipped {re.escape(str(folder / 'small.png'))}: too small: 32x48", errors)
    np.testing.assert_allclose(printed_thresholds(log, "before"), before, rtol=1e-5)
    model = keras.models.load_model(model_file)
    after = model.thresholds.numpy()
    np.testing.assert_allclose(printed_thresholds(log, "after"), after, rtol=1e-5)
    assert np.all(after > 0) and np.all(np.diff(after) >= 0)
    achieved, target = map(float, re.search(
        r"^patches per image: ([\d.]+) \(target ([\d.]+); patch fraction [\d.]+\)$",
        log, re.M).groups())
    finest = np.mean([-(-height // 8) * -(-width // 8) for _, height, width in CROPS])
    assert target == pytest.approx(0.15 * finest, abs=0.05)
    assert f"{mean_count(model, folder):.1f}" == f"{achieved:.1f}"  # the count, as printed
    assert achieved == pytest.approx(target, rel=0.05)


def test_calibrate_output_leaves_the_model_file_as_it_was(folder, model_file, tmp_path):
    original = model_file.read_bytes()
    output = tmp_path / "calibrated.keras"
    status, log = run_main(["calibrate", str(folder), "--model", str(model_file),
                            "--patches-per-image", "300", "--output", str(output)])
    assert status == 0, log
    assert model_file.read_bytes() == original
    assert mean_count(keras.models.load_model(output), folder) == pytest.approx(300, rel=0.05)


def test_a_target_out_of_reach_is_reported_with_the_range(folder, model_file, capsys):
    original = model_file.read_bytes()
    assert main(["calibrate", str(folder), "--model", str(model_file),
                 "--patches-per-image", "2"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("dynpatch calibrate: error: patches_per_image 2 is outside what "
                            "this data can give: 25.1 (every block at 64 px) to ")
    assert model_file.read_bytes() == original


@pytest.mark.parametrize("target, message", [
    ([], "one of the arguments --patch-fraction --patches-per-image is required"),
    (["--patch-fraction", "0.1", "--patches-per-image", "9"], "not allowed with argument"),
])
def test_exactly_one_target(folder, target, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", str(folder), "--model", "m.keras", *target])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_calibrate_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--help"])
    assert exit_info.value.code == 0
    assert "usage: dynpatch calibrate" in capsys.readouterr().out
