"""Accuracy against patches per image for models trained with and without
threshold jitter (issue 14, item 4).

Thresholds change compute, not weights, so a trained model can be run at
another budget by scaling its thresholds. This script asks whether training
with threshold jitter (`DynamicPatchModel(threshold_jitter=j)`: every training
step scales the thresholds by a random factor in `[exp(-j), exp(j)]`, as
FlexiViT trains across patch sizes) keeps one model good across those budgets.

Two models train on the same needles images from the same seed, with the same
epochs, batch and optimizer (Adam); the only difference is the jitter. Then
each is evaluated, without retraining, with its own trained thresholds times
each of --scales (0.5 to 2 by default, the range that `j = 0.7` covers): the
validation accuracy and the mean patches per image at every scale, i.e. the
accuracy-against-patches curve of both models.

Both models take the needles task's own thresholds and sigma
(`common.NEEDLES_SETTINGS`), not the library's defaults, which suit photos;
--sigma sets another LoG scale, and --patch-budget B trains both with the
budget penalty (`patch_budget=B`, `penalty_weight` --penalty-weight).

    python recipes/benchmarks/jitter.py                  # 128 px, 256 / 128 images, 4 epochs: ~10 min on 2 cores
    python recipes/benchmarks/jitter.py --size 256 --train 1024 --val 256 --epochs 8
    python recipes/benchmarks/jitter.py --background photos    # objects on textured photo crops
    python recipes/benchmarks/jitter.py --smoke          # tiny, eager: ~1 min

The jitter reaches the patcher only if the model passes `training` from
`embed` to the patcher; the script checks that first and stops with a message
if it does not.
"""

import keras
import numpy as np

import common
from dynpatch_tf import calibrate_thresholds, make_needles
from dynpatch_tf.training import compile_classifier


def options():
    parser = common.training_flags(common.parser(__doc__), size=128, epochs=4)
    parser.add_argument("--jitter", type=float, default=0.7, help="threshold_jitter of the jittered model")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.7, 1.0, 1.4, 2.0],
                        help="evaluate at each model's trained thresholds times each")
    parser.add_argument("--calibrate", type=float, default=None, metavar="FRACTION",
                        help="start from thresholds calibrated to this patch fraction on the training "
                             "images (for textured backgrounds, which the needles thresholds split everywhere)")
    parser.add_argument("--sigma", type=float, default=common.NEEDLES_SIGMA,
                        help="LoG sigma of both models (the needles' by default; the library's, 2, "
                             "suits textured backgrounds)")
    parser.add_argument("--patch-budget", type=float, default=None,
                        help="train both models with the budget penalty at this patch fraction")
    parser.add_argument("--penalty-weight", type=float, default=0.1, help="with --patch-budget")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.classes, args.train, args.val, args.epochs, args.batch = 128, 2, 16, 8, 1, 4
        args.scales = [0.5, 1.0, 2.0]
    return args


def check_jitter_reaches_patcher(model, images):
    """Stop unless `model.embed(..., training=True)` (what the train step runs)
    jitters the patch counts: with `training` not passed on to the patcher,
    the "jittered" model would silently train without jitter. On a model of
    its own: training-mode calls move BatchNorm's statistics."""
    reference = model.embed(images, training=False)["boxes"].row_lengths().numpy().sum()
    for _ in range(8):
        if model.embed(images, training=True)["boxes"].row_lengths().numpy().sum() != reference:
            return
    raise SystemExit(
        "threshold_jitter has no effect in training: DynamicPatchModel.embed does not pass "
        "`training` to the patcher (model.patches(images, training=training) -> "
        "self.patcher(..., training=training)). This benchmark needs that change."
    )


def train(model, data, args):
    """Fit on `data`; seconds per epoch (see `common.timed_fit`)."""
    (x, y), _ = data
    compile_classifier(model, args.learning_rate, run_eagerly=args.smoke)
    return common.timed_fit(model, x, y, args)[1]


def sweep(model, data, args):
    """[(scale, accuracy, patches per image)] at the trained thresholds times each scale.

    Inference only (no jitter); the trained thresholds are restored after."""
    _, (xv, yv) = data
    trained = np.array(model.thresholds)
    rows = []
    for scale in args.scales:
        model.patcher.set_thresholds(trained * scale)
        logs = model.evaluate(xv, yv, batch_size=args.batch, verbose=0, return_dict=True)
        rows.append((scale, logs["accuracy"], logs["patches"]))
        print(f"<!-- {model.name} x{scale:g}: accuracy {logs['accuracy']:.3f}, "
              f"patches {logs['patches']:.1f} -->", flush=True)
    model.patcher.set_thresholds(trained)
    return rows


def report(results, args):
    """The curve table (one row per scale, both models side by side) and a summary per model."""
    names = list(results)
    columns = ["threshold scale"]
    for name in names:
        columns += [f"{name}: accuracy ± s.e.", f"{name}: patches / image"]
    rows = []
    for index, scale in enumerate(args.scales):
        row = [f"x{scale:g}"]
        for name in names:
            _, accuracy, patches = results[name]["curve"][index]
            error = np.sqrt(accuracy * (1 - accuracy) / args.val)
            row += [f"{accuracy:.3f} ± {error:.3f}", f"{patches:.1f}"]
        rows.append(row)
    print("\n" + common.table(columns, rows) + "\n")
    summary = []
    for name in names:
        accuracies = np.array([accuracy for _, accuracy, _ in results[name]["curve"]])
        thresholds = ", ".join(f"{t:.4f}" for t in results[name]["thresholds"])
        summary.append([name, thresholds, f"{accuracies.mean():.3f}", f"{accuracies.min():.3f}",
                        f"{accuracies.max() - accuracies.min():.3f}", f"{results[name]['seconds']:.1f}"])
    print(common.table(["model", "trained thresholds (x1)", "mean accuracy over scales", "worst scale",
                        "spread (best - worst)", "s / epoch"], summary) + "\n")
    print(f"(s.e.: binomial standard error of an accuracy on {args.val} validation images. Patches per "
          "image: mean over the validation images. Each model's scales multiply its own trained "
          "thresholds, so the two columns of patches differ.)\n")


def main():
    args = options()
    factors = f"x{np.exp(-args.jitter):.2f} to x{np.exp(args.jitter):.2f}"
    common.header(
        "Threshold jitter: accuracy against patches per image across threshold scales (issue 14)",
        [f"Needles {args.size}x{args.size} on {args.background} backgrounds, {args.classes} classes (chance {1 / args.classes:.2f}), "
         f"{args.train} training images (seed 1), {args.val} validation images (seed 2). Both models: "
         f"the needles thresholds {common.NEEDLES_THRESHOLDS} at LoG sigma {args.sigma:g} (trainable thresholds"
         + (f", calibrated to {args.calibrate:g} of the finest count on the training images first" if args.calibrate else "")
         + (f"; budget penalty at {args.patch_budget:g}, weight {args.penalty_weight:g}" if args.patch_budget else "")
         + f"), {args.epochs} epochs, batch {args.batch}, "
         f"Adam {args.learning_rate:g}, seed {args.seed}; one with `threshold_jitter={args.jitter:g}` "
         f"(a factor from {factors} per training step), one without. Evaluated at the trained "
         f"thresholds times {', '.join(f'{s:g}' for s in args.scales)}, without retraining."
         + (" Smoke run: eager training (no tracing), numbers mean nothing." if args.smoke else "")],
    )
    data = (
        make_needles(args.train, image_size=args.size, num_classes=args.classes, seed=1,
                     background=args.background),
        make_needles(args.val, image_size=args.size, num_classes=args.classes, seed=2,
                     background=args.background),
    )
    settings = {**common.NEEDLES_SETTINGS, "sigma": args.sigma}
    if args.patch_budget:
        settings.update(patch_budget=args.patch_budget, penalty_weight=args.penalty_weight)
    check_jitter_reaches_patcher(common.dynamic_model(args.classes, args.seed, **settings,
                                                      threshold_jitter=args.jitter), data[0][0][: args.batch])
    names = ("no jitter", f"jitter {args.jitter:g}")
    models = [common.dynamic_model(args.classes, args.seed, **settings, threshold_jitter=jitter,
                                   name=name.replace(" ", "_").replace(".", "_"))
              for name, jitter in zip(names, (0.0, args.jitter))]
    # The jittered patcher's SeedGenerator draws from Python's generator when it is
    # made, which shifts the seeds of the initializers after it: copy the weights.
    models[1].set_weights(models[0].get_weights())
    if args.calibrate:
        for model in models:
            calibrate_thresholds(model, data[0][0], patch_fraction=args.calibrate, batch_size=args.batch)
    results = {}
    for name, model in zip(names, models):
        keras.utils.set_random_seed(args.seed)  # the same shuffling for both
        seconds = train(model, data, args)
        results[name] = {"thresholds": np.array(model.thresholds), "seconds": seconds,
                         "curve": sweep(model, data, args)}
    report(results, args)


if __name__ == "__main__":
    main()
