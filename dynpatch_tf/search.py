"""Nearest-neighbour search over embedded images, served by FAISS.

`dynpatch embed ... --index I` builds an index from the job's Parquet output
(`SearchIndex.from_embeddings_output`), and `dynpatch search --index I
--query IMG -k 5` answers from it. Images are compared by cosine similarity:
the embeddings are L2-normalised and FAISS searches by inner product (for an
identification model they are unit-norm already).

Why FAISS: it is maintained (Meta), ships CPU wheels (`faiss-cpu`, the
`search` extra) for current Pythons, has exact search (`"Flat"`, the default)
and every approximate index behind one `index_factory` string (`"HNSW32"`,
`"IVF1024,Flat"`, `"IVF1024,PQ16"`, ...), and saves an index to one file.
ScaNN, the TensorFlow ecosystem's choice, does not run beside TensorFlow 2.21:
its newest wheel (1.4.2) installs, but `import scann` loads a TensorFlow op
library built for TensorFlow 2.20 (its `tf` extra pins `tensorflow~=2.20.0`)
and fails with an undefined Abseil symbol whenever TensorFlow 2.21 is present.

An index is a folder: `index.faiss` (the FAISS index) and `index.json` (the
image paths in index order, the model that embedded them, the factory string).

Example:

```python
index = SearchIndex.build(embeddings, paths, model_path="saved_models/dynpatch/1")
index.save("photos.index")
SearchIndex.load("photos.index").search(query_embeddings, k=5)   # [[(path, score), ...], ...]
```
"""

import json
import os

import numpy as np

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
DEFAULT_FACTORY = "Flat"


def _faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(f'search needs FAISS: pip install "dynpatch_tf[search]" ({error})') from None
    return faiss


def normalized(embeddings):
    """float32 `[N, E]` rows of norm 1 (zero rows stay zero), C-contiguous for FAISS."""
    embeddings = np.asarray(embeddings, np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.ascontiguousarray(embeddings / np.maximum(norms, 1e-12))


class SearchIndex:
    """A FAISS inner-product index over normalised embeddings, with each row's image path.

    Args:
        index: a `faiss.Index` with metric inner product.
        paths: the path of each indexed row, in order.
        model_path: the model that embedded them (queries must use the same).
        factory: the `faiss.index_factory` string the index was made from.
    """

    def __init__(self, index, paths, model_path=None, factory=DEFAULT_FACTORY):
        if index.ntotal != len(paths):
            raise ValueError(f"the index holds {index.ntotal} vectors but {len(paths)} paths were given.")
        self.index, self.paths = index, list(paths)
        self.model_path, self.factory = model_path, factory

    @classmethod
    def build(cls, embeddings, paths, model_path=None, factory=DEFAULT_FACTORY):
        """Indexes `embeddings` `[N, E]` of the images `paths`.

        Args:
            embeddings: `[N, E]` floats; normalised here.
            paths: `N` image paths.
            model_path: recorded for `dynpatch search`.
            factory: a `faiss.index_factory` description: `"Flat"` (exact),
                `"HNSW32"`, `"IVF64,Flat"`, ... Indexes that need training
                (IVF, PQ) are trained on `embeddings`.

        Raises:
            ValueError: for no embeddings, or a factory string FAISS refuses.
        """
        faiss = _faiss()
        vectors = normalized(embeddings)
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError(f"nothing to index: embeddings of shape {vectors.shape}.")
        try:
            index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise ValueError(f"FAISS cannot make an index {factory!r}: {str(error).splitlines()[0]}") from None
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        return cls(index, paths, model_path, factory)

    @classmethod
    def from_embeddings_output(cls, output, model_path=None, factory=DEFAULT_FACTORY):
        """The index of a `dynpatch embed` output folder (its `embeddings/*.parquet`)."""
        import pyarrow.parquet

        table = pyarrow.parquet.read_table(os.path.join(output, "embeddings"), columns=["path", "embedding"])
        rows = sorted(zip(table.column("path").to_pylist(), table.column("embedding").to_pylist()))
        if not rows:
            raise ValueError(f"no embeddings in {output!r} to index.")
        return cls.build(np.array([embedding for _, embedding in rows]), [path for path, _ in rows],
                         model_path, factory)

    def search(self, queries, k=5):
        """The `k` most similar indexed images of each query.

        Args:
            queries: `[Q, E]` embeddings from the same model.
            k: answers per query (at most the index's size).

        Returns:
            A list per query of `(path, cosine similarity)`, most similar first.
        """
        queries = normalized(np.atleast_2d(queries))
        if queries.shape[1] != self.index.d:
            raise ValueError(f"queries have {queries.shape[1]} dimensions, the index {self.index.d}: "
                             "embed them with the model that built it.")
        scores, rows = self.index.search(queries, min(k, self.index.ntotal))
        return [[(self.paths[row], float(score)) for row, score in zip(found, near) if row >= 0]
                for found, near in zip(rows, scores)]

    def save(self, folder):
        """Writes `folder/index.faiss` and `folder/index.json`; returns `folder`."""
        os.makedirs(folder, exist_ok=True)
        _faiss().write_index(self.index, os.path.join(folder, INDEX_FILE))
        with open(os.path.join(folder, META_FILE), "w") as file:
            json.dump({"model": self.model_path, "factory": self.factory, "dimension": self.index.d,
                       "paths": self.paths}, file, indent=1)
        return folder

    @classmethod
    def load(cls, folder):
        """The index `save` wrote to `folder`.

        Raises:
            ValueError: when `folder` holds no index.
        """
        if not os.path.isfile(os.path.join(folder, META_FILE)):
            raise ValueError(f"{folder!r} holds no index ({META_FILE}); write one with dynpatch embed --index.")
        with open(os.path.join(folder, META_FILE)) as file:
            meta = json.load(file)
        index = _faiss().read_index(os.path.join(folder, INDEX_FILE))
        return cls(index, meta["paths"], meta["model"], meta["factory"])
