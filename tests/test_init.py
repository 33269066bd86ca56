"""Tests for the package import: the declared TensorFlow backend."""

import subprocess
import sys


def test_import_under_another_keras_backend_fails_at_once_and_says_why():
    # Another backend needs its own framework installed; pretend Keras chose JAX.
    code = "import keras; keras.backend.backend = lambda: 'jax'; import dynpatch_tf"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "ImportError: dynpatch_tf runs on Keras' TensorFlow backend only" in result.stderr
    assert "'jax' backend" in result.stderr and "KERAS_BACKEND=tensorflow" in result.stderr
