r"""Synthetic noisy correspondence for robustness experiments (m-LTM, Sec. "noisy correspondence").

A fraction :math:`\xi` of the training pairs is corrupted: exactly ``round(xi * n)`` of the ``n`` caption rows,
drawn uniformly without replacement, receive the caption of another randomly drawn row whose item is different
(and whose caption text is not one of the row's own item's captions, so template captions shared by two clips
of a class never count as noise). The donor captions are read before any replacement, so a noisy caption is
always a real caption of another item.
"""

from __future__ import annotations

import numbers

import numpy as np
from datasets import Dataset, Value

from .views import quiet_progress_bars

__all__ = ["inject_noisy_correspondence"]

_MAX_DRAWS = 64  # random donor draws per row before falling back to listing all valid donors


def inject_noisy_correspondence(dataset: Dataset, noise_rate: float, seed: int) -> Dataset:
    r"""Replace the captions of ``round(noise_rate * n)`` rows by captions of other items.

    Args:
        dataset (`Dataset`): Captions view (``caption`` and ``item_id`` or ``item_index`` columns), usually the
            training split.
        noise_rate (`float`): :math:`\xi \in [0, 1)`, the fraction of corrupted rows.
        seed (`int`): Seed of `numpy.random.default_rng`; the same seed gives the same rows and captions.

    Returns:
        `Dataset`: ``dataset`` with ``caption`` replaced on the noisy rows, ``is_noisy`` (bool) and
        ``original_caption`` (str, the caption before corruption) added. Row order is unchanged.

    Raises:
        ValueError: ``noise_rate`` is not a number in [0, 1), ``seed`` is not a non-negative int, ``dataset`` is not in the captions view or already has
            ``is_noisy``, or a selected row has no caption of another item to take.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from hf_mltm.data import inject_noisy_correspondence
    >>> pairs = Dataset.from_dict({"item_id": ["a", "a", "b", "c"], "caption": ["a1", "a2", "b1", "c1"]})
    >>> noisy = inject_noisy_correspondence(pairs, noise_rate=0.5, seed=0)
    >>> sum(noisy["is_noisy"])
    2

    ```
    """
    if (
        isinstance(noise_rate, bool)
        or not isinstance(noise_rate, numbers.Real)
        or not 0.0 <= noise_rate < 1.0
    ):
        raise ValueError(f"noise_rate must be a number in [0, 1), got {noise_rate!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    columns = dataset.column_names
    key = "item_id" if "item_id" in columns else "item_index" if "item_index" in columns else None
    if "caption" not in columns or key is None:
        raise ValueError(
            "inject_noisy_correspondence needs the captions view ('caption' and 'item_id' or 'item_index' "
            f"columns; convert with items_to_captions); got columns {columns}."
        )
    if "is_noisy" in columns or "original_caption" in columns:
        raise ValueError("The dataset already has 'is_noisy'/'original_caption': noise was injected before.")
    captions = dataset["caption"]
    _, items = np.unique(np.asarray(dataset[key], dtype=object).astype(str), return_inverse=True)  # (n,)
    own_captions: dict[int, set[str]] = {}
    for item, caption in zip(items.tolist(), captions, strict=True):
        own_captions.setdefault(item, set()).add(caption)

    n = len(captions)
    rng = np.random.default_rng(seed)
    noisy_rows = np.sort(rng.choice(n, size=round(noise_rate * n), replace=False))
    new_captions = list(captions)
    for row in noisy_rows.tolist():
        donor = _draw_donor(rng, row, items, captions, own_captions[items[row]])
        new_captions[row] = captions[donor]
    is_noisy = np.zeros(n, dtype=bool)
    is_noisy[noisy_rows] = True

    with quiet_progress_bars():
        result = dataset.rename_column("caption", "original_caption")
        result = result.add_column("caption", new_captions, feature=Value("string"))
        result = result.add_column("is_noisy", is_noisy.tolist(), feature=Value("bool"))
        return result.select_columns([*columns, "is_noisy", "original_caption"])


def _draw_donor(
    rng: np.random.Generator, row: int, items: np.ndarray, captions: list[str], own: set[str]
) -> int:
    """A random row of another item whose caption is not one of ``row``'s item's captions."""
    n = len(captions)
    for _ in range(_MAX_DRAWS):
        donor = int(rng.integers(n))
        if items[donor] != items[row] and captions[donor] not in own:
            return donor
    valid = [j for j in range(n) if items[j] != items[row] and captions[j] not in own]
    if not valid:
        raise ValueError(
            f"Row {row} cannot be made noisy: every caption of the dataset belongs to its item or equals one of "
            f"its item's captions."
        )
    return int(valid[rng.integers(len(valid))])
