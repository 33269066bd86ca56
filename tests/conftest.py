import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dynpatch_tf.image_files import sample_photo  # noqa: E402

# An embedder of two inverted-residual blocks (`embedder_blocks=`) for tests that
# need a model, not the default 8 blocks: the same code paths, half the tracing.
TWO_BLOCKS = ((1, 16, 1, 1), (None, 24, 1, 2))


def photo(name):
    """A real photograph that ships with scikit-image, as uint8 [H, W, C]."""
    return sample_photo(name, channels=None)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def mixed_bfloat16():
    """The global dtype policy mixed_bfloat16 for one test, and the previous one after it."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy(previous)
