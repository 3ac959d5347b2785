"""The two views of a retrieval dataset, and conversion between them.

Every builder returns one of two views of the same data:

- ``"items"``: one row per item (clip or image), columns ``item_id``, ``item_index``, ``audio`` or ``image``,
  ``captions`` (``list[str]``) and, for labelled sets, ``label``/``label_id`` (ESC-50 also ``fold``);
- ``"captions"``: one row per caption, the same item columns with ``caption`` (str) and ``caption_index``
  (int, 0-based within the item) in place of ``captions``.

Training uses the captions view (one pair per row), evaluation the items view (all captions of an item together).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, List, Value

__all__ = ["CAPTION_COLUMNS", "VIEWS", "captions_to_items", "items_to_captions", "quiet_progress_bars"]

VIEWS = ("captions", "items")
# columns that exist once per caption (dropped when grouping captions into items)
CAPTION_COLUMNS = ("caption", "caption_index", "is_noisy", "original_caption")


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
