import keras
import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf import DynamicPatchModel
from tests.conftest import photo

TINY = dict(token_size=8, embed_dim=16, width_multiplier=0.35, attention_filters=(8, 16))
LOW_THRESHOLDS = (0.005, 0.005, 0.005)


def stripes_task(count, size=128, seed=0):
    """Smooth backgrounds; the class is only the orientation of one 12 px striped square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = np.empty((count, size, size, 3), np.float32)
    labels = np.arange(count, dtype=np.int32) % 2
    stripes = (np.arange(12) // 2 % 2)[:, None] * np.ones((1, 12))
    for index, label in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi, 2)
        background = rng.uniform(0.3, 0.7) + 0.15 * (
            np.sin(2 * np.pi * xx * rng.uniform(0.5, 1.5) + phase[0])
            + np.cos(2 * np.pi * yy * rng.uniform(0.5, 1.5) + phase[1])
        )
        y0, x0 = rng.integers(4, size - 16, 2)
        background[y0 : y0 + 12, x0 : x0 + 12] = 0.1 + 0.8 * (stripes if label else stripes.T)
        images[index] = background[..., None]
    return images, labels


def compiled(learning_rate=3e-3, **kwargs):
    keras.utils.set_random_seed(0)
    model = DynamicPatchModel(num_classes=2, **{**TINY, **kwargs})
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="module")
def trained():
    """A tiny model fitted on the stripes task with tf.data, penalty 0."""
    images, labels = stripes_task(128, seed=1)
    model = compiled(thresholds=LOW_THRESHOLDS)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(128, seed=0).batch(8)
    history = model.fit(data, epochs=4, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    return model, history.history


def test_fit_learns_a_small_detail(trained):
    model, _ = trained
    images, labels = stripes_task(64, seed=2)
    loss, accuracy = model.evaluate(images, labels, verbose=0)[:2]
    assert accuracy >= 0.85  # chance is 0.5
    predicted = model.predict(images, batch_size=16, verbose=0).argmax(axis=1)
    assert (predicted == labels).mean() >= 0.85


def test_fit_logs_penalty_and_patches_and_without_penalty_patches_do_not_fall(trained):
    _, history = trained
    assert {"loss", "accuracy", "penalty", "patches"} <= set(history)
    assert history["penalty"] == [0.0] * 4
    assert history["patches"][-1] >= 0.9 * history["patches"][0]


def test_high_penalty_lowers_patch_counts():
    images, labels = stripes_task(64, seed=3)
    model = compiled(learning_rate=1e-2, thresholds=LOW_THRESHOLDS, penalty_weight=20.0)
    before = np.array(LOW_THRESHOLDS)
    history = model.fit(images, labels, batch_size=8, epochs=3, verbose=0).history
    assert history["patches"][-1] <= 0.7 * history["patches"][0]
    assert history["penalty"][-1] < history["penalty"][0]
    assert (model.thresholds.numpy() > before).all()


def test_gradients_reach_attention_embedder_and_thresholds():
    images, labels = stripes_task(4, seed=4)
    model = compiled(thresholds=LOW_THRESHOLDS, temperature=0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape(persistent=True) as tape:
        loss = loss_fn(labels, model(images, training=True))
    groups = {
        "attention": model.attention.trainable_weights,
        "embedder": model.embedder.trainable_weights,
        "thresholds": model.patcher.trainable_weights,
    }
    for name, weights in groups.items():
        grads = tape.gradient(loss, weights)
        assert all(g is not None for g in grads), name
        values = np.concatenate([g.numpy().ravel() for g in grads])
        assert np.isfinite(values).all() and np.abs(values).sum() > 0, name


def test_save_and_load_give_the_same_outputs(trained, tmp_path):
    model, _ = trained
    images = stripes_task(6, seed=5)[0]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode is on by default
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    np.testing.assert_allclose(
        loaded.embed(images)["pooled_embedding"], model.embed(images)["pooled_embedding"], atol=1e-6
    )
    np.testing.assert_allclose(loaded.thresholds, model.thresholds, atol=0)
    # The optimizer state comes back too, so training can go on.
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) > 0


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_chunk_size_changes_nothing_at_inference(trained, chunk_size):
    model, _ = trained
    images = stripes_task(4, seed=6)[0]
    other = DynamicPatchModel.from_config({**model.get_config(), "chunk_size": chunk_size})
    other.build(images.shape)
    other.set_weights(model.get_weights())
    expected, out = model.embed(images), other.embed(images)
    assert int(out["boxes"].values.shape[0]) > 7 * 4  # several chunks per image
    for key in ("patch_embeddings", "attention"):
        np.testing.assert_allclose(out[key].values, expected[key].values, atol=1e-5)
    np.testing.assert_allclose(
        other.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5
    )


def test_embed_structure_and_attention_ranges():
    image = photo("astronaut")[None, :192, :256]
    model = DynamicPatchModel(num_classes=3, **TINY)
    out = model.embed(np.concatenate([image, image[:, ::-1]]))
    counts = out["boxes"].row_lengths().numpy()
    assert out["patch_embeddings"].row_lengths().numpy().tolist() == counts.tolist()
    assert out["global_embedding"].row_lengths().numpy().tolist() == (counts * 16).tolist()
    np.testing.assert_array_equal(
        out["global_embedding"][0].numpy(), out["patch_embeddings"][0].numpy().ravel()
    )
    weights = out["attention"].flat_values.numpy()
    assert ((weights > 0) & (weights < 1)).all()
    assert out["pooled_embedding"].shape == (2, 16)

    softmax = DynamicPatchModel(num_classes=3, attention="softmax", **TINY)
    sums = tf.reduce_sum(softmax.embed(image)["attention"], axis=1).numpy()
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_pooled_embedding_is_the_attention_weighted_mean():
    model = DynamicPatchModel(num_classes=2, position_encoding=False, **TINY)
    out = model.embed(photo("camera")[None, :128, :128])
    weights = out["attention"][0].numpy()
    embeddings = out["patch_embeddings"][0].numpy()
    expected = (embeddings * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(out["pooled_embedding"][0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_batches_of_different_sizes_across_steps():
    def batches():
        for size in (128, 192, 128, 64):
            images, labels = stripes_task(2, size=max(size, 64), seed=size)
            yield images, labels

    spec = (tf.TensorSpec([None, None, None, 3], tf.float32), tf.TensorSpec([None], tf.int32))
    data = tf.data.Dataset.from_generator(batches, output_signature=spec)
    model = compiled()
    history = model.fit(data, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_mixed_bfloat16_policy_trains_on_cpu():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = compiled()
        images, labels = stripes_task(4, seed=6)
        history = model.fit(images, labels, batch_size=4, epochs=1, verbose=0).history
        logits = model(images)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.embedder.compute_dtype == "bfloat16"
    assert logits.dtype == tf.float32 and np.isfinite(history["loss"]).all()


def test_config_round_trip():
    model = DynamicPatchModel(
        num_classes=5, rule="budget", budget=7, penalty_weight=0.5, chunk_size=99, **TINY
    )
    clone = DynamicPatchModel.from_config(model.get_config())
    assert clone.get_config() == model.get_config()


def test_too_small_images_are_named_inside_tf_function():
    model = DynamicPatchModel(num_classes=2, **TINY)
    embed = tf.function(
        lambda x: model.embed(x)["pooled_embedding"],
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 64"):
        embed(np.zeros((1, 32, 40, 3), "float32"))


def test_images_are_checked_once_by_the_model():
    images = np.zeros((1, 64, 64, 3), "float32")
    images[0, 3, 4, 1] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        DynamicPatchModel(num_classes=2, **TINY)(images)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        DynamicPatchModel(num_classes=2, **TINY)(np.zeros((1, 64, 64, 4), "float32"))
    # validate=False skips the value checks: NaN goes through.
    unchecked = DynamicPatchModel(num_classes=2, validate=False, **TINY)
    assert np.isnan(unchecked(images).numpy()).all()
    uint8 = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        unchecked(uint8).numpy(), unchecked(uint8.astype("float32") / 255.0).numpy(), atol=1e-6
    )
