"""The arguments every builder shares: ``view``, ``on_missing``, ``splits`` and the data folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hf_mltm.validation import check_bool, check_choice, closest_match

from .errors import MissingDataFileError
from .views import VIEWS

__all__ = ["ON_MISSING", "SPLITS", "SPLIT_ALIASES", "as_dir", "check_common_args", "select_splits"]

SPLITS = ("train", "validation", "test")
ON_MISSING = ("error", "skip")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "restval": "train",
    "development": "train",
    "dev": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
    "testing": "test",
    "evaluation": "test",
    "eval": "test",
}


def check_common_args(view: str, on_missing: str, verify_files: bool = False) -> None:
    """Validate the ``view``, ``on_missing`` and ``verify_files`` arguments every builder takes."""
    check_choice("view", view, VIEWS)
    check_choice("on_missing", on_missing, ON_MISSING)
    check_bool("verify_files", verify_files)


def select_splits(
    splits: str | Sequence[str] | None, available: Sequence[str], dataset_name: str
) -> list[str]:
    """Canonical split names wanted by the caller.

    Args:
        splits (`str`, `Sequence[str]` or `None`): Requested splits, by canonical name (``"train"``,
            ``"validation"``, ``"test"``) or an alias (``"val"``, ``"dev"``, ``"development"``,
            ``"evaluation"``, ...). `None` selects all of ``available``.
        available (`Sequence[str]`): Canonical splits the dataset has, in output order.
        dataset_name (`str`): Used in error messages.

    Returns:
        `list[str]`: Canonical split names, in the order of ``available``.

    Raises:
        ValueError: A requested split is unknown or not available, or ``splits`` is empty.
    """
    if splits is None:
        return list(available)
    requested = [splits] if isinstance(splits, str) else list(splits)
    if not requested:
        raise ValueError(f"splits is empty: name at least one of {list(available)}, or pass None for all.")
    wanted = set()
    for name in requested:
        canonical = SPLIT_ALIASES.get(str(name).lower())
        if canonical is None or canonical not in available:
            close = closest_match(str(name).lower(), [a for a, c in SPLIT_ALIASES.items() if c in available])
            hint = f"did you mean {close!r}? " if canonical is None and close is not None else ""
            raise ValueError(
                f"{dataset_name} has no split {name!r}; {hint}available splits: {list(available)} "
                f"(aliases such as 'val' or 'evaluation' are accepted)."
            )
        wanted.add(canonical)
    return [name for name in available if name in wanted]


def as_dir(data_dir: str | os.PathLike, dataset_name: str) -> Path:
    """``data_dir`` as an absolute `Path`, raising `MissingDataFileError` when it is not a folder."""
    if not isinstance(data_dir, str | os.PathLike):
        raise ValueError(
            f"{dataset_name}: data_dir must be a folder path (str or os.PathLike), got {data_dir!r}."
        )
    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        raise MissingDataFileError(
            f"{dataset_name} data folder {str(path)!r} does not exist or is not a folder."
        )
    return path
