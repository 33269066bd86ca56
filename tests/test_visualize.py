import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf import ComplexityMap, DynamicPatchModel, make_needles
from dynpatch_tf.needles import NEEDLES_SIGMA
from dynpatch_tf.visualize import (
    COLORMAP_POINTS,
    COMPLEXITY_PERCENTILE,
    LEVEL_COLOURS,
    apply_colormap,
    attention_overlay,
    draw_boxes,
    draw_files,
    render_patches,
    save_png,
)
from tests.conftest import photo

GAP = 8


@pytest.fixture(scope="module")
def model():
    """An untrained tiny model whose thresholds split needles objects down to 8 px."""
    return DynamicPatchModel(num_classes=2, thresholds=(0.001, 0.002, 0.004), sigma=NEEDLES_SIGMA,
                             token_size=8, embed_dim=16, width_multiplier=0.25,
                             attention_filters=(4,))


@pytest.fixture(scope="module")
def needles_image():
    images, _ = make_needles(1, image_size=(128, 192), seed=3)
    return images[0]


def outline_mask(boxes, shape):
    """True on the 1 px outline of every box."""
    mask = np.zeros(shape, bool)
    for y0, x0, y1, x1 in boxes:
        mask[[y0, y1 - 1], x0:x1] = True
        mask[y0:y1, [x0, x1 - 1]] = True
    return mask


def panels(picture, width):
    """The three panels of a `render_patches` picture, and its two gaps."""
    step = width + GAP
    return ([picture[:, i * step:i * step + width] for i in range(3)],
            [picture[:, i * step - GAP:i * step] for i in (1, 2)])


def test_render_patches_draws_three_panels(model, needles_image):
    picture = render_patches(needles_image, model, gap=GAP)
    height, width, _ = needles_image.shape
    assert picture.dtype == np.uint8
    assert picture.shape == (height, 3 * width + 2 * GAP, 3)
    (boxes_panel, complexity_panel, attention_panel), gaps = panels(picture, width)
    for gap in gaps:
        assert np.all(gap == 255)

    outputs = model.embed(needles_image[None])
    boxes = outputs["boxes"][0].numpy()
    levels = outputs["levels"][0].numpy()
    assert len(set(levels)) > 1, "the needles image should mix patch sizes"
    outline = outline_mask(boxes, (height, width))
    # Outlines carry their level's colour; everything else is the raw image.
    np.testing.assert_array_equal(boxes_panel[~outline], needles_image[~outline])
    assert np.mean(np.any(boxes_panel[outline] != needles_image[outline], axis=-1)) > 0.9
    for (y0, x0, y1, x1), level in zip(boxes, levels):
        np.testing.assert_array_equal(boxes_panel[y1 - 1, x0:x1], np.broadcast_to(
            LEVEL_COLOURS[level], (x1 - x0, 3)))
    # The complexity panel is bright at the objects, dark on the smooth scene.
    brightness = complexity_panel.astype(int).sum(axis=-1)
    assert brightness.max() > 3 * 200 and np.median(brightness) < 3 * 60
    # The attention panel tints the image, differently per patch.
    assert np.any(attention_panel != needles_image)
    assert len(np.unique(attention_panel.reshape(-1, 3), axis=0)) > 16


def test_render_patches_from_outputs_matches_model(model, needles_image):
    batch = needles_image[None]
    outputs = model.embed(batch)
    from_outputs = render_patches(needles_image, outputs, complexity=model.complexity(batch))
    np.testing.assert_array_equal(from_outputs, render_patches(needles_image, model))


def test_render_patches_takes_grayscale_float_photos(model):
    image = photo("camera")[::4, ::4].astype(np.float32) / 255  # [128, 128, 1]
    rgb_model = DynamicPatchModel(token_size=8, embed_dim=16, width_multiplier=0.25,
                                  attention_filters=(4,))
    outputs = rgb_model.embed(np.repeat(image, 3, axis=-1)[None])
    picture = render_patches(image, outputs)
    assert picture.shape == (128, 3 * 128 + 2 * GAP, 3)
    gray = np.round(image[..., 0] * 255).astype(np.uint8)
    untouched = ~outline_mask(outputs["boxes"][0].numpy(), (128, 128))
    np.testing.assert_array_equal(picture[:, :128, 0][untouched], gray[untouched])


def test_draw_boxes_colours_outlines_by_level():
    image = np.zeros((16, 32, 3), np.uint8)
    boxes = np.array([[0, 0, 16, 16], [0, 16, 8, 24], [0, 24, 8, 32]])
    canvas = draw_boxes(image, boxes, np.array([0, 1, 5]))
    np.testing.assert_array_equal(canvas[15, 3], LEVEL_COLOURS[0])
    np.testing.assert_array_equal(canvas[4, 16], LEVEL_COLOURS[1])
    np.testing.assert_array_equal(canvas[7, 30], LEVEL_COLOURS[-1])  # past the table
    np.testing.assert_array_equal(canvas[4, 4], [0, 0, 0])
    assert np.all(image == 0), "the input is left as it was"


def test_attention_overlay_scales_weights_to_the_colormap():
    image = np.zeros((8, 16, 3), np.uint8)
    boxes = np.array([[0, 0, 8, 8], [0, 8, 8, 16]])
    overlay = attention_overlay(image, boxes, np.array([0.2, 0.7]), alpha=1.0)
    np.testing.assert_array_equal(overlay[0, 0], COLORMAP_POINTS[0])
    np.testing.assert_array_equal(overlay[7, 15], COLORMAP_POINTS[-1])
    half = attention_overlay(image, boxes, np.array([0.5, 0.5]), alpha=0.5)
    np.testing.assert_array_equal(half, np.round(COLORMAP_POINTS[0] / 2) + np.zeros_like(half))
    with pytest.raises(ValueError, match="alpha"):
        attention_overlay(image, boxes, np.array([0.5, 0.5]), alpha=2)


def test_apply_colormap_clips_and_interpolates():
    colours = apply_colormap(np.array([-1.0, 0.0, 0.125, 1.0, 3.0]))
    np.testing.assert_array_equal(colours[[0, 1]], COLORMAP_POINTS[[0, 0]])
    np.testing.assert_array_equal(colours[[3, 4]], COLORMAP_POINTS[[-1, -1]])
    np.testing.assert_array_equal(colours[2], np.round((COLORMAP_POINTS[0] + COLORMAP_POINTS[1]) / 2))


def test_save_png_round_trips(tmp_path, needles_image):
    path = str(tmp_path / "sub" / "picture.png")
    save_png(needles_image, path)
    np.testing.assert_array_equal(tf.io.decode_png(tf.io.read_file(path)).numpy(), needles_image)
    with pytest.raises(ValueError, match="uint8"):
        save_png(needles_image.astype(np.float32), path)


def test_draw_files_writes_a_picture_per_usable_file(model, needles_image, tmp_path):
    folder, output = tmp_path / "images", str(tmp_path / "pictures")
    tf.io.gfile.makedirs(str(folder))
    tf.io.write_file(str(folder / "needles.png"), tf.io.encode_png(needles_image))
    tf.io.write_file(str(folder / "small.png"), tf.io.encode_png(needles_image[:32, :48]))
    (folder / "corrupt.png").write_bytes(b"not an image")

    written, skipped = draw_files(model, [str(folder)], output)

    assert written == [str(tmp_path / "pictures" / "needles.png")]
    assert sorted(path for path, _ in skipped) == [str(folder / "corrupt.png"),
                                                   str(folder / "small.png")]
    picture = tf.io.decode_png(tf.io.read_file(written[0])).numpy()
    np.testing.assert_array_equal(picture, render_patches(needles_image / 255, model))


def test_bad_inputs_are_named(model, needles_image):
    with pytest.raises(ValueError, match="channels"):
        render_patches(needles_image[..., 0], model)
    two_images = model.embed(np.stack([needles_image] * 2))
    with pytest.raises(ValueError, match="holds 2 images"):
        render_patches(needles_image, two_images)
    with pytest.raises(ValueError, match="another image"):
        render_patches(needles_image[:64, :64], model.embed(needles_image[None]))


def test_the_complexity_panel_is_the_models_own_map(needles_image):
    sigma_1 = DynamicPatchModel(num_classes=2, sigma=1.0, token_size=8, embed_dim=16,
                                width_multiplier=0.25, attention_filters=(4,))
    height, width, _ = needles_image.shape
    (_, panel, _), _ = panels(render_patches(needles_image, sigma_1, gap=GAP), width)

    def drawn(complexity):
        values = np.asarray(complexity).reshape(height, width)
        return apply_colormap(values / np.percentile(values, COMPLEXITY_PERCENTILE))

    np.testing.assert_array_equal(panel, drawn(sigma_1.complexity(needles_image[None])))
    assert np.any(panel != drawn(ComplexityMap()(needles_image[None]))), \
        "the default sigma would draw another panel"
