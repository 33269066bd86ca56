"""Image files: finding, reading and checking them one by one.

The single-file side of the library, shared by the folder pipeline
(`dynpatch_tf.data`) and the command line: which files count as images
(`IMAGE_EXTENSIONS`, `list_image_files`), how a file is decoded
(`read_image`), how a file that cannot be used is reported (`SkippedFile`,
`clean_op_message`, `too_small_reason`), and the offline sample photos of
scikit-image (`sample_photo`).

Example:

```python
paths = list_image_files(["photos/", "extra.jpg"])
image = read_image(paths[0])      # float32 [H, W, 3] in [0, 1]
```
"""

import os
import re
from typing import NamedTuple

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


class SkippedFile(NamedTuple):
    """A file left out: its path and why."""

    path: str
    reason: str


def list_image_files(inputs):
    """The image files among `inputs` and under the folders in it.

    Args:
        inputs: paths of files, taken as they are, and of folders, searched
            recursively for files ending in one of `IMAGE_EXTENSIONS` (in
            any case), sorted by path.

    Returns:
        The list of file paths, in the order of `inputs`.

    Raises:
        ValueError: for a path that is neither a file nor a folder, or when
            no file is found.

    Example:

    >>> list_image_files(["photos/", "extra.jpg"])
    ['photos/a.png', 'photos/sub/b.jpg', 'extra.jpg']
    """
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(root, file)
                for root, _, files in os.walk(item)
                for file in files
                if file.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise ValueError(f"{item!r} is neither a file nor a folder.")
    if not paths:
        raise ValueError(f"no image files in {', '.join(inputs)}.")
    return paths


def read_image(path, dtype=tf.float32):
    """Reads a JPEG, PNG, BMP or GIF file as an RGB image.

    Grayscale is repeated to 3 channels, alpha is dropped and an animated
    GIF gives its first frame. Works eagerly and inside `tf.data` or
    `tf.function` graphs.

    Args:
        path: the file's path, a string or a string tensor.
        dtype: `tf.float32` for values in [0, 1], or `tf.uint8` for 0..255.

    Returns:
        A `[H, W, 3]` tensor of `dtype`.

    Raises:
        tf.errors.OpError: when the file cannot be read or decoded (eagerly;
            in a graph, when it runs).

    Example:

    >>> image = read_image("photo.png")
    >>> image.shape, image.dtype
    (TensorShape([480, 640, 3]), tf.float32)
    """
    return tf.io.decode_image(
        tf.io.read_file(path), channels=3, expand_animations=False, dtype=dtype
    )


def sample_photo(name, channels=3):
    """A photograph that ships with scikit-image, e.g. `"astronaut"`.

    Nothing is downloaded: the photos of `skimage.data` that come with the
    package (`astronaut`, `camera`, `coffee`, `rocket`, `retina`, ...) work
    offline. scikit-image is an optional dependency (`pip install
    "dynpatch_tf[demo]"`).

    Args:
        name: the name of a function of `skimage.data` returning an image.
        channels: 3 for RGB (grayscale repeated, alpha dropped), or None to
            keep the photo as shipped, grayscale as `[H, W, 1]`.

    Returns:
        uint8 `[H, W, channels]` NumPy array.

    Raises:
        ImportError: when scikit-image is not installed.
        ValueError: when `skimage.data` has no image of that name.

    Example:

    >>> sample_photo("coffee").shape
    (400, 600, 3)
    >>> sample_photo("camera", channels=None).shape
    (512, 512, 1)
    """
    if channels not in (3, None):
        raise ValueError(f"`channels` must be 3 or None, got {channels!r}.")
    try:
        import skimage.data
    except ImportError:
        raise ImportError(
            'sample photos need scikit-image: pip install "dynpatch_tf[demo]"'
        ) from None
    # `download_all` is a function of skimage.data too, but not a photo.
    load = getattr(skimage.data, name, None) if name != "download_all" else None
    if name not in skimage.data.__all__ or not callable(load):
        raise ValueError(f"scikit-image has no sample photo {name!r}.")
    photo = np.asarray(load())
    if photo.dtype != np.uint8 or photo.ndim not in (2, 3):
        raise ValueError(
            f"skimage.data.{name} is not a uint8 photo: dtype {photo.dtype}, "
            f"shape {photo.shape}."
        )
    if photo.ndim == 2:
        photo = photo[..., None]
    if channels is None:
        return photo
    return np.repeat(photo, 3, axis=-1) if photo.shape[-1] == 1 else photo[..., :3]


def clean_op_message(message):
    """Drops TF's `{{function_node ...}}` prefix and `[Op:...] name: ...` suffix."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    return re.sub(r"\s*\[Op:\w+\].*$", "", message, flags=re.DOTALL)


def too_small_reason(size, min_side):
    """Why an image of `size` `(height, width)` is left out for being below `min_side`."""
    height, width = size
    return f"too small: {height}x{width} px (height x width), minimum {min_side} px per side"

