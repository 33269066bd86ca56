"""Short training runs that chose DynamicPatchModel's defaults.

One setting changes at a time from a base configuration (the library defaults,
with the needles task's own thresholds and sigma: `NEEDLES_THRESHOLDS`,
`NEEDLES_SIGMA`), on the needles task (small objects decide the class; see
`dynpatch_tf.needles`). Each
run trains from the same seed for the same number of epochs and reports
validation accuracy, mean patches per image, and training time per epoch as a
ratio to the base run of the same invocation.

    python recipes/benchmarks/defaults.py [--images 256] [--size 256] [--epochs 6]

Prints a Markdown table for docs/benchmarks.md.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from dynpatch_tf import DynamicPatchModel, make_needles  # noqa: E402
from dynpatch_tf.needles import NEEDLES_SIGMA, NEEDLES_THRESHOLDS  # noqa: E402

BASE = "base (needles settings)"
VARIANTS = {
    BASE: {},
    "token_size 8": {"token_size": 8},
    "token_size 32": {"token_size": 32},
    "width_multiplier 0.35": {"width_multiplier": 0.35},
    "width_multiplier 1.0": {"width_multiplier": 1.0},
    "embed_dim 32": {"embed_dim": 32},
    "embed_dim 128": {"embed_dim": 128},
    "thresholds x0.5": {"thresholds_scale": 0.5},
    "thresholds x2": {"thresholds_scale": 2.0},
    "temperature 0.001": {"temperature": 0.001},
    "temperature 0.02": {"temperature": 0.02},
}


def model_for(variant, num_classes):
    settings = {"sigma": NEEDLES_SIGMA, **variant}
    scale = settings.pop("thresholds_scale", 1.0)
    settings["thresholds"] = [t * scale for t in NEEDLES_THRESHOLDS]
    keras.utils.set_random_seed(0)
    model = DynamicPatchModel(num_classes=num_classes, **settings)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))  # the model's default loss and metrics
    return model


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def run(variant, data, args):
    (x, y), (xv, yv) = data
    model = model_for(variant, args.classes)
    timer = EpochTimer()
    history = model.fit(
        x, y, batch_size=8, epochs=args.epochs, validation_data=(xv, yv), verbose=0, callbacks=[timer]
    ).history
    # The first epoch includes tracing; the median of the rest is the step cost.
    return history["val_accuracy"][-1], history["val_patches"][-1], float(np.median(timer.times[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    data = (
        make_needles(args.images, image_size=args.size, num_classes=args.classes, seed=1),
        make_needles(args.images // 2, image_size=args.size, num_classes=args.classes, seed=2),
    )
    print(f"needles: {args.images} train / {args.images // 2} validation images, {args.size}^2, "
          f"{args.classes} classes (chance {1 / args.classes:.2f}); {args.epochs} epochs, Adam 1e-3, batch 8")
    print("\n| variant | val accuracy | patches / image | s / epoch | time ratio to base |")
    print("|---|---|---|---|---|")
    base_time = None
    for name, variant in VARIANTS.items():
        if args.only and name not in args.only and name != BASE:
            continue
        accuracy, patches, seconds = run(variant, data, args)
        base_time = base_time or seconds
        print(f"| {name} | {accuracy:.3f} | {patches:.1f} | {seconds:.1f} | {seconds / base_time:.2f} |", flush=True)


if __name__ == "__main__":
    main()
