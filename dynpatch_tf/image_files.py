"""Image files: finding, reading and checking them one by one.

The single-file side of the library, shared by the folder pipeline
(`dynpatch_tf.data`), the per-file loops (`dynpatch_tf.inference.embed_files`,
`dynpatch_tf.visualize.draw_files`) and the command line: which files count
as images (`IMAGE_EXTENSIONS`, `list_image_files`), how a file is decoded
(`read_image`, `decode_image`), the loop that uses each file and reports those it cannot
(`map_image_files`, `SkippedFile`, `clean_op_message`, `too_small_reason`),
and the offline sample photos of scikit-image (`sample_photo`).

Example:

```python
paths = list_image_files(["photos/", "extra.jpg"])
image = read_image(paths[0])      # float32 [H, W, 3] in [0, 1]
results, skipped = map_image_files(lambda path, image: image.shape[:2], paths, min_side=64)
results   # [("photos/a.png", TensorShape([480, 640])), ...]
skipped   # [SkippedFile(path="photos/b.jpg", reason="too small: 40x100 px ...")]
```
"""

import os
import re
from typing import NamedTuple

import keras
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
    """Reads a JPEG, PNG, BMP or GIF file as an RGB image (see `decode_image`).

    Works eagerly and inside `tf.data` or `tf.function` graphs.

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
    return decode_image(tf.io.read_file(path), dtype)


def decode_image(data, dtype=tf.float32):
    """Decodes the bytes of a JPEG, PNG, BMP or GIF file as an RGB image.

    Grayscale is repeated to 3 channels, alpha is dropped and an animated
    GIF gives its first frame; the format is read from the bytes, not from a
    file name.

    Args:
        data: the encoded bytes, a string or a string tensor.
        dtype: `tf.float32` for values in [0, 1], or `tf.uint8` for 0..255.

    Returns:
        A `[H, W, 3]` tensor of `dtype`.

    Raises:
        tf.errors.OpError: when the bytes cannot be decoded (eagerly; in a
            graph, when it runs).

    Example:

    >>> decode_image(tf.io.encode_png(tf.zeros([2, 3, 1], tf.uint8))).shape
    TensorShape([2, 3, 3])
    """
    return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=dtype)


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
    """The reason in a TensorFlow op error's message, without TF's decorations.

    Drops the `{{function_node ...}}` prefix and `[Op:...] name: ...` suffix
    of eager errors; of a graph's error, the "Detected at node ..." traceback
    of where the op was defined and the `[[{{node ...}}]]` suffix; of a failed
    assertion, all but its message.
    """
    message = re.sub(r"^Graph execution error:\s*", "", message)
    if message.startswith("Detected at node"):
        message = "\n".join(line for line in message.splitlines()[1:] if line.strip()
                            and not line.startswith("  File ") and line != "<stack traces unavailable>")
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*(\[Op:\w+\]|\[\[\{\{node ).*$", "", message, flags=re.DOTALL)
    assertion = re.match(r"assertion failed: \[(.*?)\]", message)
    return assertion.group(1).strip() if assertion else message


def too_small_reason(size, min_side):
    """Why an image of `size` `(height, width)` is left out for being below `min_side`."""
    height, width = size
    return f"too small: {height}x{width} px (height x width), minimum {min_side} px per side"



def map_image_files(function, paths, min_side=1, verbose=0):
    """Calls `function(path, image)` for each image file; skips the files it cannot use.

    Each file is read with `read_image`: float32 `[H, W, 3]` in [0, 1]. A
    file that cannot be read or decoded, an image smaller than `min_side` on
    a side, and one that `function` raises a `ValueError` or
    `tf.errors.OpError` on are not fatal: they are listed, with the reason,
    in `skipped`, and the loop goes on. Other exceptions propagate.

    Args:
        function: called with each file's path and image; what it returns is
            kept.
        paths: image files, or folders searched recursively
            (`list_image_files`).
        min_side: the smallest height and width an image may have.
        verbose: `keras.utils.Progbar`'s: 0 silent, 1 a progress bar, 2 one
            line at the end.

    Returns:
        `(results, skipped)`: `(path, function(path, image))` for each file
        used, in the order of `paths`, and a `SkippedFile` for each file left
        out.

    Raises:
        ValueError: from `list_image_files`, when a path does not exist or
            no file is found.
    """
    paths = list_image_files(paths)
    progress = keras.utils.Progbar(len(paths), verbose=verbose, unit_name="image")
    results, skipped = [], []
    for path in paths:
        try:
            image = read_image(path)
            if min(image.shape[:2]) < min_side:
                raise ValueError(too_small_reason(image.shape[:2], min_side))
            results.append((path, function(path, image)))
        except (ValueError, tf.errors.OpError) as error:
            reason = clean_op_message(error.message) if isinstance(error, tf.errors.OpError) else str(error)
            skipped.append(SkippedFile(path, reason))
        progress.add(1)
    return results, skipped
