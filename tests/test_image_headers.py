"""Tests of dynpatch_tf.image_headers: format and declared size read before decoding.

What bad files get from the readers is in tests/test_bad_input.py.
"""

import struct

import numpy as np
import pytest
import tensorflow as tf

from dynpatch_tf.image_files import clean_op_message
from dynpatch_tf.image_headers import FORMATS, declared_size, decode_image, image_format
from tests.encoded_images import PALETTE, bmp_bytes, gif_bytes, png_bomb_bytes, random_image

SIZE = (37, 53)  # height, width


def encoded(kind):
    image = random_image(*SIZE, seed=1)
    if kind == "JPEG":
        return tf.io.encode_jpeg(image).numpy()
    if kind == "PNG":
        return tf.io.encode_png(image).numpy()
    if kind == "GIF":
        return gif_bytes(np.zeros(SIZE, int), PALETTE)
    return bmp_bytes(image)


@pytest.mark.parametrize("kind", FORMATS)
def test_format_and_declared_size_match_the_decoded_image(kind):
    data = encoded(kind)
    assert image_format(data).numpy() == FORMATS.index(kind)
    for size in (declared_size(data), tf.function(declared_size)(tf.constant(data))):
        np.testing.assert_array_equal(size, SIZE)
    assert decode_image(data).shape == (*SIZE, 3)


def test_a_top_down_bmp_declares_its_height_as_a_positive_size():
    data = bmp_bytes(random_image(*SIZE))
    top_down = data[:22] + struct.pack("<i", -SIZE[0]) + data[26:]
    np.testing.assert_array_equal(declared_size(top_down), SIZE)


def test_the_pixel_limit_is_a_parameter():
    data = png_bomb_bytes(300, 400)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        decode_image(data, max_pixels=300 * 400 - 1)
    assert clean_op_message(error.value.message) == (
        "image too large: its header declares 300x400 pixels (height x width), over the "
        "limit of 119999; not decoded")
    assert decode_image(data, max_pixels=300 * 400).shape == (300, 400, 3)
    assert decode_image(data, max_pixels=None).shape == (300, 400, 3)


@pytest.mark.parametrize("data, message", [
    (b"", "image data is empty (0 bytes)"),
    (b"\x89PNG\r\n\x1a\n\0", "corrupt PNG header"),
    (b"GIF", "Unknown image file format: not JPEG, PNG, GIF or BMP"),
])
def test_empty_and_short_data_are_named_eagerly_and_in_a_graph(data, message):
    for read in (declared_size, tf.function(declared_size)):
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            read(tf.constant(data))
        assert clean_op_message(error.value.message).startswith(message)
