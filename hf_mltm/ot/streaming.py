r"""Balanced Sinkhorn between two large point sets whose cost matrix need not fit in memory.

For ``x`` of shape ``(n, d)`` and ``y`` of shape ``(m, d)`` with uniform marginals, the cost ``C = cost_fn(x, y)`` is
produced in row chunks of ``chunk_size`` rows. Each iteration makes one pass over the chunks: a chunk's ``f`` is
updated from the current ``g`` (exactly as in :func:`hf_mltm.ot.sinkhorn`), then its contribution to the column
log-sum-exp for the next ``g`` is accumulated, so the iterates equal the dense solver's.

Memory: ``O(chunk_size * m)`` plus, when ``n * m`` cost entries fit in ``cache_bytes``, the cached cost itself
(then the cost is computed once; otherwise once per iteration).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from ._utils import check_epsilon

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StreamingPotentials(NamedTuple):
    """Dual potentials of a streamed Sinkhorn solve, in (normalised) cost units.

    Attributes:
        f (`torch.Tensor` of shape `(n,)`), g (`torch.Tensor` of shape `(m,)`): the potentials.
        scale (`float`): the factor the cost was divided by (1 without normalisation).
        n_iter (`int`): iterations run.
        marginal_error (`float`): L1 row-marginal error before the last column update.
    """

    f: torch.Tensor
    g: torch.Tensor
    scale: float
    n_iter: int
    marginal_error: float


class CostChunks:
    """Row chunks of ``cost_fn(x, y)``, computed in float32/float64 without autograd, cached when small enough."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cost_fn: CostFn, chunk_size: int, cache_bytes: int) -> None:
        if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
            raise ValueError(f"x and y must have shapes (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.x, self.y, self.cost_fn, self.chunk_size = x, y, cost_fn, int(chunk_size)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.dtype = dtype
        entry_bytes = torch.finfo(dtype).bits // 8
        self._cache: list[torch.Tensor] | None = [] if x.shape[0] * y.shape[0] * entry_bytes <= cache_bytes else None

    def __iter__(self) -> Iterator[tuple[slice, torch.Tensor]]:
        n = self.x.shape[0]
        starts = range(0, n, self.chunk_size)
        if self._cache is not None and len(self._cache) == len(starts):
            yield from ((slice(s, s + self.chunk_size), c) for s, c in zip(starts, self._cache, strict=True))
            return
        fill = self._cache is not None
        for start in starts:
            rows = slice(start, start + self.chunk_size)
            with torch.no_grad(), torch.autocast(device_type=self.x.device.type, enabled=False):
                chunk = self.cost_fn(self.x[rows], self.y).to(self.dtype)  # (chunk, m)
            if not bool(torch.isfinite(chunk).all()):
                raise ValueError(f"cost_fn returned NaN or inf for rows {start}..{start + chunk.shape[0] - 1}.")
            if fill:
                self._cache.append(chunk)
            yield rows, chunk


def streaming_sinkhorn(
    chunks: CostChunks,
    epsilon: float,
    *,
    normalization: str = "none",
    max_iter: int = 100,
    tol: float = 1e-6,
) -> StreamingPotentials:
    """Potentials of the uniform-marginal entropic OT problem between ``chunks.x`` and ``chunks.y``.

    Args:
        chunks ([`CostChunks`]): the cost, by row chunks.
        epsilon (`float`): regularisation relative to the (normalised) cost.
        normalization (`str`): ``"batch_max"`` divides the cost by its global maximum first, ``"none"`` does not.
        max_iter (`int`): maximum iterations (one pass over the cost each, unless cached).
        tol (`float`): stop when the L1 row-marginal error falls below it.
    """
    epsilon = check_epsilon(epsilon)
    n, m = chunks.x.shape[0], chunks.y.shape[0]
    device, dtype = chunks.x.device, chunks.dtype
    scale = 1.0
    if normalization == "batch_max":
        scale = max(chunk.max().item() for _, chunk in chunks) or 1.0
    elif normalization != "none":
        raise ValueError(f"Unknown normalization {normalization!r}; use 'none' or 'batch_max'.")
    log_a, log_b = -math.log(n), -math.log(m)
    f = torch.zeros(n, dtype=dtype, device=device)  # scaled potentials f / epsilon
    g = torch.zeros(m, dtype=dtype, device=device)
    inv = 1.0 / (epsilon * scale)
    error, n_iter = float("inf"), 0
    for n_iter in range(1, max_iter + 1):
        column_lse = torch.full((m,), float("-inf"), dtype=dtype, device=device)
        row_error = 0.0
        for rows, chunk in chunks:
            log_kernel = chunk * -inv  # (chunk, m)
            f_new = log_a - torch.logsumexp(log_kernel + g, dim=1)
            row_error += (math.exp(log_a) * torch.expm1(f[rows] - f_new)).abs().sum().item()
            f[rows] = f_new
            column_lse = torch.logaddexp(column_lse, torch.logsumexp(log_kernel + f_new[:, None], dim=0))
        g = log_b - column_lse
        error = row_error
        if error < tol:
            break
    return StreamingPotentials(f=f * epsilon, g=g * epsilon, scale=scale, n_iter=n_iter, marginal_error=error)
