"""Overhead of the adaptive part: complexity map + subdivision + extraction.

Times, in inference mode on the CPU, interleaved call by call, of the default
DynamicPatchModel's stages on the same batches (the first 8 images of each set,
or one batch if --batch is larger; --batch 1 runs them one image at a time;
on needles the model takes the needles thresholds and sigma):

* complexity map alone (`model.complexity`);
* complexity map + patcher (`model.patches`: the image check and conversion,
  then the complexity map and the patcher: block means, split decisions,
  cutting, resampling and ordering the patches; all its outputs computed);
* the whole `model.embed` (the above, then attention, embedder, position
  encoding, pooling), the denominator of the share;
* `embed` + head, the full forward pass.

Also patches per image (mean, p95, max, and the mean per level) on the image
sets: the 8 photos and needles images, 512x512.

    python recipes/benchmarks/overhead.py            # batch 8: ~1-2 min on 2 free cores
    python recipes/benchmarks/overhead.py --batch 1  # one image per call
    python recipes/benchmarks/overhead.py --smoke    # 128x128, tiny: <1 min

Prints a Markdown section for docs/benchmarks.md, with a met/missed line for
issue 11's target: complexity map + subdivision + extraction <= 10% of forward time
on photos, <= 25% on needles.
"""

import numpy as np
import tensorflow as tf

import common
from dynpatch_tf.inference import image_function

# Issue 11's goal for the adaptive part's share of the forward time, per image set.
TARGET_SHARE = {"photos": 0.10, "needles": 0.25}
TIMED_IMAGES = 8


def options():
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=512, help="image side")
    parser.add_argument("--batch", type=int, default=8, help="images per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per batch and stage")
    parser.add_argument("--stats-images", type=int, default=64,
                        help="images per set for the patch statistics (photos repeat after 8)")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.repeats, args.stats_images = 128, 2, 1, 4
    return args


def stages(model):
    """{stage: tf.function on uint8 images}.

    Each stage returns sums of its outputs: every output is computed, but none
    is copied out to NumPy (61 MB of patch pixels for 8 photos would cost more
    than some stages themselves).
    """
    def sums(tensors):
        return [tf.reduce_sum(tf.cast(tensor, tf.float32)) for tensor in tensors]

    def patches(images):
        out = model.patches(images)
        return sums(out[key].flat_values for key in ("pixels", "boxes", "levels", "gates"))

    def embed(images):
        out = model.embed(images)
        return sums([out["pooled_embedding"], out["patch_embeddings"].flat_values])

    functions = {
        "complexity map": lambda images: sums([model.complexity(images)]),
        "complexity map + patcher": patches,
        "whole embed": embed,
    }
    functions = {name: image_function(fn, tf.uint8) for name, fn in functions.items()}
    functions["embed + head (forward)"] = common.predictor(model)
    return functions


def timing(model, images, batch, repeats, target):
    """Per stage: seconds per call of `batch` images, averaged over the batches of `images`.

    Each batch is timed `repeats` times (round robin); its median is taken, and
    the medians are averaged, so every image counts alike.
    """
    batches = [images[start:start + batch] for start in range(0, len(images), batch)]
    seconds = common.time_calls(stages(model), batches, repeats * len(batches))
    times = {name: common.seconds_per_batch(values, len(batches)) for name, values in seconds.items()}
    embed = times["whole embed"]
    rows = [[name, f"{seconds:.3f}", f"{1000 * seconds / batch:.1f}", f"{100 * seconds / embed:.1f}%"]
            for name, seconds in times.items()]
    share = times["complexity map + patcher"] / embed
    text = common.table(["stage", "median s", "ms / image", "share of embed"], rows)
    line = common.verdict(
        f"complexity map + subdivision + extraction <= {target:.0%} of forward (embed) time",
        share <= target,
        f"{100 * share:.1f}%: {times['complexity map + patcher']:.3f} s of {embed:.3f} s; "
        f"complexity map alone {100 * times['complexity map'] / embed:.1f}%",
    )
    return text, line


def patch_statistics(model, images):
    counts = common.level_counts(model, images)
    totals = counts.sum(1)
    by_level = ", ".join(f"{side} px {mean:.1f}" for side, mean in zip(common.LEVEL_SIZES, counts.mean(0)))
    return (f"Patches per image over {len(images)} images: mean {totals.mean():.1f}, "
            f"p95 {np.percentile(totals, 95):.0f}, max {totals.max()}, min {totals.min()} "
            f"(of {common.uniform_count(common.LEVEL_SIZES[-1], *images.shape[1:3])} on the finest grid); "
            f"mean per level: {by_level}.")


def main():
    args = options()
    timed = max(args.batch, TIMED_IMAGES)
    common.header(
        "Overhead of complexity map and patcher (issue 6)",
        [f"Default DynamicPatchModel (random weights; on needles with {common.NEEDLES_NOTE}), "
         f"inference, CPU; the first {timed} images of each set in "
         f"batches of {args.batch} ({args.size}x{args.size}); each batch timed {args.repeats} times after one "
         "warm-up round, stages interleaved call by call; per stage, the mean over batches of the median "
         "seconds per call."],
    )
    count = max(timed, args.stats_images)
    for name, (images, settings) in common.image_sets(count, args.size).items():
        model = common.dynamic_model(**settings)
        text, line = timing(model, images[:timed], args.batch, args.repeats, TARGET_SHARE[name.split()[0]])
        print(f"### {name}\n\n{text}\n\n{line}\n\n{patch_statistics(model, images[:args.stats_images])}\n",
              flush=True)


if __name__ == "__main__":
    main()
