"""Tests of dynpatch_tf.image_files: finding, reading and looping over image files."""

import os

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.image_files import (
    SkippedFile,
    clean_op_message,
    list_image_files,
    map_image_files,
    read_image,
    sample_photo,
)
from tests.encoded_images import PALETTE, bmp_bytes, gif_bytes, random_image, write


def test_read_image_decodes_every_format_as_rgb(tmp_path):
    rgb, gray = random_image(20, 30, seed=1), random_image(20, 30, channels=1, seed=2)
    rgba = random_image(20, 30, channels=4, seed=3)
    indices = np.random.default_rng(4).integers(0, 4, (12, 16))
    files = {
        "rgb.png": (tf.io.encode_png(rgb).numpy(), rgb),
        "gray.png": (tf.io.encode_png(gray).numpy(), np.repeat(gray, 3, axis=-1)),
        "alpha.png": (tf.io.encode_png(rgba).numpy(), rgba[..., :3]),
        "rgb.bmp": (bmp_bytes(rgb), rgb),
        "palette.gif": (gif_bytes(indices, PALETTE), PALETTE[indices]),
    }
    for name, (data, expected) in files.items():
        write(tmp_path / name, data)
        as_bytes = read_image(str(tmp_path / name), dtype=tf.uint8)
        assert as_bytes.dtype == tf.uint8
        np.testing.assert_array_equal(as_bytes, expected, err_msg=name)
        as_floats = read_image(str(tmp_path / name))
        assert as_floats.dtype == tf.float32
        np.testing.assert_allclose(as_floats, expected / 255, atol=1e-6, err_msg=name)


def test_read_image_raises_an_op_error_that_cleans_up(tmp_path):
    write(tmp_path / "corrupt.jpg", b"not an image at all")
    with pytest.raises(tf.errors.OpError) as error:
        read_image(str(tmp_path / "corrupt.jpg"))
    assert "[Op:" in error.value.message
    message = clean_op_message(error.value.message)
    assert "Unknown image file format" in message and "[Op:" not in message


def test_clean_op_message_drops_the_function_node_and_op_parts():
    raw = "{{function_node __wrapped__DecodeImage_device_/cpu:0}} Bad PNG [Op:DecodeImage] name: x"
    assert clean_op_message(raw) == "Bad PNG"
    assert clean_op_message("plain message") == "plain message"


def test_clean_op_message_keeps_the_message_of_a_failed_graph_assertion():
    @tf.function
    def check(x):
        tf.debugging.assert_positive(x, message="sides must be positive")

    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        check(tf.constant([-1]))
    assert "Graph execution error" in error.value.message
    assert clean_op_message(error.value.message) == "sides must be positive."
    # As a SavedModel's function reports it.
    loaded = ("Detected at node Assert defined at (most recent call last):\n<stack traces unavailable>\n"
              "assertion failed: [images too small] [x] [32]\n\t [[{{node Assert}}]]")
    assert clean_op_message(loaded) == "images too small"


def test_list_image_files_searches_folders_and_keeps_files(tmp_path):
    for name in ("b.png", "a.JPG", "sub/c.gif", "notes.txt", "sub/deeper/d.bmp"):
        write(tmp_path / "photos" / name, b"")
    write(tmp_path / "extra.dat", b"")
    photos, extra = str(tmp_path / "photos"), str(tmp_path / "extra.dat")
    expected = [os.path.join(photos, name)
                for name in ("a.JPG", "b.png", "sub/c.gif", "sub/deeper/d.bmp")]
    assert list_image_files([extra, photos]) == [extra, *expected]
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        list_image_files([str(tmp_path / "missing.png")])
    write(tmp_path / "empty/notes.txt", b"")
    with pytest.raises(ValueError, match="no image files in"):
        list_image_files([str(tmp_path / "empty")])


def test_sample_photo_is_rgb_or_as_shipped():
    assert sample_photo("camera").shape == (512, 512, 3)
    camera = sample_photo("camera", channels=None)
    assert camera.shape == (512, 512, 1) and camera.dtype == np.uint8
    np.testing.assert_array_equal(sample_photo("camera"), np.repeat(camera, 3, axis=-1))
    assert sample_photo("coffee").shape == (400, 600, 3)
    for name in ("no_such_photo", "download_all"):
        with pytest.raises(ValueError, match="no sample photo"):
            sample_photo(name)
    with pytest.raises(ValueError, match="`channels` must be 3 or None"):
        sample_photo("camera", channels=1)


@pytest.fixture
def mixed_files(tmp_path):
    """Two usable PNGs, a corrupt file and an image too small for `min_side=16`."""
    write(tmp_path / "a.png", tf.io.encode_png(random_image(16, 24, seed=1)).numpy())
    write(tmp_path / "b.png", tf.io.encode_png(random_image(20, 16, seed=2)).numpy())
    write(tmp_path / "corrupt.png", b"\x89PNG\r\n\x1a\n not really a png")
    write(tmp_path / "small.png", tf.io.encode_png(random_image(8, 30)).numpy())
    return tmp_path


def test_map_image_files_skips_what_it_cannot_use_and_says_why(mixed_files, capsys):
    results, skipped = map_image_files(lambda path, image: image.shape[:2], [str(mixed_files)],
                                       min_side=16)
    assert results == [(str(mixed_files / "a.png"), (16, 24)),
                       (str(mixed_files / "b.png"), (20, 16))]
    reasons = dict(skipped)
    assert set(reasons) == {str(mixed_files / "corrupt.png"), str(mixed_files / "small.png")}
    assert all(isinstance(file, SkippedFile) for file in skipped)
    assert reasons[str(mixed_files / "small.png")] == \
        "too small: 8x30 px (height x width), minimum 16 px per side"
    assert reasons[str(mixed_files / "corrupt.png")] and "[Op:" not in reasons[str(mixed_files / "corrupt.png")]
    assert capsys.readouterr().out == "", "silent with verbose=0"


def test_map_image_files_skips_files_the_function_rejects(mixed_files):
    def reject_b(path, image):
        if path.endswith("b.png"):
            raise ValueError("no b files")
        return float(tf.reduce_mean(image))

    results, skipped = map_image_files(reject_b, [str(mixed_files / name) for name in ("a.png", "b.png")])
    assert [path for path, _ in results] == [str(mixed_files / "a.png")]
    assert skipped == [SkippedFile(str(mixed_files / "b.png"), "no b files")]

    def broken(path, image):
        raise RuntimeError("a bug, not a bad file")

    with pytest.raises(RuntimeError, match="a bug"):
        map_image_files(broken, [str(mixed_files / "a.png")])
