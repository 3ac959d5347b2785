"""Differentiable all-gather for global-batch OT losses across processes.

A mini-batch OT loss couples every sample with every other one, so data-parallel training must build the
``(b, b)`` cost of the *global* batch ``b = sum_r b_r``. Each process all-gathers its per-sample tensors with
gradient (`torch.distributed.nn.functional.all_gather`; ``accelerate``'s ``gather`` has none), computes the same
global loss ``L`` and back-propagates it.

Gradient scaling: the backward of the functional all-gather *sums* the incoming gradients of every rank, so the
local slice ``x_r`` of rank ``r`` receives ``world_size * dL/dx_r`` (every rank holds the same ``L``). DDP then
*averages* parameter gradients over the ranks, which divides by ``world_size`` again: the result is exactly the
gradient of the global-batch loss of a single process, with no extra scaling. Parameters used only after the
gather (e.g. a learned metric) get the full ``dL/dtheta`` on every rank, and their average is that same value.
Each rank back-propagates all rows of the global loss (the loss is replicated), not only its own.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_with_grad", "gather_tensor_dict", "world_info"]


def world_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _pad_to(tensor: torch.Tensor, shape: tuple[int, ...], pad_value: float | bool) -> torch.Tensor:
    """Pad every dim of ``tensor`` at its end to ``shape``: differentiable for floating tensors."""
    if tuple(tensor.shape) == shape:
        return tensor
    if tensor.is_floating_point():
        pads: list[int] = []
        for have, want in zip(reversed(tensor.shape), reversed(shape), strict=True):
            pads.extend([0, want - have])
        return torch.nn.functional.pad(tensor, pads, value=float(pad_value))
    padded = tensor.new_full(shape, pad_value)
    padded[tuple(slice(0, size) for size in tensor.shape)] = tensor
    return padded


def all_gather_with_grad(tensor: torch.Tensor, *, pad_value: float | bool = 0) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph.

    Ranks may hold different sizes in every dimension: dims > 0 are padded with ``pad_value`` to the maximum
    over ranks (e.g. token counts of a text batch; use ``False`` for boolean masks), and each rank's rows are
    trimmed back to its own count along dim 0, so the result has ``sum_r n_r`` rows in rank order.

    Args:
        tensor (`torch.Tensor` of shape `(n_r, ...)`): this rank's per-sample tensor (any dtype; only floating
            tensors carry gradient).
        pad_value (`float` or `bool`, defaults to 0): fill value for padded entries of dims > 0.

    Returns:
        `torch.Tensor` of shape `(sum_r n_r, *max_r shape_r[1:])`: the global tensor; the input itself when no
        process group is initialised or the world has one process.

    Raises:
        ValueError: ``tensor`` is a scalar, or the ranks disagree on the number of dimensions.
    """
    if tensor.dim() == 0:
        raise ValueError("all_gather_with_grad needs per-sample tensors (dim >= 1), got a scalar.")
    _, world_size = world_info()
    if world_size == 1:
        return tensor
    if tensor.dim() > 8:
        raise ValueError(f"all_gather_with_grad supports up to 8 dims, got shape {tuple(tensor.shape)}.")
    # Shapes travel as a fixed-size tensor (gloo/NCCL need equal sizes): (ndim, size_0, ..., 0-padded).
    local_shape = torch.tensor([tensor.dim(), *tensor.shape, *[0] * (8 - tensor.dim())], dtype=torch.long)
    local_shape = local_shape.to(tensor.device)
    shapes = [torch.zeros_like(local_shape) for _ in range(world_size)]
    dist.all_gather(shapes, local_shape)
    dims = {int(shape[0]) for shape in shapes}
    if dims != {tensor.dim()}:
        raise ValueError(f"all_gather_with_grad: ranks hold tensors with different numbers of dims {sorted(dims)}.")
    sizes = torch.stack(shapes).cpu()[:, 1 : tensor.dim() + 1]  # (world_size, dim)
    max_shape = tuple(int(size) for size in sizes.max(dim=0).values)
    padded = _pad_to(tensor, max_shape, pad_value)
    if tensor.is_floating_point() and tensor.requires_grad:
        from torch.distributed.nn.functional import all_gather

        gathered = all_gather(padded.contiguous())
    else:
        gathered = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(gathered, padded.contiguous())
    pieces = [piece[: int(sizes[r, 0])] for r, piece in enumerate(gathered)]
    return torch.cat(pieces, dim=0)


def gather_tensor_dict(
    tensors: dict[str, torch.Tensor], *, pad_values: dict[str, float | bool] | None = None
) -> dict[str, torch.Tensor]:
    """`all_gather_with_grad` on every value of a dict of per-sample tensors (boolean ones padded with ``False``).

    Args:
        tensors (`dict[str, torch.Tensor]`): per-sample tensors, first dim = local batch.
        pad_values (`dict[str, float | bool]`, *optional*): per-key padding values (default 0 / ``False``).

    Returns:
        `dict[str, torch.Tensor]`: the global tensors, same keys.
    """
    pad_values = pad_values or {}
    return {
        key: all_gather_with_grad(
            value, pad_value=pad_values.get(key, False if value.dtype == torch.bool else 0)
        )
        for key, value in tensors.items()
    }
