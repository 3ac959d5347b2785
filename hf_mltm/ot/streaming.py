r"""Balanced Sinkhorn between two large point sets whose cost matrix need not fit in memory.

For ``x`` of shape ``(n, d)`` and ``y`` of shape ``(m, d)`` with uniform marginals and cost ``C = cost_fn(x, y)``:

- when the ``n x m`` cost fits in ``cache_bytes`` it is computed once and solved by :func:`hf_mltm.ot.sinkhorn`;
- otherwise it is produced in row chunks of ``chunk_size`` rows, once per iteration. Each pass updates a chunk's
  ``f`` from the current ``g`` (log-sum-exp, as the dense solver's first iteration) and accumulates the chunk's
  contribution to the column log-sum-exp for the next ``g``, so the iterates equal the dense log-domain ones.

Memory: ``O(chunk_size * m)``, plus the cost itself when it is cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from ._utils import check_epsilon
from .sinkhorn import sinkhorn

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
    """Row chunks of ``cost_fn(x, y)``, computed in float32/float64 without autograd.

    When the whole cost fits in ``cache_bytes`` it is computed once (``full``) and the chunks are views of it.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cost_fn: CostFn, chunk_size: int, cache_bytes: int) -> None:
        if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
            raise ValueError(f"x and y must have shapes (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        self.x, self.y, self.cost_fn, self.chunk_size = x, y, cost_fn, int(chunk_size)
        self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        entry_bytes = torch.finfo(self.dtype).bits // 8
        self.full = self._compute(slice(None)) if x.shape[0] * y.shape[0] * entry_bytes <= cache_bytes else None

    def _compute(self, rows: slice) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=self.x.device.type, enabled=False):
            cost = self.cost_fn(self.x[rows], self.y).to(self.dtype)  # (rows, m)
        if not bool(torch.isfinite(cost).all()):
            raise ValueError(f"cost_fn returned NaN or inf for query rows {rows.start}..{rows.stop}.")
        return cost

    def __iter__(self) -> Iterator[tuple[slice, torch.Tensor]]:
        for start in range(0, self.x.shape[0], self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            yield rows, self.full[rows] if self.full is not None else self._compute(rows)


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
    if normalization == "batch_max":
        scale = chunks.full.max().item() if chunks.full is not None else max(c.max().item() for _, c in chunks)
        scale = scale or 1.0
    elif normalization == "none":
        scale = 1.0
    else:
        raise ValueError(f"Unknown normalization {normalization!r}; use 'none' or 'batch_max'.")
    if chunks.full is not None:
        result = sinkhorn(None, None, chunks.full / scale, epsilon, max_iter=max_iter, tol=tol, warn=False)
        return StreamingPotentials(result.f, result.g, scale, result.n_iter, result.marginal_error.item())
    log_a, log_b = -math.log(n), -math.log(m)
    f = torch.zeros(n, dtype=dtype, device=device)  # scaled potentials f / epsilon
    g = torch.zeros(m, dtype=dtype, device=device)
    inv = 1.0 / (epsilon * scale)
    error, n_iter = float("inf"), 0
    while n_iter < max_iter and not error < tol:
        n_iter += 1
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
    return StreamingPotentials(f=f * epsilon, g=g * epsilon, scale=scale, n_iter=n_iter, marginal_error=error)
