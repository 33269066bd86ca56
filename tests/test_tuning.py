"""`DynamicPatchHyperModel`, the tuners' failure reports and `threshold_sweep`.

Searches that train are in tests/test_cli_tune.py (one `dynpatch tune` run):
here nothing trains, so the file stays fast.
"""

import keras
import keras_tuner
import numpy as np
import pytest

from dynpatch_tf import DynamicPatchModel
from dynpatch_tf.training import needles_datasets
from dynpatch_tf.tuners import TrialFailedError, make_tuner
from dynpatch_tf.tuning import DEFAULT_RANGES, DynamicPatchHyperModel, PatchBudgetScore
from dynpatch_tf.tuning import threshold_sweep

BASE = (0.001, 0.002, 0.004)
TINY = {"embed_dim": 8, "attention_filters": [4]}


@pytest.fixture(scope="module")
def needles():
    """16 needles images of 64 px, 2 classes: `(training, validation)`, 8 each."""
    training, validation, _ = needles_datasets(16, 64, 2, seed=0, batch_size=8,
                                               validation_split=0.5)
    return training, validation


def sampled(hypermodel, seed):
    """Hyperparameters of `hypermodel` drawn at random, as a tuner would."""
    space = keras_tuner.HyperParameters()
    hypermodel.build(space)
    hp = keras_tuner.HyperParameters()
    hp.values = {parameter.name: parameter.random_sample(seed) for parameter in space.space}
    return hp


def test_hypermodel_builds_compiled_models_for_sampled_hyperparameters(needles):
    hypermodel = DynamicPatchHyperModel(2, base_thresholds=BASE, fixed=TINY,
                                        ranges={"token_size": [8], "width_multiplier": [0.25]})
    for seed in range(3):
        hp = sampled(hypermodel, seed)
        model = hypermodel.build(hp)
        assert isinstance(model, DynamicPatchModel) and model.compiled
        assert model.optimizer.learning_rate.numpy() == pytest.approx(hp.get("learning_rate"))
        scale = hp.get("threshold_scale")
        assert 0.25 <= scale <= 4
        np.testing.assert_allclose(model.patcher.initial_thresholds, np.multiply(BASE, scale))
        assert model.penalty_weight == pytest.approx(hp.get("penalty_weight"))
        assert model.complexity.get_config()["sigma"] == hp.get("sigma")
        assert model.attention.get_config()["activation"] == hp.get("attention_activation")
        assert model.patcher.token_size == 8 and model.embedder.embed_dim == 8
    images = next(iter(needles[1]))[0]
    assert model(images[:2]).shape == (2, 2)


def test_hypermodel_honours_overridden_ranges():
    hypermodel = DynamicPatchHyperModel(
        3, thresholds="levels", base_thresholds=BASE, fixed=TINY,
        ranges={"sigma": 2.0, "attention_activation": ["softmax"], "penalty_weight": (0.5, 0.5),
                "threshold": (0.01, 0.02), "threshold_ratio": (2.0, 3.0)})
    for seed in range(3):
        config = hypermodel.configuration(sampled(hypermodel, seed))["model"]
        assert (config["sigma"], config["attention_activation"]) == (2.0, "softmax")
        assert config["penalty_weight"] == 0.5
        first, *rest = config["thresholds"]
        assert 0.01 <= first <= 0.02 and len(rest) == 2
        ratios = np.divide(config["thresholds"][1:], config["thresholds"][:-1])
        assert np.all((ratios >= 2 - 1e-9) & (ratios <= 3 + 1e-9))  # increasing
    with pytest.raises(ValueError, match="unknown ranges \\['sigmas'\\]"):
        DynamicPatchHyperModel(2, ranges={"sigmas": [1.0]})
    with pytest.raises(ValueError, match="fixed options \\['token_size'\\] are tuned"):
        DynamicPatchHyperModel(2, fixed={"token_size": 8})
    assert set(DEFAULT_RANGES) >= {"threshold_scale", "token_size", "attention_activation"}


def test_a_budgeted_search_trains_with_the_budget_penalty():
    hypermodel = DynamicPatchHyperModel(2, fixed=TINY, patch_budget=0.2,
                                        ranges={"penalty_weight": (3.0, 3.0)})
    model = hypermodel.build(sampled(hypermodel, 0))
    assert (model.patch_budget, model.penalty_weight) == (0.2, 3.0)
    assert DynamicPatchHyperModel(2, fixed=TINY).build(sampled(hypermodel, 0)).patch_budget is None


def test_the_budget_score_only_penalises_patches_above_the_budget():
    score = PatchBudgetScore(finest_patches=64, patch_budget=0.25, budget_weight=2.0)
    below = {"val_accuracy": 0.8, "val_patches": 8.0}
    above = {"val_accuracy": 0.8, "val_patches": 32.0}
    for logs in (below, above):
        score.on_epoch_end(0, logs)
    assert below["val_patch_fraction"] == 0.125 and below["val_budgeted_accuracy"] == 0.8
    assert above["val_patch_fraction"] == 0.5
    assert above["val_budgeted_accuracy"] == pytest.approx(0.8 - 2.0 * 0.25)
    objective = DynamicPatchHyperModel(2, patch_budget=0.25).objective
    assert (objective.name, objective.direction) == ("val_budgeted_accuracy", "max")
    assert DynamicPatchHyperModel(2).objective.name == "val_accuracy"


class BrokenHyperModel(DynamicPatchHyperModel):
    """Builds for the tuner's declaration of the space; raises in every trial."""

    broken = False

    def build(self, hp):
        model = super().build(hp)
        if self.broken:
            raise ValueError("broken on purpose")
        return model


def test_a_failed_trial_is_raised_with_its_id_and_exception(needles, tmp_path):
    hypermodel = BrokenHyperModel(2, fixed=TINY)
    tuner = make_tuner(hypermodel, "random", directory=str(tmp_path), max_trials=2)
    hypermodel.broken = True
    with pytest.raises(TrialFailedError, match="trial 0 failed: ValueError: broken on purpose"):
        tuner.search(needles[0], validation_data=needles[1], epochs=1, verbose=0)


def test_a_failed_trial_is_printed_when_the_search_goes_on(needles, tmp_path, capsys):
    # keras-tuner alone raises only after 3 failures in a row: these 2 would pass unseen.
    hypermodel = BrokenHyperModel(2, fixed=TINY)
    tuner = make_tuner(hypermodel, "random", directory=str(tmp_path), max_trials=2,
                       fail_fast=False)
    hypermodel.broken = True
    tuner.search(needles[0], validation_data=needles[1], epochs=1, verbose=0)
    errors = capsys.readouterr().err
    for trial_id in ("0", "1"):
        assert f"trial {trial_id} failed: ValueError: broken on purpose" in errors
    assert [trial.status for trial in tuner.oracle.trials.values()] == ["FAILED", "FAILED"]


def test_resuming_a_search_with_other_settings_is_an_error(tmp_path):
    make_tuner(DynamicPatchHyperModel(2, fixed=TINY), directory=str(tmp_path), max_trials=1)
    make_tuner(DynamicPatchHyperModel(2, fixed=TINY), directory=str(tmp_path), max_trials=1)
    with pytest.raises(ValueError, match="patch_budget: None then, 0.2 now"):
        make_tuner(DynamicPatchHyperModel(2, fixed=TINY, patch_budget=0.2),
                   directory=str(tmp_path), max_trials=1)


def test_threshold_sweep_trades_patches_for_scale_and_restores_the_thresholds(needles):
    keras.utils.set_random_seed(0)
    model = DynamicPatchModel(num_classes=2, thresholds=BASE, token_size=8, **TINY)
    model.compile()
    model.build((None, 64, 64, 3))
    before = model.patcher.log_thresholds.numpy().copy()
    rows = threshold_sweep(model, needles[1], [4.0, 1.0, 0.25])
    patches = [row["patches_per_image"] for row in rows]
    assert patches[0] < patches[-1] and patches == sorted(patches), patches
    np.testing.assert_allclose(rows[0]["thresholds"], np.multiply(BASE, 4.0), rtol=1e-5)
    assert all(0 <= row["accuracy"] <= 1 for row in rows)
    np.testing.assert_array_equal(model.patcher.log_thresholds.numpy(), before)
    with pytest.raises(ValueError, match="must be positive"):
        threshold_sweep(model, needles[1], [1.0, 0.0])
