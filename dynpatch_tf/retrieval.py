"""Retrieval metrics on a query/gallery split: recall@k and mean average precision.

Open-set identification is scored by retrieval: every query image is compared
with every gallery image by embedding similarity, and a query is answered by
the gallery images ranked by it. The identities of test time need not have
been seen in training.

* recall@k: the fraction of queries with an image of their own identity among
  the k most similar gallery images (the "recall@k" of metric-learning papers,
  also called top-k accuracy or CMC at rank k).
* mAP: the mean over queries of the average precision of the whole ranking,
  with the gallery images of the query's identity as the relevant ones.

Queries without any image of their identity in the gallery have no answer and
are left out of all three (`RetrievalResult.queries` counts those scored).
Ties in similarity are ranked by gallery order. Plain NumPy, over blocks of
queries, so galleries of any size fit in memory.

Example:

```python
queries, gallery = query_gallery_split(labels, seed=0)
result = retrieval_metrics(embeddings[queries], labels[queries],
                           embeddings[gallery], labels[gallery])
result.recall[1], result.recall[5], result.mean_average_precision
```
"""

from typing import NamedTuple

import numpy as np

METRICS = ("cosine", "euclidean")


class RetrievalResult(NamedTuple):
    """What `retrieval_metrics` measured: `recall` maps k to recall@k."""

    recall: dict
    mean_average_precision: float
    queries: int

    def as_dict(self):
        """`{"recall@1": ..., "recall@5": ..., "mAP": ..., "queries": n}`."""
        return {**{f"recall@{k}": value for k, value in self.recall.items()},
                "mAP": self.mean_average_precision, "queries": self.queries}


def similarities(queries, gallery, metric="cosine"):
    """`[Q, G]` similarities: cosine, or minus the Euclidean distance (float64)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    queries, gallery = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    if metric == "cosine":
        unit = lambda rows: rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)  # noqa: E731
        return unit(queries) @ unit(gallery).T
    squares = (np.sum(queries ** 2, 1)[:, None] - 2 * queries @ gallery.T + np.sum(gallery ** 2, 1)[None])
    return -np.sqrt(np.maximum(squares, 0))


def retrieval_metrics(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                      ks=(1, 5), metric="cosine", block=1024):
    """Recall@k for each of `ks` and mAP of the queries against the gallery.

    Args:
        query_embeddings: `[Q, E]`.
        query_labels: `[Q]` identities.
        gallery_embeddings: `[G, E]`.
        gallery_labels: `[G]` identities.
        ks: the ranks of the recalls (a k beyond the gallery is the gallery).
        metric: `"cosine"` or `"euclidean"` (the same ranking for unit-norm
            embeddings).
        block: queries compared at a time (memory: `block x G` floats).

    Returns:
        A `RetrievalResult`.

    Raises:
        ValueError: when no query has its identity in the gallery.

    Example:

    >>> retrieval_metrics(np.eye(3), [0, 1, 2], np.eye(3)[::-1], [2, 1, 0]).as_dict()
    {'recall@1': 1.0, 'recall@5': 1.0, 'mAP': 1.0, 'queries': 3}
    """
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    hits = {k: 0 for k in ks}
    precisions = []
    for start in range(0, len(query_labels), block):
        scores = similarities(query_embeddings[start:start + block], gallery_embeddings, metric)
        order = np.argsort(-scores, axis=1, kind="stable")
        relevant = gallery_labels[order] == query_labels[start:start + block, None]
        answered = relevant.any(axis=1)
        relevant = relevant[answered]
        for k in ks:
            hits[k] += int(relevant[:, :k].any(axis=1).sum())
        found = np.cumsum(relevant, axis=1)
        ranks = np.arange(1, relevant.shape[1] + 1)
        precisions.append((found / ranks * relevant).sum(axis=1) / relevant.sum(axis=1))
    precisions = np.concatenate(precisions) if precisions else np.zeros(0)
    if not len(precisions):
        raise ValueError("no query has an image of its identity in the gallery.")
    count = len(precisions)
    return RetrievalResult({k: hits[k] / count for k in ks}, float(precisions.mean()), count)


def query_gallery_split(labels, queries_per_identity=1, seed=0):
    """Indices of a query/gallery split: a few images of each identity are queries.

    Of each identity with more than `queries_per_identity` images,
    `queries_per_identity` random ones become queries and the rest gallery;
    identities with fewer images go wholly to the gallery (distractors).

    Args:
        labels: `[N]` identities.
        queries_per_identity: queries taken from each identity.
        seed: the seed of the choice.

    Returns:
        `(query_indices, gallery_indices)`, sorted int arrays.

    Example:

    >>> query_gallery_split([0, 0, 1, 1, 1, 2])
    (array([1, 3]), array([0, 2, 4, 5]))
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    queries = []
    for identity in np.unique(labels):
        members = np.flatnonzero(labels == identity)
        if len(members) > queries_per_identity:
            queries += list(rng.choice(members, queries_per_identity, replace=False))
    queries = np.sort(np.array(queries, dtype=np.int64))
    return queries, np.setdiff1d(np.arange(len(labels)), queries)


def embed_for_retrieval(model, dataset):
    """A `DynamicPatchModel`'s `retrieval_embedding` of every image of a dataset.

    Args:
        model: a `DynamicPatchModel`.
        dataset: `(images, labels)` batches (a `tf.data.Dataset` or a list),
            images float32 `[B, H, W, 3]` in 0..1 or uint8.

    Returns:
        `(embeddings [N, E] float32, labels [N], patches per image [N])`.
    """
    import tensorflow as tf  # only here: the metrics above are plain NumPy

    from dynpatch_tf.inference import embed_function

    embed = {}  # one trace per image dtype
    embeddings, labels, counts = [], [], []
    for images, batch_labels in dataset:
        images = tf.convert_to_tensor(images)
        if images.dtype not in embed:
            embed[images.dtype] = embed_function(model, images.dtype)
        outputs = embed[images.dtype](images)
        embeddings.append(model.retrieval_embedding(outputs).numpy())
        labels.append(np.asarray(batch_labels))
        counts.append(outputs["boxes"].row_lengths().numpy())
    return np.concatenate(embeddings), np.concatenate(labels), np.concatenate(counts)


def identification_scores(model, dataset, queries_per_identity=1, seed=0, ks=(1, 5)):
    """Recall@k and mAP of `model` on a dataset of identities, split by `query_gallery_split`.

    Returns:
        `(RetrievalResult, patches per image [N])`.

    Example:

    >>> result, counts = identification_scores(model, [(test_images, test_labels)])
    >>> result.recall[1], result.mean_average_precision, counts.mean()
    """
    embeddings, labels, counts = embed_for_retrieval(model, dataset)
    queries, gallery = query_gallery_split(labels, queries_per_identity, seed)
    result = retrieval_metrics(embeddings[queries], labels[queries], embeddings[gallery], labels[gallery], ks)
    return result, counts
