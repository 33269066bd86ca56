"""Traced inference functions over batches of images.

Calling `model.embed` eagerly runs every op one by one; a `tf.function` traced
once runs the graph. `image_function` traces a function of an image batch with
an input signature of unknown batch size, height and width, so one trace
serves every batch: the command line, the training helpers
(`dynpatch_tf.training.patch_counts`) and the benchmark scripts all trace
through it. It lives in its own module, apart from training, because
inference code (the command's `embed`, the benchmarks) needs it without the
training helpers.

Example:

```python
embed = embed_function(model)
outputs = embed(images)             # float32 [B, H, W, 3] in [0, 1]
outputs["pooled_embedding"]         # [B, D]
```
"""

import tensorflow as tf


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
