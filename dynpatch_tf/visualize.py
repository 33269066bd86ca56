"""Pictures of what a `DynamicPatchModel` does with an image.

`render_patches` puts three panels side by side, each the size of the image:

1. the image with the outline of every quadtree patch, coloured by level
   (`LEVEL_COLOURS`: 64 px red, 32 px yellow, 16 px cyan, 8 px green);
2. the complexity map (|LoG|), scaled so that its 99th percentile is the top
   of the colormap, in an inferno-like colormap (black, purple, red, orange,
   pale yellow);
3. the attention weights as a heat overlay: every patch filled with its
   weight (scaled from the image's lowest weight to its highest) in the same
   colormap, blended with the image.

Drawing is plain NumPy; `save_png` writes the result with `tf.io.encode_png`.
`draw_files` does both for image files, one picture per file.

Example:

```python
model = DynamicPatchModel(num_classes=4)
picture = render_patches(image, model)     # uint8 [H, 3 * W + 2 * gap, 3]
save_png(picture, "patches.png")
written, skipped = draw_files(model, ["photos/"], "pictures/")
```
"""

import os

import numpy as np
import tensorflow as tf

from dynpatch_tf.complexity import ComplexityMap
from dynpatch_tf.image_files import map_image_files

# Outline colour of the patches of each level, RGB: level 0 (64 px) red,
# 1 (32 px) yellow, 2 (16 px) cyan, 3 (8 px) green. Deeper levels (a
# `min_size` below 8) take the last colour.
LEVEL_COLOURS = np.array(
    [[230, 25, 75], [255, 225, 25], [70, 240, 240], [60, 220, 60]], np.uint8
)
# Inferno-like colormap: RGB at evenly spaced points of [0, 1], linearly
# interpolated in between.
COLORMAP_POINTS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
    np.float32,
)
# Percentile of the complexity map shown at the top of the colormap.
COMPLEXITY_PERCENTILE = 99


def render_patches(image, outputs_or_model, complexity=None, gap=8, alpha=0.5):
    """Draws patches, complexity and attention of one image side by side.

    Args:
        image: `[H, W, C]` uint8 (0..255) or float (0..1) image, `C` in {1, 3}.
        outputs_or_model: a `DynamicPatchModel` (its `embed` and
            `complexity` are run on the image), or the dict that
            `model.embed(image[None])` returned. Only `boxes`, `levels` and
            `attention` are read, as RaggedTensors of one row or as the
            arrays of the image's own patches.
        complexity: the image's complexity map, `[H, W]`, `[H, W, 1]` or
            `[1, H, W, 1]`; by default the model's `ComplexityMap`, or
            `ComplexityMap()` (the default sigma) when outputs are given.
        gap: width in pixels of the white gaps between the panels.
        alpha: opacity of the attention heat over the image, in [0, 1].

    Returns:
        uint8 `[H, 3 * W + 2 * gap, 3]`.

    Raises:
        ValueError: for an image of another rank or channel count, outputs
            of several images, or boxes that do not fit in the image.
    """
    image = np.asarray(image)
    rgb = _to_rgb_uint8(image)
    if isinstance(outputs_or_model, dict):
        outputs, complexity_layer = outputs_or_model, ComplexityMap()
    else:
        outputs = outputs_or_model.embed(image[None])
        complexity_layer = outputs_or_model.complexity
    if complexity is None:
        complexity = complexity_layer(image[None])
    boxes = _rows_of_one_image(outputs["boxes"], "boxes")
    _check_boxes(boxes, rgb.shape[:2])
    levels = _rows_of_one_image(outputs["levels"], "levels")
    weights = _rows_of_one_image(outputs["attention"], "attention")
    complexity = np.asarray(complexity, np.float32).reshape(rgb.shape[:2])
    panels = [
        draw_boxes(rgb, boxes, levels),
        apply_colormap(complexity / _positive(np.percentile(complexity, COMPLEXITY_PERCENTILE))),
        attention_overlay(rgb, boxes, weights, alpha),
    ]
    return side_by_side(panels, gap)


def draw_files(model, paths, output, verbose=0):
    """Draws `render_patches` of each image file to `output/<name>.png`.

    Files that cannot be read, images smaller than the model's base patch
    on a side, and images the model fails on are skipped and listed with
    the reason (see `dynpatch_tf.image_files.map_image_files`). A file's
    picture takes its name without the extension: two files of the same
    name in different folders write the same picture.

    Args:
        model: a `DynamicPatchModel`.
        paths: image files, or folders searched recursively.
        output: the folder of the pictures, created when missing.
        verbose: 0 silent, 1 a progress bar, 2 one line at the end.

    Returns:
        `(written, skipped)`: the paths of the pictures written, and a
        `SkippedFile` for each file left out.

    Raises:
        ValueError: when a path does not exist or no image file is found.
    """

    def draw(path, image):
        stem = os.path.splitext(os.path.basename(path))[0]
        picture = os.path.join(output, f"{stem}.png")
        save_png(render_patches(image, model), picture)
        return picture

    results, skipped = map_image_files(draw, paths, model.patcher.base_size, verbose)
    return [picture for _, picture in results], skipped


def draw_boxes(image, boxes, levels):
    """Draws 1 px outlines of `boxes` on a copy of an RGB uint8 image.

    Args:
        image: uint8 `[H, W, 3]`.
        boxes: int `[N, 4]`, `(y0, x0, y1, x1)` half-open, inside the image.
        levels: int `[N]`, each box's quadtree level (`LEVEL_COLOURS`).

    Returns:
        uint8 `[H, W, 3]`.
    """
    canvas = image.copy()
    colours = LEVEL_COLOURS[np.minimum(levels, len(LEVEL_COLOURS) - 1)]
    for (y0, x0, y1, x1), colour in zip(boxes, colours):
        canvas[[y0, y1 - 1], x0:x1] = colour
        canvas[y0:y1, [x0, x1 - 1]] = colour
    return canvas


def attention_overlay(image, boxes, weights, alpha=0.5):
    """Blends a heat map of per-box weights over an RGB uint8 image.

    Weights are scaled from their minimum (colormap bottom) to their maximum
    (top); when all are equal, every box shows the bottom colour.

    Args:
        image: uint8 `[H, W, 3]`.
        boxes: int `[N, 4]`, `(y0, x0, y1, x1)` half-open, tiling the image.
        weights: float `[N]`, one weight per box.
        alpha: opacity of the heat map, in [0, 1].

    Returns:
        uint8 `[H, W, 3]`.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    weights = np.asarray(weights, np.float32)
    low = weights.min()
    scaled = (weights - low) / _positive(weights.max() - low)
    heat = np.zeros(image.shape[:2], np.float32)
    for (y0, x0, y1, x1), value in zip(boxes, scaled):
        heat[y0:y1, x0:x1] = value
    blended = (1 - alpha) * image + alpha * apply_colormap(heat).astype(np.float32)
    return np.round(blended).astype(np.uint8)


def apply_colormap(values):
    """Maps values in [0, 1] (clipped) to RGB uint8 with the inferno-like colormap.

    Args:
        values: float `[...]`.

    Returns:
        uint8 `[..., 3]`.
    """
    positions = np.clip(values, 0, 1) * (len(COLORMAP_POINTS) - 1)
    points = np.arange(len(COLORMAP_POINTS))
    channels = [np.interp(positions, points, COLORMAP_POINTS[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def side_by_side(panels, gap=8):
    """Joins `[H, W_i, 3]` uint8 panels left to right with white gaps of `gap` px."""
    height = panels[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    pieces = [piece for panel in panels for piece in (spacer, panel)][1:]
    return np.concatenate(pieces, axis=1)


def save_png(array, path):
    """Writes a uint8 `[H, W, C]` array (`C` in 1..4) as a PNG file.

    The folder of `path` is created when missing.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or not 1 <= array.shape[-1] <= 4:
        raise ValueError(
            f"A PNG needs a uint8 [height, width, channels] array with 1 to 4 "
            f"channels; got dtype {array.dtype} and shape {array.shape}."
        )
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    tf.io.write_file(path, tf.io.encode_png(array))


def _to_rgb_uint8(image):
    """`[H, W, 1 or 3]` uint8 or float (0..1) image as uint8 `[H, W, 3]`."""
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"`image` must be [height, width, channels] with 1 or 3 channels; "
            f"got shape {image.shape}."
        )
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.repeat(image, 3 // image.shape[-1], axis=-1)


def _rows_of_one_image(value, name):
    """The rows of the single image in `value` as a NumPy array.

    `value` is a RaggedTensor with one row (outputs of a batch of one), or
    already the image's own rows.
    """
    if isinstance(value, tf.RaggedTensor):
        if value.nrows() != 1:
            raise ValueError(
                f"`{name}` holds {int(value.nrows())} images; pass the outputs "
                f"of a batch of one image."
            )
        value = value[0]
    return np.asarray(value)


def _check_boxes(boxes, shape):
    """Raises `ValueError` unless `boxes` `[N, 4]` lie in an image of `shape`."""
    height, width = shape
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"`boxes` must have shape [N, 4], got {boxes.shape}.")
    y0, x0, y1, x1 = boxes.T
    if np.any((y0 < 0) | (x0 < 0) | (y1 > height) | (x1 > width) | (y0 >= y1) | (x0 >= x1)):
        raise ValueError(
            f"`boxes` do not all lie in the {height}x{width} image; were the "
            f"outputs computed for another image?"
        )


def _positive(value):
    """`value`, or 1 when it is not positive (a flat map or equal weights)."""
    return value if value > 0 else 1.0
