"""The one image input path: opening, size checks and RGB conversion with PIL.

Every image consumer of the package (the image collator, grid-feature extraction, `OMITImageProcessor`, the Space)
goes through these functions, so an image is read and checked the same way everywhere:

- `load_image`: any image value a dataset row can hold (a path, encoded bytes, an undecoded
  ``{"bytes", "path"}`` `datasets.Image` dict, or a PIL image) -> an RGB `PIL.Image.Image`;
- `check_image_size`: the size limits, checked on the header before any pixel is decoded;
- `to_rgb`: PIL mode conversion to RGB, with transparency composited onto white.

Limits: at most `MAX_IMAGE_PIXELS` = 50 megapixels and an aspect ratio of at most `MAX_ASPECT_RATIO` = 20:1. Larger
images are decompression bombs or not photographs; a 4000 x 1 strip would be stretched to 896000 x 224 by a
shortest-edge resize. Pillow's own bomb limit (about 179 megapixels) is higher and is turned into a `ValueError` too.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ImageSource", "MAX_ASPECT_RATIO", "MAX_IMAGE_PIXELS", "check_image_size", "load_image", "to_rgb"]

MAX_IMAGE_PIXELS = 50_000_000
"""Most pixels (width x height) an image may have."""
MAX_ASPECT_RATIO = 20.0
"""Largest ratio of the longer to the shorter side an image may have."""

ImageSource = str | os.PathLike | bytes | Mapping[str, Any] | Image.Image
"""An image value of a dataset row: a path, encoded bytes, a ``{"bytes", "path"}`` dict or a PIL image."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def check_image_size(width: int, height: int, *, label: str = "image") -> None:
    """Check that an image of ``width x height`` pixels is small enough and not absurdly elongated.

    Args:
        width (`int`), height (`int`): The image size in pixels.
        label (`str`, defaults to ``"image"``): How the error message names the image (e.g. a file name).

    Raises:
        ValueError: A side is not positive, the image has more than `MAX_IMAGE_PIXELS` pixels, or the ratio of its
            longer to its shorter side exceeds `MAX_ASPECT_RATIO`.
    """
    if width < 1 or height < 1:
        raise ValueError(
            f"{label} has size {width} x {height} (width x height): an image needs at least 1 x 1 pixel."
        )
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{label} has {width} x {height} = {width * height} pixels, more than the limit of {MAX_IMAGE_PIXELS} "
            f"(a decompression bomb, or an image to downscale before use)."
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(
            f"{label} has size {width} x {height} (width x height), an aspect ratio above {MAX_ASPECT_RATIO:g}:1; "
            f"crop it to the region of interest first."
        )


def to_rgb(image: Image.Image, *, label: str = "image") -> Image.Image:
    """Convert a PIL image of any 8-bit or 16-bit mode to a new RGB image.

    Transparency (an alpha band or a palette transparency) is composited onto a white background, as
    transformers' ``convert_to_rgb`` does. 16-bit greyscale (``"I;16*"`` modes, e.g. 16-bit PNGs) is reduced to
    8 bits by keeping the high byte; Pillow's own ``convert("RGB")`` would clip it to 255 instead.

    Args:
        image (`PIL.Image.Image`): The image; decoded now if it was opened lazily.
        label (`str`, defaults to ``"image"``): How error messages name the image.

    Returns:
        `PIL.Image.Image`: A new image of mode ``"RGB"`` and the same size.

    Raises:
        ValueError: The mode has no defined 8-bit range (32-bit ``"I"`` or ``"F"``) or cannot be converted to
            RGB, or the pixel data cannot be decoded.
    """
    if image.mode in ("I", "F"):
        raise ValueError(
            f"{label} has 32-bit mode {image.mode!r}, whose value range is unknown: scale it to 8 bits first, e.g. "
            f"Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))."
        )
    try:
        if image.mode in _SIXTEEN_BIT_MODES:
            high_bytes = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)  # (H, W)
            return Image.fromarray(high_bytes).convert("RGB")
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"Cannot convert {label} (mode {image.mode!r}) to RGB: {error}") from error


def _encoded_source(source: Any, label: str | None) -> str | os.PathLike | bytes:
    where = f" ({label})" if label else ""
    if isinstance(source, Mapping):
        data, path = source.get("bytes"), source.get("path")
        if isinstance(data, bytes | bytearray | memoryview) and len(data) > 0:
            return bytes(data)
        if isinstance(path, str | os.PathLike) and os.fspath(path):
            return path
        raise ValueError(
            f"Image value{where} has no usable 'bytes' or 'path' (keys {sorted(map(str, source))}): give a file "
            f"path or keep the column undecoded (datasets.Image(decode=False))."
        )
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        return source
    raise ValueError(
        f"Unsupported image value{where} of type {type(source).__name__}: expected a file path, encoded bytes, a "
        f"{{'bytes', 'path'}} dict or a PIL image."
    )


def load_image(source: ImageSource, *, label: str | None = None) -> Image.Image:
    """Open any image value of a dataset row as an RGB PIL image.

    The size is checked on the file header, before the pixels are decoded, so a decompression bomb costs
    nothing. EXIF orientation is not applied (as in the rest of the package).

    Args:
        source: A path (`str` or `os.PathLike`), the encoded file content (`bytes`), an undecoded
            `datasets.Image` value ``{"bytes": ..., "path": ...}`` (non-empty bytes win over the path), or a
            `PIL.Image.Image` (converted, not re-read).
        label (`str`, *optional*): Where the value comes from (e.g. ``"batch row 3"``), added to error messages
            next to the file name.

    Returns:
        `PIL.Image.Image`: A new, fully decoded image of mode ``"RGB"`` (see `to_rgb` for the conversion).

    Raises:
        ValueError: The value has an unsupported type or is a dict without usable keys; the file does not exist
            or cannot be decoded (the message names the file and carries Pillow's reason); or the image breaks
            the limits of `check_image_size` (including Pillow's decompression-bomb limit).

    Example:

    ```python
    >>> import io
    >>> from PIL import Image
    >>> from hf_mltm.image import load_image
    >>> buffer = io.BytesIO()
    >>> Image.new("LA", (40, 30)).save(buffer, format="PNG")
    >>> image = load_image({"bytes": buffer.getvalue(), "path": None})
    >>> image.mode, image.size
    ('RGB', (40, 30))

    ```
    """
    where = f" ({label})" if label else ""
    if isinstance(source, Image.Image):
        name = f"image{where}"
        check_image_size(source.width, source.height, label=name)
        return to_rgb(source, label=name)
    encoded = _encoded_source(source, label)
    name = (
        "image " + (f"<{len(encoded)} bytes>" if isinstance(encoded, bytes) else repr(os.fspath(encoded)))
    ) + where
    if not isinstance(encoded, bytes) and not os.path.isfile(encoded):
        raise ValueError(f"Cannot read {name}: no such file.")
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 MP and raises above ~179 MP; make both an error naming the file
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(encoded) if isinstance(encoded, bytes) else encoded)
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        raise ValueError(f"Cannot read {name}: {error}") from error
    with image:
        check_image_size(image.width, image.height, label=name)
        return to_rgb(image, label=name)
