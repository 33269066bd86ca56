"""dynpatch_tf: adaptive-resolution image embedding for Keras 3.

Public names (see docs and each class's docstring):

>>> import dynpatch_tf as dp
>>> cmap = dp.ComplexityMap(sigma=2.0)(images)
>>> patches = dp.DynamicPatcher(token_size=16)(images, cmap)
>>> model = dp.DynamicPatchModel(num_classes=4)
"""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "dynpatch_tf runs on Keras' TensorFlow backend only (ragged tensors, tf.data, "
        f"SavedModel and TFLite export); Keras is set to the {keras.backend.backend()!r} "
        "backend. Set KERAS_BACKEND=tensorflow (or \"backend\" in ~/.keras/keras.json)."
    )

from dynpatch_tf.attention import PatchAttention  # noqa: E402
from dynpatch_tf.augment import make_augmentation  # noqa: E402
from dynpatch_tf.calibration import Calibration, calibrate_thresholds  # noqa: E402
from dynpatch_tf.complexity import ComplexityMap  # noqa: E402
from dynpatch_tf.data import ImageFolderInfo, SkippedFile, image_folder_dataset  # noqa: E402
from dynpatch_tf.embedder import InvertedResidual, PatchEmbedder  # noqa: E402
from dynpatch_tf.heads import ArcFaceHead, IdentificationEmbedding  # noqa: E402
from dynpatch_tf.losses import ArcFaceLoss, TripletSemiHardLoss  # noqa: E402
from dynpatch_tf.model import DynamicPatchModel  # noqa: E402
from dynpatch_tf.needles import make_needles, needles_dataset, write_needles_folder  # noqa: E402
from dynpatch_tf.parts import default_parts  # noqa: E402
from dynpatch_tf.patch_transformer import PatchTransformerHead  # noqa: E402
from dynpatch_tf.patcher import DynamicPatcher  # noqa: E402
from dynpatch_tf.position import PatchPositionEncoding  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ArcFaceHead",
    "ArcFaceLoss",
    "Calibration",
    "ComplexityMap",
    "DynamicPatchModel",
    "DynamicPatcher",
    "IdentificationEmbedding",
    "ImageFolderInfo",
    "InvertedResidual",
    "PatchAttention",
    "PatchEmbedder",
    "PatchPositionEncoding",
    "PatchTransformerHead",
    "SkippedFile",
    "TripletSemiHardLoss",
    "calibrate_thresholds",
    "image_folder_dataset",
    "make_augmentation",
    "make_needles",
    "needles_dataset",
    "default_parts",
    "write_needles_folder",
]
