"""A few-minute tour of the library on generated data (`dynpatch demo`).

`run_demo` generates needles images, trains a small classifier on them, prints
its validation accuracy and patch counts, saves and exports it, and draws
pictures of its patches, complexity and attention.

Example:

```python
from dynpatch_tf.demo import run_demo

run_demo("demo_output", epochs=8)
# demo_output/model.keras, demo_output/saved_models/dynpatch_demo/1/,
# demo_output/pictures/*.png
```
"""

import os
import time

import keras

from dynpatch_tf.calibration import calibrate_thresholds
from dynpatch_tf.image_files import sample_photo
from dynpatch_tf.model import DynamicPatchModel
from dynpatch_tf.needles import NEEDLE_KINDS, NEEDLES_SIGMA
from dynpatch_tf.training import describe_counts, fit_and_save, needles_datasets, patch_counts
from dynpatch_tf.visualize import render_patches, save_png

# Data, model and training, chosen so that training takes a few minutes on 2
# CPU cores.
IMAGE_SIZE = 192
CLASSES = 4
VALIDATION_SPLIT = 1 / 6
BATCH_SIZE = 16
LEARNING_RATE = 3e-3
MODEL = dict(
    # The needles task's LoG scale, not the library's (calibrated on photos); at it these
    # thresholds split the objects to 8 px and leave the background at 64 px.
    sigma=NEEDLES_SIGMA,
    thresholds=(0.001, 0.002, 0.004),
    token_size=8,
    embed_dim=32,
    width_multiplier=0.5,
)
# The budget penalty caps the needles model at this patch fraction (its count
# sits below it, so the cap costs nothing here).
PATCH_BUDGET = 0.15
PENALTY_WEIGHT = 1.0
PHOTOS = ("astronaut", "rocket", "coffee")  # ship with scikit-image
# The photo pictures use a copy of the model with thresholds calibrated to
# this fraction of the finest grid on the photos themselves.
PHOTO_BUDGET = 0.15
NEEDLES_PICTURES = 3
SAVED_MODELS = "saved_models"  # under the demo's output folder
MODEL_NAME = "dynpatch_demo"


def run_demo(output="demo_output", epochs=8, images=576, seed=0, verbose=1):
    """Needles data -> training -> accuracy and patch counts -> export -> pictures.

    Writes `output/model.keras` (with the checkpoints and history of
    `fit_and_save`), the SavedModel `output/saved_models/dynpatch_demo/<version>/`
    and `output/pictures/<name>.png` (`render_patches` of a few validation
    images and of photos that ship with scikit-image), and prints what it
    does.

    Args:
        output: the folder to write to.
        epochs: training epochs.
        images: needles images to generate; a sixth are held out for
            validation.
        seed: seed of the needles images and of the initial weights.
        verbose: `fit`'s verbosity (1 for a progress bar, 2 for a line per
            epoch).

    Returns:
        The trained `DynamicPatchModel`.

    Raises:
        ValueError: for too few images to hold some out.

    Example:

    >>> model = run_demo("demo_output", epochs=1, images=60)
    """
    from dynpatch_tf import export  # the slowest module to load

    start = time.time()
    print(f"Generating {images} needles images of {IMAGE_SIZE} px, "
          f"{CLASSES} classes ({', '.join(NEEDLE_KINDS[:CLASSES])})...")
    training, validation, _ = needles_datasets(
        images, IMAGE_SIZE, CLASSES, seed, BATCH_SIZE, VALIDATION_SPLIT
    )
    keras.utils.set_random_seed(seed)
    model = DynamicPatchModel(num_classes=CLASSES, penalty_weight=PENALTY_WEIGHT,
                              patch_budget=PATCH_BUDGET, **MODEL)
    fit_and_save(model, training, validation, output, epochs, LEARNING_RATE, verbose)
    results = model.evaluate(validation, return_dict=True, verbose=0)
    counts = patch_counts(model, validation)
    finest = (IMAGE_SIZE // model.patcher.min_size) ** 2
    blocks = (IMAGE_SIZE // model.patcher.base_size) ** 2
    print(f"Validation accuracy: {results['accuracy']:.3f} (chance {1 / CLASSES:.2f}): "
          "the share of held-out images whose object kind the model names right.")
    print(f"Patches per image: {describe_counts(counts)}: the pieces the quadtree cut "
          f"each image into, from {blocks} (all 64 px) to {finest} (all 8 px); each "
          "costs one pass of the embedder.")
    exported = export.export_saved_model(model, os.path.join(output, SAVED_MODELS), MODEL_NAME)
    print(f"Exported to {exported}")
    needles = next(iter(validation))[0][:NEEDLES_PICTURES].numpy()
    photos = {name: sample_photo(name) for name in PHOTOS}
    photo_model = _calibrated_copy(model, photos.values())
    print("Pictures: patches (outlines 64 px red, 32 yellow, 16 cyan, 8 green), "
          "complexity, attention.")
    folder = os.path.join(output, "pictures")
    for name, image in enumerate(needles):
        save_png(render_patches(image, model), os.path.join(folder, f"needles_{name}.png"))
    for name, image in photos.items():
        save_png(render_patches(image, photo_model), os.path.join(folder, f"{name}.png"))
    print(f"Wrote {len(needles) + len(photos)} pictures to {folder}")
    print(f"Done in {time.time() - start:.0f} s.")
    return model


def _calibrated_copy(model, photos):
    """A copy of `model` whose thresholds put `PHOTO_BUDGET` of the finest grid on `photos`.

    The needles thresholds split photos almost everywhere; calibrated, the
    photos split where they are busy (faces, text, edges) and stay coarse
    where they are flat.
    """
    copy = DynamicPatchModel.from_config(model.get_config())
    copy.build((None, None, None, 3))
    copy.set_weights(model.get_weights())
    result = calibrate_thresholds(copy, [photo[None] for photo in photos], patch_fraction=PHOTO_BUDGET)
    thresholds = ", ".join(f"{value:.4f}" for value in result.thresholds)
    print(f"Photos: thresholds calibrated to {PHOTO_BUDGET:.0%} of the finest grid ({thresholds}): "
          f"{result.patches_per_image:.0f} patches per photo on average.")
    return copy

