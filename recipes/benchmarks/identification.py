"""Recall@1 on unseen identities against patches per image: dynamic against fixed grids (issue 13).

Protocol (as `study.py`'s):

* needle identities (`dynpatch_tf.needle_identities`), one seed; training,
  validation and test identities are disjoint index ranges of it (open set):
  the model never sees a test identity;
* every model is trained with `TripletSemiHardLoss` (margin --margin) on P x K
  batches (`identity_batches`), for --epochs epochs, keeping the weights of
  the epoch with the best validation recall@1;
* every row gets the same learning-rate sweep (--learning-rates) on seed 0;
  the best rate on validation recall@1 then trains --seeds seeds, and the
  table shows test recall@1 and mAP, mean +- sd over them. Validation and test
  split each identity's images into --queries-per-identity queries and a
  gallery (`query_gallery_split`).

Rows, all with the same attention CNN, embedder, position encoding and
`IdentificationEmbedding` head, at token 8:

* dynamic, budget b: `DynamicPatchModel(head_type="identification")`, its
  thresholds calibrated on the training images to b of the finest count
  (`calibrate_thresholds`), trained with `patch_budget=b` and
  `penalty_weight` --penalty-weight;
* fixed grids of 8, 16 and 32 px patches (`study.GridPatchModel`): no
  complexity map, every patch area-resized to 8 px.

    python recipes/benchmarks/identification.py                # docs/benchmarks.md's run (64 px images)
    python recipes/benchmarks/identification.py --size 256 --train 96 --epochs 20   # larger: hours on 2 cores
    python recipes/benchmarks/identification.py --smoke        # tiny: checks that it runs
"""

import keras
import numpy as np

import common
from dynpatch_tf import DynamicPatchModel, TripletSemiHardLoss
from dynpatch_tf.calibration import calibrate_thresholds
from dynpatch_tf.needle_identities import identity_batches, identity_splits
from dynpatch_tf.needles import NEEDLES_SIGMA
from dynpatch_tf.retrieval import query_gallery_split, retrieval_metrics
from study import TOKEN, patches_per_image, sweep_and_seeds

# The parts every row shares (small: the run must fit a 2-core machine).
PARTS = dict(embed_dim=32, identity_dim=32, width_multiplier=0.35, attention_filters=(8, 16),
             embedder_blocks=((1, 16, 1, 1), (None, 24, 1, 2)))


def options():
    parser = common.parser(__doc__)
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--train", type=int, default=48, help="training identities")
    parser.add_argument("--val", type=int, default=16, help="validation identities")
    parser.add_argument("--test", type=int, default=32, help="test identities")
    parser.add_argument("--images-per-identity", type=int, default=6)
    parser.add_argument("--queries-per-identity", type=int, default=2)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.2, 0.4])
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 16, 32], help="fixed grid sides (px)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--identities-per-batch", type=int, default=6)
    parser.add_argument("--images-per-batch-identity", type=int, default=3, help="K of the P x K batches")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--seeds", type=int, default=3, help="seeds at the chosen learning rate")
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--penalty-weight", type=float, default=0.3)
    parser.add_argument("--data-seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke:
        args.size, args.train, args.val, args.test, args.images_per_identity = 64, 6, 3, 3, 3
        args.budgets, args.grids, args.epochs, args.learning_rates, args.seeds = [0.2], [16], 1, [1e-3], 1
    return args


class BestRecall(keras.callbacks.Callback):
    """After every epoch: validation recall@1; at the end, the best epoch's weights back."""

    def __init__(self, data, args):
        super().__init__()
        self.data, self.args = data, args
        self.best, self.best_weights, self.epochs = -1.0, None, 0

    def on_epoch_end(self, epoch, logs=None):
        recall = scores(self.model, self.data, self.args).recall[1]
        self.epochs += 1
        if recall > self.best:
            self.best, self.best_weights = recall, self.model.get_weights()

    def on_train_end(self, logs=None):
        self.model.set_weights(self.best_weights)


def scores(model, data, args):
    """The `RetrievalResult` of `model` (its output is the unit-norm embedding) on `(images, labels)`."""
    images, labels = data
    if not hasattr(model, "_benchmark_predictor"):  # one trace per model, not one per epoch
        model._benchmark_predictor = common.predictor(model)
    embed = model._benchmark_predictor
    embeddings = np.concatenate([embed(images[i:i + 32]).numpy() for i in range(0, len(images), 32)])
    queries, gallery = query_gallery_split(labels, args.queries_per_identity, seed=0)
    return retrieval_metrics(embeddings[queries], labels[queries], embeddings[gallery], labels[gallery])


def dynamic_row(budget, data, args):
    def make(seed):
        keras.utils.set_random_seed(seed)
        model = DynamicPatchModel(head_type="identification", token_size=TOKEN, sigma=NEEDLES_SIGMA,
                                  patch_budget=budget, penalty_weight=args.penalty_weight, **PARTS)
        model.build((None, None, None, 3))
        calibrate_thresholds(model, data["train"][0], patch_fraction=budget)
        return model
    return make


def grid_row(side):
    def make(seed):
        keras.utils.set_random_seed(seed)
        return common.GridPatchModel(side, None, "identification", part_options=PARTS)
    return make


def fit(make, seed, learning_rate, data, args):
    """Trains one model; returns `(model, best validation recall@1, epochs)`."""
    model = make(seed)
    model.compile(keras.optimizers.Adam(learning_rate), TripletSemiHardLoss(margin=args.margin),
                  run_eagerly=args.smoke)
    best = BestRecall(data["val"], args)
    batches = identity_batches(*data["train"], args.identities_per_batch, args.images_per_batch_identity, seed)
    model.fit(batches, epochs=args.epochs, verbose=0, callbacks=[best])
    return model, best.best, best.epochs


def study_row(name, make, data, args):
    sweep, best, runs = sweep_and_seeds(fit, make, data, args)
    tests = [scores(model, data["test"], args) for model, _, _ in runs]
    recall = np.array([result.recall[1] for result in tests])
    mean_ap = np.array([result.mean_average_precision for result in tests])
    row = dict(name=name, rate=best, recall=recall, mAP=mean_ap, sweep={r: v[1] for r, v in sweep.items()},
               patches=patches_per_image(runs[0][0], data["test"][0], 32))
    print(f"<!-- {name}: lr {best:g}, test recall@1 {recall.mean():.3f} +- {recall.std():.3f}, "
          f"patches {row['patches']:.1f} -->", flush=True)
    return row


def main():
    args = options()
    common.header(
        f"Recall@1 on unseen needle identities against patches per image, {args.size}x{args.size} (issue 13)",
        [f"Needle identities {args.size}x{args.size}, {args.images_per_identity} images each: {args.train} "
         f"training, {args.val} validation and {args.test} test identities, disjoint (data seed "
         f"{args.data_seed}). Validation and test: {args.queries_per_identity} queries per identity against "
         f"the rest as gallery. Per row: TripletSemiHardLoss (margin {args.margin:g}) on {args.identities_per_batch}"
         f" x {args.images_per_batch_identity} batches, {args.epochs} epochs, the best epoch on validation "
         f"recall@1; learning rates {', '.join(f'{r:g}' for r in args.learning_rates)} on seed 0, the best on "
         f"{args.seeds} seeds. Parts: token 8, {PARTS}. Dynamic rows: LoG sigma {NEEDLES_SIGMA:g}, thresholds "
         f"calibrated on the training images to the budget, `patch_budget`, `penalty_weight="
         f"{args.penalty_weight:g}`." + (" Smoke run: numbers mean nothing." if args.smoke else "")],
    )
    data = identity_splits(args.train, args.test, args.images_per_identity, args.size, args.data_seed,
                           validation_identities=args.val)
    specs = [(f"dynamic, budget {b:g}", dynamic_row(b, data, args)) for b in args.budgets]
    specs += [(f"fixed {side} px grid", grid_row(side)) for side in args.grids]
    rows = [study_row(name, make, data, args) for name, make in specs]
    table = [[row["name"], f"{row['recall'].mean():.3f} ± {row['recall'].std():.3f}",
              f"{row['mAP'].mean():.3f} ± {row['mAP'].std():.3f}", f"{row['patches']:.1f}", f"{row['rate']:g}",
              ", ".join(f"{rate:g}: {value:.3f}" for rate, value in row["sweep"].items())] for row in rows]
    columns = ["row", f"test recall@1 (mean ± sd, {args.seeds} seeds)", "test mAP", "patches / image (test)",
               "chosen lr", "val recall@1 per lr (seed 0)"]
    print("\n" + common.table(columns, table) + "\n")


if __name__ == "__main__":
    main()
