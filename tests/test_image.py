from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from hf_mltm.image import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, check_image_size, load_image, to_rgb

FLICKR_IMAGE = "flickr8k_1k/Images/1000268201_693b08cb0e.jpg"  # 150 x 200 RGB JPEG


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` RGB pixels, with no pixel data: Pillow opens it lazily."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_row_image_form_gives_the_same_rgb_image(shared_data):
    path = shared_data / FLICKR_IMAGE
    expected = np.asarray(Image.open(path).convert("RGB"))
    data = path.read_bytes()
    forms = [path, str(path), data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}]
    forms.append(Image.open(path))
    for form in forms:
        image = load_image(form)
        assert image.mode == "RGB" and image.size == (150, 200)
        np.testing.assert_array_equal(np.asarray(image), expected)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent red -> white
    rgba[0, 2] = (0, 0, 255, 128)  # half-transparent blue
    image = load_image(png_bytes(Image.fromarray(rgba, mode="RGBA")))
    pixels = np.asarray(image)
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[0, 1].tolist() == [255, 255, 255]
    # alpha 128/255 of blue over white: 255 * (1 - 128/255) = 127 for red and green
    np.testing.assert_allclose(pixels[0, 2], [127, 127, 255], atol=1)
    grey_alpha = Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8), mode="LA")
    assert np.asarray(to_rgb(grey_alpha)).tolist() == [[[255, 255, 255], [10, 10, 10]]]


def test_sixteen_bit_grey_keeps_its_high_byte_instead_of_clipping():
    values = np.array([[0, 255, 256 * 100 + 7, 65535]], dtype=np.uint16)
    image = load_image(png_bytes(Image.fromarray(values)))
    assert np.asarray(image)[0, :, 0].tolist() == [
        0,
        0,
        100,
        255,
    ]  # Pillow's convert("RGB") gives 0, 255, 255, 255


@pytest.mark.parametrize("mode", ["I", "F"])
def test_thirty_two_bit_modes_are_rejected(mode):
    with pytest.raises(ValueError, match=rf"image \(row 3\) has 32-bit mode '{mode}'"):
        load_image(Image.new(mode, (4, 4)), label="row 3")


def test_check_image_size_limits():
    check_image_size(1, 1)
    check_image_size(20, 1)  # exactly 20:1
    check_image_size(10_000, 5_000)  # exactly 50 megapixels
    assert (MAX_IMAGE_PIXELS, MAX_ASPECT_RATIO) == (50_000_000, 20.0)
    with pytest.raises(ValueError, match=r"photo\.png has size 0 x 0 .*at least 1 x 1"):
        check_image_size(0, 0, label="photo.png")
    with pytest.raises(ValueError, match=r"has size 21 x 1 .*aspect ratio above 20:1"):
        check_image_size(21, 1)
    with pytest.raises(
        ValueError, match=r"has 10001 x 5000 = 50005000 pixels, more than the limit of 50000000"
    ):
        check_image_size(10_001, 5_000)


def test_decompression_bomb_is_rejected_from_the_header_without_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))  # 10 gigapixels: Pillow's own bomb error
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"Cannot read image '.*bomb\.png'.*decompression bomb"):
        load_image(bomb)
    big = png_header_only(8_000, 7_000)  # 56 MP: below Pillow's limit, above ours
    with pytest.raises(ValueError, match=r"image <\d+ bytes> \(row 9\) has 8000 x 7000 = 56000000 pixels"):
        load_image({"bytes": big, "path": None}, label="row 9")
    with pytest.raises(ValueError, match=r"has size 4000 x 1 .*aspect ratio above 20:1"):
        load_image(png_bytes(Image.new("RGB", (4000, 1))))
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "value, message",
    [
        ({"bytes": None, "path": None}, r"Image value \(row 1\) has no usable 'bytes' or 'path'"),
        (np.zeros((4, 4, 3)), r"Unsupported image value \(row 1\) of type ndarray"),
        (b"not an image at all", r"Cannot read image <19 bytes> \(row 1\): cannot identify image file"),
    ],
)
def test_unusable_image_values_raise_naming_the_row(value, message):
    with pytest.raises(ValueError, match=message):
        load_image(value, label="row 1")


def test_missing_and_truncated_files_raise_naming_them(tmp_path, shared_data):
    with pytest.raises(ValueError, match=r"Cannot read image '.*nowhere\.jpg': no such file"):
        load_image(tmp_path / "nowhere.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((shared_data / FLICKR_IMAGE).read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"image '.*truncated\.jpg'.*truncated"):
        load_image(truncated)
