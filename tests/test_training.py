"""dynpatch_tf.training: compile recipe, fit with resume, datasets, patch counts."""

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf import DynamicPatchModel, make_augmentation, make_needles
from dynpatch_tf.training import (
    HistoryFile,
    compile_classifier,
    describe_counts,
    fit_and_save,
    folder_datasets,
    needles_datasets,
    patch_counts,
)
from tests.conftest import TWO_BLOCKS

SIZE = 128
EPOCHS = 3
TINY_MODEL = dict(thresholds=(0.001, 0.002, 0.004), token_size=8, embed_dim=16,
                  width_multiplier=0.25, attention_filters=(4,), embedder_blocks=TWO_BLOCKS)


def tiny_model(num_classes=2):
    keras.utils.set_random_seed(0)
    return DynamicPatchModel(num_classes=num_classes, **TINY_MODEL)


class CrashAtEpoch(keras.callbacks.Callback):
    """Stands in for a killed process: raises when epoch `epoch` (from 0) begins."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("killed")


def epochs_announced(text):
    return [int(n) for n in re.findall(rf"^Epoch (\d+)/{EPOCHS}$", text, flags=re.M)]


def test_compile_classifier_takes_a_rate_or_a_schedule():
    model = compile_classifier(tiny_model(), 3e-3, run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-3)
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert model.loss.get_config()["from_logits"]
    assert model.run_eagerly
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, 100)
    model = compile_classifier(tiny_model(), schedule)
    assert model.optimizer.get_config()["learning_rate"]["class_name"] == "CosineDecay"


def test_fit_and_save_resumes_a_killed_run_after_its_last_epoch(tmp_path, capsys):
    training, validation, _ = needles_datasets(12, SIZE, 2, seed=0, batch_size=4,
                                               validation_split=0.25)
    with pytest.raises(KeyboardInterrupt):
        fit_and_save(tiny_model(), training, validation, str(tmp_path), EPOCHS, 1e-3,
                     verbose=2, callbacks=[CrashAtEpoch(1)])
    killed_log = capsys.readouterr().out
    assert epochs_announced(killed_log) == [1]
    killed_history = json.loads((tmp_path / "history.json").read_text())
    assert [record["epoch"] for record in killed_history] == [1]

    fit_and_save(tiny_model(), training, validation, str(tmp_path), EPOCHS, 1e-3, verbose=2)
    resumed_log = capsys.readouterr().out
    assert "Resuming the interrupted run" in resumed_log
    assert epochs_announced(resumed_log) == [2, 3]
    history = json.loads((tmp_path / "history.json").read_text())
    assert [record["epoch"] for record in history] == list(range(1, EPOCHS + 1))
    assert history[0] == killed_history[0], "the finished epoch is kept, not trained again"
    assert {"loss", "accuracy", "patches", "val_accuracy"} <= set(history[-1])
    checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
    assert checkpoints == [f"epoch-{epoch:03d}.keras" for epoch in range(1, EPOCHS + 1)]
    assert (tmp_path / "model.keras").is_file()
    assert not (tmp_path / "backup").exists(), "a finished run drops its backup"


def test_history_file_keeps_records_only_when_resuming(tmp_path):
    path = tmp_path / "sub" / "history.json"
    history = HistoryFile(str(path))
    history.on_epoch_end(0, {"loss": np.float32(2.0)})
    history.on_epoch_end(1, {"loss": 1.5})
    assert json.loads(path.read_text()) == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]
    resumed = HistoryFile(str(path), resume=True)
    resumed.on_epoch_end(1, {"loss": 1.0})  # epoch 2 run again
    assert json.loads(path.read_text()) == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}]
    HistoryFile(str(path), resume=False).on_epoch_end(0, {"loss": 3.0})
    assert json.loads(path.read_text()) == [{"epoch": 1, "loss": 3.0}]


def test_needles_datasets_hold_out_the_first_images():
    images, labels = make_needles(10, SIZE, 2, seed=4)
    training, validation, names = needles_datasets(10, SIZE, 2, seed=4, batch_size=3,
                                                   validation_split=0.2)
    assert names == ["plus", "ring"]
    held_out = np.concatenate([x for x, _ in validation])
    np.testing.assert_allclose(held_out, images[:2] / 255, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([y for _, y in validation]), labels[:2])
    trained = np.concatenate([y for _, y in training])
    assert sorted(trained) == sorted(labels[2:])
    assert int(training.cardinality()) == 3
    with pytest.raises(ValueError, match="leaves no training or no validation image"):
        needles_datasets(3, SIZE, 2, seed=0, batch_size=2, validation_split=0.2)


def test_needles_datasets_augment_the_training_images_only():
    options = dict(num_images=8, image_size=SIZE, num_classes=2, seed=1, batch_size=4,
                   validation_split=0.5)
    plain_training, plain_validation, _ = needles_datasets(**options)
    training, validation, _ = needles_datasets(**options, augment=make_augmentation(seed=0))
    (plain_x, plain_y), (x, y) = next(iter(plain_training)), next(iter(training))
    np.testing.assert_array_equal(y, plain_y)  # the same images, in the same order
    assert x.shape == plain_x.shape
    assert np.mean(np.abs(x - plain_x)) > 0.01, "the training images are augmented"
    for (a, _), (b, _) in zip(plain_validation, validation):
        np.testing.assert_array_equal(a, b)


def test_folder_datasets_split_and_augment_the_training_images_only(tmp_path):
    images, labels = make_needles(10, SIZE, 2, seed=2)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / f"class_{label}"
        folder.mkdir(exist_ok=True)
        tf.io.write_file(str(folder / f"{index}.png"), tf.io.encode_png(image))
    options = dict(batch_size=10, image_size=None, seed=0, validation_split=0.3, shuffle=False)
    plain_training, plain_validation, names = folder_datasets(str(tmp_path), **options)
    training, validation, _ = folder_datasets(str(tmp_path), **options,
                                              augment=make_augmentation(seed=0))
    assert names == ["class_0", "class_1"]
    (plain_x, _), (x, _) = next(iter(plain_training)), next(iter(training))
    assert len(x) == 7 and len(next(iter(validation))[0]) == 3
    assert np.mean(np.abs(x - plain_x)) > 0.01, "the training images are augmented"
    np.testing.assert_array_equal(next(iter(validation))[0], next(iter(plain_validation))[0])


def test_patch_counts_are_the_models_and_describe_counts_summarises_them():
    model = tiny_model()
    _, validation, _ = needles_datasets(8, SIZE, 2, seed=3, batch_size=3, validation_split=0.75)
    counts = patch_counts(model, validation)  # the held-out set keeps its order
    images = np.concatenate([x for x, _ in validation])
    np.testing.assert_array_equal(counts, model.embed(images)["boxes"].row_lengths())
    assert counts.max() > (SIZE // 64) ** 2, "the needles objects should be split"
    assert describe_counts([9, 12, 30]) == "mean 17.0, p95 28, max 30"
