import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from dynpatch_tf import DynamicPatchModel, PatchTransformerHead
from dynpatch_tf.export import export_saved_model, export_tflite
from tests.conftest import TWO_BLOCKS

TINY = dict(token_size=8, embed_dim=16, width_multiplier=0.35, attention_filters=(8, 16), embedder_blocks=TWO_BLOCKS)


def ragged(values, lengths):
    return tf.RaggedTensor.from_row_lengths(tf.constant(values, tf.float32), lengths)


def test_an_image_logits_do_not_depend_on_other_images_or_padding():
    rng = np.random.default_rng(0)
    head = PatchTransformerHead(num_classes=4, num_layers=2)
    alone = rng.normal(size=(3, 8))
    batch = ragged(np.concatenate([alone, rng.normal(size=(7, 8))]), [3, 7])
    # The first image padded to 7 patches next to the second must score as it does alone.
    np.testing.assert_allclose(head(batch).numpy()[0], head(ragged(alone, [3])).numpy()[0],
                               rtol=1e-5, atol=1e-5)


def test_patches_talk_to_each_other():
    # Unlike a mean of independent embeddings, moving one patch changes how the
    # class token sees another: the logits are not a sum over patches.
    rng = np.random.default_rng(1)
    head = PatchTransformerHead(num_classes=2)
    a, b = rng.normal(size=(1, 8)), rng.normal(size=(1, 8))
    pair = head(ragged(np.concatenate([a, b]), [2])).numpy()[0]
    single_a = head(ragged(a, [1])).numpy()[0]
    single_b = head(ragged(b, [1])).numpy()[0]
    empty = head(ragged(np.zeros((0, 8)), [0])).numpy()[0]
    assert not np.allclose(pair - empty, (single_a - empty) + (single_b - empty), atol=1e-4)


def test_model_with_the_transformer_head_trains_saves_and_loads(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.random((4, 128, 128, 3)).astype("float32")
    labels = np.array([0, 1, 0, 1])
    model = DynamicPatchModel(num_classes=2, head_type="transformer", thresholds=(0.002,) * 3, **TINY)
    assert isinstance(model.head, PatchTransformerHead)
    model.compile()
    history = model.fit(images, labels, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5)
    assert loaded(images).shape == (4, 2)


def test_head_type_is_checked():
    with pytest.raises(ValueError, match="head_type must be one of"):
        DynamicPatchModel(num_classes=2, head_type="vit", **TINY)


def test_the_transformer_head_exports_to_savedmodel_and_litert(tmp_path):
    model = DynamicPatchModel(num_classes=3, head_type="transformer", thresholds=(0.002,) * 3, **TINY)
    images = np.random.default_rng(3).random((1, 128, 128, 3)).astype("float32")
    expected = model(images).numpy()
    served = tf.saved_model.load(export_saved_model(model, str(tmp_path / "serving")))
    logits = served.signatures["serving_default"](images=tf.constant(images))["logits"]
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-4, atol=1e-4)
    path = export_tflite(model, str(tmp_path / "model.tflite"), image_size=(128, 128))
    runner = Interpreter(model_path=path).get_signature_runner()
    np.testing.assert_allclose(runner(images=images)["logits"], expected, rtol=1e-3, atol=1e-3)
