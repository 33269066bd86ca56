"""Tests of dynpatch_tf.data: the image folder pipeline, augmentation applied included."""

import logging
import os
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.augment import make_augmentation
from dynpatch_tf.data import image_folder_dataset
from tests.encoded_images import PALETTE, bmp_bytes, gif_bytes, random_image, write


@pytest.fixture
def folder(tmp_path):
    """A class folder with every format, two broken files and a stray text file.

    Returns the directory and the expected float images by file name.
    """
    png = random_image(70, 90, seed=1)
    bmp = random_image(64, 96, seed=2)
    gif_indices = np.random.default_rng(3).integers(0, 4, (72, 72))
    gray = random_image(64, 64, channels=1, seed=4)
    write(tmp_path / "cats/a.png", tf.io.encode_png(png).numpy())
    write(tmp_path / "cats/b.jpg", tf.io.encode_jpeg(random_image(80, 80)).numpy())
    write(tmp_path / "cats/c.bmp", bmp_bytes(bmp))
    write(tmp_path / "cats/d.gif", gif_bytes(gif_indices, PALETTE))
    write(tmp_path / "cats/corrupt.jpg", np.random.default_rng(5).bytes(500))
    truncated = tf.io.encode_png(random_image(64, 64, seed=6)).numpy()
    write(tmp_path / "cats/truncated.png", truncated[:len(truncated) // 2])
    write(tmp_path / "cats/notes.txt", b"not an image")
    write(tmp_path / "dogs/e.png", tf.io.encode_png(gray).numpy())
    write(tmp_path / "dogs/f.jpeg", tf.io.encode_jpeg(random_image(100, 64)).numpy())
    write(tmp_path / "dogs/deeper/g.PNG", tf.io.encode_png(random_image(64, 64)).numpy())
    expected = {
        "a.png": png / 255,
        "c.bmp": bmp / 255,
        "d.gif": PALETTE[gif_indices] / 255,
        "e.png": np.repeat(gray, 3, axis=-1) / 255,
    }
    return str(tmp_path), expected


def test_folder_pipeline_reads_every_format_and_skips_broken_files(folder, caplog):
    directory, expected = folder
    with caplog.at_level(logging.WARNING, logger="dynpatch_tf.data"):
        dataset, info = image_folder_dataset(directory, batch_size=1, shuffle=False)

    assert info.class_names == ["cats", "dogs"]
    skipped = {os.path.basename(path): reason for path, reason in info.skipped}
    assert set(skipped) == {"corrupt.jpg", "truncated.png"}
    assert "Unknown image file format" in skipped["corrupt.jpg"]
    assert "PNG" in skipped["truncated.png"]
    assert not any("[Op:" in reason for reason in skipped.values())
    for path, reason in info.skipped:
        assert any(path in record.getMessage() and reason in record.getMessage()
                   for record in caplog.records)

    batches = list(dataset)
    assert len(batches) == len(info.paths) == 7
    assert Counter(int(labels[0]) for _, labels in batches) == {0: 4, 1: 3}
    for path, label, size, (images, labels) in zip(info.paths, info.labels,
                                                   info.sizes, batches):
        assert images.dtype == tf.float32 and labels.dtype == tf.int32
        assert images.shape == (1, *size, 3)
        assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1
        assert int(labels[0]) == label == (0 if "cats" in path else 1)
        name = os.path.basename(path)
        if name in expected:
            np.testing.assert_allclose(images[0], expected[name], atol=1e-6)


def test_too_small_images_are_rejected_or_upscaled(tmp_path, caplog):
    write(tmp_path / "a/small.png", tf.io.encode_png(random_image(40, 100)).numpy())
    write(tmp_path / "a/large.png", tf.io.encode_png(random_image(64, 64)).numpy())

    with caplog.at_level(logging.WARNING, logger="dynpatch_tf.data"):
        dataset, info = image_folder_dataset(str(tmp_path), batch_size=1)
    [(path, reason)] = info.skipped
    assert path.endswith("small.png")
    assert "40x100" in reason and "64" in reason
    assert path in caplog.text and "40x100" in caplog.text
    assert [images.shape for images, _ in dataset] == [(1, 64, 64, 3)]

    dataset, info = image_folder_dataset(str(tmp_path), batch_size=1, small="upscale")
    assert info.skipped == []
    shapes = sorted(tuple(images.shape[1:3]) for images, _ in dataset)
    assert shapes == [(64, 64), (64, 160)]


def test_image_size_resizes_and_crops(tmp_path):
    framed = np.zeros((64, 128, 3), np.uint8)
    framed[:, 32:96, 1] = 255  # green centre square, black sides
    write(tmp_path / "a/framed.png", tf.io.encode_png(framed).numpy())
    write(tmp_path / "b/other.jpg", tf.io.encode_jpeg(random_image(90, 70)).numpy())

    dataset, _ = image_folder_dataset(str(tmp_path), batch_size=2, image_size=(64, 80))
    assert dataset.element_spec[0].shape.as_list() == [None, 64, 80, 3]
    [(images, labels)] = list(dataset)
    assert images.shape == (2, 64, 80, 3) and sorted(labels.numpy()) == [0, 1]

    dataset, _ = image_folder_dataset(str(tmp_path), batch_size=1, shuffle=False,
                                      image_size=(64, 64), crop_to_aspect_ratio=True)
    cropped = next(iter(dataset))[0][0].numpy()
    np.testing.assert_allclose(cropped[..., 1], 1, atol=1e-6)
    np.testing.assert_allclose(cropped[..., 0], 0, atol=1e-6)


def test_mixed_sizes_are_batched_by_size(tmp_path):
    sizes = [(64, 64)] * 3 + [(80, 96)] * 2 + [(72, 64)]
    for index, size in enumerate(sizes):
        write(tmp_path / f"c{index % 2}/{index}.png",
              tf.io.encode_png(random_image(*size, seed=index)).numpy())

    dataset, info = image_folder_dataset(str(tmp_path), batch_size=2, seed=0)
    batches = list(dataset)
    assert int(dataset.cardinality()) == len(batches) == 4
    assert Counter(tuple(images.shape[1:3]) for images, _ in batches for _ in images) \
        == Counter(sizes)
    assert all(images.shape[0] == labels.shape[0] <= 2 for images, labels in batches)
    assert Counter(int(label) for _, labels in batches for label in labels) == {0: 3, 1: 3}


def test_validation_split_partitions_the_files(folder):
    directory, _ = folder
    kwargs = dict(validation_split=0.3, seed=1, batch_size=1)
    _, training = image_folder_dataset(directory, subset="training", **kwargs)
    _, validation = image_folder_dataset(directory, subset="validation", **kwargs)
    _, everything = image_folder_dataset(directory)
    assert not set(training.paths) & set(validation.paths)
    assert sorted(training.paths + validation.paths) == sorted(everything.paths)
    with pytest.raises(ValueError, match="seed"):
        image_folder_dataset(directory, validation_split=0.3, subset="training")


def test_augmentation_changes_pixels_but_not_labels_or_shapes(folder):
    directory, _ = folder
    plain, _ = image_folder_dataset(directory, batch_size=1, shuffle=False)
    augment = make_augmentation(rotation=0.1, zoom=0.2, distortion=0.05, seed=0)
    augmented, _ = image_folder_dataset(directory, batch_size=1, shuffle=False,
                                        augment=augment)
    identity, _ = image_folder_dataset(directory, batch_size=1, shuffle=False,
                                       augment=make_augmentation(0, 0, 0))
    for (image, label), (warped, warped_label), (same, same_label) in zip(
            plain, augmented, identity):
        assert warped.shape == same.shape == image.shape
        assert int(warped_label[0]) == int(same_label[0]) == int(label[0])
        assert float(tf.reduce_mean(tf.abs(warped - image))) > 0.01
        np.testing.assert_array_equal(same, image)
        assert 0 <= float(tf.reduce_min(warped)) and float(tf.reduce_max(warped)) <= 1
