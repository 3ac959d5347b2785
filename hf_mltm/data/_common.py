"""Helpers shared by the dataset builders: file checks, CSV/JSON reading, split names and the two views.

Every builder first collects *items* (one clip or image with its list of captions), then this module turns
them into a `datasets.DatasetDict` in the requested view:

- ``"items"``: one row per item, columns ``item_id``, ``item_index``, ``audio`` or ``image``, ``captions``
  (``list[str]``) and, for labelled sets, ``label``/``label_id`` (ESC-50 also ``fold``);
- ``"captions"``: one row per caption, the same item columns with ``caption`` (str) and ``caption_index``
  (int, 0-based within the item) in place of ``captions``.

Files listed by the metadata but absent (or unreadable, with ``verify_files=True``) raise by default; with
``on_missing="skip"`` they are dropped, a warning gives their number and the returned `DatasetDict` carries them
as ``skipped_files`` (a tuple of `SkippedFile`, see `get_skipped_files`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value

logger = logging.getLogger("hf_mltm.data")

__all__ = [
    "CorruptDataFileError",
    "MissingDataFileError",
    "SkippedFile",
    "captions_to_items",
    "get_skipped_files",
    "items_to_captions",
]

SPLITS = ("train", "validation", "test")
VIEWS = ("captions", "items")
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
# columns that exist once per caption (dropped when grouping captions into items)
CAPTION_COLUMNS = ("caption", "caption_index", "is_noisy", "original_caption")


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


# ----------------------------------------------------------------------------------------------- arguments


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise a `ValueError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")


def check_common_args(view: str, on_missing: str) -> None:
    """Validate the ``view`` and ``on_missing`` arguments every builder takes."""
    check_choice("view", view, VIEWS)
    check_choice("on_missing", on_missing, ON_MISSING)


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
        ValueError: A requested split is unknown or not available.
    """
    if splits is None:
        return list(available)
    requested = [splits] if isinstance(splits, str) else list(splits)
    wanted = set()
    for name in requested:
        canonical = SPLIT_ALIASES.get(str(name).lower())
        if canonical is None or canonical not in available:
            raise ValueError(
                f"{dataset_name} has no split {name!r}; available splits: {list(available)} "
                f"(aliases such as 'val' or 'evaluation' are accepted)."
            )
        wanted.add(canonical)
    return [name for name in available if name in wanted]


def as_dir(data_dir: str | os.PathLike, dataset_name: str) -> Path:
    """``data_dir`` as an absolute `Path`, raising `MissingDataFileError` when it is not a folder."""
    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        raise MissingDataFileError(
            f"{dataset_name} data folder {str(path)!r} does not exist or is not a folder."
        )
    return path


# ----------------------------------------------------------------------------------------- metadata files


def read_csv_rows(path: Path, required: Sequence[str], *, what: str = "") -> list[dict[str, str]]:
    """Read a CSV file with a header line into dicts, checking its columns and row lengths.

    Args:
        path (`Path`): The CSV file.
        required (`Sequence[str]`): Columns that must be in the header.
        what (`str`, *optional*): Short description of the expected layout for error messages.

    Returns:
        `list[dict[str, str]]`: One dict per data row; each carries ``"_line"`` (1-based line number in the file).

    Raises:
        MissingDataFileError: The file does not exist.
        ValueError: The file is empty, misses a required column, has a row with more or fewer fields than the
            header, or is not valid CSV. The message names the file, the line and the expected columns.
    """
    if not path.is_file():
        raise MissingDataFileError(f"Metadata file {str(path)!r} does not exist{_expected(what)}.")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:  # tolerate a BOM
        reader = csv.DictReader(handle, strict=True)
        try:
            header = reader.fieldnames
            if not header:
                raise ValueError(
                    f"CSV file {str(path)!r} is empty: expected a header with columns {list(required)}."
                )
            missing = [column for column in required if column not in header]
            if missing:
                raise ValueError(
                    f"CSV file {str(path)!r} lacks column(s) {missing}: expected a header with {list(required)}, "
                    f"found {header}{_expected(what)}."
                )
            for row in reader:
                if None in row or any(value is None for value in row.values()):
                    raise ValueError(
                        f"CSV file {str(path)!r} line {reader.line_num} has "
                        f"{'more' if None in row else 'fewer'} fields than its header ({len(header)} columns: "
                        f"{header}); quote fields that contain commas."
                    )
                row["_line"] = reader.line_num
                rows.append(row)
        except csv.Error as error:
            raise ValueError(
                f"CSV file {str(path)!r} is malformed near line {reader.line_num}: {error}."
            ) from error
    return rows


def read_json(path: Path, *, what: str = "") -> Any:
    """Load a JSON file, raising `MissingDataFileError` or a `ValueError` that names the file and position."""
    if not path.is_file():
        raise MissingDataFileError(f"JSON file {str(path)!r} does not exist{_expected(what)}.")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"JSON file {str(path)!r} is malformed (line {error.lineno}, column {error.colno}: {error.msg})"
            f"{_expected(what)}."
        ) from error


def require_fields(record: Any, fields: Sequence[str], where: str, what: str = "") -> None:
    """Raise a `ValueError` naming ``where`` unless ``record`` is a dict holding all ``fields``."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(record).__name__}{_expected(what)}.")
    missing = [field for field in fields if field not in record]
    if missing:
        raise ValueError(f"{where} lacks field(s) {missing}{_expected(what)}.")


def _expected(what: str) -> str:
    return f" (expected {what})" if what else ""


def label_text(label: str) -> str:
    """Human-readable class name: underscores become spaces (``"chirping_birds"`` -> ``"chirping birds"``)."""
    return " ".join(str(label).replace("_", " ").split())


def format_caption(template: str, label: str, source: str) -> str:
    """``template.format(label=...)``, with a `ValueError` naming the template when it is not usable."""
    try:
        return template.format(label=label)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"caption_template {template!r} cannot be formatted for {source}: use a single '{{label}}' "
            f"placeholder ({error!r})."
        ) from error


# ------------------------------------------------------------------------------------------- file checks


def check_audio_header(source: str | bytes) -> str | None:
    """`None` if ``soundfile`` reads the header of ``source`` (a path or encoded bytes), else the reason."""
    import io

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


# --------------------------------------------------------------------------------------- dataset assembly


def item_features(
    media_key: str, extra: Mapping[str, Any] | None = None, media_feature: Any = None
) -> Features:
    """Features of the items view: ``item_id``, ``item_index``, ``media_key``, ``captions``, then ``extra``."""
    features = {
        "item_id": Value("string"),
        "item_index": Value("int64"),
        media_key: Value("string") if media_feature is None else media_feature,
        "captions": List(Value("string")),
    }
    features.update(extra or {})
    return Features(features)


def items_to_dataset(items: list[dict[str, Any]], features: Features) -> Dataset:
    """Items view `Dataset` from item dicts; ``item_index`` is assigned 0..n-1 in list order."""
    columns: dict[str, list[Any]] = {name: [] for name in features}
    for index, item in enumerate(items):
        for name in features:
            columns[name].append(index if name == "item_index" else item[name])
    return Dataset.from_dict(columns, features=features)


def check_unique_ids(items: Iterable[dict[str, Any]], dataset_name: str) -> None:
    """Raise a `ValueError` when two items share an ``item_id`` (the key of fragments and of the loss)."""
    seen: dict[str, str] = {}
    for item in items:
        if item["item_id"] in seen:
            raise ValueError(
                f"{dataset_name}: item_id {item['item_id']!r} appears twice ({seen[item['item_id']]} and "
                f"{item['_source']}); each file must be listed once."
            )
        seen[item["item_id"]] = item["_source"]


def assemble(
    items_by_split: Mapping[str, list[dict[str, Any]]],
    *,
    media_key: str,
    view: str,
    on_missing: str,
    verify_files: bool,
    dataset_name: str,
    extra_features: Mapping[str, Any] | None = None,
) -> DatasetDict:
    """Check files, build each split's items `Dataset`, convert to ``view`` and attach ``skipped_files``.

    Args:
        items_by_split (`Mapping[str, list[dict]]`): Item dicts per canonical split, each with ``item_id``,
            ``media_key`` (absolute path), ``captions`` (non-empty list), the ``extra_features`` keys and
            ``_source``.
        media_key (`str`): ``"audio"`` or ``"image"``.
        view (`str`): ``"captions"`` or ``"items"``.
        on_missing (`str`): ``"error"`` or ``"skip"``.
        verify_files (`bool`): Read every file's header too.
        dataset_name (`str`): For messages.
        extra_features (`Mapping`, *optional*): Additional item columns (``label``, ``label_id``, ``fold``).

    Returns:
        `DatasetDict`: One `Dataset` per split, with attribute ``skipped_files`` (`tuple[SkippedFile, ...]`).
    """
    features = item_features(media_key, extra_features)
    skipped: list[SkippedFile] = []
    splits = {}
    for split, items in items_by_split.items():
        check_unique_ids(items, dataset_name)
        for item in items:
            if not item["captions"]:
                raise ValueError(
                    f"{dataset_name}: {item['_source']} gives item {item['item_id']!r} no caption."
                )
        kept = filter_items(
            items, split, media_key, on_missing=on_missing, verify_files=verify_files, skipped=skipped
        )
        splits[split] = items_to_dataset(kept, features)
    return finish(splits, view=view, skipped=skipped, dataset_name=dataset_name)


def finish(
    splits: Mapping[str, Dataset], *, view: str, skipped: list[SkippedFile], dataset_name: str
) -> DatasetDict:
    """Convert items-view splits to ``view``, log skipped files and attach them to the `DatasetDict`."""
    if view == "captions":
        splits = {name: items_to_captions(dataset) for name, dataset in splits.items()}
    result = DatasetDict(splits)
    if skipped:
        logger.warning(
            "%s: skipped %d item(s) whose file is missing or unreadable (first: %s, %s); see "
            "get_skipped_files(dataset_dict).",
            dataset_name,
            len(skipped),
            skipped[0].path,
            skipped[0].reason,
        )
    result.skipped_files = tuple(skipped)
    return result


# --------------------------------------------------------------------------------------------------- views


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide datasets' progress bars (e.g. "Flattening the indices") inside the block, then restore them."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def items_to_captions(dataset: Dataset) -> Dataset:
    """Items view -> captions view: one row per caption.

    Args:
        dataset (`Dataset`): Items view (a ``captions`` column of `list[str]`, plus any item columns).

    Returns:
        `Dataset`: The item columns repeated once per caption, with ``caption`` (str) and ``caption_index``
        (int64, 0-based within the item) instead of ``captions``; rows grouped by item in input order.

    Raises:
        ValueError: ``dataset`` has no ``captions`` column.
    """
    if "captions" not in dataset.column_names:
        raise ValueError(
            f"items_to_captions needs the items view (a 'captions' column); got columns {dataset.column_names}."
        )
    captions = dataset["captions"]
    counts = np.fromiter((len(group) for group in captions), dtype=np.int64, count=len(captions))
    rows = np.repeat(np.arange(len(captions), dtype=np.int64), counts)  # (num_captions,)
    flat = [caption for group in captions for caption in group]
    caption_index = [index for count in counts.tolist() for index in range(count)]
    with quiet_progress_bars():
        result = dataset.select(rows).remove_columns("captions")
        result = result.add_column("caption", flat, feature=Value("string"))
        return result.add_column("caption_index", caption_index, feature=Value("int64"))


def captions_to_items(dataset: Dataset) -> Dataset:
    """Captions view -> items view: one row per item, its captions gathered in ``caption_index`` order.

    Items are identified by ``item_index`` (``item_id`` when there is no ``item_index`` column) and appear in
    the order of their first caption. Per-caption columns (``caption``, ``caption_index``, ``is_noisy``,
    ``original_caption``) are dropped; the other columns are taken from the item's first row.

    Args:
        dataset (`Dataset`): Captions view (``caption`` and ``item_index`` or ``item_id`` columns).

    Returns:
        `Dataset`: Items view with a ``captions`` column (`list[str]`).

    Raises:
        ValueError: ``dataset`` has no ``caption`` column or no item key column.
    """
    columns = dataset.column_names
    key = "item_index" if "item_index" in columns else "item_id" if "item_id" in columns else None
    if "caption" not in columns or key is None:
        raise ValueError(
            "captions_to_items needs the captions view ('caption' and 'item_index' or 'item_id' columns); got "
            f"columns {columns}."
        )
    keys = dataset[key]
    order = dataset["caption_index"] if "caption_index" in columns else range(len(keys))
    captions = dataset["caption"]
    groups: dict[Any, list[int]] = {}
    for row, item in enumerate(keys):
        groups.setdefault(item, []).append(row)
    first_rows = [rows[0] for rows in groups.values()]
    grouped = [[captions[row] for row in sorted(rows, key=lambda r: order[r])] for rows in groups.values()]
    item_columns = [name for name in columns if name not in CAPTION_COLUMNS]
    with quiet_progress_bars():
        result = dataset.select(first_rows).select_columns(item_columns)
        return result.add_column("captions", grouped, feature=List(Value("string")))
