"""Time ComplexityMap and DynamicPatcher on real photos and 2048x2048 images.

Baseline, in the same run: cutting the same images into a fixed grid of 8 px
patches (`tf.image.extract_patches`), which is what a fixed-finest-grid model pays
for its patches. Times are medians of repeats, inside `tf.function`, on the CPU.

    python recipes/benchmarks/core.py [--repeats 5]

Prints a Markdown report (machine, table of times and ratios, patches per image by
level) for docs/benchmarks.md.
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from dynpatch_tf import ComplexityMap, DynamicPatcher  # noqa: E402
from dynpatch_tf.image_files import sample_photo  # noqa: E402
from dynpatch_tf.inference import image_function  # noqa: E402

PHOTOS = ("astronaut", "camera", "brick", "grass", "gravel", "moon", "immunohistochemistry", "retina")


def photo_batch():
    return np.stack([sample_photo(name)[:512, :512] for name in PHOTOS])


def large_images():
    retina = tf.image.resize(sample_photo("retina")[None], (2048, 2048), antialias=True)
    noise = np.random.default_rng(0).integers(0, 256, (1, 2048, 2048, 3))
    return {"retina 2048^2 (resized photo)": tf.cast(retina, tf.uint8).numpy(), "white noise 2048^2": noise.astype(np.uint8)}


def median_time(fn, images, repeats):
    fn(images)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, fn(images))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def stage_functions(max_patches):
    cmap = ComplexityMap()
    patcher = DynamicPatcher(max_patches=max_patches)
    complexity = image_function(cmap, tf.uint8)
    both = image_function(lambda x: patcher(x, cmap(x))["pixels"].flat_values, tf.uint8)
    grid = image_function(
        lambda x: tf.image.extract_patches(
            tf.cast(x, tf.float32) / 255.0, [1, 8, 8, 1], [1, 8, 8, 1], [1, 1, 1, 1], "VALID"
        ),
        tf.uint8,
    )
    levels = image_function(lambda x: patcher(x, cmap(x))["levels"], tf.uint8)
    return {"complexity": complexity, "complexity+patcher": both, "fixed 8px grid (baseline)": grid}, levels


def report(name, images, repeats, max_patches=None):
    stages, levels = stage_functions(max_patches)
    times = {stage: median_time(fn, images, repeats) for stage, fn in stages.items()}
    base = times["fixed 8px grid (baseline)"]
    lines = [f"\n### {name}: batch {images.shape[0]}, {images.shape[1]}x{images.shape[2]}"]
    if max_patches:
        lines.append(f"(max_patches={max_patches})")
    lines += ["", "| stage | median s | per image ms | ratio to baseline |", "|---|---|---|---|"]
    for stage, seconds in times.items():
        lines.append(f"| {stage} | {seconds:.4f} | {1000 * seconds / images.shape[0]:.1f} | {seconds / base:.2f} |")
    counts = np.stack([np.bincount(l, minlength=4) for l in levels(images).numpy()])
    lines += ["", "patches per image by level (64, 32, 16, 8 px), and total:", ""]
    for index, row in enumerate(counts):
        lines.append(f"- image {index}: {row.tolist()} = {row.sum()}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"TensorFlow {tf.__version__}, repeats {args.repeats}")
    print(report("8 real photos (" + ", ".join(PHOTOS) + ")", photo_batch(), args.repeats))
    for name, images in large_images().items():
        print(report(name, images, args.repeats))
    noise = large_images()["white noise 2048^2"]
    print(report("white noise 2048^2 with a cap", noise, args.repeats, max_patches=4096))


if __name__ == "__main__":
    main()
