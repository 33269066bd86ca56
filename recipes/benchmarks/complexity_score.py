"""Which complexity score finds objects, not texture (issue 14, item 5).

For each complexity map under test (LoG sigma 1, 2 and 4, each times sigma^2,
and the scale-normalised multi-scale map, the maximum over sigmas 1, 2 and 4),
a `DynamicPatcher(token_size=8)` (quadtree rule, base 64 px, min 8 px) is
calibrated with `dynpatch_tf.calibrate_thresholds` to a fixed budget, a share
of the finest count, on the very images it is then measured on. Each map
gets the same budget, so the question is only where each one spends it:

* object pixels in 8 px patches: the share of the object pixels (the mask of
  `make_needles(..., return_masks=True)`) inside the boxes of level-3 patches;
* objects found: the share of objects with at least half their pixels there;
* all pixels in 8 px patches: the budget check, and the share a map that
  spends its 8 px patches at random would give the object pixels;
* patches / finest: the achieved mean patch count over the finest count.

It also times each map alone (inference, CPU, interleaved call by call) on
one batch of needles on all the photos, as the ratio to sigma 1: a wider
kernel costs more.

The data are needles images whose backgrounds are crops of scikit-image photos
(`make_needles(..., background=...)`): the textures (brick, grass, gravel),
and apart the photos of mixed content (astronaut, coffee, rocket, chelsea);
and for reference the smooth needles. All come from the same seed, so they
hold the same objects at the same places.

    python recipes/benchmarks/complexity_score.py           # 256 images of 256^2 per set: ~3 min on 2 cores
    python recipes/benchmarks/complexity_score.py --smoke   # 8 images of 128^2: <1 min

Prints a Markdown section for docs/benchmarks.md.
"""

import sys

import numpy as np
import tensorflow as tf

import common
from dynpatch_tf import ComplexityMap, DynamicPatcher, calibrate_thresholds, make_needles
from dynpatch_tf.inference import image_function

FINEST_LEVEL = 3  # 64 -> 32 -> 16 -> 8 px
SCORES = {
    "sigma 1": 1.0,
    "sigma 2": 2.0,
    "sigma 4": 4.0,
    "max over sigma 1, 2, 4": [1.0, 2.0, 4.0],
}
# Title of each image set: its `background` argument of `make_needles`.
BACKGROUNDS = {
    "textures (brick, grass, gravel)": ("brick", "grass", "gravel"),
    "mixed photos (astronaut, coffee, rocket, chelsea)": ("astronaut", "coffee", "rocket", "chelsea"),
    "smooth backgrounds (reference)": "smooth",
}


def options():
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=256, help="image side")
    parser.add_argument("--images", type=int, default=256, help="images per set")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.15, 0.30],
                        help="budgets, as shares of the finest (8 px) patch count")
    parser.add_argument("--classes", type=int, default=4, help="needle kinds (classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16, help="images per patcher call and timed batch")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per map")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.images, args.repeats = 128, 8, 1
    return args


def timing(images, repeats):
    """Table: each map's median time on `images`, and its ratio to sigma 1."""
    functions = {name: image_function(lambda x, cmap=ComplexityMap(sigma=sigma): tf.reduce_sum(cmap(x)),
                                      tf.uint8)
                 for name, sigma in SCORES.items()}
    seconds = {name: np.median(values) for name, values in common.time_calls(functions, [images], repeats).items()}
    first = seconds[next(iter(SCORES))]
    rows = [[name, f"{1000 * value / len(images):.2f}", f"{value / first:.2f}x"] for name, value in seconds.items()]
    return common.table(["score", "ms per image", "time / sigma 1"], rows)


def fine_masks(patcher, cmap, images, batch):
    """bool `[N, H, W]`: the pixels inside the 8 px (level-3) patches."""
    masks = np.zeros(images.shape[:3], bool)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        patches = patcher(chunk, cmap(chunk))
        for index, (boxes, levels) in enumerate(zip(patches["boxes"].numpy(), patches["levels"].numpy())):
            for y0, x0, y1, x1 in boxes[levels == FINEST_LEVEL]:
                masks[start + index, y0:y1, x0:x1] = True
    return masks


def measure(images, objects, masks, sigma, fraction, batch):
    """One row: the map of `sigma` calibrated to `fraction` on `images`."""
    cmap = ComplexityMap(sigma=sigma)
    patcher = DynamicPatcher(token_size=8)
    result = calibrate_thresholds(patcher, images, patch_fraction=fraction, complexity=cmap)
    fine = fine_masks(patcher, cmap, images, batch)
    found = [fine[index][masks[index]].reshape(-1) for index in range(len(images))]
    halves = []
    for index, drawn in enumerate(objects):
        for _, y0, x0, y1, x1 in drawn:
            inside = masks[index, y0:y1, x0:x1]
            halves.append(fine[index, y0:y1, x0:x1][inside].mean() >= 0.5)
    return {
        "objects": np.concatenate(found).mean(),
        "found": np.mean(halves),
        "found_error": np.sqrt(np.mean(halves) * (1 - np.mean(halves)) / len(halves)),
        "all": fine.mean(),
        "fraction": result.patch_fraction,
        "thresholds": result.thresholds,
    }


def main():
    args = options()
    common.header(
        "Complexity scores: objects or texture (issue 14)",
        [f"Needles, {args.images} images of {args.size}x{args.size} per set, {args.classes} classes, "
         f"2-4 objects of 8-24 px each, seed {args.seed}. `DynamicPatcher(token_size=8)` (quadtree rule, "
         "64 -> 8 px) calibrated by `calibrate_thresholds` to each budget on the same images, for each "
         "complexity map (`ComplexityMap(sigma=...)`: sigma^2 |LoG|, the maximum over the sigmas of a list). "
         "Object pixels: the `return_masks` mask (object covers at least half the pixel). Found: objects "
         "with at least half their pixels in 8 px patches, +- its binomial standard error. A map that "
         "placed its 8 px patches at random would cover the share of all pixels."],
    )
    best = {}
    for title, background in BACKGROUNDS.items():
        images, _, objects, masks = make_needles(
            args.images, image_size=args.size, num_classes=args.classes, seed=args.seed,
            background=background, return_objects=True, return_masks=True)
        rows = []
        for fraction in args.fractions:
            for name, sigma in SCORES.items():
                row = measure(images, objects, masks, sigma, fraction, args.batch)
                best.setdefault((title, fraction), []).append((row["objects"], name))
                rows.append([
                    f"{fraction:.0%}", name, f"{100 * row['objects']:.1f}%",
                    f"{100 * row['found']:.1f}% +- {100 * row['found_error']:.1f}",
                    f"{100 * row['all']:.1f}%", f"{row['objects'] / row['all']:.1f}x",
                    f"{row['fraction']:.3f}", ", ".join(f"{t:.2g}" for t in row["thresholds"]),
                ])
                print(f"  {title} {fraction:.0%} {name}: {100 * row['objects']:.1f}%",
                      file=sys.stderr, flush=True)
        columns = ["budget", "score", "object pixels in 8 px patches", "objects found",
                   "all pixels in 8 px patches", "objects / all", "patches / finest", "thresholds"]
        print(f"### {title}: {sum(map(len, objects))} objects\n\n{common.table(columns, rows)}\n", flush=True)
    lines = []
    for (title, fraction), scores in best.items():
        (most, first), (least, last) = max(scores), min(scores)
        outcome = (f"all {100 * most:.1f}% of object pixels" if f"{most:.3f}" == f"{least:.3f}" else
                   f"most object pixels {first} ({100 * most:.1f}%), fewest {last} ({100 * least:.1f}%)")
        lines.append(f"- {title.split(' (')[0]}, budget {fraction:.0%}: {outcome}")
    print("\n".join(lines) + "\n", flush=True)
    images, _ = make_needles(args.batch, image_size=args.size, num_classes=args.classes, seed=args.seed,
                             background="photos")  # all of BACKGROUND_PHOTOS
    print(f"### Time of the map alone: batch {args.batch}, {args.size}x{args.size}, median of {args.repeats} "
          f"calls after one warm-up\n\n{timing(images, args.repeats)}\n", flush=True)


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
