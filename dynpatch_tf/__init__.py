"""dynpatch_tf: adaptive-resolution image embedding for Keras 3.

Public names (see docs and each class's docstring):

>>> import dynpatch_tf as dp
>>> cmap = dp.ComplexityMap(sigma=1.0)(images)
>>> patches = dp.DynamicPatcher(token_size=16)(images, cmap)
>>> model = dp.DynamicPatchModel(num_classes=4)
"""

from dynpatch_tf.attention import PatchAttention
from dynpatch_tf.augment import make_augmentation
from dynpatch_tf.complexity import ComplexityMap
from dynpatch_tf.data import ImageFolderInfo, SkippedFile, image_folder_dataset
from dynpatch_tf.embedder import InvertedResidual, PatchEmbedder
from dynpatch_tf.model import DynamicPatchModel
from dynpatch_tf.needles import make_needles, needles_dataset, write_needles_folder
from dynpatch_tf.patcher import DynamicPatcher
from dynpatch_tf.position import PatchPositionEncoding

__version__ = "0.1.0"

__all__ = [
    "ComplexityMap",
    "DynamicPatchModel",
    "DynamicPatcher",
    "ImageFolderInfo",
    "InvertedResidual",
    "PatchAttention",
    "PatchEmbedder",
    "PatchPositionEncoding",
    "SkippedFile",
    "image_folder_dataset",
    "make_augmentation",
    "make_needles",
    "needles_dataset",
    "write_needles_folder",
]
