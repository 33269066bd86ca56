"""dynpatch_tf: adaptive-resolution image embedding for Keras 3."""

from dynpatch_tf.complexity import ComplexityMap
from dynpatch_tf.patcher import DynamicPatcher

__version__ = "0.1.0"
