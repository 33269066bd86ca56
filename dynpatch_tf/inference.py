"""Inference: traced functions over batches of images, and embedding of image files.

Calling `model.embed` eagerly runs every op one by one; a `tf.function` traced
once runs the graph. `image_function` traces a function of an image batch with
an input signature of unknown batch size, height and width, so one trace
serves every batch: the command line, the training helpers
(`dynpatch_tf.training.patch_counts`) and the benchmark scripts all trace
through it. It lives in its own module, apart from training, because
inference code (the Beam pipeline of `dynpatch embed`, the benchmarks) needs it
without the training helpers. `embed_files` embeds image files one by one
through it in this process, skipping (and reporting) the files it cannot use:
for a few files from Python, without Beam (`dynpatch_tf.beam_embedding`).

Example:

```python
embed = embed_function(model)
outputs = embed(images)             # float32 [B, H, W, 3] in [0, 1]
outputs["pooled_embedding"]         # [B, D]

embedded = embed_files(model, ["photos/"])
embedded.paths, embedded.embeddings  # files used, float32 [n, D]
embedded.skipped                     # [SkippedFile(path, reason), ...]
```
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from dynpatch_tf.image_files import map_image_files


def image_function(function, dtype=tf.float32):
    """`function` traced once for RGB image batches of any size.

    Args:
        function: a function of one `[B, H, W, 3]` tensor.
        dtype: the images' dtype: `tf.float32` (values in [0, 1]) or
            `tf.uint8` (0..255).

    Returns:
        A `tf.function` with the input signature `[None, None, None, 3]`
        of `dtype`: batches of other sizes, heights and widths reuse its
        one trace.

    Example:

    >>> brightness = image_function(lambda images: tf.reduce_mean(images, [1, 2, 3]))
    >>> brightness(tf.ones((2, 64, 96, 3))).numpy()
    array([1., 1.], dtype=float32)
    """
    return tf.function(function, input_signature=[tf.TensorSpec([None, None, None, 3], dtype)])


def embed_function(model, dtype=tf.float32):
    """`model.embed` traced once for RGB image batches of any size.

    Args:
        model: a `DynamicPatchModel`.
        dtype: the images' dtype: `tf.float32` (values in [0, 1]) or
            `tf.uint8` (0..255).

    Returns:
        A `tf.function` returning what `model.embed` returns.

    Example:

    >>> embed = embed_function(model)
    >>> embed(tf.zeros((2, 128, 128, 3)))["boxes"].row_lengths().numpy()
    array([4, 4])
    """
    return image_function(model.embed, dtype)


class EmbeddedFiles(NamedTuple):
    """What `embed_files` made of its files.

    Attributes:
        paths: the files embedded, in the order given.
        num_patches: int64 `[n]`, the patch count of each file's image.
        embeddings: float32 `[n, D]`, each file's `pooled_embedding`.
        skipped: `SkippedFile`s for the files left out, with the reason.
    """

    paths: list
    num_patches: np.ndarray
    embeddings: np.ndarray
    skipped: list


def embed_files(model, paths, verbose=0):
    """Embeds image files one by one; files it cannot use are skipped, not fatal.

    Each image keeps its own size (one traced `embed_function` serves them
    all). A file that cannot be read or decoded, an image smaller than the
    model's base patch on a side, or one the model fails on, is left out
    and listed in `skipped` with the reason (see `map_image_files`).

    Args:
        model: a `DynamicPatchModel`.
        paths: image files, or folders searched recursively
            (`list_image_files`).
        verbose: 0 silent, 1 a progress bar, 2 one line at the end.

    Returns:
        An `EmbeddedFiles`; with no file embedded, `embeddings` is `[0, D]`.

    Raises:
        ValueError: when a path does not exist or no image file is found.

    Example:

    >>> embedded = embed_files(model, ["photos/"])
    >>> embedded.embeddings.shape, embedded.skipped
    ((2, 64), [SkippedFile(path='photos/tiny.png', reason='too small: ...')])
    """
    embed = embed_function(model)

    def embed_one(path, image):
        outputs = embed(image[None])
        return int(outputs["boxes"].row_lengths()[0]), outputs["pooled_embedding"][0].numpy()

    results, skipped = map_image_files(embed_one, paths, model.patcher.base_size, verbose)
    embeddings = [embedding for _, (_, embedding) in results]
    return EmbeddedFiles(
        paths=[path for path, _ in results],
        num_patches=np.array([count for _, (count, _) in results], np.int64),
        embeddings=(np.stack(embeddings) if embeddings
                    else np.zeros((0, model.embedder.embed_dim), np.float32)),
        skipped=skipped,
    )
