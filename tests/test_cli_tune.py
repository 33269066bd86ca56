"""`dynpatch tune` and `dynpatch train --config`, end to end on tiny needles images.

One 1-trial search (module fixture `search`) and one training run from its
best configuration (`trained`) serve every test: each trial costs a fit.
"""

import json
import types

import keras
import pytest

import dynpatch_tf  # noqa: F401  (registers the model class for load_model)
from tests.cli_testing import run_main

DATA = ["--needles", "16", "--image-size", "64", "--classes", "2", "--batch-size", "8"]
BUDGET = 0.3
SEARCH = [*DATA, "--validation-split", "0.5", "--max-trials", "1", "--epochs", "1",
          "--patch-budget", str(BUDGET), "--thresholds", "0.001", "0.002", "0.004",
          "--range", "token_size", "8", "--range", "width_multiplier", "0.25",
          "--embed-dim", "8", "--attention-filters", "4"]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tune")
    status, log = run_main(["tune", *SEARCH, "--directory", str(directory)])
    assert status == 0, log
    config = json.loads((directory / "best_config.json").read_text())
    return types.SimpleNamespace(directory=directory, log=log, config=config,
                                 trial=directory / "dynpatch_tune" / "trial_0" / "trial.json")


@pytest.fixture(scope="module")
def trained(search, tmp_path_factory):
    """`train --config best_config.json`, the penalty weight and budget momentum given as flags too."""
    output = tmp_path_factory.mktemp("train")
    status, log = run_main(["train", "--config", str(search.directory / "best_config.json"),
                            *DATA, "--validation-split", "0", "--epochs", "1",
                            "--penalty-weight", "0.25", "--budget-momentum", "0.6",
                            "--output", str(output)])
    assert status == 0, log
    return keras.models.load_model(output / "model.keras"), output / "model.keras"


def test_tune_prints_a_leaderboard_and_writes_the_best_configuration(search):
    assert "1 new trials, 1 in all; objective val_budgeted_accuracy" in search.log
    header, row = search.log.split("trial     status")[1].splitlines()[:2]
    assert "accuracy  patches/image  ms/image" in header
    assert row.split()[:2] == ["0", "COMPLETED"]
    model = search.config["model"]
    assert (model["token_size"], model["width_multiplier"], model["embed_dim"]) == (8, 0.25, 8)
    assert model["thresholds"] == sorted(model["thresholds"]) and len(model["thresholds"]) == 3
    assert search.config["tuning"]["objective"] == "val_budgeted_accuracy"
    assert search.config["training"]["learning_rate"] > 0


def test_every_trial_records_patches_per_image_and_the_budget_objective(search):
    metrics = json.loads(search.trial.read_text())["metrics"]["metrics"]
    value = {name: metric["observations"][-1]["value"][0] for name, metric in metrics.items()}
    assert value["val_patches"] > 0 and value["time_per_image"] > 0
    assert value["val_patch_fraction"] == pytest.approx(value["val_patches"] / 64)
    excess = max(0.0, value["val_patch_fraction"] - BUDGET)
    assert value["val_budgeted_accuracy"] == pytest.approx(value["val_accuracy"] - excess)


def test_a_second_run_resumes_the_search_without_redoing_finished_trials(search):
    before = search.trial.read_text()
    status, log = run_main(["tune", *SEARCH, "--directory", str(search.directory)])
    assert status == 0, log
    assert "Reloading Tuner" in log and "0 new trials, 1 in all" in log
    assert search.trial.read_text() == before
    assert sorted(path.name for path in (search.directory / "dynpatch_tune").glob("trial_*")) == ["trial_0"]


def test_resuming_with_other_settings_is_reported(search, capsys):
    other = [arg if arg != str(BUDGET) else "0.5" for arg in SEARCH]
    status, _ = run_main(["tune", *other, "--directory", str(search.directory)])
    assert status == 1
    assert "was started with other settings (patch_budget: 0.3 then, 0.5 now)" in capsys.readouterr().err


def test_train_takes_the_best_configuration_and_explicit_flags_win(search, trained):
    model, _ = trained
    config = search.config["model"]
    assert model.patcher.initial_thresholds == pytest.approx(config["thresholds"])
    assert model.complexity.get_config()["sigma"] == config["sigma"]
    assert model.attention.get_config()["activation"] == config["attention_activation"]
    assert (model.patcher.token_size, model.embedder.embed_dim) == (8, 8)
    assert model.embedder.get_config()["width_multiplier"] == 0.25
    assert model.penalty_weight == 0.25  # the flag, not the file's
    assert model.patch_budget == config["patch_budget"] == BUDGET  # the search's budget, in training too
    assert model.running_fraction.momentum == 0.6
    schedule = model.optimizer.get_config()["learning_rate"]["config"]
    assert schedule["initial_learning_rate"] == pytest.approx(search.config["training"]["learning_rate"])


def test_train_reports_a_bad_configuration(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": {}, "training": {"momentum": 0.9}}))
    with pytest.raises(SystemExit) as exit_info:
        run_main(["train", "--config", str(path), *DATA, "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "unknown training entries ['momentum']" in capsys.readouterr().err


def test_thresholds_only_sweeps_scales_without_training(trained):
    _, path = trained
    status, log = run_main(["tune", "--thresholds-only", "--model", str(path), *DATA,
                            "--scales", "4", "1", "0.25"])
    assert status == 0, log
    rows = [line.split() for line in log.splitlines()[1:] if line.strip()]
    assert [float(row[0]) for row in rows] == [4, 1, 0.25]
    patches = [float(row[2]) for row in rows]
    assert patches == sorted(patches) and patches[0] < patches[-1], log


@pytest.mark.parametrize("argv, message", [
    (["tune", "--directory", "d"], "give a class folder DATA or --needles N"),
    (["tune", *DATA, "--tuner", "hyperband", "--max-trials", "2", "--directory", "d"],
     "--max-trials is for random and bayesian"),
    (["tune", *DATA, "--range", "sigmas", "1", "--directory", "d"], "--range takes a name of"),
    (["tune", *DATA, "--thresholds-only"], "--thresholds-only needs --model"),
])
def test_tune_argument_errors(argv, message, capsys):
    assert run_main(argv)[0] == 1
    assert message in capsys.readouterr().err
