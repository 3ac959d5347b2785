"""Checking the media files an item list points to: present, and (if asked) with a readable header."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from .errors import CorruptDataFileError, MissingDataFileError, SkippedFile

__all__ = ["check_audio_header", "check_image_header", "filter_items"]


def check_audio_header(source: str | bytes) -> str | None:
    """`None` if ``soundfile`` reads the header of ``source`` (a path or encoded bytes), else the reason."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as error:  # soundfile raises several types (SoundFileError, RuntimeError, TypeError)
        return str(error) or type(error).__name__
    if info.frames == 0:
        return "the file holds no audio frames"
    return None


def check_image_header(path: str) -> str | None:
    """`None` if PIL opens and verifies ``path``, else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        return str(error) or type(error).__name__
    return None


def filter_items(
    items: list[dict[str, Any]],
    split: str,
    media_key: str,
    *,
    on_missing: str,
    verify_files: bool,
    skipped: list[SkippedFile],
) -> list[dict[str, Any]]:
    """Drop (``on_missing="skip"``) or raise for items whose file is missing or, if asked, corrupt.

    Args:
        items (`list[dict]`): Items with ``media_key`` (a path str, or a dict with ``"bytes"``/``"path"``) and
            ``"_source"`` (where the item was listed, for messages).
        split (`str`): Split name recorded in `SkippedFile`.
        media_key (`str`): ``"audio"`` or ``"image"``.
        on_missing (`str`): ``"error"`` or ``"skip"``.
        verify_files (`bool`): Also read each file's header (``soundfile.info`` / ``PIL.Image.verify``).
        skipped (`list[SkippedFile]`): Dropped files are appended here.

    Returns:
        `list[dict]`: The kept items, in order.

    Raises:
        MissingDataFileError: A file is missing and ``on_missing="error"``.
        CorruptDataFileError: A header is unreadable, ``verify_files=True`` and ``on_missing="error"``.
    """
    kept = []
    for item in items:
        media = item[media_key]
        data = media.get("bytes") if isinstance(media, Mapping) else None
        path = media.get("path") if isinstance(media, Mapping) else media
        reason = None
        if data is None and (path is None or not os.path.isfile(path)):
            reason = "missing"
        elif verify_files:
            problem = (
                check_audio_header(data if data is not None else path)
                if media_key == "audio"
                else check_image_header(path)
            )
            reason = None if problem is None else f"corrupt: {problem}"
        if reason is None:
            kept.append(item)
            continue
        if on_missing == "error":
            if reason == "missing":
                raise MissingDataFileError(
                    f"{media_key.capitalize()} file {path!r} listed in {item['_source']} does not exist. Restore "
                    f"it, fix the metadata, or pass on_missing='skip' to drop such items."
                )
            raise CorruptDataFileError(
                f"{media_key.capitalize()} file {path!r} listed in {item['_source']} cannot be read "
                f"({reason[len('corrupt: ') :]}). Replace it, or pass on_missing='skip' to drop such items."
            )
        skipped.append(SkippedFile(split, str(path), item["_source"], reason))
    return kept
