"""dynpatch_tf.search (FAISS) against brute force, and `dynpatch embed --index` / `dynpatch search`."""

import re

import keras
import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
import tensorflow as tf

from dynpatch_tf import DynamicPatchModel
from dynpatch_tf.beam_embedding import EMBEDDINGS_SCHEMA
from dynpatch_tf.needle_identities import make_identities
from dynpatch_tf.needles import NEEDLES_SIGMA, NEEDLES_THRESHOLDS
from dynpatch_tf.search import SearchIndex
from tests.cli_testing import run_main


def brute_force(queries, embeddings, k):
    """Row indices of the k largest cosine similarities, by NumPy."""
    unit = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)  # noqa: E731
    scores = unit(queries) @ unit(embeddings).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def saved_model(tmp_path, **head):
    """An untrained tiny identification model (needles settings), saved as tmp_path/model.keras."""
    keras.utils.set_random_seed(0)
    model = DynamicPatchModel(identity_dim=8, token_size=8, embed_dim=8, width_multiplier=0.25,
                              attention_filters=(4,), thresholds=NEEDLES_THRESHOLDS, sigma=NEEDLES_SIGMA, **head)
    model.build((None, None, None, 3))
    model.save(tmp_path / "model.keras")
    return model


def test_exact_index_answers_as_brute_force_and_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    embeddings, queries = rng.normal(size=(300, 12)) * rng.uniform(0.5, 3, (300, 1)), rng.normal(size=(7, 12))
    paths = [f"image_{i}.png" for i in range(300)]
    index = SearchIndex.build(embeddings, paths, model_path="m.keras")
    order, scores = brute_force(queries, embeddings, 5)
    loaded = SearchIndex.load(index.save(str(tmp_path / "index")))
    assert loaded.model_path == "m.keras" and loaded.factory == "Flat"
    for answers, rows, near in zip(loaded.search(queries, k=5), order, scores):
        assert [path for path, _ in answers] == [paths[row] for row in rows]
        np.testing.assert_allclose([score for _, score in answers], near, rtol=1e-5)
    assert len(index.search(queries[:1], k=1000)[0]) == 300  # k beyond the index


def test_approximate_factories_find_each_indexed_vector_itself():
    embeddings = np.random.default_rng(1).normal(size=(500, 16))
    for factory in ("HNSW16", "IVF8,Flat"):
        index = SearchIndex.build(embeddings, [str(i) for i in range(500)], factory=factory)
        first = [answers[0][0] for answers in index.search(embeddings[:50], k=3)]
        assert np.mean([found == str(i) for i, found in enumerate(first)]) >= 0.9, factory
    with pytest.raises(ValueError, match="FAISS cannot make an index"):
        SearchIndex.build(embeddings, [str(i) for i in range(500)], factory="NoSuchIndex")
    with pytest.raises(ValueError, match="dimensions"):
        index.search(np.ones((1, 3)))


def test_index_of_an_embed_output_reads_its_parquet_rows(tmp_path):
    rng = np.random.default_rng(2)
    rows = [{"path": f"p{i}.png", "height": 64, "width": 64, "num_patches": 1,
             "embedding": rng.normal(size=6).astype(np.float32).tolist()} for i in range(20)]
    (tmp_path / "embeddings").mkdir()
    for part in range(2):  # two part files, as Beam writes them
        table = pyarrow.Table.from_pylist(rows[part::2], schema=EMBEDDINGS_SCHEMA)
        pyarrow.parquet.write_table(table, tmp_path / "embeddings" / f"part-{part}.parquet")
    index = SearchIndex.from_embeddings_output(str(tmp_path))
    assert index.paths == sorted(row["path"] for row in rows)
    embeddings = np.array([row["embedding"] for row in rows])
    order, _ = brute_force(embeddings[3:4], embeddings, 4)
    assert [path for path, _ in index.search(embeddings[3], k=4)[0]] == [rows[row]["path"] for row in order[0]]


def test_embed_index_and_search_commands_answer_as_brute_force(tmp_path):
    model = saved_model(tmp_path, head_type="identification")
    images, _ = make_identities(4, 2, image_size=96, seed=3)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [str(folder / f"{i}.png") for i in range(len(images))]
    for path, image in zip(paths, images):
        tf.io.write_file(path, tf.io.encode_png(image))
    index = tmp_path / "index"
    status, log = run_main(["embed", str(folder), "--model", str(tmp_path / "model.keras"),
                            "--output", str(tmp_path / "embedded"), "--index", str(index)])
    assert status == 0 and f"Indexed 8 images in {index} (FAISS Flat)." in log
    status, log = run_main(["search", "--index", str(index), "--query", paths[5], "-k", "3"])
    assert status == 0 and log.startswith(f"QUERY {paths[5]}\n")
    embeddings = model.retrieval_embedding(model.embed(images.astype(np.float32) / 255)).numpy()
    similarity = dict(zip(paths, embeddings @ embeddings[5]))
    answers = [(path, float(score)) for _, score, path in re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)$", log, re.M)]
    # The brute-force top 3 (its similarities: the ranking up to ties), each answer's own similarity.
    top = sorted(similarity.values(), reverse=True)[:3]
    np.testing.assert_allclose([score for _, score in answers], top, atol=1e-3)
    np.testing.assert_allclose([score for _, score in answers], [similarity[path] for path, _ in answers], atol=1e-3)
    assert top[0] - top[-1] > 2e-3  # not all equal: the ranking means something
    status, _ = run_main(["search", "--index", str(tmp_path), "--query", paths[0]])
    assert status == 1


def test_evaluate_identification_prints_the_retrieval_scores_of_a_folder_of_identities(tmp_path):
    from dynpatch_tf.retrieval import query_gallery_split, retrieval_metrics

    model = saved_model(tmp_path, num_classes=3, head_type="arcface")
    images, labels = make_identities(5, 3, image_size=64, seed=4)
    for row, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "people" / f"id{label}").mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(tmp_path / "people" / f"id{label}" / f"{row:02d}.png"), tf.io.encode_png(image))
    status, log = run_main(["evaluate", "--task", "identification", "--model", str(tmp_path / "model.keras"),
                            "--data", str(tmp_path / "people"), "--seed", "2"])
    assert status == 0
    embeddings = model.retrieval_embedding(model.embed(images)).numpy()
    queries, gallery = query_gallery_split(labels, 1, seed=2)
    expected = retrieval_metrics(embeddings[queries], labels[queries], embeddings[gallery], labels[gallery])
    assert "identities: 5, queries: 5, gallery: 10" in log
    assert f"recall@1: {expected.recall[1]:.4f}" in log and f"mAP: {expected.mean_average_precision:.4f}" in log
    status, _ = run_main(["evaluate", "--task", "identification", "--model", str(tmp_path / "model.keras"),
                          "--needles", "8"])
    assert status == 1
