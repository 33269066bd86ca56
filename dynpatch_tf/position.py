"""PatchPositionEncoding: where a patch lies and how large it is, as an embedding."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="dynpatch_tf")
class PatchPositionEncoding(keras.layers.Layer):
    """A learned encoding of each patch's box, added to its embedding.

    The box `(y0, x0, y1, x1)` becomes the features `(centre y, centre x, height,
    width)`, each divided by the image's height or width (so 0..1 whatever the
    image size), and a Dense layer maps them to `dim` values.

    Args:
        dim: size of the encoding (the embedding size it is added to).
        **kwargs: base `Layer` arguments.

    Call arguments:
        boxes: `[n, 4]` int boxes in input pixels.
        image_size: `[2]` int tensor, the image's `(height, width)`.

    Output shape:
        `[n, dim]`.

    Example:

    >>> encode = PatchPositionEncoding(8)
    >>> encode(tf.constant([[0, 0, 64, 64]]), tf.constant([128, 256])).shape
    TensorShape([1, 8])
    """

    def __init__(self, dim, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.project = keras.layers.Dense(dim, dtype=self.dtype_policy, name="project")

    def build(self, boxes_shape=None, image_size_shape=None):
        self.project.build((None, 4))

    def call(self, boxes, image_size):
        boxes = tf.cast(boxes, tf.float32)
        size = tf.cast(tf.tile(image_size, [2]), tf.float32)
        starts, ends = boxes[:, :2], boxes[:, 2:]
        features = tf.concat([(starts + ends) / 2.0, ends - starts], axis=1) / size
        return self.project(tf.cast(features, self.compute_dtype))

    def compute_output_shape(self, boxes_shape, image_size_shape=None):
        return (boxes_shape[0], self.dim)

    def get_config(self):
        config = super().get_config()
        config.update({"dim": self.dim})
        return config
