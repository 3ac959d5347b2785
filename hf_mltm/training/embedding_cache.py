"""Cache of frozen-tower outputs, so that CPU training runs only the heads (and the OT loss).

With frozen towers, ``model.get_tower_outputs(**batch)`` is a fixed function of each row. `EmbeddingCache` runs it
once over a captions-view dataset, in row order, and keeps one tensor per row and key; `collate` re-batches rows
into the keyword arguments ``model.forward`` accepts in place of the raw inputs. Dims after the first may differ
between the batches the cache was built from (e.g. token counts): they are padded with 0 (``False`` for bool masks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hf_mltm.tensors import pad_and_stack

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """Per-row tower outputs of a training set.

    Args:
        rows (`dict[str, list[torch.Tensor]]`): for every key of ``get_tower_outputs``, one tensor per dataset row
            (e.g. ``audio_tower_embeds``: ``N`` tensors of shape ``(audio_hidden,)``).
        item_ids (`torch.LongTensor` of shape `(N,)`): the rows' ``item_index`` (duplicate-aware loss).
    """

    def __init__(self, rows: dict[str, list[torch.Tensor]], item_ids: torch.Tensor) -> None:
        lengths = {key: len(values) for key, values in rows.items()}
        if any(length != len(item_ids) for length in lengths.values()):
            raise ValueError(f"EmbeddingCache: {len(item_ids)} item_ids but rows per key {lengths}.")
        self.rows = rows
        self.item_ids = item_ids.long()

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: torch.nn.Module,
        dataset: Any,
        collate_fn: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
        *,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> EmbeddingCache:
        """Run ``model.get_tower_outputs`` over ``dataset`` (row order) in eval mode, without gradient.

        Args:
            model: a model with ``get_tower_outputs`` (towers frozen).
            dataset: indexable rows (a `datasets.Dataset`), turned into batches by ``collate_fn``.
            collate_fn: list of rows -> model inputs including ``item_ids``.
            batch_size (`int`, defaults to 32): rows per tower batch.
            device: where to run the towers (default: the model's device). Cached tensors are kept on CPU.
            progress (`bool`, defaults to `True`): a tqdm bar.
        """
        if not hasattr(model, "get_tower_outputs"):
            raise ValueError(f"{type(model).__name__} has no get_tower_outputs: it cannot use the embedding cache; "
                             "set training.embedding_cache: false.")
        was_training = model.training
        model.eval()
        device = torch.device(device) if device is not None else next(model.parameters()).device
        rows: dict[str, list[torch.Tensor]] = {}
        item_ids: list[torch.Tensor] = []
        starts: Iterable[int] = range(0, len(dataset), batch_size)
        for start in tqdm(starts, desc="tower embeddings", disable=not progress):
            batch = collate_fn([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            item_ids.append(batch.pop("item_ids").cpu())
            batch = {key: value.to(device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
            outputs = model.get_tower_outputs(**batch)
            for key, value in outputs.items():
                rows.setdefault(key, []).extend(value.detach().float().cpu() if value.is_floating_point()
                                                else value.detach().cpu())
        model.train(was_training)
        return cls(rows, torch.cat(item_ids))

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Rows ``indices`` as a batch: each key padded and stacked, plus ``item_ids`` ``(b,)``."""
        batch = {key: pad_and_stack([values[i] for i in indices]) for key, values in self.rows.items()}
        batch["item_ids"] = self.item_ids[list(indices)]
        return batch

    def save(self, path: str | Path) -> None:
        """Write the cache with `torch.save` (plain tensors only)."""
        torch.save({"rows": self.rows, "item_ids": self.item_ids}, path)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingCache:
        """Read a cache written by `save`."""
        state = torch.load(path, weights_only=True)
        return cls(state["rows"], state["item_ids"])
