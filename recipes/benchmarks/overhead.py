"""Overhead of the adaptive part: complexity map + subdivision + extraction.

Times, in inference mode on the CPU, interleaved call by call, of the default
DynamicPatchModel's stages on the same batch:

* complexity map alone (`model.complexity`);
* complexity map + patcher (`model.patcher`: block means, split decisions,
  cutting, resampling and ordering the patches; all its ragged outputs fetched);
* the whole `model.embed` (the above, then attention, embedder, position
  encoding, pooling), the denominator of the share;
* `embed` + head, the full forward pass.

Also patches per image (mean, p95, max, and the mean per level) on the image
sets: the 8 photos and needles images, 512x512.

    python recipes/benchmarks/overhead.py            # ~3-5 min on 2 cores
    python recipes/benchmarks/overhead.py --smoke    # 128x128, tiny: <1 min

Prints a Markdown section for docs/benchmarks.md, with a met/missed line for the
issue's target: complexity map + subdivision + extraction <= 10% of forward time.
"""

import numpy as np
import tensorflow as tf

import common

TARGET_SHARE = 0.10
SPEC = [tf.TensorSpec([None, None, None, 3], tf.uint8)]


def options():
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=512, help="image side")
    parser.add_argument("--batch", type=int, default=8, help="images per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per stage")
    parser.add_argument("--stats-images", type=int, default=64,
                        help="images per set for the patch statistics (photos repeat after 8)")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.repeats, args.stats_images = 128, 2, 1, 4
    return args


def stages(model):
    """{stage: tf.function on uint8 images}."""
    def patches(images):
        out = model.patcher(images, model.complexity(images))
        return [out[key].flat_values for key in ("pixels", "boxes", "levels", "gates")]

    def embed(images):
        out = model.embed(images)
        return out["pooled_embedding"], out["patch_embeddings"].flat_values

    functions = {
        "complexity map": lambda images: model.complexity(images),
        "complexity map + patcher": patches,
        "whole embed": embed,
    }
    functions = {name: tf.function(fn, input_signature=SPEC) for name, fn in functions.items()}
    functions["embed + head (forward)"] = common.predictor(model)
    return functions


def timing(model, images, repeats):
    times = {name: np.median(seconds) for name, seconds in common.time_calls(stages(model), [images], repeats).items()}
    embed = times["whole embed"]
    rows = [[name, f"{seconds:.3f}", f"{1000 * seconds / len(images):.1f}", f"{100 * seconds / embed:.1f}%"]
            for name, seconds in times.items()]
    share = times["complexity map + patcher"] / embed
    text = common.table(["stage", "median s", "ms / image", "share of embed"], rows)
    line = common.verdict(
        f"complexity map + subdivision + extraction <= {TARGET_SHARE:.0%} of forward (embed) time",
        share <= TARGET_SHARE,
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
            f"(of {common.uniform_count(len(common.LEVEL_SIZES) - 1, *images.shape[1:3])} on the finest grid); "
            f"mean per level: {by_level}.")


def main():
    args = options()
    common.header(
        "Overhead of complexity map and patcher (issue 6)",
        [f"Default DynamicPatchModel (random weights), inference, CPU; batch {args.batch} of "
         f"{args.size}x{args.size} images, median of {args.repeats} calls per stage after one warm-up round, "
         "stages interleaved call by call."],
    )
    count = max(args.batch, args.stats_images)
    model = common.dynamic_model()
    for name, images in common.image_sets(count, args.size).items():
        text, line = timing(model, images[:args.batch], args.repeats)
        print(f"### {name}\n\n{text}\n\n{line}\n\n{patch_statistics(model, images[:args.stats_images])}\n",
              flush=True)


if __name__ == "__main__":
    main()
