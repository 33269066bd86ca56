"""Image files for tests: random images and the bytes of BMP and GIF files built by hand.

TensorFlow encodes PNG and JPEG but not BMP or GIF; these writers cover the
other formats `read_image` decodes.
"""

import os
import struct

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
