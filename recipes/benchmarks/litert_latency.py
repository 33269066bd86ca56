"""LiteRT against TensorFlow: latency of the exported model at batch 1.

The default DynamicPatchModel (random weights; on needles with the needles
thresholds and sigma) is exported with
`dynpatch_tf.export.export_tflite` at 512x512 (float32, and dynamic-range:
int8 weights, float activations) and run with
`ai_edge_litert.interpreter.Interpreter` (XNNPACK, LiteRT's default delegate,
on all usable cores). The TensorFlow baseline runs the very graph that was
converted (`serving_outputs` in a tf.function, input `[1, 512, 512, 3]` float32;
it keeps the runtime image checks the converter drops). Calls cycle through
the photos and the needles images one at a time, runtimes interleaved call by
call; outputs are checked against TensorFlow's (logits, patch counts).

    python recipes/benchmarks/litert_latency.py            # ~3-5 min on 2 cores
    python recipes/benchmarks/litert_latency.py --smoke    # 128x128, tiny: ~1 min

Prints a Markdown section for docs/benchmarks.md.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import common
from dynpatch_tf.export import export_tflite, serving_outputs

QUANTIZATIONS = {"float32": None, "dynamic-range": "dynamic"}


def options():
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=512, help="image side")
    parser.add_argument("--images", type=int, default=8, help="images per set")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over each set")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="LiteRT threads")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.images, args.passes = 128, 2, 1
    return args


def runtimes(model, size, threads, folder):
    """{name: (fn on float32 [1, S, S, 3] -> dict of outputs, file MB or None)}."""
    spec = [tf.TensorSpec([1, size, size, 3], tf.float32)]
    tf_graph = tf.function(lambda images: serving_outputs(model, images), input_signature=spec, autograph=False)
    result = {"TensorFlow (same graph)": (tf_graph, None)}
    for name, quantization in QUANTIZATIONS.items():
        path = export_tflite(model, os.path.join(folder, f"{name}.tflite"), (size, size), quantization)
        runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
        result[f"LiteRT {name}"] = (lambda images, runner=runner: runner(images=images), os.path.getsize(path) / 1e6)
    return result


def agreement(functions, images):
    """{name: (max |logits - TF logits|, images with TF's patch count)}."""
    reference = functions["TensorFlow (same graph)"]
    result = {}
    for name, function in functions.items():
        gaps, same = [], 0
        for image in images:
            want, got = reference(image), function(image)
            gaps.append(np.abs(np.asarray(got["logits"]) - np.asarray(want["logits"])).max())
            same += int(np.array_equal(np.asarray(got["num_patches"]), np.asarray(want["num_patches"])))
        result[name] = (max(gaps), same)
    return result


def main():
    args = options()
    common.header(
        "LiteRT against TensorFlow (issue 6)",
        [f"Default DynamicPatchModel (random weights; on needles with {common.NEEDLES_NOTE}) exported at "
         f"{args.size}x{args.size}; batch 1, "
         f"{args.images} images per set, {args.passes} timed passes after one warm-up round, runtimes "
         f"interleaved call by call; LiteRT with XNNPACK and {args.threads} threads."],
    )
    for set_name, (images, settings) in common.image_sets(args.images, args.size).items():
        with tempfile.TemporaryDirectory() as folder:
            entries = runtimes(common.dynamic_model(**settings), args.size, args.threads, folder)
            functions = {name: function for name, (function, _) in entries.items()}
            batches = [image[None].astype(np.float32) / 255.0 for image in images]
            times = common.time_calls(functions, batches, args.passes * len(batches))
            checks = agreement(functions, batches)
            base = np.median(times["TensorFlow (same graph)"])
            rows = []
            for name, seconds in times.items():
                p50, p99 = common.latency(seconds)
                size = entries[name][1]
                gap, same = checks[name]
                rows.append([name, f"{size:.2f}" if size else "-", f"{p50:.0f}", f"{p99:.0f}",
                             f"{base / np.median(seconds):.2f}", f"{gap:.2g}", f"{same} of {len(batches)}"])
            columns = ["runtime", "file MB", "p50 ms", "p99 ms", "speed-up over TF", "max abs logit diff vs TF",
                       "same patch count as TF"]
            print(f"### {set_name}\n\n{common.table(columns, rows)}\n", flush=True)


if __name__ == "__main__":
    main()
