"""Inference throughput and latency of the dynamic model against three baselines.

On the CPU, at batch 1 and at a large batch (32; 8 with --quick), on real photos
and on needles images (512x512), in inference mode (a tf.function of
`model.embed` and the head; random weights: speed does not depend on them):

* dynamic: DynamicPatchModel with the library defaults on the photos (not
  calibrated: the default thresholds are calibrated once, on these photos),
  with the needles thresholds and sigma on needles;
* 8 px grid (fair): the same networks on every 8 px patch, cut by
  `tf.image.extract_patches` (`common.GridPatchModel`): no complexity map, no
  quadtree, no sorting, and at token size 8 no resampling;
* uniform grid: one patch size for every patch, the level whose patch count is
  nearest the dynamic model's mean count on that image set, cut the same way
  (may coincide with the 8 px grid, then it is not timed twice);
* MobileNetV2 alpha 0.35 (weights=None) on the whole image;
* dynamic, networks only: the dynamic model's networks and head on its
  patches cut beforehand (`model.embed_patches`), i.e. with an adaptive part
  that costs nothing: the bound for lowering that part's cost;
* with --threshold-scales S...: the dynamic model with its thresholds
  times S, for information (no verdict).

All variants run interleaved, call by call, so load from other jobs spreads
evenly. Latency is per call (a whole batch). Throughput is batch / (the mean over
the batches of each batch's median seconds): at batch 1 every image of the set
counts alike, so it is the set's throughput, not a typical image's.

    python recipes/benchmarks/throughput.py              # batch 32: ~20-30 min on 2 cores
    python recipes/benchmarks/throughput.py --quick      # batch 8, fewer calls: ~5-7 min
    python recipes/benchmarks/throughput.py --smoke      # 128x128, tiny: ~1 min
    python recipes/benchmarks/throughput.py --quick --token-size 8
                                                         # issue 14: the default model vs the fair grid
    python recipes/benchmarks/throughput.py --quick --calibrate 0.15 --token-size 8
                                                         # issue 14: calibrated vs the fair grid

The fair grid of issue 14 is the 8 px grid at token size 8: its patches are
embedded as they are, not enlarged. At the library's token size, 16, the grid
enlarges every 8 px patch to 16 px; --token-size 8 sets every model to 8.

Prints a Markdown section for docs/benchmarks.md, with met/missed lines for the
issue's throughput targets (their accuracy halves are in study.py).
"""

import keras
import numpy as np
import tensorflow as tf

import common
from dynpatch_tf.calibration import calibrate_thresholds  # after common, which quiets TensorFlow

FINEST_SIDE = common.LEVEL_SIZES[-1]
DYNAMIC, CALIBRATED, FINEST_GRID = "dynamic", "dynamic, calibrated", "8 px grid (fair)"
NETWORKS_ONLY = "dynamic, networks only (patches cut beforehand)"


def options():
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=512, help="image side")
    parser.add_argument("--batch", type=int, default=32, help="the large batch")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per batch at the large batch")
    parser.add_argument("--calls1", type=int, default=5, help="timed calls per image at batch 1")
    parser.add_argument("--quick", action="store_true", help="batch 8, 3 calls per batch or image")
    parser.add_argument("--threshold-scales", type=float, nargs="*", default=[],
                        help="also time the dynamic model with its thresholds times each of these")
    parser.add_argument("--calibrate", type=float, metavar="F",
                        help="also time the dynamic model with thresholds calibrated on each image set "
                        "to F of the finest count (calibrate_thresholds), with verdicts against the "
                        "8 px grid of the same token size")
    parser.add_argument("--token-size", type=int,
                        help="token size of every dynamic and grid model (default: the library's)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.calls, args.calls1 = 8, 3, 3
    if args.smoke:
        args.size, args.batch, args.calls, args.calls1 = 128, 2, 1, 1
    return args


def fair_grid(side, token_size, size):
    """The fair grid of `side` px patches at `token_size` (`common.GridPatchModel`:
    the dynamic model's networks on `tf.image.extract_patches`, no complexity map,
    no quadtree, no sorting), built and seeded, with its patches per image."""
    keras.utils.set_random_seed(0)
    model = common.GridPatchModel(side, 4, token_size=token_size)
    model(np.zeros((1, size, size, 3), np.uint8))  # builds it
    return model, common.uniform_count(side, size, size)


def variants(images, threshold_scales, calibrate, settings):
    """{name: (model, patches per image)} and notes on how they were chosen.

    `settings`: the `common.dynamic_model` options of every dynamic model."""
    size = images.shape[1]
    dynamic = common.dynamic_model(**settings)
    token = dynamic.patcher.token_size
    mean = common.level_counts(dynamic, images).sum(1).mean()
    side = common.nearest_side(mean, size, size)
    thresholds = dynamic.patcher.initial_thresholds
    notes = [
        f"- dynamic model: thresholds ({', '.join(f'{t:g}' for t in thresholds)}), sigma "
        f"{dynamic.complexity.sigma:g}, token size {token}, not calibrated: {mean:.0f} "
        "patches per image on average.",
        f"- grids: the same networks on `tf.image.extract_patches` patches at token size {token} "
        "(`common.GridPatchModel`), with no complexity map, quadtree or sorting.",
        f"- uniform grid: {side} px ({common.uniform_count(side, size, size)} "
        f"patches per image) is the side nearest the dynamic mean of {mean:.0f}"
        + (", i.e. the 8 px grid itself: timed once." if side == FINEST_SIDE else "."),
    ]
    models = {DYNAMIC: (dynamic, mean), FINEST_GRID: fair_grid(FINEST_SIDE, token, size)}
    if side != FINEST_SIDE:
        models[f"uniform grid ({side} px)"] = fair_grid(side, token, size)
    models["MobileNetV2 0.35, whole image"] = (common.mobilenet(size), "-")
    for scale in threshold_scales:
        scaled = common.dynamic_model(**{**settings, "thresholds": [t * scale for t in thresholds]})
        models[f"dynamic, thresholds x{scale:g}"] = (scaled, common.level_counts(scaled, images).sum(1).mean())
    if calibrate is not None:
        calibrated = common.dynamic_model(**settings)
        result = calibrate_thresholds(calibrated, images, patch_fraction=calibrate)
        count = common.level_counts(calibrated, images).sum(1).mean()
        notes.append(f"- calibrated: thresholds ({', '.join(f'{t:.4f}' for t in result.thresholds)}) "
                     f"for {calibrate:g} of the finest count, {result.target:.1f} patches per image; "
                     f"measured {count:.1f}.")
        models[CALIBRATED] = (calibrated, count)
    return models, notes


def calibration_verdicts(speed, models, target, batch):
    """Verdicts of issue 14 for the calibrated model: its count, and 5x the 8 px grid."""
    calibrated, finest = speed[CALIBRATED], speed[FINEST_GRID]
    count = models[CALIBRATED][1]
    lines = [common.verdict(f"calibrated >= 5x the 8 px grid of the same token size, batch {batch}",
                            calibrated >= 5 * finest,
                            f"{calibrated:.2f} vs {finest:.2f} images/s: {calibrated / finest:.2f}x")]
    if batch == 1:
        lines.insert(0, common.verdict("calibrated mean patches within 5% of the target",
                                       abs(count / target - 1) <= 0.05,
                                       f"{count:.1f} vs {target:.1f}"))
    return lines


def networks_only(model, batches):
    """Inference of `model`'s networks and head on each of `batches`, from its
    patches cut beforehand (`model.embed_patches`): the dynamic model with an
    adaptive part that costs nothing, the bound that lowering that part's cost
    could reach."""
    patches = {id(images): model.patches(images) for images in batches}
    run = tf.function(lambda cut, size: model.head_output(model.embed_patches(cut, size)), reduce_retracing=True)
    return lambda images: run(patches[id(images)], tf.constant(images.shape[1:3]))


def measure(models, images, batch, calls):
    """Markdown table of one batch size, and {name: images per second}."""
    if batch == 1:
        batches = [images[index:index + 1] for index in range(len(images))]
    else:
        batches = [images[:batch]]
    functions = {name: common.predictor(model) for name, (model, _) in models.items()}
    functions[NETWORKS_ONLY] = networks_only(models[DYNAMIC][0], batches)
    times = common.time_calls(functions, batches, calls * len(batches))
    speed = {name: batch / common.seconds_per_batch(seconds, len(batches)) for name, seconds in times.items()}
    dynamic = speed[DYNAMIC]
    rows = []
    for name, seconds in times.items():
        p50, p99 = common.latency(seconds)
        patches = models[name if name in models else DYNAMIC][1]
        rows.append([name, patches if isinstance(patches, str) else f"{patches:.0f}", f"{p50:.0f}", f"{p99:.0f}",
                     f"{speed[name]:.2f}", f"{dynamic / speed[name]:.2f}"])
    columns = ["model", "patches / image", "p50 ms", "p99 ms", "images / s", "dynamic's speed-up"]
    return common.table(columns, rows), speed


def verdicts(speed, batch, token_size, described):
    """Verdicts of issue 6 for the dynamic model (`described`: its settings in words);
    at token size 8 its 8 px grid is issue 14's fair grid."""
    dynamic = speed[DYNAMIC]
    finest = speed[FINEST_GRID]
    whole = speed["MobileNetV2 0.35, whole image"]
    grid = "the fair grid (8 px patches at token size 8)" if token_size == 8 else f"token size {token_size}"
    return [
        common.verdict(f"dynamic ({described}) >= 5x finest-grid throughput, {grid}, batch {batch}",
                       dynamic >= 5 * finest, f"{dynamic:.2f} vs {finest:.2f} images/s: {dynamic / finest:.2f}x"),
        common.verdict(f"dynamic >= whole-image MobileNetV2 0.35 throughput, batch {batch}", dynamic >= whole,
                       f"{dynamic:.2f} vs {whole:.2f} images/s: {dynamic / whole:.2f}x"),
        f"- bound, batch {batch}: the networks alone on the dynamic model's patches run "
        f"{speed[NETWORKS_ONLY] / finest:.2f}x the 8 px grid; no cheaper adaptive part can do better.",
    ]


def main():
    args = options()
    common.header(
        "Throughput and latency (issue 6)",
        [f"Inference on the CPU, {args.size}x{args.size} images, batch 1 ({args.calls1} calls per image, "
         f"cycling through the set's images) and batch {args.batch} ({args.calls} calls), after one warm-up "
         "call; variants interleaved call by call. Images per second: batch over the mean, over the batches, "
         "of each batch's median seconds (every image counts alike). Random weights. Latency is per call; "
         "p99 of fewer than 100 calls is about their maximum. The dynamic model: the library defaults on the "
         f"photos, {common.NEEDLES_NOTE} on needles; the grids are its networks on `tf.image.extract_patches` "
         "patches, with no complexity map, quadtree or sorting."],
    )
    token = {} if args.token_size is None else {"token_size": args.token_size}
    for name, (images, settings) in common.image_sets(args.batch, args.size).items():
        described = "needles settings" if settings else "library defaults, uncalibrated"
        print(f"### {name}\n")
        models, notes = variants(images, args.threshold_scales, args.calibrate, {**settings, **token})
        print("\n".join(notes) + "\n")
        lines = []
        for batch, calls in ((1, args.calls1), (args.batch, args.calls)):
            text, speed = measure(models, images, batch, calls)
            print(f"Batch {batch}:\n\n{text}\n", flush=True)
            lines += verdicts(speed, batch, models[DYNAMIC][0].patcher.token_size, described)
            if args.calibrate is not None:
                finest = common.uniform_count(FINEST_SIDE, args.size, args.size)
                lines += calibration_verdicts(speed, models, args.calibrate * finest, batch)
        print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
