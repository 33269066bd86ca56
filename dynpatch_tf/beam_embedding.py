"""Batch embedding of image files on Apache Beam: what `dynpatch embed` runs.

The pipeline (`EmbedImageFiles`, then `WriteEmbeddings`):

    file patterns -> MatchAll -> ReadMatches
      -> DecodeImageFile: (path, float32 image [H, W, 3] in 0..1), or an error
      -> RunInference(KeyedModelHandler(DynamicPatchModelHandler(model)))
      -> ToRecord: {path, height, width, num_patches, embedding}, or an error
      -> Parquet: OUTPUT/embeddings/part-*.parquet, OUTPUT/errors/part-*.parquet

A file that cannot be decoded, or an image the model refuses (too small, NaN,
...), becomes a row `{path, error}` of the error output; the job goes on. The
`embedding` is the pooled embedding, or for a model whose head identifies
(`dynpatch_tf.heads`) its unit-norm identification embedding.

The model is an exported SavedModel (a version folder written by
`dynpatch_tf.export.export_saved_model`, run through its `serving_default`
signature: no Keras on the workers) or a `.keras` file (`model.embed`, traced
once). Beam's TensorFlow handlers (`TFModelHandlerNumpy/Tensor`) load models
with `tf.keras.models.load_model`, which in Keras 3 reads `.keras` files only
(not SavedModels), and stack each batch into one tensor, which needs one image
size per batch; `DynamicPatchModelHandler` takes any sizes (one model call per
size in a batch) and turns a failing image into an error row instead of failing
its whole batch.

The runner is any Beam runner with its pipeline options (Flink, Spark,
Dataflow, ...). `DEFAULT_RUNNER` is Beam's in-process `FnApiRunner`: since
Beam 2.68 the name `DirectRunner` first tries the Prism runner, whose binary
it downloads from GitHub.

Example:

```python
job = run_embedding_job(["photos/"], "saved_models/dynpatch/1", "embedded/")
job.embedded, job.failed          # counts of rows written to each output
pyarrow.parquet.read_table("embedded/embeddings")   # path, height, width, num_patches, embedding
```
"""

import os
from collections import defaultdict
from typing import NamedTuple

import apache_beam as beam
import keras
import numpy as np
import pyarrow
import pyarrow.parquet
import tensorflow as tf
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from dynpatch_tf.export import IMAGES_INPUT, IMAGES_SIGNATURE
from dynpatch_tf.heads import identifies
from dynpatch_tf.image_files import IMAGE_EXTENSIONS, SkippedFile, clean_op_message, list_image_files
from dynpatch_tf.image_headers import decode_image
from dynpatch_tf.inference import image_function

DEFAULT_RUNNER = "FnApiRunner"
METRICS_NAMESPACE = "dynpatch_embed"
EMBEDDINGS_SCHEMA = pyarrow.schema([
    ("path", pyarrow.string()), ("height", pyarrow.int32()), ("width", pyarrow.int32()),
    ("num_patches", pyarrow.int32()), ("embedding", pyarrow.list_(pyarrow.float32())),
])
EMBEDDER_OUTPUTS = ("pooled_embedding", "identity_embedding", "num_patches")
ERRORS_SCHEMA = pyarrow.schema([("path", pyarrow.string()), ("error", pyarrow.string())])


def check_model_path(model_path):
    """`"saved_model"` or `"keras"`: the kind of model at `model_path`.

    Raises:
        ValueError: for a path that is neither a SavedModel folder (with
            `saved_model.pb`) nor a `.keras` file.
    """
    if tf.io.gfile.exists(os.path.join(model_path, "saved_model.pb")):
        return "saved_model"
    if model_path.endswith(".keras") and tf.io.gfile.exists(model_path):
        return "keras"
    raise ValueError(f"{model_path!r} is neither a SavedModel folder (with saved_model.pb, "
                     "e.g. saved_models/dynpatch/1) nor a .keras file.")


def load_embedder(model_path):
    """A function of float32 images `[B, H, W, 3]` in 0..1 -> `pooled_embedding`, `num_patches`
    (and `identity_embedding` for a model whose head identifies, `dynpatch_tf.heads`).

    Args:
        model_path: a SavedModel version folder (with `saved_model.pb`) or a
            `.keras` file.

    Returns:
        The function; its results are NumPy arrays `[B, D]` and `[B]`.

    Raises:
        ValueError: from `check_model_path`.
    """
    if check_model_path(model_path) == "saved_model":
        loaded = tf.saved_model.load(model_path)

        def embed(images):  # through `loaded`, which owns the variables the signature reads
            return loaded.signatures[IMAGES_SIGNATURE](**{IMAGES_INPUT: images})
    else:
        model = keras.models.load_model(model_path)

        @image_function
        def embed(images):
            outputs = model.embed(images)
            result = {"pooled_embedding": outputs["pooled_embedding"],
                      "num_patches": outputs["boxes"].row_lengths()}
            if identifies(model.head):
                result["identity_embedding"] = model.retrieval_embedding(outputs)
            return result

    def embed_arrays(images):
        outputs = embed(tf.constant(images))
        return {name: outputs[name].numpy() for name in EMBEDDER_OUTPUTS if name in outputs}

    return embed_arrays


class DynamicPatchModelHandler(ModelHandler):
    """RunInference's `ModelHandler` for a `DynamicPatchModel`, for images of any size.

    Each batch is split by image size, one model call per size; when a call
    fails, its images are run one by one, so that only the failing image gets
    an error.

    Args:
        model_path: a SavedModel version folder or a `.keras` file (see
            `load_embedder`).
        max_batch_size: the most images RunInference puts in one batch.

    Input: float32 images `[H, W, 3]` in 0..1.

    Output: a `PredictionResult` per image whose `inference` is
    `{"pooled_embedding": [D], "num_patches": int}` (and `"identity_embedding"`
    for an identification model) or `{"error": reason}`.

    Example:

    >>> images | RunInference(DynamicPatchModelHandler("saved_models/dynpatch/1"))
    """

    def __init__(self, model_path, max_batch_size=8):
        super().__init__(max_batch_size=max_batch_size)
        self.model_path = model_path

    def load_model(self):
        return load_embedder(self.model_path)

    def run_inference(self, batch, model, inference_args=None):
        inferences = [None] * len(batch)
        sizes = defaultdict(list)
        for index, image in enumerate(batch):
            sizes[image.shape].append(index)
        for indices in sizes.values():
            for index, inference in zip(indices, embed_or_explain(model, [batch[i] for i in indices])):
                inferences[index] = inference
        return [PredictionResult(image, inference) for image, inference in zip(batch, inferences)]

    def get_num_bytes(self, batch):
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self):
        return METRICS_NAMESPACE


def embed_or_explain(embed, images):
    """`embed` on equal-sized `images`: a dict per image, `{"error": reason}` for a failure."""
    try:
        outputs = embed(np.stack(images))
    except (tf.errors.OpError, ValueError) as error:
        if len(images) > 1:  # find the image that fails
            return [result for image in images for result in embed_or_explain(embed, [image])]
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        return [{"error": clean_op_message(message)}]
    return [{name: value[row] for name, value in outputs.items()} for row in range(len(images))]


def error_row(path, reason):
    """A row of the error output, counted in the `failed` metric."""
    Metrics.counter(METRICS_NAMESPACE, "failed").inc()
    return beam.pvalue.TaggedOutput("errors", {"path": path, "error": reason})


class DecodeImageFile(beam.DoFn):
    """A matched file -> `(path, float32 image [H, W, 3] in 0..1)`, or an error row."""

    def process(self, file):
        path = file.metadata.path
        try:
            yield path, decode_image(file.read(), tf.float32).numpy()
        except tf.errors.OpError as error:
            yield error_row(path, clean_op_message(error.message))


class ToRecord(beam.DoFn):
    """`(path, PredictionResult)` -> an embeddings row, or an error row; counts them."""

    def process(self, keyed):
        path, result = keyed
        if "error" in result.inference:
            yield error_row(path, result.inference["error"])
            return
        Metrics.counter(METRICS_NAMESPACE, "embedded").inc()
        height, width = result.example.shape[:2]
        yield {"path": path, "height": height, "width": width,
               "num_patches": int(result.inference["num_patches"]),
               "embedding": row_embedding(result.inference).astype(np.float32).tolist()}


def row_embedding(inference):
    """The `embedding` column of a row: the identification embedding of a model whose
    head identifies, else the pooled embedding (what `dynpatch search` compares)."""
    return inference.get("identity_embedding", inference["pooled_embedding"])


class EmbedImageFiles(beam.PTransform):
    """File patterns -> `{"embeddings": rows, "errors": rows}` (see the module docstring).

    Args:
        model_path: a SavedModel version folder or a `.keras` file.
        max_batch_size: the most images per model call.

    Example:

    >>> outputs = pipeline | beam.Create(["photos/**.jpg"]) | EmbedImageFiles("model.keras")
    >>> outputs["embeddings"], outputs["errors"]
    """

    def __init__(self, model_path, max_batch_size=8):
        super().__init__()
        self.handler = DynamicPatchModelHandler(model_path, max_batch_size)

    def expand(self, patterns):
        images = (patterns | "Match" >> fileio.MatchAll() | "Read" >> fileio.ReadMatches()
                  | "Decode" >> beam.ParDo(DecodeImageFile()).with_outputs("errors", main="images"))
        records = (images.images | "Embed" >> RunInference(KeyedModelHandler(self.handler))
                   | "Rows" >> beam.ParDo(ToRecord()).with_outputs("errors", main="embeddings"))
        errors = (images.errors, records.errors) | "Errors" >> beam.Flatten()
        return {"embeddings": records.embeddings, "errors": errors}


class WriteEmbeddings(beam.PTransform):
    """`EmbedImageFiles`' outputs -> Parquet files under `output/embeddings` and `output/errors`."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def expand(self, outputs):
        for name, schema in (("embeddings", EMBEDDINGS_SCHEMA), ("errors", ERRORS_SCHEMA)):
            outputs[name] | f"Write {name}" >> beam.io.WriteToParquet(
                os.path.join(self.output, name, "part"), schema, file_name_suffix=".parquet")
        return beam.pvalue.PDone(outputs["embeddings"].pipeline)


def file_patterns(inputs):
    """Beam file patterns for image files, folders and patterns.

    A folder (a local one, or any path ending in `/`) gives one recursive
    pattern per image extension (`IMAGE_EXTENSIONS`, in any case); anything
    else is a file or a pattern (`*`, `**`, `?`, `[...]`) taken as it is.

    Raises:
        ValueError: for a local path without a wildcard that does not exist,
            or a local folder with no image files.
    """
    patterns = []
    for item in inputs:
        if os.path.isdir(item) or item.endswith("/"):
            if os.path.isdir(item):
                list_image_files([item])  # a local folder with no image files is named now
            folder = item.rstrip("/") + "/"
            patterns += [folder + "**." + "".join(f"[{c.lower()}{c.upper()}]" for c in extension[1:])
                         for extension in IMAGE_EXTENSIONS]
        elif "://" in item or any(c in item for c in "*?[") or os.path.exists(item):
            patterns.append(item)
        else:
            raise ValueError(f"{item!r} is neither a file, a folder nor a file pattern.")
    return patterns


class EmbeddingJob(NamedTuple):
    """What `run_embedding_job` did: the rows written to each output (Beam's counters)."""

    embedded: int
    failed: int


def run_embedding_job(inputs, model_path, output, runner=DEFAULT_RUNNER, pipeline_args=(),
                      max_batch_size=8):
    """Embeds image files on Beam and writes the embeddings and the errors as Parquet.

    Args:
        inputs: image files, folders (searched recursively for
            `IMAGE_EXTENSIONS`) and file patterns, local or on any file
            system Beam reads (`gs://`, `s3://`, ...).
        model_path: a SavedModel version folder or a `.keras` file.
        output: the folder of `embeddings/` and `errors/`.
        runner: the Beam runner's name.
        pipeline_args: further Beam pipeline options, e.g.
            `["--project=p", "--region=r", "--temp_location=gs://b/tmp"]`.
        max_batch_size: the most images per model call.

    Returns:
        An `EmbeddingJob`, once the job has finished.

    Raises:
        ValueError: from `file_patterns` and `check_model_path`, before the
            job starts.
    """
    patterns = file_patterns(inputs)
    check_model_path(model_path)
    options = PipelineOptions(list(pipeline_args), runner=runner)
    pipeline = beam.Pipeline(options=options)
    _ = (pipeline | "Patterns" >> beam.Create(patterns)
         | "Embed files" >> EmbedImageFiles(model_path, max_batch_size)
         | "Write" >> WriteEmbeddings(output))
    result = pipeline.run()
    result.wait_until_finish()
    return EmbeddingJob(*(_counter(result, name) for name in ("embedded", "failed")))


def _counter(result, name):
    counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE)
                                      .with_name(name))["counters"]
    return sum(counter.committed for counter in counters) if counters else 0


def read_errors(output):
    """The error rows a job wrote under a local `output`: `SkippedFile`s, sorted by path."""
    rows = pyarrow.parquet.read_table(os.path.join(output, "errors")).to_pylist()
    return sorted(SkippedFile(row["path"], row["error"]) for row in rows)
