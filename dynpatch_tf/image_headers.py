"""Encoded images: their format and declared size, read from the header before decoding.

A decompression bomb is a small file that declares a huge image: deflate
packs zeros about 1000:1, so a PNG of a few megabytes can declare gigapixels,
and a decoder allocates them before it finds out. `decode_image` reads the
height and width the header declares (`declared_size`: PNG's IHDR chunk,
JPEG's frame header through `tf.image.extract_jpeg_shape`, GIF's logical
screen, BMP's info header) and refuses an image of more than `max_pixels`
pixels before decoding it. The default, `MAX_IMAGE_PIXELS`, is Pillow's
(89,478,485 pixels: 256 MiB of 24-bit RGB). Formats whose header is not read
here are refused, WebP and JPEG XL included, which `tf.io.decode_image` would
otherwise decode unchecked.

GIF: giflib reads every frame of an animation before TensorFlow keeps the
first, and the header does not say how many frames there are, so only the
screen size is limited.

Everything is TensorFlow ops: it runs eagerly, in `tf.data` pipelines and in
exported graphs (the SavedModel's `predict_bytes`). Errors are
`tf.errors.InvalidArgumentError`s naming the problem.

Example:

```python
data = tf.io.read_file("photo.jpg")
declared_size(data)             # int64 [2]: height, width, from the header only
image = decode_image(data)      # uint8 [H, W, 3]
```
"""

import tensorflow as tf

MAX_IMAGE_PIXELS = 89_478_485
FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# The first bytes of each of `FORMATS`.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM")
# Enough for every size field below (BMP's height ends at byte 26).
_HEADER_BYTES = 26
# The sizes of the BMP info headers with 32-bit width and height (Windows 3 to 5, OS/2 2).
_BMP_INFO_SIZES = (40, 52, 56, 64, 108, 124)


def image_format(data):
    """The index in `FORMATS` of encoded image `data`, from its first bytes.

    Args:
        data: a scalar `tf.string`, the encoded image.

    Returns:
        An int32 scalar: 0 JPEG, 1 PNG, 2 GIF, 3 BMP, -1 anything else.
    """
    index = tf.constant(-1)
    for position, signature in enumerate(_SIGNATURES):
        matches = tf.strings.substr(data, 0, len(signature)) == signature
        index = tf.where(matches, position, index)
    return index


def declared_size(data):
    """The `(height, width)` an encoded image's header declares, without decoding it.

    Args:
        data: a scalar `tf.string`, an encoded JPEG, PNG, GIF or BMP image.

    Returns:
        An int64 tensor `[2]`: height, width (BMP's signed sizes as their
        absolute values).

    Raises:
        tf.errors.InvalidArgumentError: when `data` is empty, is not one of
            `FORMATS`, or its header is corrupt.

    Example:

    >>> declared_size(tf.io.encode_png(tf.zeros([30, 40, 3], tf.uint8))).numpy()
    array([30, 40])
    """
    data = tf.convert_to_tensor(data, tf.string)
    known = ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]
    form = image_format(data)
    # One check after the other, so that empty data is named as empty.
    with tf.control_dependencies([
        tf.debugging.Assert(tf.strings.length(data) > 0, ["image data is empty (0 bytes)"])
    ]):
        form = tf.identity(form)
    with tf.control_dependencies([
        tf.debugging.Assert(form >= 0, [f"Unknown image file format: not {known}"])
    ]):
        form = tf.identity(form)
    # Padded, so that reading a field of a short file is not an error of its own.
    padded = tf.strings.substr(tf.strings.join([data, "\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)
    head = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)

    def number(start, count, big_endian):
        weights = [256**k for k in range(count)]
        return tf.reduce_sum(head[start : start + count] * (weights[::-1] if big_endian else weights))

    # Where a signature matched but the fields after it are not a header, the
    # sizes would be noise: a corrupt file, not a huge image.
    sound = tf.stack([
        True,  # extract_jpeg_shape checks its own
        tf.strings.substr(padded, 12, 4) == "IHDR",
        True,
        tf.reduce_any(number(14, 4, False) == _BMP_INFO_SIZES),
    ])[tf.maximum(form, 0)]
    names = tf.constant(FORMATS)[tf.maximum(form, 0)]
    with tf.control_dependencies([tf.debugging.Assert(sound, ["corrupt", names, "header"])]):
        form = tf.identity(form)

    def signed_32(value):
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    branches = [
        lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
        lambda: tf.stack([number(20, 4, True), number(16, 4, True)]),
        lambda: tf.stack([number(8, 2, False), number(6, 2, False)]),
        lambda: tf.stack([signed_32(number(22, 4, False)), signed_32(number(18, 4, False))]),
    ]
    return tf.switch_case(form, branches)


def decode_image(data, dtype=tf.uint8, max_pixels=MAX_IMAGE_PIXELS):
    """Decodes an encoded JPEG, PNG, GIF or BMP image as RGB, after checking its header.

    Grayscale is repeated to 3 channels and alpha dropped (not composited);
    a CMYK JPEG is converted to RGB by the JPEG decoder; an animated GIF
    gives its first frame. A 16-bit PNG gives its value / 65535 as float,
    its high byte as uint8.

    Args:
        data: a scalar `tf.string`, the encoded image.
        dtype: `tf.uint8` for 0..255, or `tf.float32` for values in [0, 1].
        max_pixels: the most pixels (height x width) the header may
            declare; None for no limit.

    Returns:
        A `[H, W, 3]` tensor of `dtype`.

    Raises:
        tf.errors.InvalidArgumentError: for data that is empty, of another
            format, declares more than `max_pixels` pixels, or fails to
            decode (eagerly; in a graph, when it runs).

    Example:

    >>> decode_image(tf.io.encode_png(tf.zeros([30, 40, 1], tf.uint8))).shape
    TensorShape([30, 40, 3])
    """
    size = declared_size(data)
    checks = []
    if max_pixels is not None:
        text = tf.strings.reduce_join(tf.strings.as_string(size), separator="x")
        checks.append(tf.debugging.Assert(
            size[0] * size[1] <= max_pixels,
            ["image too large: its header declares", text,
             f"pixels (height x width), over the limit of {max_pixels}; not decoded"],
        ))
    with tf.control_dependencies(checks + [size]):
        return tf.io.decode_image(data, channels=3, dtype=dtype, expand_animations=False)
