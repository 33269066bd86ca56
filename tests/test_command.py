"""dynpatch_command: the `dynpatch` entry point keeps TensorFlow's start-up lines quiet."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_command import STARTUP_NOISE, drop_noise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, **env):
    """Runs `args` from the repository root, with TF_CPP_MIN_LOG_LEVEL only if given."""
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(args, cwd=ROOT, env={**environment, **env}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def noise(stderr):
    return [line for line in stderr.splitlines() if STARTUP_NOISE.search(line)]


@pytest.fixture(scope="module")
def small_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "small.png"
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    tf.io.write_file(str(path), tf.io.encode_png(image))
    return path


def test_drop_noise_keeps_every_other_line():
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:17.6 3065 port.cc:153] oneDNN custom operations are on. You may see ...\n"
        "I0000 00:00:17.6 3065 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n"
        "I0000 00:00:17.7 3065 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.\n"
        "E0000 00:00:17.7 3065 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
        "E0000 00:00:17.8 3065 op_kernel.cc:1] Something real went wrong\n"
        "Traceback (most recent call last):\n"
    )
    assert drop_noise(text) == (
        "E0000 00:00:17.8 3065 op_kernel.cc:1] Something real went wrong\n"
        "Traceback (most recent call last):\n"
    )


def test_the_command_is_quiet_unless_verbose(small_png, tmp_path):
    command = [sys.executable, "-m", "dynpatch_command", "visualize", str(small_png),
               "--output", str(tmp_path)]
    quiet = run(command)
    assert noise(quiet.stderr) == [], quiet.stderr
    assert "Wrote 1 pictures" in quiet.stdout
    assert os.listdir(tmp_path) == ["small.png"]
    # With --verbose, what TensorFlow prints on its own comes through.
    plain = run([sys.executable, "-c", "import tensorflow as tf; tf.config.list_logical_devices()"])
    verbose = run([*command, "--verbose"])
    shown = {line.split("]")[-1] for line in noise(verbose.stderr)}
    assert {line.split("]")[-1] for line in noise(plain.stderr)} <= shown


def test_a_log_level_the_user_set_is_kept(small_png, tmp_path):
    command = [sys.executable, "-m", "dynpatch_command", "visualize", str(small_png),
               "--output", str(tmp_path)]
    plain = run([sys.executable, "-c", "import tensorflow as tf; tf.config.list_logical_devices()"],
                TF_CPP_MIN_LOG_LEVEL="0")
    kept = run(command, TF_CPP_MIN_LOG_LEVEL="0")
    shown = {line.split("]")[-1] for line in noise(kept.stderr)}
    assert {line.split("]")[-1] for line in noise(plain.stderr)} <= shown


def test_training_prints_no_tensorflow_log_lines(tmp_path):
    """TensorFlow's C++ log also notes things at the first training step (oneDNN's
    "supports DT_INT32 only on ..."); the quiet command shows none of its lines."""
    command = [sys.executable, "-m", "dynpatch_command", "train", "--needles", "8",
               "--image-size", "64", "--epochs", "1", "--batch-size", "4",
               "--validation-split", "0", "--output", str(tmp_path / "run")]
    result = run(command)
    logged = [line for line in result.stderr.splitlines() if re.match(r"[IWEF]\d{4} ", line)]
    assert logged == [], result.stderr
    assert os.path.exists(tmp_path / "run" / "model.keras")
