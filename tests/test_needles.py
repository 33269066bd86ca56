"""Tests of dynpatch_tf.needles: the synthetic small-object data set."""

import os
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.complexity import ComplexityMap
from dynpatch_tf.data import image_folder_dataset
from dynpatch_tf.needles import (
    BACKGROUND_PHOTOS,
    NEEDLE_KINDS,
    OBJECT_SIZES,
    make_needles,
    needles_dataset,
    write_needles_folder,
)


def test_same_seed_same_images_other_seed_other_images():
    images, labels = make_needles(6, image_size=128, seed=1)
    again, labels_again = make_needles(6, image_size=128, seed=1)
    other, _ = make_needles(6, image_size=128, seed=2)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert np.abs(images.astype(int) - other).mean() > 5


@pytest.mark.parametrize("num_images, num_classes", [(8, 4), (10, 4), (6, 2), (12, 6)])
def test_labels_are_balanced(num_images, num_classes):
    _, labels = make_needles(num_images, image_size=64, num_classes=num_classes)
    counts = Counter(labels.tolist())
    assert labels.dtype == np.int32
    assert set(counts) == set(range(num_classes))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_image_size_is_configurable():
    images, _ = make_needles(2, image_size=(96, 160))
    assert images.shape == (2, 96, 160, 3) and images.dtype == np.uint8
    with pytest.raises(ValueError, match="num_classes"):
        make_needles(2, image_size=64, num_classes=len(NEEDLE_KINDS) + 1)


def test_class_is_carried_by_small_objects_only():
    images, labels, objects = make_needles(
        8, image_size=128, objects_per_image=(2, 4), seed=3, return_objects=True)
    scenes, scene_labels = make_needles(
        8, image_size=128, objects_per_image=(0, 0), seed=3)
    np.testing.assert_array_equal(labels, scene_labels)
    for image, scene, label, drawn in zip(images, scenes, labels, objects):
        assert 2 <= len(drawn) <= 4
        outside = np.ones(image.shape[:2], bool)
        for kind, y0, x0, y1, x1 in drawn:
            assert kind == NEEDLE_KINDS[label]
            assert OBJECT_SIZES[0] <= y1 - y0 == x1 - x0 <= OBJECT_SIZES[1]
            contrast = np.abs(image[y0:y1, x0:x1].astype(int) - scene[y0:y1, x0:x1])
            assert contrast.max() > 60  # clearly visible
            outside[y0:y1, x0:x1] = False
        np.testing.assert_array_equal(image[outside], scene[outside])


def test_masks_and_the_background_argument_leave_the_smooth_images_alone():
    images, labels, objects = make_needles(6, image_size=96, seed=4, return_objects=True)
    again, labels_again, masks = make_needles(
        6, image_size=96, seed=4, background="smooth", return_masks=True)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert masks.shape == (6, 96, 96) and masks.dtype == bool
    with pytest.raises(ValueError, match="background"):
        make_needles(2, image_size=64, background="noise")


def test_photo_backgrounds_are_seeded_and_keep_labels_and_objects():
    images, labels, objects = make_needles(
        6, image_size=128, seed=1, background="photos", return_objects=True)
    again, labels_again, objects_again = make_needles(
        6, image_size=128, seed=1, background="photos", return_objects=True)
    other, _ = make_needles(6, image_size=128, seed=2, background="photos")
    smooth, smooth_labels, smooth_objects = make_needles(
        6, image_size=128, seed=1, return_objects=True)
    np.testing.assert_array_equal(images, again)
    assert objects == objects_again
    assert np.abs(images.astype(int) - other).mean() > 5
    # Only the scenes differ: same classes, same object places and sizes.
    np.testing.assert_array_equal(labels, smooth_labels)
    np.testing.assert_array_equal(labels, labels_again)
    assert objects == smooth_objects
    assert np.abs(images.astype(int) - smooth).mean() > 20


def test_photo_masks_mark_the_visible_objects_and_nothing_else():
    images, _, objects, masks = make_needles(
        8, image_size=128, seed=3, background="photos", return_objects=True, return_masks=True)
    scenes, _ = make_needles(8, image_size=128, seed=3, background="photos",
                             objects_per_image=(0, 0))
    for image, scene, drawn, mask in zip(images, scenes, objects, masks):
        boxes = np.zeros(mask.shape, bool)
        for _, y0, x0, y1, x1 in drawn:
            boxes[y0:y1, x0:x1] = True
            inside = mask[y0:y1, x0:x1]
            assert inside.mean() > 0.15  # the thinnest kind, a ring of 8 px, covers ~0.4
            contrast = np.abs(image[y0:y1, x0:x1].astype(int) - scene[y0:y1, x0:x1]).max(-1)
            assert np.median(contrast[inside]) > 40  # the object is really there
        assert not mask[~boxes].any()
        np.testing.assert_array_equal(image[~boxes], scene[~boxes])


def test_photo_backgrounds_are_textured():
    cmap = ComplexityMap(sigma=1.0)
    photos, _ = make_needles(8, image_size=128, seed=0, background="photos")
    smooth, _ = make_needles(8, image_size=128, seed=0)
    photo_mean = float(np.mean(cmap(photos)))
    smooth_mean = float(np.mean(cmap(smooth)))
    assert photo_mean > 5 * smooth_mean, (photo_mean, smooth_mean)
    # Not flat grey either: the crops vary as much as photos do.
    assert min(image.std() for image in photos) > 10


def test_background_can_name_the_photos():
    photos, _ = make_needles(4, image_size=64, seed=2, background="photos")
    same, _ = make_needles(4, image_size=64, seed=2, background=list(BACKGROUND_PHOTOS))
    np.testing.assert_array_equal(photos, same)
    bricks, _ = make_needles(4, image_size=64, seed=2, background=("brick",),
                             objects_per_image=(0, 0))
    assert (bricks == bricks[..., :1]).all()  # brick is grey: the crops came from it
    with pytest.raises(ValueError, match="no sample photo 'bricks'"):
        make_needles(2, image_size=64, background=("brick", "bricks"))
    with pytest.raises(ValueError, match="background"):
        make_needles(2, image_size=64, background=())


def test_photos_smaller_than_the_image_are_mirrored_out():
    # Wider than every one of BACKGROUND_PHOTOS (at most 640 px wide).
    images, _ = make_needles(len(BACKGROUND_PHOTOS), image_size=(64, 700), seed=0,
                             background="photos", objects_per_image=(0, 0))
    assert images.shape == (len(BACKGROUND_PHOTOS), 64, 700, 3)
    assert min(image.std() for image in images) > 10


def test_needles_dataset_yields_float_batches():
    dataset = needles_dataset(10, image_size=128, num_classes=2, batch_size=4, seed=0)
    batches = list(dataset)
    assert [images.shape[0] for images, _ in batches] == [4, 4, 2]
    for images, labels in batches:
        assert images.dtype == tf.float32 and labels.dtype == tf.int32
        assert images.shape[1:] == (128, 128, 3)
        assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1
    _, expected = make_needles(10, image_size=128, num_classes=2, seed=0)
    assert Counter(np.concatenate([labels for _, labels in batches]).tolist()) \
        == Counter(expected.tolist())


def test_folder_written_reads_back_through_the_folder_pipeline(tmp_path):
    images, labels = make_needles(8, image_size=128, num_classes=4, seed=5)
    class_names = write_needles_folder(tmp_path, 8, image_size=128, num_classes=4, seed=5)
    assert class_names == ["0_plus", "1_ring", "2_square", "3_triangle"]

    dataset, info = image_folder_dataset(str(tmp_path), batch_size=4, shuffle=False)
    assert info.class_names == class_names and info.skipped == []
    read_images = np.concatenate([batch for batch, _ in dataset])
    read_labels = np.concatenate([batch for _, batch in dataset])
    assert read_images.shape == (8, 128, 128, 3)
    indices = [int(os.path.basename(path)[:-4]) for path in info.paths]
    np.testing.assert_array_equal(read_labels, labels[indices])
    np.testing.assert_allclose(read_images, images[indices] / 255, atol=1e-6)
