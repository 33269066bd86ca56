"""KerasTuner tuners for `DynamicPatchHyperModel`: resumable, loud on failure.

* `make_tuner`: a RandomSearch, BayesianOptimization or Hyperband tuner whose
  search resumes in the same folder (finished trials kept, an interrupted one
  rerun) and stops at a failed trial with `TrialFailedError` naming it.
* `leaderboard`: the trials, best first, with accuracy, patches per image and
  time per image.
* `best_config`: the best trial's configuration, as `dynpatch train --config`
  reads it.

Example:

```python
hypermodel = DynamicPatchHyperModel(num_classes=4, patch_budget=0.15)
tuner = make_tuner(hypermodel, "bayesian", directory="tune/", max_trials=20)
tuner.search(training, validation_data=validation, epochs=3)
print(leaderboard(tuner)[0])
```
"""

import json
import os
import sys

import keras_tuner
import numpy as np

SETTINGS_FILE = "dynpatch_hypermodel.json"


class TrialFailedError(RuntimeError):
    """A trial raised: names the trial and the exception (`make_tuner(fail_fast=True)`)."""


class _ReportsFailures:
    """Tuner mixin: a failed trial is raised or printed, never left silent.

    keras-tuner 1.4.8 records the traceback of a trial that raised, marks it
    failed and goes on; it raises only after `max_consecutive_failed_trials`
    (3) failures in a row, so a 2-trial search that fails ends quietly.
    """

    def __init__(self, *args, fail_fast=True, **kwargs):
        self.fail_fast = fail_fast
        super().__init__(*args, **kwargs)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        ended = self.oracle.get_trial(trial.trial_id)
        if ended.status != "FAILED":  # keras_tuner TrialStatus.FAILED
            return
        lines = (ended.message or "unknown error").strip().splitlines()
        error = TrialFailedError(f"trial {trial.trial_id} failed: {lines[-1]}")
        if self.fail_fast:
            raise error from None
        print(f"{error}\n{ended.message}", file=sys.stderr)

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        # keras-tuner imports tensorboard for every trial, with a TensorBoard
        # callback or not; without the package every trial failed.
        if any(type(callback).__name__ == "TensorBoard" for callback in callbacks):
            super()._configure_tensorboard_dir(callbacks, trial, execution)


class RandomSearch(_ReportsFailures, keras_tuner.RandomSearch):
    """`keras_tuner.RandomSearch` that reports failed trials (`fail_fast`)."""


class BayesianOptimization(_ReportsFailures, keras_tuner.BayesianOptimization):
    """`keras_tuner.BayesianOptimization` that reports failed trials (`fail_fast`)."""


class Hyperband(_ReportsFailures, keras_tuner.Hyperband):
    """`keras_tuner.Hyperband` that reports failed trials (`fail_fast`)."""


TUNERS = {"random": RandomSearch, "bayesian": BayesianOptimization, "hyperband": Hyperband}


def make_tuner(hypermodel, kind="random", directory=".", project_name="dynpatch_tune",
               max_trials=10, max_epochs=None, seed=None, fail_fast=True, **kwargs):
    """A tuner of `hypermodel` that resumes the search saved in the same folder.

    The hypermodel's `settings()` are saved beside the trials; resuming with
    other settings (ranges, fixed options, budget) is an error, since the
    saved trials were built and scored with the first ones.

    Args:
        hypermodel: a `DynamicPatchHyperModel` (its `objective` is used).
        kind: `"random"`, `"bayesian"` or `"hyperband"`.
        directory, project_name: where the trials are saved; a search there
            is resumed (finished trials are kept, an interrupted one rerun).
        max_trials: trials of the whole search (random and bayesian).
        max_epochs: hyperband's largest epoch count per trial.
        seed: the tuner's random seed.
        fail_fast: raise `TrialFailedError` when a trial fails (otherwise
            print it on stderr and go on).
        **kwargs: further arguments of the keras-tuner class.

    Returns:
        The tuner; `tuner.search(training, validation_data=..., epochs=...)`.

    Raises:
        ValueError: for an unknown `kind`, or settings other than those of
            the search saved in `directory/project_name`.
    """
    if kind not in TUNERS:
        raise ValueError(f"kind must be one of {sorted(TUNERS)}, got {kind!r}.")
    _check_settings(os.path.join(directory, project_name), hypermodel.settings())
    if kind == "hyperband":
        kwargs["max_epochs"] = max_epochs or 10
    else:
        kwargs["max_trials"] = max_trials
    return TUNERS[kind](hypermodel, objective=hypermodel.objective, directory=directory,
                        project_name=project_name, seed=seed, overwrite=False,
                        fail_fast=fail_fast, **kwargs)


def _check_settings(project_dir, settings):
    """Saves `settings` in a new search, or checks them against a resumed one's."""
    path = os.path.join(project_dir, SETTINGS_FILE)
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    if os.path.exists(path):
        with open(path) as file:
            saved = json.load(file)
        changed = sorted(name for name in {*saved, *settings}
                         if saved.get(name) != settings.get(name))
        if changed:
            details = "; ".join(f"{name}: {saved.get(name)!r} then, {settings.get(name)!r} now"
                                for name in changed)
            raise ValueError(f"the search in {project_dir} was started with other settings "
                             f"({details}): resume it with the same ones, or search in "
                             "another folder.")
        return
    os.makedirs(project_dir, exist_ok=True)
    with open(path, "w") as file:
        json.dump(settings, file, indent=1)


def leaderboard(tuner):
    """The trials of a search, completed ones best first, then the others.

    Returns:
        A list of dicts: `trial_id`, `status`, `score` (the objective),
        `accuracy` (`val_accuracy`), `patches_per_image` (`val_patches`),
        `patch_fraction` and `time_per_image` (seconds); None where a trial
        has no value.
    """
    rows = [{"trial_id": trial.trial_id, "status": trial.status, "score": trial.score,
             **{column: _last(trial, metric) for column, metric in LEADERBOARD_METRICS.items()}}
            for trial in tuner.oracle.trials.values()]
    return sorted(rows, key=lambda row: (row["score"] is None, -(row["score"] or 0)))


# The leaderboard's columns and the trial metrics they show.
LEADERBOARD_METRICS = {"accuracy": "val_accuracy", "patches_per_image": "val_patches",
                       "patch_fraction": "val_patch_fraction", "time_per_image": "time_per_image"}


def _last(trial, name):
    """The trial's last value of metric `name`, or None."""
    return float(trial.metrics.get_last_value(name)) if trial.metrics.exists(name) else None


def best_config(tuner):
    """The best trial's configuration, as `dynpatch train --config` reads it.

    Returns:
        `{"model": DynamicPatchModel options, "training": {"learning_rate"},
        "tuning": {"trial_id", "objective", "score"}}`, JSON-ready.

    Raises:
        ValueError: when no trial has completed.
    """
    best = tuner.oracle.get_best_trials(1)
    if not best:
        raise ValueError(f"no completed trial in {tuner.project_dir}.")
    config = tuner.hypermodel.configuration(best[0].hyperparameters.copy())
    config["tuning"] = {"trial_id": best[0].trial_id, "objective": tuner.oracle.objective.name,
                        "score": best[0].score}
    return _plain(config)




def _plain(value):
    """`value` with NumPy scalars and tuples made JSON types."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.item() if isinstance(value, np.generic) else value
