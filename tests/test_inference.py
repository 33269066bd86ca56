"""Tests of dynpatch_tf.inference: traced embedding and embedding of image files."""

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf import DynamicPatchModel, make_needles
from dynpatch_tf.inference import embed_files, embed_function
from dynpatch_tf.needles import NEEDLES_SIGMA

EMBED_DIM = 16


@pytest.fixture(scope="module")
def model():
    """An untrained tiny model whose thresholds split needles objects down to 8 px."""
    return DynamicPatchModel(num_classes=2, thresholds=(0.001, 0.002, 0.004), sigma=NEEDLES_SIGMA,
                             token_size=8, embed_dim=EMBED_DIM, width_multiplier=0.25,
                             attention_filters=(4,))


def test_embed_function_traces_once_for_every_size(model):
    model.embed(tf.zeros((1, 64, 64, 3)))  # built first: a trace that creates variables runs twice
    embed = embed_function(model)
    for shape in ((2, 64, 64, 3), (1, 128, 192, 3)):
        images = tf.random.stateless_uniform(shape, seed=(1, 2))
        outputs, expected = embed(images), model.embed(images)
        np.testing.assert_allclose(outputs["pooled_embedding"], expected["pooled_embedding"],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(outputs["boxes"].row_lengths(), expected["boxes"].row_lengths())
    assert embed.experimental_get_tracing_count() == 1


def test_embed_files_embeds_the_readable_files_and_skips_the_others(model, tmp_path):
    wide, _ = make_needles(1, image_size=(128, 192), num_classes=2, seed=7)
    square, _ = make_needles(1, image_size=(64, 64), num_classes=2, seed=8)
    for name, image in (("a_wide.png", wide[0]), ("b_square.png", square[0]),
                        ("small.png", wide[0][:32, :48])):
        tf.io.write_file(str(tmp_path / name), tf.io.encode_png(image))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")

    embedded = embed_files(model, [str(tmp_path)])

    assert embedded.paths == [str(tmp_path / "a_wide.png"), str(tmp_path / "b_square.png")]
    reasons = dict(embedded.skipped)
    assert set(reasons) == {str(tmp_path / "corrupt.png"), str(tmp_path / "small.png")}
    assert reasons[str(tmp_path / "small.png")].startswith("too small: 32x48 px")
    assert "[Op:" not in reasons[str(tmp_path / "corrupt.png")]
    assert embedded.embeddings.shape == (2, EMBED_DIM) and embedded.embeddings.dtype == np.float32
    for row, image in enumerate((wide, square)):
        expected = model.embed(image.astype(np.float32) / 255)
        np.testing.assert_allclose(embedded.embeddings[row], expected["pooled_embedding"][0],
                                   rtol=1e-4, atol=1e-5)
        assert embedded.num_patches[row] == int(expected["boxes"].row_lengths()[0])
    assert embedded.num_patches[0] > (128 // 64) * (192 // 64), "the needles objects are split"


def test_embed_files_with_nothing_usable_returns_empty_arrays(model, tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"nothing")
    embedded = embed_files(model, [str(tmp_path / "corrupt.png")])
    assert embedded.paths == [] and len(embedded.skipped) == 1
    assert embedded.embeddings.shape == (0, EMBED_DIM) and embedded.num_patches.shape == (0,)
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        embed_files(model, [str(tmp_path / "missing.png")])
