"""Embedding a collection with several processes through the content-keyed feature cache.

Each process of an ``accelerate launch`` (``rank`` of ``world_size``) computes the frozen-tower outputs of its share
of the items, positions ``rank, rank + world_size, ...`` (``keys[rank::world_size]``), and writes them to one shared
`hf_mltm.feature_cache.FeatureCache` folder with ``writer=rank``: the cache's shards are atomic and named by writer,
so processes never collide, and a killed run loses at most one unfinished shard per process. Rerunning computes only
what no finished shard holds. The main process then reads every row from the cache (nothing is computed twice) and
runs the model's head on them (`GalleryIndex.from_model`).

Only the frozen towers are cached: the heads (and the metric) are cheap and are applied to the cached rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["fill_item_cache", "fill_text_cache", "prime_tokenizer", "shard_positions"]


def prime_tokenizer(processor: Any) -> None:
    """Tokenize one dummy caption the way `ModelAdapter.text_tower_rows` does (``padding=True, truncation=True``).

    A fast tokenizer's definition (``backend_tokenizer.to_str()``, which `hf_mltm.adapters.base.tokenizer_settings`
    digests into the feature cache's namespace) includes its current truncation and padding state, and the first
    call with ``truncation=True`` changes that state. Without priming, the first text-tower call of a process uses
    another cache folder than every later call, so captions would be embedded twice and never found again by a
    fresh process's first call. Priming puts the tokenizer in the state every later call leaves it in.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    if callable(tokenizer) and getattr(tokenizer, "backend_tokenizer", None) is not None:
        tokenizer(["a"], padding=True, truncation=True, max_length=None)


def shard_positions(count: int, rank: int, world_size: int) -> list[int]:
    """The positions process ``rank`` of ``world_size`` handles among ``count``: ``rank, rank + world_size, ...``.

    Raises:
        ValueError: ``world_size < 1``, ``rank`` outside ``[0, world_size)`` or a negative ``count``.
    """
    for name, value in (("count", count), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"shard_positions: {name} must be a non-negative int, got {value!r}.")
    if world_size < 1 or rank >= world_size:
        raise ValueError(f"shard_positions: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
    return list(range(rank, count, world_size))


def fill_item_cache(
    model: torch.nn.Module,
    processor: Any,
    items: Any,
    cache_dir: str | os.PathLike,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> int:
    """Compute this process's share of the items' frozen item-tower outputs into the feature cache.

    Args:
        model: the model (any family with an adapter); its item tower runs in eval mode, without gradients.
        processor: the model's processor.
        items (`datasets.Dataset` or `Mapping[str, list]`): rows with the media column (``audio``).
        cache_dir (`str`): the `FeatureCache` folder shared by all processes.
        rank (`int`), world_size (`int`): this process and the number of processes.
        batch_size (`int`), device, progress: as `ModelAdapter.item_tower_rows` (a progress bar per process).

    Returns:
        `int`: the rows this process computed (0 when its whole share was already cached).
    """
    from hf_mltm.adapters import get_adapter

    positions = shard_positions(len(_column(items, get_adapter(model).item_column)), rank, world_size)
    before = _own_shards(cache_dir, rank)
    if positions:
        get_adapter(model).item_tower_rows(model, processor, _subset(items, positions), batch_size=batch_size,
                                           device=device, progress=progress, cache_dir=cache_dir, writer=rank)
    return _rows_written(cache_dir, rank, before)


def fill_text_cache(
    model: torch.nn.Module,
    processor: Any,
    texts: Sequence[str],
    cache_dir: str | os.PathLike,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> int:
    """Compute this process's share of the captions' frozen text-tower outputs into the feature cache (e.g. the
    query sample of the OT potentials). Same arguments and return value as `fill_item_cache`."""
    from hf_mltm.adapters import get_adapter

    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise ValueError("fill_text_cache: texts must be a list of strings.")
    positions = shard_positions(len(texts), rank, world_size)
    prime_tokenizer(processor)
    before = _own_shards(cache_dir, rank)
    if positions:
        get_adapter(model).text_tower_rows(model, processor, [texts[p] for p in positions], batch_size=batch_size,
                                           device=device, progress=progress, cache_dir=cache_dir, writer=rank)
    return _rows_written(cache_dir, rank, before)


def _column(items: Any, name: str) -> Sequence[Any]:
    names = getattr(items, "column_names", None) or (list(items) if isinstance(items, Mapping) else [])
    if name not in names:
        raise ValueError(f"the items have no {name!r} column (columns {list(names)}); give the items view of the "
                         f"collection.")
    return items[name]


def _subset(items: Any, positions: list[int]) -> Any:
    if hasattr(items, "select"):
        return items.select(positions)
    return {key: [values[p] for p in positions] for key, values in items.items()}


def _own_shards(cache_dir: str | os.PathLike, writer: int) -> set[Path]:
    """The finished shards of ``writer`` in every namespace of the cache folder."""
    root = Path(cache_dir)
    return set(root.glob(f"*/shard-{writer}-*.safetensors")) if root.is_dir() else set()


def _rows_written(cache_dir: str | os.PathLike, writer: int, before: set[Path]) -> int:
    """Rows in ``writer``'s shards that appeared since ``before`` (read from the shard headers only)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(_own_shards(cache_dir, writer) - before):
        with safe_open(str(path), framework="pt") as handle:
            total += len(json.loads((handle.metadata() or {}).get("keys", "[]")))
    return total
