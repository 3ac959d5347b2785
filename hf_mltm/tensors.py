"""Tensor helpers shared by the models and the training loop."""

from __future__ import annotations

import torch

__all__ = ["pad_and_stack"]


def pad_and_stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-row tensors of equal rank, padding every dim at its end to the max (0 or ``False``).

    Args:
        rows (`list[torch.Tensor]`): tensors of shape ``(*shape_i)``, same rank and dtype.

    Returns:
        `torch.Tensor` of shape `(len(rows), *max_i shape_i)`.
    """
    shape = [max(sizes) for sizes in zip(*(row.shape for row in rows), strict=True)]
    out = rows[0].new_zeros((len(rows), *shape))
    for index, row in enumerate(rows):
        out[(index, *(slice(0, size) for size in row.shape))] = row
    return out
