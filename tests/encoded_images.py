"""Image files for tests: random images and the bytes of files TensorFlow does not write.

TensorFlow encodes PNG and JPEG but not BMP or GIF; these writers cover the
other formats `read_image` decodes, and the bad files it must refuse
(decompression bombs, CMYK JPEGs, WebP).
"""

import io
import os
import struct
import zlib

import numpy as np


def random_image(height, width, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)


def bmp_bytes(image):
    """A 24-bit uncompressed BMP of an RGB uint8 image."""
    height, width, _ = image.shape
    row_size = (3 * width + 3) // 4 * 4
    rows = b"".join(
        row[:, ::-1].tobytes().ljust(row_size, b"\0") for row in image[::-1]
    )
    header = struct.pack("<2sIHHI", b"BM", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows),
                       2835, 2835, 0, 0)
    return header + info + rows


def gif_bytes(indices, palette):
    """A GIF of palette `indices` [H, W] with LZW codes kept at 9 bits.

    Every pixel is written as a literal code and the code table is reset
    every 100 codes, so no compression logic is needed.
    """
    height, width = indices.shape
    codes = []
    for start in range(0, indices.size, 100):
        codes += [256] + indices.ravel()[start:start + 100].tolist()
    codes.append(257)
    bits = "".join(format(code, "09b")[::-1] for code in codes)
    bits += "0" * (-len(bits) % 8)
    data = bytes(int(bits[i:i + 8][::-1], 2) for i in range(0, len(bits), 8))
    blocks = b"".join(
        bytes([len(data[i:i + 255])]) + data[i:i + 255] for i in range(0, len(data), 255)
    )
    table = np.zeros((256, 3), np.uint8)
    table[:len(palette)] = palette
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0)
            + table.tobytes() + struct.pack("<BHHHHB", 0x2C, 0, 0, width, height, 0)
            + b"\x08" + blocks + b"\x00\x3b")


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(data)


PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 10]], np.uint8)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb_bytes(height, width):
    """A valid 8-bit RGB PNG of zeros: a few hundred kilobytes that decode to
    `3 * height * width` bytes (deflate packs zeros about 1000:1)."""
    row = b"\0" * (1 + 3 * width)  # filter byte and pixels
    packer = zlib.compressobj(9)
    rows_per_chunk = max(1, (1 << 20) // len(row))
    data = b"".join(packer.compress(row * min(rows_per_chunk, height - start))
                    for start in range(0, height, rows_per_chunk)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def jpeg_declaring(data, height, width):
    """JPEG bytes `data` with the size in their frame header (SOF0) replaced."""
    start = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1)
    return data[:start] + struct.pack(">HH", height, width) + data[start + 4:]


def cmyk_jpeg_bytes(image):
    """The RGB uint8 `image` as a CMYK JPEG (Pillow's), and Pillow's RGB reading of it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).convert("CMYK").save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def webp_bytes(image):
    """The RGB uint8 `image` as a WebP file (Pillow's)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "WEBP")
    return buffer.getvalue()
