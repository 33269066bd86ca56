"""dynpatch_tf.retrieval against brute force: each query's ranking written out by hand."""

import numpy as np
import pytest

from dynpatch_tf.retrieval import query_gallery_split, retrieval_metrics


def brute_force(queries, query_labels, gallery, gallery_labels, ks, metric):
    """Recall@k and mAP with a loop per query and a loop per rank."""
    recalls, precisions = {k: [] for k in ks}, []
    for embedding, label in zip(queries, query_labels):
        scores = []
        for index, other in enumerate(gallery):
            if metric == "cosine":
                score = embedding @ other / np.linalg.norm(embedding) / np.linalg.norm(other)
            else:
                score = -np.linalg.norm(embedding - other)
            scores.append((-score, index))  # ties: gallery order
        ranking = [gallery_labels[index] == label for _, index in sorted(scores)]
        if not any(ranking):
            continue
        for k in ks:
            recalls[k].append(any(ranking[:k]))
        hits, total = 0, 0.0
        for rank, relevant in enumerate(ranking, 1):
            if relevant:
                hits += 1
                total += hits / rank
        precisions.append(total / hits)
    return {k: np.mean(values) for k, values in recalls.items()}, np.mean(precisions), len(precisions)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_metrics_match_brute_force(seed, metric):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 12, 90)
    centres = rng.normal(size=(12, 8))
    embeddings = centres[labels] + rng.normal(scale=1.2, size=(90, 8))  # neither perfect nor chance
    queries, gallery = query_gallery_split(labels, queries_per_identity=2, seed=seed)
    result = retrieval_metrics(embeddings[queries], labels[queries], embeddings[gallery], labels[gallery],
                               ks=(1, 5, 10), metric=metric, block=7)  # several blocks
    recall, mean_ap, count = brute_force(embeddings[queries], labels[queries], embeddings[gallery],
                                         labels[gallery], (1, 5, 10), metric)
    assert result.queries == count == len(queries)
    for k in (1, 5, 10):
        assert result.recall[k] == pytest.approx(recall[k])
    assert result.mean_average_precision == pytest.approx(mean_ap)
    assert 0.1 < result.recall[1] < 0.95 and result.recall[1] <= result.recall[5] <= result.recall[10]


def test_queries_without_their_identity_in_the_gallery_are_left_out():
    gallery = np.eye(4)
    result = retrieval_metrics(np.eye(4)[[0, 1]] + 0.1, [0, 7], gallery, [0, 1, 2, 3], ks=(1,))
    assert result.as_dict() == {"recall@1": 1.0, "mAP": 1.0, "queries": 1}
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(np.eye(4)[:1], [9], gallery, [0, 1, 2, 3])


def test_ties_rank_by_gallery_order():
    gallery = np.ones((3, 2))  # all equally similar: the relevant one sits at rank 3
    result = retrieval_metrics(np.ones((1, 2)), [5], gallery, [1, 2, 5], ks=(1, 2, 3))
    assert result.recall == {1: 0.0, 2: 0.0, 3: 1.0}
    assert result.mean_average_precision == pytest.approx(1 / 3)


def test_split_takes_queries_per_identity_and_keeps_singletons_in_the_gallery():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    queries, gallery = query_gallery_split(labels, queries_per_identity=2, seed=1)
    assert sorted(np.bincount(labels[queries], minlength=4)) == [0, 0, 2, 2]  # identities 0 and 3
    assert np.array_equal(np.sort(np.r_[queries, gallery]), np.arange(10))
    assert 5 in gallery and not set(labels[queries]) - {0, 3}
    assert np.array_equal(query_gallery_split(labels, 2, seed=1)[0], queries)  # seeded
