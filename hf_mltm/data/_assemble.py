"""Turning the item lists of a builder into a `DatasetDict` in the requested view.

Every builder first collects *items* (one clip or image with its list of captions, plus ``_source``: where it was
listed), per canonical split; `assemble` checks ids and files, builds each split's items view, converts it to the
requested view and attaches the dropped files as ``skipped_files``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from datasets import Dataset, DatasetDict, Features, List, Value

from ._file_checks import filter_items
from .errors import SkippedFile
from .views import items_to_captions

__all__ = ["assemble", "check_unique_ids", "finish", "item_features", "items_to_dataset"]

logger = logging.getLogger("hf_mltm.data")


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
