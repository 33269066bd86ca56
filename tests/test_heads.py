"""The identification heads inside a DynamicPatchModel: defaults, outputs, saving, export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf import ArcFaceHead, ArcFaceLoss, DynamicPatchModel, TripletSemiHardLoss
from dynpatch_tf.beam_embedding import embed_or_explain, load_embedder, row_embedding
from dynpatch_tf.export import export_saved_model
from tests.test_model import TINY

IMAGES = np.random.default_rng(0).uniform(size=(4, 64, 64, 3)).astype("float32")
LABELS = np.array([0, 0, 1, 1], np.int32)


def model_with(head_type, **kwargs):
    keras.utils.set_random_seed(0)
    return DynamicPatchModel(head_type=head_type, identity_dim=6, **TINY, **kwargs)


@pytest.fixture(scope="module")
def arcface():
    """An ArcFace model after one step of `compile()`'s defaults (eager: a step is cheaper than
    its trace)."""
    model = model_with("arcface", num_classes=3)
    model.compile(run_eagerly=True)
    model.fit(IMAGES, LABELS, epochs=1, verbose=0)
    return model


def test_identification_head_gives_unit_vectors_and_compile_picks_the_triplet_loss():
    model = model_with("identification")
    model.compile(run_eagerly=True)
    assert isinstance(model.loss, TripletSemiHardLoss)
    embeddings = model(IMAGES).numpy()
    assert embeddings.shape == (4, 6)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.retrieval_embedding(model.embed(IMAGES)), embeddings, atol=1e-6)
    before = [weight.numpy().copy() for weight in model.head.trainable_weights]
    history = model.fit(IMAGES, LABELS, epochs=1, verbose=0).history
    assert set(history) == {"loss", "patches", "penalty"} and np.isfinite(history["loss"]).all()
    assert any(np.abs(w.numpy() - b).max() > 0 for w, b in zip(model.head.trainable_weights, before))


def test_arcface_head_gives_cosines_to_the_class_weights(arcface):
    assert isinstance(arcface.loss, ArcFaceLoss) and arcface.loss.margin == 0.5
    assert "accuracy" in arcface.get_metrics_result()
    embedded = arcface.embed(IMAGES)
    identity = arcface.retrieval_embedding(embedded).numpy()
    weights = arcface.head.class_weights.numpy()
    expected = identity @ (weights / np.linalg.norm(weights, axis=0))
    np.testing.assert_allclose(arcface(IMAGES), expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(identity, axis=1), 1.0, atol=1e-5)


def test_identification_models_save_load_and_export(arcface, tmp_path):
    path = tmp_path / "arcface.keras"
    arcface.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded.head, ArcFaceHead) and isinstance(loaded.loss, ArcFaceLoss)
    np.testing.assert_allclose(loaded(IMAGES), arcface(IMAGES), atol=1e-6)
    exported = export_saved_model(arcface, str(tmp_path / "saved"), "arcface")
    outputs = tf.saved_model.load(exported).signatures["serving_default"](images=tf.constant(IMAGES))
    assert "identity_embedding" in outputs and "logits" not in outputs
    expected = arcface.retrieval_embedding(arcface.embed(IMAGES))
    np.testing.assert_allclose(outputs["identity_embedding"], expected, atol=1e-5)
    # What `dynpatch embed` writes as the `embedding` column of the SavedModel's rows.
    (row,) = embed_or_explain(load_embedder(exported), [IMAGES[1]])
    np.testing.assert_allclose(row_embedding(row), expected[1], atol=1e-5)


def test_head_type_arguments_are_checked():
    with pytest.raises(ValueError, match="learns no classes"):
        DynamicPatchModel(head_type="identification", num_classes=3)
    assert DynamicPatchModel(head_type="arcface").head is None  # no identities, no head
    with pytest.raises(ValueError, match="identity_dim"):
        DynamicPatchModel(head=ArcFaceHead(3), identity_dim=8)
