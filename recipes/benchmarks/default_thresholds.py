"""The library's default thresholds: calibrated to a patch budget on the 8 photos.

`dynpatch_tf.patcher.DEFAULT_THRESHOLDS` are the thresholds that
`calibrate_thresholds` gives the default model (`ComplexityMap()`, LoG sigma 2,
and `DynamicPatcher()`) on the 8 scikit-image photos of the speed benchmarks
(central 512x512 crops) for a budget of --fraction of the finest count (15%:
614 of the 4096 8 px patches per image), rounded to --digits significant
figures and kept non-decreasing. This script computes them, and counts the
patches per photo of the calibrated, the rounded and the library's current
thresholds.

    python recipes/benchmarks/default_thresholds.py            # ~1 min on 2 cores
    python recipes/benchmarks/default_thresholds.py --smoke    # 128x128

Prints a Markdown section for docs/benchmarks.md, with met/missed lines: the
rounded and the library's thresholds each give a mean count within 5% of the
target.
"""

import numpy as np

import common
from dynpatch_tf.calibration import calibrate_thresholds  # after common, which quiets TensorFlow
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS

TOLERANCE = 0.05


def options():
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=512, help="image side")
    parser.add_argument("--fraction", type=float, default=0.15, help="the budget, a fraction of the finest count")
    parser.add_argument("--digits", type=int, default=3, help="significant figures of the rounded thresholds")
    args = parser.parse_args()
    if args.smoke:
        args.size = 128
    return args


def rounded(thresholds, digits):
    """`thresholds` to `digits` significant figures, made non-decreasing."""
    values = np.maximum.accumulate([float(f"{value:.{digits}g}") for value in thresholds])
    return tuple(float(value) for value in values)


def patch_counts(thresholds, images):
    """Patches per image of the default model with `thresholds`."""
    return common.level_counts(common.dynamic_model(thresholds=thresholds), images).sum(1)


def shown(thresholds):
    return "(" + ", ".join(f"{value:.4g}" for value in thresholds) + ")"


def main():
    args = options()
    finest = common.uniform_count(common.LEVEL_SIZES[-1], args.size, args.size)
    target = args.fraction * finest
    common.header(
        "Default thresholds: calibrated on the 8 photos (issue 14)",
        [f"The default model (`ComplexityMap()`, `DynamicPatcher()`), {args.size}x{args.size} photos "
         f"({', '.join(common.PHOTOS)}; central 512 crops"
         + (f" resized to {args.size}" if args.size != 512 else "")
         + f"); `calibrate_thresholds` to {args.fraction:g} of the finest count ({target:.1f} of {finest} "
         f"patches per image), rounded to {args.digits} significant figures."],
    )
    images = common.photo_set(size=args.size)
    result = calibrate_thresholds(common.dynamic_model(), images, patch_fraction=args.fraction)
    candidates = {
        f"calibrated (quantile {result.quantile:.4f})": result.thresholds,
        f"rounded to {args.digits} figures": rounded(result.thresholds, args.digits),
        "library's DEFAULT_THRESHOLDS": DEFAULT_THRESHOLDS,
    }
    counts = {name: patch_counts(thresholds, images) for name, thresholds in candidates.items()}
    rows = [[name] + [str(count) for count in per_photo] + [f"{per_photo.mean():.1f}"]
            for name, per_photo in counts.items()]
    print("\n".join(f"- {name}: {shown(thresholds)}" for name, thresholds in candidates.items()) + "\n")
    print(common.table(["thresholds", *common.PHOTOS, "mean"], rows) + "\n")
    for name in list(candidates)[1:]:
        mean = counts[name].mean()
        print(common.verdict(f"{name}: mean patches within {TOLERANCE:.0%} of the target",
                             abs(mean / target - 1) <= TOLERANCE,
                             f"{mean:.1f} vs {target:.1f}: {100 * (mean / target - 1):+.1f}%"))
    print()


if __name__ == "__main__":
    main()
