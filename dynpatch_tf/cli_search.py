"""The identification parts of the `dynpatch` command: search, indexes, open-set evaluation.

* `dynpatch embed ... --index I` builds a FAISS index (`dynpatch_tf.search`)
  from the job's Parquet output, once the job is done;
* `dynpatch search --index I --query IMG -k 5` embeds the query images with the
  index's model and prints the nearest indexed images;
* `dynpatch evaluate --task identification` prints recall@1, recall@5 and mAP
  on a query/gallery split (`dynpatch_tf.retrieval`) of a folder of identities
  (one subfolder each) or of generated needle identities.

`cli_parser` makes the subparsers and lets the `add_*` functions here add
their arguments; `cli` runs the functions below and reports their
`ValueError`s as command errors.

Examples:

```bash
dynpatch embed photos/ --model saved_models/dynpatch/1 --output embedded/ --index photos.index
dynpatch search --index photos.index --query query.jpg -k 5
dynpatch evaluate --task identification --model run/model.keras --data people/
dynpatch evaluate --task identification --model run/model.keras --identities 50 --seed 7
```
"""

import numpy as np
import tensorflow as tf

from dynpatch_tf.search import DEFAULT_FACTORY, SearchIndex

TASKS = ("classification", "identification")
SEARCH_HELP = "find the indexed images nearest to query images"
SEARCH_DESCRIPTION = (
    "Embed each query image with the model that built the index (or --model) and print "
    "its K nearest indexed images by cosine similarity, most similar first: rank, "
    "similarity, path. Build an index with `dynpatch embed ... --index DIR`.")


def add_index_arguments(parser):
    """`embed`'s `--index` and `--index-factory`."""
    parser.add_argument("--index", metavar="DIR",
                        help="after the job, build a FAISS index of the embeddings in DIR for "
                        "`dynpatch search` (needs the search extra; reads OUTPUT's Parquet "
                        "files back, so OUTPUT must be local or readable by pyarrow)")
    parser.add_argument("--index-factory", default=DEFAULT_FACTORY, metavar="SPEC",
                        help="FAISS index_factory string: Flat (exact), HNSW32, IVF256,Flat, ...")


def add_search_arguments(parser):
    """The arguments of `search` (`cli_parser` makes its subparser)."""
    parser.add_argument("--index", required=True, metavar="DIR", help="an index of `dynpatch embed --index`")
    parser.add_argument("--query", required=True, nargs="+", metavar="IMG", help="query image files")
    parser.add_argument("-k", type=int, default=5, help="answers per query")
    parser.add_argument("--model", metavar="PATH",
                        help="the model to embed the queries with (default: the one that built the index)")


def add_task_arguments(parser, source):
    """`evaluate`'s `--task` and its identification options; `--identities` joins the
    mutually exclusive `source` group of `--data` and `--needles`."""
    parser.add_argument("--task", choices=TASKS, default="classification",
                        help="classification: accuracy on class folders or needles; identification: "
                        "recall@1, recall@5 and mAP on a query/gallery split of identities (DATA's "
                        "subfolders, or --identities)")
    source.add_argument("--identities", type=int, metavar="N",
                        help="identification: generate N needle identities (dynpatch_tf.needle_identities; "
                        "other --seed values give other identities)")
    parser.add_argument("--images-per-identity", type=int, default=4,
                        help="--identities: images of each identity")
    parser.add_argument("--queries-per-identity", type=int, default=1,
                        help="identification: query images of each identity; the rest are the gallery")


def write_index(args):
    """`embed --index`: the index of the job's output, saved; returns it."""
    index = SearchIndex.from_embeddings_output(args.output, args.model, args.index_factory)
    index.save(args.index)
    print(f"Indexed {len(index.paths)} images in {args.index} (FAISS {index.factory}).")
    return index


def search(args):
    """`search`: prints the `-k` nearest indexed images of every query."""
    from dynpatch_tf.beam_embedding import embed_or_explain, load_embedder, row_embedding
    from dynpatch_tf.image_headers import decode_image

    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}.")
    index = SearchIndex.load(args.index)
    model_path = args.model or index.model_path
    if not model_path:
        raise ValueError("the index names no model: give --model.")
    embed = load_embedder(model_path)
    for path in args.query:
        try:
            image = decode_image(tf.io.read_file(path), tf.float32).numpy()
        except (tf.errors.OpError, OSError) as error:
            raise ValueError(f"cannot read the query {path!r}: {getattr(error, 'message', error)}") from None
        (inference,) = embed_or_explain(embed, [image])
        if "error" in inference:
            raise ValueError(f"cannot embed the query {path!r}: {inference['error']}")
        print(f"QUERY {path}")
        for rank, (found, score) in enumerate(index.search(row_embedding(inference)[None], args.k)[0], 1):
            print(f"{rank:>4} {score:8.4f}  {found}")


def identification_data(args):
    """`(dataset, identity count)` of `evaluate --task identification`'s data."""
    from dynpatch_tf.needle_identities import make_identities
    from dynpatch_tf.training import folder_datasets

    if args.needles is not None:
        raise ValueError("--needles are classes; identification takes --identities N or --data DIR.")
    if args.identities is not None:
        if args.identities < 2 or args.images_per_identity <= args.queries_per_identity:
            raise ValueError("--identities needs at least 2 identities, with more --images-per-identity "
                             "than --queries-per-identity.")
        images, labels = make_identities(args.identities, args.images_per_identity,
                                         args.image_size or 128, seed=args.seed)
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch_size)
        return data, args.identities
    image_size = (args.image_size, args.image_size) if args.image_size else None
    data, _, names = folder_datasets(args.data, args.batch_size, image_size, args.seed, shuffle=False)
    return data, len(names)


def evaluate_identification(model, data, identities, args):
    """`evaluate --task identification`: prints recall@1, recall@5, mAP and patch counts."""
    from dynpatch_tf.retrieval import identification_scores
    from dynpatch_tf.training import describe_counts

    if args.queries_per_identity < 1:
        raise ValueError(f"--queries-per-identity must be at least 1, got {args.queries_per_identity}.")
    result, counts = identification_scores(model, data, args.queries_per_identity, args.seed)
    print(f"identities: {identities}, queries: {result.queries}, gallery: {len(counts) - result.queries}")
    for k, value in result.recall.items():
        print(f"recall@{k}: {value:.4f}")
    print(f"mAP: {result.mean_average_precision:.4f}")
    print(f"patches per image: {describe_counts(np.asarray(counts))}")
