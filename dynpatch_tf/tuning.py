"""Hyperparameter search with KerasTuner, and threshold sweeps on a trained model.

* `DynamicPatchHyperModel`: a `keras_tuner.HyperModel` of compiled
  `DynamicPatchModel`s over the thresholds, penalty weight, sigma, token size,
  width, attention normalisation and learning rate, with ranges the caller
  can override. Every trial records `val_patches` (mean patches per image),
  `val_patch_fraction` and `time_per_image`.
* `dynpatch_tf.tuners`: `make_tuner` (RandomSearch, BayesianOptimization or
  Hyperband, resumable, failed trials reported), `leaderboard` and
  `best_config` (for `dynpatch train --config`).
* `threshold_sweep`: accuracy and patches per image of a trained model with
  its thresholds scaled, without retraining.

The objective is `val_accuracy`, or, with a `patch_budget` (a fraction of the
finest-grid patch count), accuracy under that budget:

    val_budgeted_accuracy = val_accuracy
                            - budget_weight * max(0, val_patch_fraction - patch_budget)

so a configuration below budget is ranked by accuracy alone, and one above it
loses `budget_weight` accuracy points per unit of patch fraction over budget
(with the default weight 1: 0.1 of the finest grid over budget costs 0.1
accuracy). `PatchBudgetScore` adds both metrics to the epoch logs.

Example:

```python
from dynpatch_tf.tuners import best_config, leaderboard, make_tuner

hypermodel = DynamicPatchHyperModel(num_classes=4, patch_budget=0.15,
                                    ranges={"token_size": [8]}, fixed={"embed_dim": 32})
tuner = make_tuner(hypermodel, "random", directory="tune/", max_trials=10)
tuner.search(training, validation_data=validation, epochs=3)
for row in leaderboard(tuner):
    print(row["trial_id"], row["accuracy"], row["patches_per_image"])
json.dump(best_config(tuner), open("tune/best_config.json", "w"))
```
"""

import math
import time

import keras
import keras_tuner
import numpy as np

from dynpatch_tf.model import DynamicPatchModel
from dynpatch_tf.patcher import DEFAULT_THRESHOLDS

# The search space: a pair `(low, high)` is a float range sampled on a log
# scale, a list a choice, one value (or a list of one) a fixed value. With
# `thresholds="scale"` the thresholds are `base_thresholds` x `threshold_scale`;
# with `thresholds="levels"` level 0 takes `threshold` and each next level the
# one before x `threshold_ratio` (>= 1), so they stay increasing.
DEFAULT_RANGES = {
    "learning_rate": (1e-4, 1e-2),
    "threshold_scale": (0.25, 4.0),
    "threshold": (1e-4, 1e-1),
    "threshold_ratio": (1.0, 4.0),
    "penalty_weight": (1e-3, 1.0),
    "sigma": [1.0, 2.0, 4.0],
    "token_size": [8, 16],
    "width_multiplier": [0.25, 0.5, 1.0],
    "attention_activation": ["sigmoid", "softmax"],
}
# The names the tuned model options take in `DynamicPatchModel`.
TUNED_OPTIONS = ("penalty_weight", "sigma", "token_size", "width_multiplier",
                 "attention_activation")
OBJECTIVE, BUDGET_OBJECTIVE = "val_accuracy", "val_budgeted_accuracy"


class DynamicPatchHyperModel(keras_tuner.HyperModel):
    """Compiled `DynamicPatchModel` classifiers over a search space.

    Args:
        num_classes: classes of the head.
        ranges: a dict overriding entries of `DEFAULT_RANGES` (see there): a
            `(low, high)` float range on a log scale, a list of choices, or
            one value to fix. An unknown name is an error.
        thresholds: `"scale"` (one factor on `base_thresholds`) or
            `"levels"` (one value per split level, kept increasing).
        base_thresholds: the thresholds that `threshold_scale` multiplies;
            their count is the number of split levels in both modes.
        fixed: further `DynamicPatchModel` options, not tuned (e.g.
            `embed_dim`, `attention_filters`, `min_size`).
        patch_budget: None for the objective `val_accuracy`, or a patch
            fraction for `val_budgeted_accuracy` (see the module docstring);
            the models then train with the budget form of the penalty
            (`DynamicPatchModel(patch_budget=...)`, the tuned penalty weight).
        budget_weight: accuracy lost per unit of patch fraction over budget.

    Example:

    >>> hypermodel = DynamicPatchHyperModel(4, ranges={"sigma": 2.0}, thresholds="levels")
    >>> model = hypermodel.build(keras_tuner.HyperParameters())
    """

    def __init__(self, num_classes, ranges=None, thresholds="scale",
                 base_thresholds=DEFAULT_THRESHOLDS, fixed=None, patch_budget=None,
                 budget_weight=1.0, name=None, tunable=True):
        super().__init__(name=name, tunable=tunable)
        unknown = sorted(set(ranges or {}) - set(DEFAULT_RANGES))
        if unknown:
            raise ValueError(f"unknown ranges {unknown}; the names are {sorted(DEFAULT_RANGES)}.")
        if thresholds not in ("scale", "levels"):
            raise ValueError(f'thresholds must be "scale" or "levels", got {thresholds!r}.')
        tuned = sorted(set(fixed or {}) & {*TUNED_OPTIONS, "thresholds", "num_classes"})
        if tuned:
            raise ValueError(f"fixed options {tuned} are tuned: fix them through `ranges`.")
        self.num_classes = num_classes
        self.ranges = {**DEFAULT_RANGES, **(ranges or {})}
        self.threshold_mode = thresholds
        self.base_thresholds = tuple(float(t) for t in base_thresholds)
        self.fixed = dict(fixed or {})
        self.patch_budget = patch_budget
        self.budget_weight = float(budget_weight)

    @property
    def objective(self):
        """The `keras_tuner.Objective` to maximise (see the module docstring)."""
        return keras_tuner.Objective(BUDGET_OBJECTIVE if self.patch_budget is not None
                                     else OBJECTIVE, direction="max")

    def settings(self):
        """Everything but the hyperparameters that decides the trials, JSON-ready.

        `make_tuner` saves it with a search and checks it when the search resumes.
        """
        return {"num_classes": self.num_classes, "ranges": self.ranges,
                "thresholds": self.threshold_mode, "base_thresholds": self.base_thresholds,
                "fixed": self.fixed, "patch_budget": self.patch_budget,
                "budget_weight": self.budget_weight}

    def configuration(self, hp):
        """`{"model": DynamicPatchModel options, "training": {"learning_rate": ...}}` of `hp`."""
        model = {"num_classes": self.num_classes, **self.fixed,
                 "thresholds": self._thresholds(hp)}
        model.update({name: self._sample(hp, name) for name in TUNED_OPTIONS})
        if self.patch_budget is not None:  # the tuned penalty weight acts above the budget
            model.setdefault("patch_budget", self.patch_budget)
        return {"model": model, "training": {"learning_rate": self._sample(hp, "learning_rate")}}

    def build(self, hp):
        """A compiled `DynamicPatchModel` (Adam, cross-entropy, accuracy)."""
        config = self.configuration(hp)
        model = DynamicPatchModel(**config["model"])
        model.compile(optimizer=keras.optimizers.Adam(config["training"]["learning_rate"]))
        return model

    def fit(self, hp, model, x, *args, validation_data=None, callbacks=None, **kwargs):
        """`model.fit` with the patch metrics added; returns the last epoch's metrics.

        Adds `val_patch_fraction` and (with a budget) `val_budgeted_accuracy`
        to every epoch's logs, then times one more pass over the validation
        set for `time_per_image` (seconds, the evaluation step already traced).
        """
        if validation_data is None:
            raise ValueError("tuning needs validation_data: the objective is measured on it.")
        images = next(iter(validation_data))[0]
        finest = (math.ceil(images.shape[1] / model.patcher.min_size)
                  * math.ceil(images.shape[2] / model.patcher.min_size))
        score = PatchBudgetScore(finest, self.patch_budget, self.budget_weight)
        kwargs.setdefault("shuffle", False)  # datasets shuffle themselves
        history = model.fit(x, *args, validation_data=validation_data,
                            callbacks=[score, *(callbacks or [])], **kwargs)
        metrics = {name: values[-1] for name, values in history.history.items()}
        start = time.perf_counter()
        model.evaluate(validation_data, verbose=0)
        count = sum(int(batch[0].shape[0]) for batch in validation_data)
        metrics["time_per_image"] = (time.perf_counter() - start) / count
        return metrics

    def _thresholds(self, hp):
        if self.threshold_mode == "scale":
            scale = self._sample(hp, "threshold_scale")
            return [t * scale for t in self.base_thresholds]
        thresholds = [self._sample(hp, "threshold")]
        for level in range(1, len(self.base_thresholds)):
            thresholds.append(thresholds[-1] * self._sample(hp, "threshold_ratio", level))
        return thresholds

    def _sample(self, hp, name, index=None):
        """The value of the hyperparameter `name` (`name_index` with an index)."""
        values, label = self.ranges[name], name if index is None else f"{name}_{index}"
        if isinstance(values, list) and len(values) == 1:
            values = values[0]
        if isinstance(values, list):
            return hp.Choice(label, values)
        if isinstance(values, tuple):
            low, high = map(float, values)
            if low == high:
                return hp.Fixed(label, low)
            return hp.Float(label, low, high, sampling="log")
        return hp.Fixed(label, values)


class PatchBudgetScore(keras.callbacks.Callback):
    """Adds `val_patch_fraction` and `val_budgeted_accuracy` to the epoch logs.

    `val_patch_fraction` is `val_patches` (the model's mean patches per image)
    over `finest_patches`; `val_budgeted_accuracy` is `val_accuracy` less
    `budget_weight` x the fraction above `patch_budget` (only with a budget).
    Put it before callbacks that read these metrics: Keras hands one logs
    dict to the callbacks in order.

    Args:
        finest_patches: patches per image of the finest grid (`min_size`).
        patch_budget: a patch fraction, or None.
        budget_weight: accuracy lost per unit of fraction over budget.
    """

    def __init__(self, finest_patches, patch_budget=None, budget_weight=1.0):
        super().__init__()
        self.finest_patches = finest_patches
        self.patch_budget = patch_budget
        self.budget_weight = budget_weight

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "val_patches" not in logs:
            return
        logs["val_patch_fraction"] = float(logs["val_patches"]) / self.finest_patches
        if self.patch_budget is not None:
            excess = max(0.0, logs["val_patch_fraction"] - self.patch_budget)
            logs[BUDGET_OBJECTIVE] = float(logs["val_accuracy"]) - self.budget_weight * excess


def threshold_sweep(model, dataset, scales):
    """Accuracy and patches per image of `model` with its thresholds x each scale.

    No retraining: thresholds change which patches are cut, not the weights.
    The model's thresholds are restored afterwards, also on error.

    Args:
        model: a `DynamicPatchModel` classifier (compiled with the default
            recipe when it is not).
        dataset: a `tf.data.Dataset` of `(images, labels)` batches.
        scales: positive factors on all thresholds.

    Returns:
        One dict per scale: `scale`, `thresholds`, `accuracy`, `loss` and
        `patches_per_image` (mean).

    Example:

    >>> for row in threshold_sweep(model, validation, [0.5, 1, 2, 4]):
    ...     print(row["scale"], row["accuracy"], row["patches_per_image"])
    """
    if any(not scale > 0 for scale in scales):
        raise ValueError(f"threshold scales must be positive, got {list(scales)}.")
    if not model.built:
        model.build(dataset.element_spec[0].shape)
    if not model.compiled:
        model.compile()
    patcher = model.patcher
    original = patcher.log_thresholds.numpy()
    rows = []
    try:
        for scale in scales:
            patcher.log_thresholds.assign(original + np.log(scale) / patcher.threshold_rate)
            results = model.evaluate(dataset, return_dict=True, verbose=0)
            rows.append({"scale": float(scale),
                         "thresholds": [float(t) for t in patcher.thresholds.numpy()],
                         "accuracy": float(results["accuracy"]), "loss": float(results["loss"]),
                         "patches_per_image": float(results["patches"])})
    finally:
        patcher.log_thresholds.assign(original)
    return rows
