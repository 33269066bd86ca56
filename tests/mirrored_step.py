"""One training step on one device and on 2 replicas, for tests/test_distribute.py.

Run as a script in a process of its own: it splits the CPU into 2 logical
devices, which TensorFlow allows only before it starts. Two copies of a tiny
`DynamicPatchModel` (same weights, budget penalty on, synchronized BatchNorm,
SGD with learning rate 1, so a weight's change is minus its gradient) each
take one `fit` step on the same global batch of 8 images: one on the default
strategy, one under `MirroredStrategy` over the 2 devices (4 images each).
The first 4 images are needles (busy), the last 4 flat, so the first replica
alone is far over the budget and the second far under it.

Usage: python -m tests.mirrored_step OUTPUT.npz (from the repository root). Writes the step logs
(`single_<name>`, `mirrored_<name>`), the weights before the step, each
copy's weights after it (`before_<i>`, `single_<i>`, `mirrored_<i>`), the
images' patch fractions and the model's `patch_budget`.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dynpatch_tf import DynamicPatchModel, make_needles  # noqa: E402
from dynpatch_tf.needles import NEEDLES_SIGMA  # noqa: E402

SIZE = 128
# Needles' sigma, which these thresholds are for. (With the photo default,
# sigma 2, the mirrored step's gradients differ from one device's by up to 1%
# on this batch, the forward pass and BatchNorm's statistics still equal:
# docs/notes.md, "Synchronized BatchNorm".)
MODEL = dict(num_classes=2, token_size=8, embed_dim=16, width_multiplier=0.35, sigma=NEEDLES_SIGMA,
             attention_filters=(8, 16), thresholds=(0.001, 0.002, 0.004),
             penalty_weight=1.0, patch_budget=0.08, synchronized_batch_norm=True)


def global_batch():
    needles, labels = make_needles(4, SIZE, 2, seed=0)
    flat = np.full((4, SIZE, SIZE, 3), 128, np.uint8)
    images = np.concatenate([needles, flat]).astype("float32") / 255
    return images, np.concatenate([labels, [0, 1, 0, 1]]).astype("int32")


def compiled_model(strategy, run_eagerly):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = DynamicPatchModel(**MODEL)
        model.compile(optimizer=keras.optimizers.SGD(1.0), run_eagerly=run_eagerly)
        model.build((None, SIZE, SIZE, 3))
    return model


def main(path):
    images, labels = global_batch()
    # The reference step runs eagerly (a third of the time of tracing it).
    single = compiled_model(tf.distribute.get_strategy(), run_eagerly=True)
    mirrored = compiled_model(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), False)
    mirrored.set_weights(single.get_weights())
    results = {f"before_{i}": weight for i, weight in enumerate(single.get_weights())}
    results["names"] = [weight.path for weight in single.weights]
    results["fractions"] = single.embed(images)["patch_fraction"].numpy()
    results["patch_budget"] = MODEL["patch_budget"]
    results["penalty_weight"] = MODEL["penalty_weight"]
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(len(images))
    for name, model in (("single", single), ("mirrored", mirrored)):
        logs = model.fit(batches, epochs=1, verbose=0).history
        results.update({f"{name}_{key}": values[0] for key, values in logs.items()})
        results.update({f"{name}_{i}": weight for i, weight in enumerate(model.get_weights())})
    results["replicas"] = mirrored.distribute_strategy.num_replicas_in_sync
    np.savez(path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
