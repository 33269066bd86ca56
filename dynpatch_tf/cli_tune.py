"""`dynpatch tune`: a KerasTuner search over the model's hyperparameters, or a
threshold sweep of a trained model (`--thresholds-only`).

The search (`dynpatch_tf.tuning.DynamicPatchHyperModel`, `dynpatch_tf.tuners`)
is saved in `--directory` and resumes there; it prints a leaderboard and writes
the best configuration as JSON for `dynpatch train --config`.

Examples:

```bash
dynpatch tune photos/ --tuner bayesian --max-trials 20 --directory search/
dynpatch tune photos/ --thresholds-only --model run/model.keras --scales 0.5 1 2
```
"""

import json
import os

from dynpatch_tf.cli_common import CommandError, checked_thresholds, load_datasets, load_model, reported
from dynpatch_tf.cli_common import verbosity
from dynpatch_tf.cli_parser import BASE_SIZE, MIN_PATCH_SIZE
from dynpatch_tf.tuners import TrialFailedError, best_config, leaderboard, make_tuner
from dynpatch_tf.tuning import DEFAULT_RANGES, DynamicPatchHyperModel, threshold_sweep


def tune(args):
    if (args.data is None) == (args.needles is None):
        raise CommandError("give a class folder DATA or --needles N (one of them).")
    if args.thresholds_only:
        return _sweep_thresholds(args)
    if args.directory is None:
        raise CommandError("--directory is required (the search is saved and resumed there).")
    if args.tuner == "hyperband" and args.max_trials is not None:
        raise CommandError("--max-trials is for random and bayesian; hyperband's trials "
                           "follow from --epochs.")
    thresholds = checked_thresholds(args.thresholds, BASE_SIZE, MIN_PATCH_SIZE)
    training, validation, class_names = load_datasets(args, training=True)
    if validation is None:
        raise CommandError("--validation-split must hold out images to score the trials.")
    with reported():
        hypermodel = DynamicPatchHyperModel(
            len(class_names), ranges=_search_ranges(args.range), thresholds=args.threshold_mode,
            base_thresholds=thresholds, patch_budget=args.patch_budget,
            budget_weight=args.budget_weight,
            fixed={"embed_dim": args.embed_dim, "attention_filters": args.attention_filters})
    with reported():
        tuner = make_tuner(hypermodel, args.tuner, args.directory, args.project_name,
                           max_trials=args.max_trials or 10, max_epochs=args.epochs,
                           seed=args.seed, fail_fast=not args.keep_going)
    done = len(tuner.oracle.trials)
    with reported(TrialFailedError):
        tuner.search(training, validation_data=validation, epochs=args.epochs,
                     verbose=verbosity(args))
    print(f"{len(tuner.oracle.trials) - done} new trials, {len(tuner.oracle.trials)} in all; "
          f"objective {hypermodel.objective.name}")
    _print_leaderboard(leaderboard(tuner))
    with reported():
        config = best_config(tuner)
    path = os.path.join(args.directory, "best_config.json")
    with open(path, "w") as file:
        json.dump(config, file, indent=1)
    print(f"Wrote the best configuration (trial {config['tuning']['trial_id']}) to {path}")


def _search_ranges(pairs):
    """`--range NAME VALUE...` as `DynamicPatchHyperModel` ranges, typed as the defaults."""
    ranges = {}
    for name, *values in pairs:
        if name not in DEFAULT_RANGES or not values:
            raise CommandError(f"--range takes a name of {', '.join(DEFAULT_RANGES)} and "
                               f"values, got {' '.join([name, *values])}.")
        default = DEFAULT_RANGES[name]
        kind = type(default[0]) if isinstance(default, list) else float
        try:
            typed = [kind(value) for value in values]
        except ValueError:
            raise CommandError(f"--range {name} takes {kind.__name__} values, got {values}.") from None
        if isinstance(default, tuple) and len(typed) > 2:
            raise CommandError(f"--range {name} takes LOW HIGH or one value, got {values}.")
        ranges[name] = tuple(typed) if isinstance(default, tuple) and len(typed) == 2 else typed
    return ranges


def _print_leaderboard(rows):
    def number(value, form, factor=1):
        return "-" if value is None else format(value * factor, form)

    print(f"{'trial':>6} {'status':>10} {'score':>8} {'accuracy':>9} {'patches/image':>14} "
          f"{'ms/image':>9}")
    for row in rows:
        print(f"{row['trial_id']:>6} {row['status']:>10} {number(row['score'], '.4f'):>8} "
              f"{number(row['accuracy'], '.4f'):>9} {number(row['patches_per_image'], '.1f'):>14} "
              f"{number(row['time_per_image'], '.2f', 1000):>9}")


def _sweep_thresholds(args):
    """`tune --thresholds-only`: the model's accuracy and patches per threshold scale."""
    if args.model is None:
        raise CommandError("--thresholds-only needs --model.")
    model = load_model(args.model)
    dataset, _, class_names = load_datasets(args)
    with reported():
        rows = threshold_sweep(model, dataset, args.scales)
    print(f"{'scale':>7} {'accuracy':>9} {'patches/image':>14}  thresholds")
    for row in rows:
        thresholds = " ".join(f"{value:.4g}" for value in row["thresholds"])
        print(f"{row['scale']:>7.3g} {row['accuracy']:>9.4f} {row['patches_per_image']:>14.1f}  "
              f"{thresholds}")
