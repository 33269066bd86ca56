"""Accuracy against patches per image on the needles task, at one training budget.

Every variant trains from the same seed with the same data, epochs, batch and
optimizer (Adam), and is scored on the same validation images:

* dynamic: DynamicPatchModel with the needles task's sigma and thresholds
  (`common.NEEDLES_SETTINGS`; the library's defaults suit photos), the
  thresholds times each of --scales (the thresholds train as usual);
* fixed coarse: every patch 64 px (frozen thresholds above any block mean);
* fixed fine: every patch 8 px (block rule, frozen tiny thresholds);
* uniform: the one patch size whose count is nearest the x1 dynamic
  model's validation mean (reported; when that is 64 or 8 px it is the coarse
  or fine run itself);
* MobileNetV2 alpha 0.35 (weights=None) on the whole image, BatchNorm momentum
  0.9 like the library's embedder.

Needles (see `dynpatch_tf.needles`): small 8-24 px objects whose kind is the
class, on smooth scenes. The defaults (256x256, 4 classes, 256 train / 128
validation, 5 epochs, batch 8) take about 20-30 minutes on 2 CPU cores, half of
it the fine grid; scale up with the flags.

    python recipes/benchmarks/accuracy.py
    python recipes/benchmarks/accuracy.py --size 512 --train 1024 --val 256 --epochs 10
    python recipes/benchmarks/accuracy.py --smoke      # tiny, eager: ~1-2 min, plot to a temp folder

Prints a Markdown section for docs/benchmarks.md (with met/missed lines for
the accuracy halves of the issue's targets) and draws accuracy against mean
patches per image to docs/accuracy_vs_patches.png (NumPy drawing, PNG by
`tf.io.encode_png`; labels in a 5x7 pixel font, the legend is the table).
"""

import os
import tempfile

import numpy as np
import tensorflow as tf

import common
from dynpatch_tf import make_needles
from dynpatch_tf.training import compile_classifier

COARSE, FINE = 0, len(common.LEVEL_SIZES) - 1
PLOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                                    "accuracy_vs_patches.png"))


def options():
    parser = common.training_flags(common.parser(__doc__))
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                        help="dynamic variants: the needles thresholds times each")
    parser.add_argument("--plot", default=PLOT, help="PNG to write")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.classes, args.train, args.val, args.epochs, args.batch = 128, 2, 16, 8, 1, 4
        args.scales = [1.0, 2.0]
        args.plot = os.path.join(tempfile.gettempdir(), "accuracy_vs_patches_smoke.png")
    if 1.0 not in args.scales:
        args.scales.append(1.0)  # the needles settings are what the targets are about
    return args


# -- training ------------------------------------------------------------------


def train(model, data, args):
    """`(validation accuracy, mean patches per image or None, seconds per epoch)`."""
    (x, y), (xv, yv) = data
    # Smoke runs of a few steps skip tracing the train and test steps (eager).
    compile_classifier(model, args.learning_rate, run_eagerly=args.smoke)
    history, seconds = common.timed_fit(model, x, y, args, validation_data=(xv, yv))
    patches = history["val_patches"][-1] if "val_patches" in history else None
    return history["val_accuracy"][-1], patches, seconds


def dynamic(scale, args):
    thresholds = [t * scale for t in common.NEEDLES_THRESHOLDS]
    return common.dynamic_model(args.classes, args.seed, **{**common.NEEDLES_SETTINGS, "thresholds": thresholds})


def grid(level, args):
    return common.dynamic_model(args.classes, args.seed, **common.uniform_settings(level))


def run_all(data, args):
    """[(label, description, accuracy, patches, seconds)] in plot/table order."""
    results = []

    def record(label, description, model):
        accuracy, patches, seconds = train(model, data, args)
        results.append((label, description, accuracy, patches, seconds))
        shown = "-" if patches is None else f"{patches:.1f}"
        print(f"<!-- {description}: accuracy {accuracy:.3f}, patches {shown}, {seconds:.1f} s/epoch -->", flush=True)
        return results[-1]

    default_patches = None
    for scale in args.scales:
        name = f"dynamic, thresholds x{scale:g}" + (" (needles settings)" if scale == 1.0 else "")
        _, _, _, patches, _ = record(f"Dx{scale:g}", name, dynamic(scale, args))
        default_patches = patches if scale == 1.0 else default_patches
    record("C64", "fixed coarse grid (64 px)", grid(COARSE, args))
    record("F8", "fixed fine grid (8 px)", grid(FINE, args))
    level = common.nearest_level(default_patches, args.size, args.size)
    side = common.LEVEL_SIZES[level]
    note = (f"Equal-patch uniform grid: {side} px ({common.uniform_count(level, args.size, args.size)} patches) is "
            f"the level nearest the x1 dynamic model's {default_patches:.1f} patches per image")
    if level in (COARSE, FINE):
        note += f", i.e. the fixed {'coarse' if level == COARSE else 'fine'} grid itself (not trained twice)."
    else:
        note += "."
        record(f"U{side}", f"uniform grid ({side} px, equal patches)", grid(level, args))
    record("M", "MobileNetV2 alpha 0.35, whole image", common.mobilenet(args.size, args.classes, args.seed))
    return results, note


# -- report ------------------------------------------------------------------------


def report(results, note, args):
    by_label = {label: (accuracy, patches, seconds) for label, _, accuracy, patches, seconds in results}
    fine_seconds = by_label["F8"][2]
    rows = []
    for label, description, accuracy, patches, seconds in results:
        error = np.sqrt(accuracy * (1 - accuracy) / args.val)
        rows.append([label, description, f"{accuracy:.3f} ± {error:.3f}", "-" if patches is None else f"{patches:.1f}",
                     f"{seconds:.1f}", f"{seconds / fine_seconds:.2f}"])
    columns = ["label", "variant", "val accuracy ± s.e.", "patches / image", "s / epoch", "epoch time / fine grid's"]
    print("\n" + common.table(columns, rows) + "\n")
    print(note + "\n")
    dynamic, fine, whole = by_label["Dx1"][0], by_label["F8"][0], by_label["M"][0]
    print(common.verdict("dynamic (needles settings) accuracy within 1 point of the fixed fine grid",
                         dynamic >= fine - 0.01, f"{dynamic:.3f} vs {fine:.3f}: {100 * (dynamic - fine):+.1f} points"))
    print(common.verdict("dynamic (needles settings) accuracy above whole-image MobileNetV2 0.35 on needles",
                         dynamic > whole, f"{dynamic:.3f} vs {whole:.3f}: {100 * (dynamic - whole):+.1f} points"))
    print(f"\n(s.e.: binomial standard error of an accuracy on {args.val} validation images. The throughput "
          "halves of these targets are in throughput.py.)\n")


# -- the plot -----------------------------------------------------------------------

# A 5x7 pixel font: 7 rows of 5 bits per glyph, top row first, as hex bytes.
FONT = {
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c", "A": "0e1111111f1111", "B": "1e11111e11111e",
    "C": "0e11101010110e", "D": "1c12111111121c", "E": "1f10101e10101f", "F": "1f10101e101010",
    "G": "0e11101711110f", "H": "1111111f111111", "I": "0e04040404040e", "J": "0702020202120c",
    "K": "11121418141211", "L": "1010101010101f", "M": "111b1515111111", "N": "11111915131111",
    "O": "0e11111111110e", "P": "1e11111e101010", "Q": "0e11111115120d", "R": "1e11111e141211",
    "S": "0f10100e01011e", "T": "1f040404040404", "U": "1111111111110e", "V": "111111110a0a04",
    "W": "1111111515150a", "X": "11110a040a1111", "Y": "1111110a040404", "Z": "1f01020408101f",
    ".": "00000000000c0c", "(": "02040808080402", ")": "08040202020408",
    "-": "0000001f000000", "x": "0000110a040a11", " ": "00000000000000",
}
COLOURS = {"D": (31, 119, 180), "C": (255, 127, 14), "F": (214, 39, 40), "U": (44, 160, 44), "M": (148, 103, 189)}
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 720, 460, 80, 30, 40, 60


def glyph(char):
    code = FONT.get(char, FONT[" "])
    rows = [int(code[index:index + 2], 16) for index in range(0, 14, 2)]
    return np.array([[(row >> (4 - bit)) & 1 for bit in range(5)] for row in rows], bool)


def text(canvas, words, y, x, colour=(0, 0, 0), scale=2):
    """Draw `words` (upper case, digits, `.()-x`) with its top-left corner at (y, x)."""
    for index, char in enumerate(words):
        mask = np.kron(glyph(char), np.ones((scale, scale), bool))
        top, left = y, x + index * 6 * scale
        window = canvas[top:top + mask.shape[0], left:left + mask.shape[1]]
        window[mask[:window.shape[0], :window.shape[1]]] = colour


def text_width(words, scale=2):
    return len(words) * 6 * scale - scale


def disc(canvas, y, x, radius, colour):
    rows, cols = np.ogrid[:canvas.shape[0], :canvas.shape[1]]
    canvas[(rows - y) ** 2 + (cols - x) ** 2 <= radius ** 2] = colour


def plot(results, args):
    """Accuracy (y, 0..1) against mean patches per image (x, log 2); MobileNetV2 as a dashed line."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP  # y0 is the bottom (accuracy 0)
    patches = [p for _, _, _, p, _ in results if p is not None]
    low, high = np.log2(min(patches)) - 0.5, np.log2(max(patches)) + 0.5  # points clear of the edges

    def px(value):
        return int(round(x0 + (np.log2(value) - low) / (high - low) * (x1 - x0)))

    def py(accuracy):
        return int(round(y0 - accuracy * (y0 - y1)))

    for tick in np.arange(0, 1.01, 0.25):  # accuracy grid and labels
        canvas[py(tick), x0:x1] = (225, 225, 225)
        label = f"{tick:.2f}"
        text(canvas, label, py(tick) - 7, x0 - 10 - text_width(label))
    for power in np.arange(np.ceil(low), np.floor(high) + 1):
        canvas[y1:y0, px(2 ** power)] = (225, 225, 225)
        label = f"{int(2 ** power)}"
        text(canvas, label, y0 + 10, px(2 ** power) - text_width(label) // 2)
    chance = py(1 / args.classes)
    canvas[chance, x0:x1:6] = (150, 150, 150)  # chance level, dotted
    canvas[y1:y0 + 1, x0] = canvas[y0, x0:x1 + 1] = (0, 0, 0)
    title = "MEAN PATCHES PER IMAGE (LOG SCALE)"
    text(canvas, title, HEIGHT - 24, (x0 + x1 - text_width(title)) // 2)
    text(canvas, "VALIDATION ACCURACY ON NEEDLES", 12, x0)
    for label, _, accuracy, count, _ in results:
        colour = COLOURS[label[0]]
        if count is None:  # whole-image model: no patches, a dashed line
            for start in range(x0, x1, 16):
                canvas[py(accuracy) - 1:py(accuracy) + 2, start:min(start + 9, x1)] = colour
            text(canvas, "M", py(accuracy) - 18, x0 + 6, colour)
            continue
        disc(canvas, py(accuracy), px(count), 6, colour)
        left = px(count) + 8 if px(count) + 8 + text_width(label) < WIDTH else px(count) - 8 - text_width(label)
        text(canvas, label, py(accuracy) - 20, left, colour)
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    tf.io.write_file(args.plot, tf.io.encode_png(canvas))


def main():
    args = options()
    common.header(
        "Accuracy against patches per image on needles (issue 6)",
        [f"Needles {args.size}x{args.size}, {args.classes} classes (chance {1 / args.classes:.2f}), "
         f"{args.train} training images (seed 1), {args.val} validation images (seed 2); every variant: "
         f"{args.epochs} epochs, batch {args.batch}, Adam {args.learning_rate:g}, seed {args.seed}. "
         "Validation accuracy and patches per image after the last epoch."
         + (" Smoke run: eager training (no tracing), numbers mean nothing." if args.smoke else "")],
    )
    data = (
        make_needles(args.train, image_size=args.size, num_classes=args.classes, seed=1),
        make_needles(args.val, image_size=args.size, num_classes=args.classes, seed=2),
    )
    results, note = run_all(data, args)
    report(results, note, args)
    plot(results, args)
    shown = os.path.relpath(args.plot)
    print(f"Plot: `{args.plot if shown.startswith('..') else shown}` (labels as in the table; dashed line: "
          "MobileNetV2, which has no patches; dotted: chance).")


if __name__ == "__main__":
    main()
