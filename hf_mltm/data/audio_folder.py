"""Labelled audio folders described by a metadata CSV (UrbanSound8K-, TAU- and BigSoundBank-style).

Layout::

    <data_dir>/metadata.csv     file_name,label[,split][,title,...]
    <data_dir>/audio/<file_name>

Each clip is one item. Its caption is a template with the class name (default ``"the sound of {label}"``,
underscores as spaces) or, with ``caption_column``, the text of a column (e.g. BigSoundBank's ``title``).
Splits come from a column (values ``train``/``val``/``validation``/``test``/...), from seeded random
fractions, or everything goes to one split.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import DatasetDict, Value

from hf_mltm.validation import check_choice, strict_keywords

from ._arguments import SPLIT_ALIASES, SPLITS, as_dir, check_common_args, select_splits
from ._assemble import assemble
from ._readers import check_relative_path, read_csv_rows
from .errors import MissingDataFileError
from .labels import format_caption, label_text

__all__ = ["build_audio_folder", "build_bigsoundbank", "build_tau22_scenes", "build_urbansound8k"]

DEFAULT_CAPTION_TEMPLATE = "the sound of {label}"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


@strict_keywords()
def build_audio_folder(
    data_dir: str | os.PathLike,
    *,
    view: str = "captions",
    splits: str | Sequence[str] | None = None,
    on_missing: str = "error",
    verify_files: bool = False,
    metadata_file: str | None = "metadata.csv",
    audio_dir: str = "audio",
    file_column: str = "file_name",
    label_column: str = "label",
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
    caption_column: str | None = None,
    split_column: str | None = None,
    split_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    default_split: str = "train",
    dataset_name: str | None = None,
) -> DatasetDict:
    """Build a labelled audio folder.

    Args:
        data_dir (`str` or `os.PathLike`): Root holding ``metadata_file`` and ``audio_dir``.
        view (`str`, defaults to ``"captions"``): ``"captions"`` or ``"items"``.
        splits (`str` or `Sequence[str]`, *optional*): Keep only these splits (of those that exist).
        on_missing (`str`, defaults to ``"error"``): ``"error"`` or ``"skip"`` for missing/corrupt audio files.
        verify_files (`bool`, defaults to `False`): Read each file's header with ``soundfile.info`` (slower).
        metadata_file (`str`, defaults to ``"metadata.csv"``): CSV path relative to ``data_dir``; `None` for a folder
            of clips named by their label (``dog.mp3``, ``church_bells.wav``): every audio file of ``audio_dir`` is
            one clip whose label is its file stem.
        audio_dir (`str`, defaults to ``"audio"``): Folder of the clips relative to ``data_dir``; the file column
            may hold sub-paths (``fold1/x.wav``).
        file_column (`str`, defaults to ``"file_name"``): Column with the clip file name.
        label_column (`str`, defaults to ``"label"``): Column with the class name.
        caption_template (`str`, defaults to ``"the sound of {label}"``): Caption with a ``{label}`` placeholder
            (filled with the label, underscores as spaces).
        caption_column (`str`, *optional*): Take each caption from this column instead of the template.
        split_column (`str`, *optional*): Column naming each row's split (``train``, ``val``, ``test``, ...).
        split_fractions (`Mapping[str, float]`, *optional*): Random split, e.g. ``{"train": 0.8, "test": 0.2}``
            (fractions summing to 1; split sizes are the rounded cumulative fractions of the clip count).
        seed (`int`, defaults to 0): Seed of the random split.
        default_split (`str`, defaults to ``"train"``): The split of all rows without ``split_column`` or
            ``split_fractions``.
        dataset_name (`str`, *optional*): Name used in messages (default: the folder name).

    Returns:
        `DatasetDict`: Columns ``item_id`` (file stem), ``item_index``, ``audio`` (absolute path),
        ``caption``/``caption_index`` or ``captions``, ``label`` (underscores as spaces) and ``label_id``
        (index of the label in the sorted list of all labels of the CSV, the same in every split). Attribute
        ``skipped_files``.

    Raises:
        MissingDataFileError: The CSV or (with ``on_missing="error"``) a clip is missing.
        CorruptDataFileError: A clip's header is unreadable (``verify_files=True``, ``on_missing="error"``).
        ValueError: Bad arguments, a CSV that is not UTF-8, a missing column, an empty field, an unknown split
            value, or a file name that is absolute or has a ``..`` component.
    """
    check_common_args(view, on_missing, verify_files)
    check_choice("default_split", default_split, SPLITS)
    if split_column is not None and split_fractions is not None:
        raise ValueError("Pass split_column or split_fractions, not both.")
    root = as_dir(data_dir, dataset_name or "audio folder")
    name = dataset_name or root.name
    if metadata_file is None:
        if caption_column is not None or split_column is not None:
            raise ValueError("caption_column and split_column need a metadata_file.")
        csv_path = root / audio_dir
        rows = _rows_from_file_names(csv_path, file_column, label_column)
    else:
        csv_path = root / metadata_file
        required = [file_column, label_column] + [c for c in (caption_column, split_column) if c is not None]
        rows = read_csv_rows(csv_path, required, what=f"a header with {required}")
    labels = sorted({row[label_column] for row in rows})
    label_ids = {label: index for index, label in enumerate(labels)}
    items = []
    for row in rows:
        source = f"{csv_path} line {row['_line']}"
        if not row[file_column] or not row[label_column]:
            raise ValueError(f"{source}: empty '{file_column}' or '{label_column}'.")
        check_relative_path(row[file_column], source, file_column)
        label = label_text(row[label_column])
        if caption_column is None:
            caption = format_caption(caption_template, label, source)
        else:
            caption = row[caption_column].strip()
            if not caption:
                raise ValueError(f"{source}: empty caption column '{caption_column}'.")
        items.append(
            {
                "item_id": Path(row[file_column]).stem,
                "audio": str(root / audio_dir / row[file_column]),
                "captions": [caption],
                "label": label,
                "label_id": label_ids[row[label_column]],
                "_source": source,
                "_split": _row_split(row, split_column, source) if split_column else default_split,
            }
        )
    if split_fractions is not None:
        _assign_random_splits(items, split_fractions, seed)
    present = [split for split in SPLITS if any(item["_split"] == split for item in items)]
    wanted = select_splits(splits, present or [default_split], name)
    items_by_split = {split: [item for item in items if item["_split"] == split] for split in wanted}
    return assemble(
        items_by_split,
        media_key="audio",
        view=view,
        on_missing=on_missing,
        verify_files=verify_files,
        dataset_name=name,
        extra_features={"label": Value("string"), "label_id": Value("int64")},
    )


def _rows_from_file_names(folder: Path, file_column: str, label_column: str) -> list[dict[str, Any]]:
    """Metadata rows of a folder of clips named by their label (sorted by file name)."""
    if not folder.is_dir():
        raise MissingDataFileError(f"Audio folder {folder} does not exist.")
    files = sorted(path.name for path in folder.iterdir() if path.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}).")
    return [{file_column: name, label_column: Path(name).stem, "_line": f"file {name}"} for name in files]


def _row_split(row: Mapping[str, Any], split_column: str, source: str) -> str:
    value = str(row[split_column]).strip().lower()
    if value not in SPLIT_ALIASES:
        raise ValueError(
            f"{source}: split column '{split_column}' has {row[split_column]!r}; expected one of "
            f"{sorted(SPLIT_ALIASES)}."
        )
    return SPLIT_ALIASES[value]


def _assign_random_splits(items: list[dict[str, Any]], fractions: Mapping[str, float], seed: int) -> None:
    if not isinstance(fractions, Mapping):
        raise ValueError(
            f"split_fractions must be a mapping such as {{'train': 0.8, 'test': 0.2}}, got {fractions!r}."
        )
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    canonical: dict[str, float] = {}
    for split, fraction in fractions.items():
        check_choice("split_fractions key", str(split).lower(), list(SPLIT_ALIASES))
        name = SPLIT_ALIASES[str(split).lower()]
        if name in canonical:
            raise ValueError(f"split_fractions names the split {name!r} twice (as {split!r} and an alias).")
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
            raise ValueError(f"split_fractions[{split!r}] must be a number in [0, 1], got {fraction!r}.")
        canonical[name] = float(fraction)
    if not math.isclose(sum(canonical.values()), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"split_fractions must sum to 1, got {dict(fractions)} (sum {sum(canonical.values())})."
        )
    order = np.random.default_rng(seed).permutation(len(items))
    bounds = np.round(np.cumsum(list(canonical.values())) * len(items)).astype(int)  # end of each split
    start = 0
    for split, end in zip(canonical, bounds, strict=True):
        for position in sorted(order[start:end].tolist()):  # keep CSV order within a split
            items[position]["_split"] = split
        start = end


@strict_keywords(forwards_to=build_audio_folder)
def build_urbansound8k(data_dir: str | os.PathLike, **kwargs: Any) -> DatasetDict:
    """UrbanSound8K clips with ``metadata.csv`` (``file_name,label``): `build_audio_folder` with its defaults."""
    return build_audio_folder(data_dir, **{"dataset_name": "UrbanSound8K", **kwargs})


@strict_keywords(forwards_to=build_audio_folder)
def build_tau22_scenes(data_dir: str | os.PathLike, **kwargs: Any) -> DatasetDict:
    """TAU Urban Acoustic Scenes 2022 segments with ``metadata.csv``: `build_audio_folder` with its defaults."""
    return build_audio_folder(data_dir, **{"dataset_name": "TAU Urban Acoustic Scenes 2022", **kwargs})


@strict_keywords(forwards_to=build_audio_folder)
def build_bigsoundbank(data_dir: str | os.PathLike, **kwargs: Any) -> DatasetDict:
    """BigSoundBank sounds with ``metadata.csv``; pass ``caption_column="title"`` for the human descriptions."""
    return build_audio_folder(data_dir, **{"dataset_name": "BigSoundBank", **kwargs})
