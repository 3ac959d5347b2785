"""Clotho (v2) audio captioning from its official layout.

Layout (https://zenodo.org/records/4783391)::

    <data_dir>/clotho_captions_development.csv   file_name,caption_1,...,caption_5
    <data_dir>/clotho_captions_validation.csv
    <data_dir>/clotho_captions_evaluation.csv
    <data_dir>/development/<file_name>            (or clotho_audio_development/<file_name>)
    <data_dir>/validation/<file_name>
    <data_dir>/evaluation/<file_name>

Clotho's ``development``/``validation``/``evaluation`` become ``train``/``validation``/``test``. Each clip is an
item with its 5 captions in column order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from datasets import DatasetDict

from hf_mltm.validation import strict_keywords

from ._arguments import as_dir, check_common_args, select_splits
from ._assemble import assemble
from ._readers import check_relative_path, read_csv_rows
from .errors import MissingDataFileError

__all__ = ["CLOTHO_SPLITS", "build_clotho"]

CLOTHO_SPLITS = {"train": "development", "validation": "validation", "test": "evaluation"}
NUM_CAPTIONS = 5


def _audio_dir(root: Path, clotho_split: str) -> Path:
    for name in (clotho_split, f"clotho_audio_{clotho_split}"):
        if (root / name).is_dir():
            return root / name
    return root / clotho_split


@strict_keywords()
def build_clotho(
    data_dir: str | os.PathLike,
    *,
    view: str = "captions",
    splits: str | Sequence[str] | None = None,
    on_missing: str = "error",
    verify_files: bool = False,
) -> DatasetDict:
    """Build Clotho from its captions CSVs and audio folders.

    Args:
        data_dir (`str` or `os.PathLike`): The Clotho root.
        view (`str`, defaults to ``"captions"``): ``"captions"`` or ``"items"``.
        splits (`str` or `Sequence[str]`, *optional*): Splits to build (``"train"``/``"development"``,
            ``"validation"``, ``"test"``/``"evaluation"``). `None`: every split whose captions CSV exists.
        on_missing (`str`, defaults to ``"error"``): ``"error"`` or ``"skip"`` for missing/corrupt audio files.
        verify_files (`bool`, defaults to `False`): Read each file's header with ``soundfile.info`` (slower).

    Returns:
        `DatasetDict`: Columns ``item_id`` (file name without extension), ``item_index``, ``audio`` (absolute
        path), ``caption``/``caption_index`` or ``captions`` (5 per clip). Attribute ``skipped_files``.

    Raises:
        MissingDataFileError: No captions CSV (or a requested one) exists, or a clip is missing.
        CorruptDataFileError: A clip's header is unreadable (``verify_files=True``, ``on_missing="error"``).
        ValueError: An unknown keyword argument, a CSV that is not UTF-8, lacks ``file_name``/``caption_1..5`` or
            has an empty caption, or a ``file_name`` that is absolute or has a ``..`` component.
    """
    check_common_args(view, on_missing, verify_files)
    root = as_dir(data_dir, "Clotho")
    if splits is None:
        available = [s for s, c in CLOTHO_SPLITS.items() if (root / f"clotho_captions_{c}.csv").is_file()]
        if not available:
            raise MissingDataFileError(
                f"No Clotho captions CSV in {str(root)!r}: expected clotho_captions_development.csv, "
                f"clotho_captions_validation.csv and/or clotho_captions_evaluation.csv."
            )
        wanted = available
    else:
        wanted = select_splits(splits, list(CLOTHO_SPLITS), "Clotho")
    caption_columns = [f"caption_{index}" for index in range(1, NUM_CAPTIONS + 1)]
    items_by_split = {}
    for split in wanted:
        clotho_split = CLOTHO_SPLITS[split]
        csv_path = root / f"clotho_captions_{clotho_split}.csv"
        rows = read_csv_rows(
            csv_path, ["file_name", *caption_columns], what="Clotho's file_name,caption_1,...,caption_5"
        )
        audio_dir = _audio_dir(root, clotho_split)
        items = []
        for row in rows:
            source = f"{csv_path} line {row['_line']}"
            captions = [row[column].strip() for column in caption_columns]
            empty = [column for column, caption in zip(caption_columns, captions, strict=True) if not caption]
            if empty or not row["file_name"]:
                raise ValueError(
                    f"{source}: empty field(s) {empty or ['file_name']}; every clip needs 5 captions."
                )
            check_relative_path(row["file_name"], source, "file_name")
            items.append(
                {
                    "item_id": Path(row["file_name"]).stem,
                    "audio": str(audio_dir / row["file_name"]),
                    "captions": captions,
                    "_source": source,
                }
            )
        items_by_split[split] = items
    return assemble(
        items_by_split,
        media_key="audio",
        view=view,
        on_missing=on_missing,
        verify_files=verify_files,
        dataset_name="Clotho",
    )
