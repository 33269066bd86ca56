"""Accuracy against compute on needles, with a protocol a reviewer can check (issue 11).

Protocol:

* training, validation and test images come from different seeds (11, 12, 13);
  everything is chosen on validation, and only test numbers are reported;
* every row gets the same learning-rate sweep (--learning-rates) on seed 0,
  trains to a plateau (early stopping on validation accuracy, --patience,
  at most --epochs, best weights restored); the best rate on validation then
  trains --seeds seeds, and the table shows test accuracy mean +- sd over them;
* speed and accuracy come from the same trained model (seed 0) at the same
  resolution: ms per image at batch --time-batch on the test images, all rows
  timed interleaved call by call in one run (`common.time_calls`).

Rows:

* dynamic, budget b: `DynamicPatchModel(token_size=8)`, its thresholds
  calibrated on the training images to b of the finest count
  (`calibrate_thresholds`), then trained with `patch_budget=b`
  (`penalty_weight` --penalty-weight), for each head (--heads: the pooled
  Dense head, and the `PatchTransformerHead`);
* fixed 8 px grid: the same attention, embedder, position encoding and head on
  every 8 px patch, cut by `tf.image.extract_patches` at `token_size=8`: no
  complexity map, no resampling;
* uniform grid, equal patches: the same on the one patch side whose count is
  nearest the dynamic rows' mean, each patch area-resized to 8 px;
* whole-image MobileNetV2, alpha 0.35 and 1.0, at full resolution.

    python recipes/benchmarks/study.py --size 512                 # the issue's scale: hours on 2 cores
    python recipes/benchmarks/study.py --size 1024 --train 256    # beyond 512^2
    python recipes/benchmarks/study.py --smoke                    # tiny, ~1 min: checks that it runs

Prints a Markdown section for docs/benchmarks.md and draws test accuracy
against patches per image and against ms per image (matplotlib, the
`benchmarks` extra) to --plot.
"""

import os
import tempfile

import keras
import numpy as np

import common
from dynpatch_tf import make_needles
from dynpatch_tf.needles import NEEDLES_SIGMA
from dynpatch_tf.calibration import calibrate_thresholds

PLOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs",
                                    "study_accuracy_vs_compute.png"))
TOKEN = 8
HEADS = {"pooled": "pooled head", "transformer": "transformer head"}


def options():
    parser = common.training_flags(common.parser(__doc__), size=512, epochs=30)
    parser.add_argument("--test", type=int, default=256, help="test images")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.03, 0.06, 0.12])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument("--seeds", type=int, default=3, help="seeds at the chosen learning rate")
    parser.add_argument("--patience", type=int, default=4, help="early-stopping patience (epochs)")
    parser.add_argument("--penalty-weight", type=float, default=0.3)
    parser.add_argument("--time-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row and timed batch")
    parser.add_argument("--skip", nargs="*", default=[], help="row names to leave out, as the table names them (e.g. 'MobileNetV2 1')")
    parser.add_argument("--plot", default=PLOT)
    args = parser.parse_args()
    if args.smoke:
        args.size, args.classes, args.train, args.val, args.test = 64, 2, 8, 4, 4
        args.epochs, args.batch, args.budgets, args.learning_rates = 1, 4, [0.15], [1e-3]
        args.seeds, args.repeats, args.time_batch, args.skip = 1, 1, 2, ["MobileNetV2 1"]
        if args.plot == PLOT:  # a smoke run never overwrites the docs' plot
            args.plot = os.path.join(tempfile.gettempdir(), "study_smoke.png")
    return args


# -- rows ------------------------------------------------------------------------


def dynamic_row(budget, head_type, data, args):
    """A maker of the dynamic model at `budget`: calibrated on the training images, then trained with it."""
    def make(seed):
        model = common.dynamic_model(args.classes, seed, token_size=TOKEN, head_type=head_type, sigma=NEEDLES_SIGMA,
                                     patch_budget=budget, penalty_weight=args.penalty_weight)
        calibrate_thresholds(model, data["train"][0], patch_fraction=budget, batch_size=args.batch)
        return model
    return make


def grid_row(side, head_type, args):
    def make(seed):
        keras.utils.set_random_seed(seed)
        return common.GridPatchModel(side, args.classes, head_type)
    return make


def mobilenet_row(alpha, args):
    def make(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((args.size, args.size, 3), dtype="uint8")
        scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(keras.ops.cast(inputs, "float32"))
        net = keras.applications.MobileNetV2(alpha=alpha, weights=None, input_shape=(args.size, args.size, 3),
                                             classes=args.classes, classifier_activation=None)
        for layer in net.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9  # as the library's embedder: short runs
        return keras.Model(inputs, net(scaled))
    return make


# -- training ----------------------------------------------------------------------


def fit(make, seed, learning_rate, data, args):
    """Trains one model to a plateau; returns `(model, best validation accuracy, epochs run)`."""
    model = make(seed)
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                  run_eagerly=args.smoke)
    stop = keras.callbacks.EarlyStopping("val_accuracy", patience=args.patience, mode="max",
                                         restore_best_weights=True)
    history = model.fit(*data["train"], batch_size=args.batch, epochs=args.epochs, verbose=0,
                        validation_data=data["val"], callbacks=[stop]).history
    return model, max(history["val_accuracy"]), len(history["val_accuracy"])


def accuracy(model, images, labels, batch):
    logits = np.concatenate([model(images[i:i + batch], training=False).numpy()
                             for i in range(0, len(images), batch)])
    return float(np.mean(np.argmax(logits, 1) == labels))


def patches_per_image(model, images, batch):
    """Mean patches per image of a patch model on `images`; None for a whole-image CNN."""
    if isinstance(model, common.GridPatchModel):
        return float((images.shape[1] // model.side) * (images.shape[2] // model.side))
    if not hasattr(model, "patches"):
        return None
    counts = [model.patches(images[i:i + batch])["boxes"].row_lengths().numpy() for i in range(0, len(images), batch)]
    return float(np.concatenate(counts).mean())


def sweep_and_seeds(fit, make, data, args):
    """The protocol's training for one row: `fit(make, seed, rate, data, args)` (returning
    `(model, validation score, epochs)`) at every learning rate on seed 0, then at the
    best rate on the other seeds. Returns `(sweep {rate: fit result}, best rate, runs)`,
    the runs at the best rate, seed 0 first."""
    sweep = {rate: fit(make, 0, rate, data, args) for rate in args.learning_rates}
    best = max(sweep, key=lambda rate: sweep[rate][1])
    runs = [sweep[best]] + [fit(make, seed, best, data, args) for seed in range(1, args.seeds)]
    return sweep, best, runs


def study_row(name, make, data, args):
    """The protocol for one row: the sweep on seed 0, then the seeds at the best rate."""
    sweep, best, runs = sweep_and_seeds(fit, make, data, args)
    tests = [accuracy(model, *data["test"], args.batch) for model, _, _ in runs]
    model = runs[0][0]
    row = dict(name=name, rate=best, epochs=float(np.mean([epochs for _, _, epochs in runs])),
               sweep={rate: result[1] for rate, result in sweep.items()}, test=np.array(tests), model=model,
               patches=patches_per_image(model, data["test"][0], args.batch))
    print(f"<!-- {name}: lr {best:g}, test {np.mean(tests):.3f} +- {np.std(tests):.3f}, "
          f"patches {row['patches']} -->", flush=True)
    return row


def grid_side(mean_patches, size):
    """The grid side of (64, 32, 16) whose count is nearest `mean_patches`."""
    return min((64, 32, 16), key=lambda side: abs((size // side) ** 2 - mean_patches))


def run_rows(data, args):
    """Every row through the protocol, in table order; rows named in --skip are left out."""
    def study(rows, specs):
        rows += [study_row(name, make, data, args) for name, make in specs if name not in args.skip]

    rows = []
    study(rows, [(f"dynamic, budget {budget:g}, {HEADS[head]}", dynamic_row(budget, head, data, args))
                 for head in args.heads for budget in args.budgets])
    side = grid_side(np.mean([row["patches"] for row in rows]), args.size)
    study(rows, [spec for head in args.heads for spec in (
        (f"fixed 8 px grid, {HEADS[head]}", grid_row(TOKEN, head, args)),
        (f"uniform {side} px grid (equal patches), {HEADS[head]}", grid_row(side, head, args)),
    )])
    study(rows, [(f"MobileNetV2 {alpha:g}", mobilenet_row(alpha, args)) for alpha in (0.35, 1.0)])
    return rows


def time_rows(rows, images, args):
    """ms per image of every row's seed-0 model, interleaved call by call."""
    batches = [images[i:i + args.time_batch] for i in range(0, len(images) - args.time_batch + 1, args.time_batch)]
    functions = {row["name"]: common.predictor(row["model"]) for row in rows}
    timed = batches[:4]
    times = common.time_calls(functions, timed, args.repeats * len(timed))
    for row in rows:
        row["ms"] = 1000 * common.seconds_per_batch(times[row["name"]], len(timed)) / args.time_batch


# -- report --------------------------------------------------------------------------


def report(rows, args):
    grid = next(row for row in rows if row["name"].startswith("fixed 8 px grid"))
    table = []
    for row in rows:
        sweep = ", ".join(f"{rate:g}: {value:.3f}" for rate, value in row["sweep"].items())
        patches = "-" if row["patches"] is None else f"{row['patches']:.1f}"
        table.append([row["name"], f"{row['test'].mean():.3f} ± {row['test'].std():.3f}", patches,
                      f"{row['ms']:.1f}", f"{grid['ms'] / row['ms']:.2f}x", f"{row['rate']:g}",
                      f"{row['epochs']:.1f}", sweep])
    columns = ["row", f"test accuracy (mean ± sd, {args.seeds} seeds)", "patches / image (test)",
               f"ms / image (batch {args.time_batch})", "speed vs 8 px grid", "chosen lr", "epochs (mean)",
               "val accuracy per lr (seed 0)"]
    print("\n" + common.table(columns, table) + "\n")


def plot(rows, args):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 5.6), sharey=True)
    for head_type, label in HEADS.items():
        line = [row for row in rows if row["name"].startswith("dynamic") and row["name"].endswith(label)]
        if line:
            for axis, key in ((left, "patches"), (right, "ms")):
                axis.errorbar([row[key] for row in line], [row["test"].mean() for row in line],
                              [row["test"].std() for row in line], marker="o", capsize=3, label=f"dynamic, {label}")
    for row in rows:
        if row["name"].startswith("dynamic"):
            continue
        mean, sd = row["test"].mean(), row["test"].std()
        right.errorbar([row["ms"]], [mean], [sd], marker="s", capsize=3, linestyle="none", label=row["name"])
        if row["patches"] is not None:
            left.errorbar([row["patches"]], [mean], [sd], marker="s", capsize=3, linestyle="none", label=row["name"])
    for axis, title in ((left, "patches per image"), (right, f"ms per image (batch {args.time_batch}, 2-core CPU)")):
        axis.set_xscale("log")
        axis.set_xlabel(title)
        axis.axhline(1 / args.classes, color="grey", linestyle=":", linewidth=1)
        axis.grid(True, alpha=0.3)
    left.set_ylabel(f"test accuracy, mean ± sd over {args.seeds} seeds")
    for axis in (left, right):  # ticks at 1, 2, 5 x powers of ten: ms may span less than a decade
        axis.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    handles, labels = right.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(f"Needles {args.size}x{args.size} on {args.background} backgrounds, "
                    f"{args.classes} classes (dotted: chance)")
    figure.tight_layout(rect=(0, 0.16, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    figure.savefig(args.plot, dpi=110)


def main():
    args = options()
    common.header(
        f"Accuracy against compute on needles {args.size}x{args.size}, {args.background} backgrounds (issue 11)",
        [f"Needles {args.size}x{args.size} on {args.background} backgrounds, {args.classes} classes (chance {1 / args.classes:.2f}): "
         f"{args.train} training (seed 11), {args.val} validation (seed 12), {args.test} test images (seed 13). "
         f"Per row: learning rates {', '.join(f'{r:g}' for r in args.learning_rates)} on seed 0, early stopping "
         f"on validation accuracy (patience {args.patience}, at most {args.epochs} epochs, best weights), the "
         f"best rate on {args.seeds} seeds; batch {args.batch}, Adam. Dynamic rows: token 8, LoG sigma "
         f"{NEEDLES_SIGMA:g} (the needles setting), thresholds "
         f"calibrated on the training images to the budget, trained with `patch_budget` and "
         f"`penalty_weight={args.penalty_weight:g}`."
         + (" Smoke run: eager training, numbers mean nothing." if args.smoke else "")],
    )
    data = {name: make_needles(count, image_size=args.size, num_classes=args.classes, seed=seed,
                               background=args.background)
            for name, count, seed in (("train", args.train, 11), ("val", args.val, 12), ("test", args.test, 13))}
    rows = run_rows(data, args)
    time_rows(rows, data["test"][0], args)
    report(rows, args)
    plot(rows, args)
    shown = os.path.relpath(args.plot)
    print(f"Plot: `{args.plot if shown.startswith('..') else shown}`.")


if __name__ == "__main__":
    main()
