"""calibrate_thresholds: the mean patch count hits a target on the data it saw, and
nearly on held-out data of the same kind (issue 14's contract)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import dynpatch_tf as dp
from dynpatch_tf.calibration import node_scores
from dynpatch_tf.image_files import sample_photo

# Photos and textures that ship with scikit-image.
PHOTOS = ("astronaut", "camera", "cat", "chelsea", "clock", "coffee", "coins", "rocket",
          "moon", "immunohistochemistry", "brick", "grass", "gravel")
CROP = 128


@pytest.fixture(scope="module")
def photo_crops():
    """`(calibration, held_out)`: 128^2 crops of each photo, split like a checkerboard,
    so both halves hold every photo (82 and 81 crops)."""
    halves = ([], [])
    for name in PHOTOS:
        photo = sample_photo(name)
        for row in range(photo.shape[0] // CROP):
            for col in range(photo.shape[1] // CROP):
                crop = photo[row * CROP:(row + 1) * CROP, col * CROP:(col + 1) * CROP]
                halves[(row + col) % 2].append(crop)
    return tuple(np.stack(half) for half in halves)


@pytest.fixture(scope="module")
def needles():
    """`(calibration, held_out)`: 192 needles images each, other seeds."""
    return tuple(dp.make_needles(192, image_size=CROP, seed=seed)[0] for seed in (0, 1))


def small_model(**options):
    return dp.DynamicPatchModel(num_classes=2, token_size=8, embed_dim=8,
                                width_multiplier=0.25, attention_filters=[4], **options)


def mean_count(model_or_patcher, images, batch_size=64):
    """The mean patch count per image, from the patcher's own output."""
    counts = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if isinstance(model_or_patcher, dp.DynamicPatcher):
            patches = model_or_patcher(batch, dp.ComplexityMap()(batch))
        else:
            patches = model_or_patcher.patches(batch)
        counts.append(patches["boxes"].row_lengths().numpy())
    return float(np.mean(np.concatenate(counts)))


def assert_positive_and_monotone(thresholds):
    thresholds = np.asarray(thresholds)
    assert np.all(thresholds > 0), thresholds
    assert np.all(np.diff(thresholds) >= 0), thresholds


@pytest.mark.parametrize("fraction", [0.15, 0.3])
def test_a_model_calibrated_on_photos_hits_the_target_there_and_on_held_out_crops(
        photo_crops, fraction):
    calibration, held_out = photo_crops
    model = small_model()
    result = dp.calibrate_thresholds(model, calibration, patch_fraction=fraction)
    target = fraction * (CROP // 8) ** 2
    assert result.target == pytest.approx(target)
    assert mean_count(model, calibration) == pytest.approx(target, rel=0.05)
    assert mean_count(model, held_out) == pytest.approx(target, rel=0.15)
    assert result.patches_per_image == pytest.approx(mean_count(model, calibration))
    assert result.patch_fraction == pytest.approx(result.patches_per_image / target * fraction)
    np.testing.assert_allclose(model.thresholds.numpy(), result.thresholds, rtol=1e-6)
    assert_positive_and_monotone(result.thresholds)


@pytest.mark.parametrize("patches_per_image", [26, 51])
def test_a_patcher_calibrated_on_needles_hits_the_target_there_and_on_other_needles(
        needles, patches_per_image):
    calibration, held_out = needles
    patcher = dp.DynamicPatcher(token_size=8)
    result = dp.calibrate_thresholds(patcher, calibration, patches_per_image=patches_per_image)
    assert mean_count(patcher, calibration) == pytest.approx(patches_per_image, rel=0.05)
    assert mean_count(patcher, held_out) == pytest.approx(patches_per_image, rel=0.15)
    assert patcher.get_config()["thresholds"] == pytest.approx(result.thresholds, rel=1e-5)
    assert_positive_and_monotone(result.thresholds)


def test_a_larger_target_never_gives_fewer_patches(photo_crops):
    calibration = photo_crops[0]
    patcher = dp.DynamicPatcher(token_size=8)
    counts, thresholds = [], []
    for fraction in (0.03, 0.06, 0.1, 0.2, 0.4, 0.7):
        result = dp.calibrate_thresholds(patcher, calibration, patch_fraction=fraction)
        assert_positive_and_monotone(result.thresholds)
        counts.append(mean_count(patcher, calibration))
        thresholds.append(result.thresholds)
    assert np.all(np.diff(counts) > 0), counts
    assert np.all(np.diff(thresholds, axis=0) <= 0), thresholds


@pytest.mark.parametrize("options", [{"rule": "block"}, {"max_patches": 40}])
def test_the_block_rule_and_max_patches_are_respected(photo_crops, options):
    calibration = photo_crops[0]
    patcher = dp.DynamicPatcher(token_size=8, **options)
    result = dp.calibrate_thresholds(patcher, calibration, patches_per_image=30)
    assert mean_count(patcher, calibration) == pytest.approx(30, rel=0.05)
    assert result.patches_per_image == pytest.approx(mean_count(patcher, calibration))


def test_a_dataset_of_image_label_batches_of_two_sizes(needles):
    images = needles[0][:48]
    large, _ = dp.make_needles(16, image_size=(192, 256), seed=3)
    dataset = (tf.data.Dataset.from_tensor_slices((images, np.zeros(48))).batch(16)
               .concatenate(tf.data.Dataset.from_tensor_slices((large, np.zeros(16))).batch(16)))
    patcher = dp.DynamicPatcher(token_size=8)
    result = dp.calibrate_thresholds(patcher, dataset, patch_fraction=0.1)
    counts = [mean_count(patcher, images) * 48, mean_count(patcher, large) * 16]
    assert result.patches_per_image == pytest.approx(sum(counts) / 64)
    # The fraction pools the finest counts: 256 per small image, 768 per large one.
    assert result.target == pytest.approx(0.1 * (48 * 256 + 16 * 768) / 64)
    assert result.patches_per_image == pytest.approx(result.target, rel=0.05)


def test_images_batches_and_node_scores_give_the_same_thresholds(needles):
    images = needles[0][:40]
    patcher = dp.DynamicPatcher(token_size=8)
    results = [
        dp.calibrate_thresholds(patcher, data, patches_per_image=20, batch_size=16)
        for data in (images,
                     tf.data.Dataset.from_tensor_slices(images),  # unbatched: [H, W, C]
                     [node_scores(patcher, image) for image in images])
    ]
    # All but `previous`: each call starts from the one before.
    assert results[1]._replace(previous=None) == results[0]._replace(previous=None)
    assert results[2]._replace(previous=None) == results[0]._replace(previous=None)


def test_a_target_the_data_cannot_give_names_the_reachable_range(needles):
    images = needles[0][:16]
    patcher = dp.DynamicPatcher(token_size=8, max_patches=100)
    with pytest.raises(ValueError, match=r"patches_per_image 3 is outside what this data can "
                                         r"give: 4\.0 \(every block at 64 px\) to [\d.]+ "):
        dp.calibrate_thresholds(patcher, images, patches_per_image=3)
    with pytest.raises(ValueError, match=r"patch_fraction 0\.5 is outside .* 0\.0156 to "
                                         r"0\.3906, .*at most max_patches=100"):
        dp.calibrate_thresholds(patcher, images, patch_fraction=0.5)
    assert patcher.get_config()["thresholds"] == list(dp.patcher.DEFAULT_THRESHOLDS)


def test_arguments_that_cannot_calibrate(needles):
    images = needles[0][:4]
    with pytest.raises(ValueError, match='rule="budget" fixes the count at budget=16'):
        dp.calibrate_thresholds(dp.DynamicPatcher(rule="budget", budget=16), images,
                                patch_fraction=0.1)
    with pytest.raises(ValueError, match="exactly one of patch_fraction and patches_per_image"):
        dp.calibrate_thresholds(dp.DynamicPatcher(), images)
    with pytest.raises(ValueError, match="exactly one"):
        dp.calibrate_thresholds(dp.DynamicPatcher(), images, patch_fraction=0.1,
                                patches_per_image=20)
    with pytest.raises(TypeError, match="a DynamicPatchModel or a DynamicPatcher; got Dense"):
        dp.calibrate_thresholds(keras.layers.Dense(2), images, patch_fraction=0.1)


def test_a_saved_model_keeps_its_calibrated_thresholds(tmp_path, needles):
    model = small_model()
    images = needles[0][:32]
    model(images[:2])  # built before: calibration writes the weight
    before = model.thresholds.numpy()
    result = dp.calibrate_thresholds(model, images, patches_per_image=20)
    assert result.previous == pytest.approx(before)
    assert not np.allclose(before, result.thresholds)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.thresholds.numpy(), result.thresholds, rtol=1e-6)
    # A model made from the config alone starts calibrated too.
    rebuilt = dp.DynamicPatchModel.from_config(model.get_config())
    assert mean_count(rebuilt, images) == pytest.approx(result.patches_per_image)


def test_set_thresholds_checks_the_values_and_works_before_build():
    patcher = dp.DynamicPatcher()
    patcher.set_thresholds([0.01, 0.02, 0.03])
    assert patcher.get_config()["thresholds"] == [0.01, 0.02, 0.03]
    patcher.build()
    np.testing.assert_allclose(patcher.thresholds.numpy(), [0.01, 0.02, 0.03], rtol=1e-5)
    with pytest.raises(ValueError, match="thresholds must be positive"):
        patcher.set_thresholds([0.01, 0.0, 0.03])
    with pytest.raises(ValueError, match="thresholds needs 3 values"):
        patcher.set_thresholds([0.01, 0.02])
