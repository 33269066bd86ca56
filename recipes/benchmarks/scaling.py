"""Time and peak memory against image size: is the time per pixel flat?

For each configuration (image, cap, size, batch) a fresh Python process builds
the default DynamicPatchModel (random weights; `max_patches` set for the capped
runs), times inference (a tf.function of `embed` and the head, warmed up on a
128x128 batch so that tracing is not timed) and reports its peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`; TF's allocations are invisible to
tracemalloc). A baseline process that only imports, builds and runs one 128x128
image gives the memory every process pays anyway.

Images: scikit-image's retina photo (1411x1411, whole) resized to each size
(batch 8 repeats it), and white noise (every pixel busy: the finest grid
everywhere unless capped). Sizes 512^2, 1024^2, 2048^2 and 4096^2, batch 1 and 8
(no batch 8 at 4096^2). A process whose resident memory passes --max-gb is
killed and reported as such.

    python recipes/benchmarks/scaling.py            # ~11 min on 2 free cores
    python recipes/benchmarks/scaling.py --smoke    # 64 and 128 px, batch 1: ~2 min
    # the networks in chunks of 1024 patches (the default) against one call:
    python recipes/benchmarks/scaling.py --images noise --uncapped-only \
        --sizes 512 2048 --batches 1 --chunk-sizes 1024 none

Prints a Markdown section for docs/benchmarks.md, with a met/missed line per
series for the issue's target: time at 2048^2 / time at 512^2 <= 17.6 (16x the
pixels, 10% slack).
"""

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

import common
from dynpatch_tf import default_parts  # after common, which quiets TensorFlow
from dynpatch_tf.image_files import sample_photo

MB = 1 << 20
DEFAULT_CHUNK = inspect.signature(default_parts).parameters["chunk_size"].default


def options():
    parser = common.parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-large-batch-from", type=int, default=4096,
                        help="sizes from this up run at batch 1 only")
    parser.add_argument("--cap", type=int, default=4096, help="max_patches of the capped runs")
    parser.add_argument("--uncapped-only", action="store_true", help="skip the capped runs")
    parser.add_argument("--images", nargs="+", default=["retina", "noise"], choices=["retina", "noise"])
    parser.add_argument("--chunk-sizes", nargs="+", default=[str(DEFAULT_CHUNK)],
                        help="the model's chunk_size for each series ('none': all patches in one call)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration")
    parser.add_argument("--ratio", type=int, nargs=2, default=[512, 2048], metavar=("SMALL", "LARGE"),
                        help="sizes of the time-per-pixel target")
    parser.add_argument("--max-gb", type=float, default=10.0, help="kill a process past this resident memory")
    parser.add_argument("--timeout", type=float, default=1200.0, help="kill a process running longer (s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.batches = [64, 128], [1]
        args.cap, args.repeats, args.ratio = 64, 1, [64, 128]
    args.chunk_sizes = [None if value.lower() == "none" else int(value) for value in args.chunk_sizes]
    return args


# -- the measuring process ----------------------------------------------------


def images_for(image, size, batch):
    if image == "retina":
        return np.repeat(common.resize(sample_photo("retina")[None], size), batch, axis=0)
    return common.noise(batch, size)


def child(config):
    """Measure one configuration; print one JSON line."""
    model = common.dynamic_model(max_patches=config["cap"], chunk_size=config["chunk"])
    run = common.predictor(model)
    images = images_for(config["image"], config["size"], config["batch"])
    warm = np.zeros((config["batch"], 128, 128, 3), np.uint8)
    common.time_calls({"run": run}, [warm], 0, warmup=1)  # traces the graph
    if config["repeats"]:
        seconds = common.time_calls({"run": run}, [images], config["repeats"], warmup=0)["run"]
        patches = float(common.level_counts(model, images, batch=config["batch"]).sum(1).mean())
    else:
        seconds, patches = np.zeros(1), 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(json.dumps({"seconds": float(np.median(seconds)), "patches": patches, "peak_mb": peak / MB}))


# -- the parent -----------------------------------------------------------------


def resident(pid):
    """Resident memory of a process in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(config, args):
    """Run one configuration in a fresh process; a dict of results or {'error': why}."""
    process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, peak, why = time.monotonic(), 0, None
    while process.poll() is None:
        peak = max(peak, resident(process.pid))
        if peak > args.max_gb * (1 << 30):
            why = f"killed past {args.max_gb:g} GB"
        elif time.monotonic() - start > args.timeout:
            why = f"killed after {args.timeout:.0f} s"
        if why:
            process.kill()
            process.communicate()
            return {"error": why}
        time.sleep(0.1)
    out, err = process.communicate()
    if process.returncode:
        return {"error": f"exit {process.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}"}
    return json.loads(out.strip().splitlines()[-1])


def configurations(args):
    for image in args.images:
        for cap in (None,) if args.uncapped_only else (None, args.cap):
            for chunk in args.chunk_sizes:
                for batch in args.batches:
                    for size in args.sizes:
                        if batch == 1 or size < args.no_large_batch_from:
                            yield {"image": image, "cap": cap, "chunk": chunk, "batch": batch, "size": size,
                                   "repeats": args.repeats}


def main():
    args = options()
    if args.child:
        child(json.loads(args.child))
        return
    small, large = args.ratio
    target = 1.1 * (large / small) ** 2
    common.header(
        "Scaling with image size (issue 6)",
        [f"Default DynamicPatchModel (random weights), inference on the CPU, one fresh process per row; "
         f"median of {args.repeats} calls after a traced warm-up on 128x128. Cap: max_patches={args.cap}; "
         "chunk: the model's chunk_size (none: the networks take all patches in one call). "
         f"Peak memory: ru_maxrss of the process; 'above baseline' subtracts the baseline process "
         f"(import, build, one 128x128 image). Limit {args.max_gb:g} GB resident."],
    )
    base = measure({"image": "noise", "cap": None, "chunk": DEFAULT_CHUNK, "batch": 1, "size": 128, "repeats": 0},
                   args)
    base_mb = base.get("peak_mb", 0.0)
    print(f"Baseline process: {base_mb:.0f} MB peak." if "peak_mb" in base else f"Baseline: {base['error']}.")
    print()
    rows, results = [], {}
    for config in configurations(args):
        result = measure(config, args)
        key = (config["image"], config["cap"], config["chunk"], config["batch"])
        results[key, config["size"]] = result
        cap, chunk = config["cap"] or "none", config["chunk"] or "none"
        if "error" in result:
            rows.append([config["image"], cap, chunk, f"{config['size']}^2", config["batch"], "-", "-", "-", "-", "-",
                         "-", result["error"]])
            continue
        seconds = result["seconds"]
        smallest = results.get((key, args.sizes[0]), {}).get("seconds")
        per_pixel = 1e9 * seconds / (config["batch"] * config["size"] ** 2)
        rows.append([
            config["image"], cap, chunk, f"{config['size']}^2", config["batch"], f"{result['patches']:.0f}",
            f"{seconds:.3f}", f"{per_pixel:.1f}",
            f"{seconds / smallest:.2f}" if smallest else "-",
            f"{result['peak_mb']:.0f}", f"{result['peak_mb'] - base_mb:.0f}", "",
        ])
        print(f"<!-- {json.dumps(config)}: {json.dumps(result)} -->", flush=True)
    columns = ["image", "cap", "chunk", "size", "batch", "patches / image", "median s", "ns / pixel",
               f"time / time at {args.sizes[0]}^2", "peak MB", "above baseline MB", "note"]
    print("\n" + common.table(columns, rows) + "\n")
    for image, cap, chunk, batch in dict.fromkeys(key for key, _ in results):
        key = (image, cap, chunk, batch)
        one, two = results.get((key, small), {}), results.get((key, large), {})
        name = f"{image}, cap {cap or 'none'}, chunk {chunk or 'none'}, batch {batch}"
        if "seconds" in one and "seconds" in two:
            ratio = two["seconds"] / one["seconds"]
            print(common.verdict(f"time per pixel flat, {large}^2 / {small}^2 time <= {target:.1f} ({name})",
                                 ratio <= target, f"{ratio:.2f}: {two['seconds']:.3f} s / {one['seconds']:.3f} s; "
                                 f"patches {two['patches']:.0f} / {one['patches']:.0f}"))
        else:
            print(f"- target: time per pixel flat ({name}): not measured "
                  f"({one.get('error', 'not run')} at {small}^2, {two.get('error', 'not run')} at {large}^2)")


if __name__ == "__main__":
    main()
