"""Training under tf.distribute: dynpatch_tf.distribute, the model's steps, `train --strategy`.

Runs on several replicas need TensorFlow set up before it starts (logical
devices, TF_CONFIG and collective ops), so each runs in processes of its own:
`tests/mirrored_step.py` (2 replicas on 2 logical CPUs) and two `dynpatch
train --strategy multiworker` workers on 127.0.0.1.
"""

import json
import os
import socket
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.cli import _lost_worker
from dynpatch_tf.distribute import is_multi_worker, make_strategy, worker_folder
from tests.cli_testing import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(args, timeout=600, **options):
    """Runs `python ARGS` from the repository root (its package first on the path)."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **options)


def finished(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def test_a_mirrored_step_equals_one_device_step_on_the_global_batch(tmp_path):
    path = tmp_path / "step.npz"
    finished(run_python(["-m", "tests.mirrored_step", str(path)]))
    step = np.load(path)
    assert int(step["replicas"]) == 2
    # The first replica's 4 images are far over the budget, the second's under
    # it: a penalty taken per replica (or summed over them) would differ.
    fractions, budget, weight = step["fractions"], float(step["patch_budget"]), float(step["penalty_weight"])
    penalty = weight * max(0.0, fractions.mean() / budget - 1)
    per_replica = np.mean([weight * max(0.0, half.mean() / budget - 1) for half in np.split(fractions, 2)])
    assert penalty > 0.1 and abs(per_replica - penalty) > 0.1
    np.testing.assert_allclose(step["single_penalty"], penalty, rtol=1e-5)
    np.testing.assert_allclose(step["mirrored_penalty"], penalty, rtol=1e-5)
    np.testing.assert_allclose(step["mirrored_loss"], step["single_loss"], rtol=1e-5)
    # SGD with learning rate 1: each weight moved by minus its gradient
    # (BatchNorm's moving statistics by their update).
    names = list(step["names"])
    for index, name in enumerate(names):
        single = step[f"single_{index}"] - step[f"before_{index}"]
        mirrored = step[f"mirrored_{index}"] - step[f"before_{index}"]
        np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-5, err_msg=name)
    thresholds = names.index(next(name for name in names if name.endswith("log_thresholds")))
    assert np.abs(step[f"single_{thresholds}"] - step[f"before_{thresholds}"]).min() > 0.1


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_two_workers_train_an_epoch_and_end_with_equal_weights(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    command = [
        "-m", "dynpatch_command", "train", "--strategy", "multiworker", "--sync-batch-norm",
        "--needles", "8", "--image-size", "64", "--classes", "2", "--batch-size", "4",
        "--validation-split", "0", "--epochs", "1", "--thresholds", "0.001", "0.002", "0.004",
        "--token-size", "8", "--embed-dim", "8", "--width-multiplier", "0.25",
        "--attention-filters", "4", "--output", str(tmp_path),
    ]
    processes = [
        run_python(command, env={**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})})
        for index in range(2)
    ]
    logs = [finished(process) for process in processes]
    for log, folder in zip(logs, (tmp_path, tmp_path / "worker-1")):
        assert f"Saved the model to {folder / 'model.keras'}" in log
        assert [record["epoch"] for record in json.loads((folder / "history.json").read_text())] == [1]
    chief, other = (keras.models.load_model(folder / "model.keras")
                    for folder in (tmp_path, tmp_path / "worker-1"))
    assert chief.embedder.synchronized_batch_norm
    for a, b, variable in zip(chief.get_weights(), other.get_weights(), chief.weights):
        np.testing.assert_array_equal(a, b, err_msg=variable.path)


def test_make_strategy_names_and_refusals(monkeypatch):
    assert make_strategy("default") is tf.distribute.get_strategy()
    assert isinstance(make_strategy("mirrored"), tf.distribute.MirroredStrategy)
    assert not is_multi_worker(make_strategy("default"))
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="multiworker strategy needs TF_CONFIG"):
        make_strategy("multiworker")
    with pytest.raises(ValueError, match="unknown strategy 'ring'"):
        make_strategy("ring")


def test_train_refuses_multiworker_without_tf_config(monkeypatch, capsys):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    status, _ = run_main(["train", "--strategy", "multiworker", "--needles", "4",
                          "--output", "unused"])
    assert status == 1
    assert "--strategy: the multiworker strategy needs TF_CONFIG" in capsys.readouterr().err


def strategy_of(task_type, task_id, cluster):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
    return types.SimpleNamespace(cluster_resolver=resolver)


def test_worker_folder_is_the_output_on_the_chief_only():
    workers = {"worker": ["a:1", "b:1", "c:1"]}
    with_chief = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert worker_folder("run", strategy_of("worker", 0, workers)) == "run"
    assert worker_folder("run", strategy_of("worker", 2, workers)) == os.path.join("run", "worker-2")
    assert worker_folder("run", strategy_of("chief", 0, with_chief)) == "run"
    assert worker_folder("run", strategy_of("worker", 0, with_chief)) == os.path.join("run", "worker-0")
    assert worker_folder("run", types.SimpleNamespace(cluster_resolver=None)) == "run"


def test_a_lost_worker_is_reported_with_what_to_do():
    error = tf.errors.UnavailableError(None, None, (
        "Graph execution error:\n\nCollective ops is aborted by: Error reported from "
        "/job:worker/task:1: The following tasks are unhealthy (stopped sending heartbeats):\n"
        "/job:worker/replica:0/task:1\nThe tasks have crashed."))
    message = _lost_worker(error)
    assert "/job:worker/replica:0/task:1" in message
    assert "start every worker again with the same command" in message
