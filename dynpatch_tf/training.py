"""Training a `DynamicPatchModel` classifier: the pieces `dynpatch train` uses.

* `compile_classifier`: the one compile recipe (Adam, cross-entropy on logits,
  accuracy).
* `fit_and_save`: compile, fit and save into a folder, with per-epoch
  checkpoints, a JSON history and resumption of a killed run.
* `folder_datasets`, `needles_datasets`: training and validation sets of a
  class folder or of generated needles images.
* `patch_counts`, `describe_counts`: how many patches a model cuts images into.

Example:

```python
training, validation, class_names = needles_datasets(600, 192, 4, seed=0)
model = DynamicPatchModel(num_classes=4, thresholds=NEEDLES_THRESHOLDS, sigma=NEEDLES_SIGMA)
fit_and_save(model, training, validation, "run/", epochs=8, learning_rate=1e-3)
print(describe_counts(patch_counts(model, validation)))   # mean ..., p95 ..., max ...
```
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from dynpatch_tf.data import image_folder_dataset
from dynpatch_tf.inference import embed_function
from dynpatch_tf.needles import NEEDLE_KINDS, make_needles


def compile_classifier(model, learning_rate=1e-3, **kwargs):
    """Compiles a classifier with Adam, cross-entropy on logits and accuracy.

    Args:
        model: a `keras.Model` whose outputs are logits, `[B, num_classes]`.
        learning_rate: Adam's learning rate: a float or a
            `keras.optimizers.schedules.LearningRateSchedule`.
        **kwargs: further arguments of `model.compile` (e.g. `run_eagerly`).

    Returns:
        `model`, compiled.

    Example:

    >>> model = compile_classifier(DynamicPatchModel(num_classes=4), 3e-3)
    >>> model.fit(dataset, epochs=2)
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def fit_and_save(model, training, validation, output, epochs, learning_rate,
                 verbose=1, tensorboard=False, callbacks=()):
    """Compiles, trains and saves `model` into `output`, resuming a killed run.

    Writes `output/model.keras`, `output/checkpoints/epoch-NNN.keras` and
    `output/history.json` (a list of per-epoch metrics, `epoch` counting from
    1). `output/backup/` holds the state of an unfinished run: when it is
    there, training starts after its last finished epoch, so calling this
    again with the same arguments after a crash finishes the run.

    Args:
        model: an unbuilt `DynamicPatchModel` classifier.
        training: a `tf.data.Dataset` of `(images, labels)` batches, of
            known cardinality, that shuffles itself if it should.
        validation: a `tf.data.Dataset` like `training`, or None.
        output: the folder to write to.
        epochs: the number of epochs of the whole run.
        learning_rate: Adam's initial learning rate, cosine-decayed to 0 by
            the end of the run (the BatchNorm statistics then settle, which
            inference needs).
        verbose: `fit`'s verbosity: 0 for silence, 1 for a progress bar, 2
            for a line per epoch; with 0 the resumption and the saved path
            are not printed either.
        tensorboard: also write TensorBoard logs to `output/logs`.
        callbacks: further Keras callbacks for `fit`, called before the
            backup at the end of each epoch.

    Returns:
        The `keras.callbacks.History` of this call's epochs (all epochs are in
        `output/history.json`).

    Example:

    >>> fit_and_save(model, training, validation, "run/", epochs=8, learning_rate=1e-3)
    Saved the model to run/model.keras
    """
    steps = epochs * int(training.cardinality())
    compile_classifier(model, keras.optimizers.schedules.CosineDecay(learning_rate, steps))
    model.build(training.element_spec[0].shape)  # BackupAndRestore needs the weights
    backup = os.path.join(output, "backup")
    resuming = os.path.isdir(backup)
    if resuming and verbose:
        print(f"Resuming the interrupted run backed up in {backup}")
    # The backup marks an epoch as done, so it is written last: a run killed
    # between these writes redoes the epoch instead of losing its checkpoint.
    if tensorboard:
        callbacks = [*callbacks, keras.callbacks.TensorBoard(os.path.join(output, "logs"))]
    callbacks = [
        HistoryFile(os.path.join(output, "history.json"), resume=resuming),
        keras.callbacks.ModelCheckpoint(os.path.join(output, "checkpoints", "epoch-{epoch:03d}.keras")),
        *callbacks,
        keras.callbacks.BackupAndRestore(backup, double_checkpoint=True),
    ]
    history = model.fit(training, validation_data=validation, epochs=epochs, callbacks=callbacks,
                        verbose=verbose, shuffle=False)  # `training` shuffles itself
    path = os.path.join(output, "model.keras")
    model.save(path)
    if verbose:
        print(f"Saved the model to {path}")
    return history


class HistoryFile(keras.callbacks.Callback):
    """Rewrites a JSON list of per-epoch metrics after every epoch.

    Each record is `{"epoch": N, "loss": ..., ...}` with `N` counting from 1,
    and the list is sorted by epoch.

    Args:
        path: the JSON file; its folder is created when missing.
        resume: keep the records already in the file (an epoch run again
            replaces its record); otherwise the file starts empty.

    Example:

    >>> model.fit(dataset, epochs=3, callbacks=[HistoryFile("run/history.json", resume=False)])
    """

    def __init__(self, path, resume=False):
        super().__init__()
        self.path = path
        self.records = {}
        if resume and os.path.exists(path):
            with open(path) as file:
                self.records = {record["epoch"]: record for record in json.load(file)}

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{name: float(value) for name, value in (logs or {}).items()}}
        self.records[epoch + 1] = record
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "w") as file:
            json.dump([self.records[key] for key in sorted(self.records)], file, indent=1)


def folder_datasets(directory, batch_size, image_size, seed, validation_split=None,
                    augment=None, shuffle=True):
    """Training and validation sets of a class folder (see `image_folder_dataset`).

    Args:
        directory: the folder with one subfolder of images per class.
        batch_size: images per batch.
        image_size: None to keep each image's size, or `(height, width)`.
        seed: seed of the shuffling and of the validation split.
        validation_split: the fraction held out for validation, or None.
        augment: None, or a Keras layer (e.g. from `make_augmentation`)
            applied with `training=True` to the training batches only.
        shuffle: whether the training set is shuffled at every epoch (the
            validation set never is).

    Returns:
        `(training, validation or None, class_names)`, as `needles_datasets`.

    Raises:
        ValueError: as `image_folder_dataset`, e.g. when no usable image is
            found.

    Example:

    >>> training, validation, names = folder_datasets("photos/", 8, (512, 512), 0, 0.2)
    """
    options = dict(batch_size=batch_size, image_size=image_size, seed=seed)
    if not validation_split:
        dataset, info = image_folder_dataset(directory, shuffle=shuffle, augment=augment, **options)
        return dataset, None, info.class_names
    training, info = image_folder_dataset(
        directory, validation_split=validation_split, subset="training", shuffle=shuffle,
        augment=augment, **options)
    validation, _ = image_folder_dataset(
        directory, validation_split=validation_split, subset="validation", shuffle=False,
        **options)
    return training, validation, info.class_names


def needles_datasets(num_images, image_size, num_classes, seed, batch_size,
                     validation_split=None, augment=None):
    """Generated needles images, the first `validation_split` of them held out.

    Args:
        num_images: how many images to generate (see `make_needles`).
        image_size: their side in pixels, or `(height, width)`.
        num_classes: the number of object kinds, one per class.
        seed: seed of the images and of the shuffling.
        batch_size: images per batch.
        validation_split: the fraction held out for validation, or None.
        augment: None, or a Keras layer (e.g. from `make_augmentation`)
            applied with `training=True` to the training batches only.

    Returns:
        `(training, validation or None, class_names)`: datasets of float32
        images in [0, 1] and int32 labels; the training set is shuffled at
        every epoch.

    Raises:
        ValueError: for arguments `make_needles` rejects, or a split that
            leaves no training or no validation image.

    Example:

    >>> training, validation, names = needles_datasets(60, 128, 2, 0, 8, 0.2)
    >>> names
    ['plus', 'ring']
    """
    images, labels = make_needles(num_images, image_size, num_classes, seed=seed)
    held_out = int(num_images * (validation_split or 0))
    if validation_split and not 0 < held_out < num_images:
        raise ValueError(
            f"a validation split of {validation_split} leaves no training or no "
            f"validation image of {num_images}."
        )

    def batches(chosen, shuffle, augment=None):
        dataset = tf.data.Dataset.from_tensor_slices((images[chosen], labels[chosen]))
        if shuffle:
            dataset = dataset.shuffle(len(dataset), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(batch_size).map(
            lambda images, labels: (tf.image.convert_image_dtype(images, tf.float32), labels)
        )
        if augment is not None:
            dataset = dataset.map(lambda images, labels: (augment(images, training=True), labels))
        return dataset.prefetch(tf.data.AUTOTUNE)

    validation = batches(slice(0, held_out), shuffle=False) if held_out else None
    training = batches(slice(held_out, None), shuffle=True, augment=augment)
    return training, validation, list(NEEDLE_KINDS[:num_classes])


def patch_counts(model, dataset):
    """The number of patches `model` cuts each image of a dataset into.

    Args:
        model: a `DynamicPatchModel`.
        dataset: a `tf.data.Dataset` of `(images, labels)` batches, images
            float32 `[B, H, W, 3]` in [0, 1].

    Returns:
        int64 NumPy array `[num_images]`, in the dataset's order.

    Example:

    >>> patch_counts(model, validation)
    array([ 9, 30, 21, ...])
    """
    embed = embed_function(model)
    counts = [embed(images)["boxes"].row_lengths().numpy() for images, _ in dataset]
    return np.concatenate(counts)


def describe_counts(counts):
    """Summarises patch counts as `"mean M, p95 P, max X"`.

    Args:
        counts: patch counts, e.g. from `patch_counts`.

    Returns:
        The string, mean to one decimal.

    Example:

    >>> describe_counts([9, 12, 30])
    'mean 17.0, p95 28, max 30'
    """
    return (f"mean {np.mean(counts):.1f}, p95 {np.percentile(counts, 95):.0f}, "
            f"max {np.max(counts)}")
