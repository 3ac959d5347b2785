"""Errors raised for data files, and the record of files a builder dropped with ``on_missing="skip"``.

Files listed by the metadata but absent raise `MissingDataFileError`; with ``verify_files=True`` a file whose
header cannot be read raises `CorruptDataFileError`. With ``on_missing="skip"`` such items are dropped instead and
the returned `DatasetDict` carries them as ``skipped_files`` (read them with `get_skipped_files`).
"""

from __future__ import annotations

from typing import NamedTuple

from datasets import DatasetDict

__all__ = ["CorruptDataFileError", "MissingDataFileError", "SkippedFile", "get_skipped_files"]


class MissingDataFileError(FileNotFoundError, ValueError):
    """A file the metadata lists (or the metadata file itself) does not exist.

    It is both a `FileNotFoundError` and a `ValueError`, so either ``except`` clause catches it.
    """


class CorruptDataFileError(ValueError):
    """A listed audio or image file exists but its header cannot be read."""


class SkippedFile(NamedTuple):
    """A file dropped by ``on_missing="skip"``.

    Attributes:
        split (`str`): Split of the dropped item (``"train"``, ``"validation"`` or ``"test"``).
        path (`str`): The file's path.
        source (`str`): Where it was listed, e.g. ``"meta/esc50.csv line 12"``.
        reason (`str`): ``"missing"`` or ``"corrupt: <decoder message>"``.
    """

    split: str
    path: str
    source: str
    reason: str


def get_skipped_files(dataset_dict: DatasetDict) -> tuple[SkippedFile, ...]:
    """The files a builder dropped with ``on_missing="skip"`` (empty when none were or when raising).

    Args:
        dataset_dict (`DatasetDict`): A builder's return value.

    Returns:
        `tuple[SkippedFile, ...]`: One entry per dropped item, in metadata order.
    """
    return tuple(getattr(dataset_dict, "skipped_files", ()))
