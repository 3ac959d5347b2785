r"""Balanced Sinkhorn between two large point sets whose cost matrix need not fit in memory.

For a cost ``C`` of shape ``(n, m)`` (``n`` rows, e.g. queries; ``m`` columns, e.g. gallery items) given by row
blocks (:class:`CostChunks`) and uniform marginals:

.. math::
    P^\star = \arg\min_{P \ge 0,\ P 1_m = 1_n / n,\ P^\top 1_n = 1_m / m} \langle P, C / s \rangle - \varepsilon H(P)

with ``s`` the ``cost_scale`` (1, or the cost's maximum for ``normalization="batch_max"``).

- When the ``n x m`` cost fits in ``cache_bytes`` it is computed once and solved by :func:`hf_mltm.ot.sinkhorn`.
- Otherwise it is produced in row chunks of ``chunk_size`` rows, once per iteration. Each pass updates a chunk's
  ``f`` from the current ``g`` (log-sum-exp, as the dense solver's first iteration) and accumulates the chunk's
  contribution to the column log-sum-exp for the next ``g``, so the iterates equal the dense log-domain ones.

A cost comes from (a) a full matrix (:meth:`CostChunks.from_matrix`), (b) embeddings and a cost function
(:meth:`CostChunks.from_embeddings`) or (c) any block function ``rows -> (len(rows), m)``, e.g. a model that scores a
chunk of queries against a whole gallery (:class:`CostChunks` itself).

Numerics: blocks are computed under ``no_grad`` and converted to float32 (or float64); the solve is in the log
domain. Memory: ``O(chunk_size * m)``, plus the cost itself when it is cached.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator

import torch

from ._utils import check_epsilon
from .result import OTResult
from .sinkhorn import check_iterations, sinkhorn

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BlockFn = Callable[[slice], torch.Tensor]

DEFAULT_CHUNK_SIZE = 512
DEFAULT_CACHE_BYTES = 128 * 2**20

_STREAMING_POTENTIALS_REMOVED = (
    "StreamingPotentials was replaced by OTResult: streaming_sinkhorn returns an OTResult; read .f, .g, "
    ".cost_scale (was .scale), .n_iter and .marginal_error (now a 0-dim tensor)."
)


class CostChunks:
    """A cost matrix of shape ``(num_rows, num_cols)`` given by row blocks, in bounded memory.

    Args:
        block_fn (`Callable[[slice], torch.Tensor]`): ``rows -> (len(rows), num_cols)`` cost block (lower is better)
            for the rows ``rows.start .. rows.stop - 1`` (a step-1 slice within ``[0, num_rows)``). It is called
            under ``torch.no_grad()``; any float dtype and device, converted to ``dtype`` on ``device``.
        num_rows (`int`), num_cols (`int`): the cost's shape.
        chunk_size (`int`): rows per block when iterating.
        cache_bytes (`int`): compute the whole cost once and keep it (``full``) when it takes at most this many
            bytes in ``dtype``; otherwise every pass over the cost calls ``block_fn`` again.
        dtype (`torch.dtype`): ``torch.float32`` or ``torch.float64``, the dtype blocks are computed and solved in.
        device (`torch.device` or `str`): where blocks are kept.

    Iterating yields ``(rows, block)`` pairs covering every row once, in order. Every block is checked for NaN/inf
    (a `ValueError` names the rows).

    Example:
        >>> import torch
        >>> from hf_mltm.ot import CostChunks
        >>> cost = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
        >>> chunks = CostChunks(lambda rows: cost[rows], 3, 2, chunk_size=2, cache_bytes=0)
        >>> [(rows.start, rows.stop, block.shape[0]) for rows, block in chunks]
        [(0, 2, 2), (2, 3, 1)]
    """

    def __init__(
        self,
        block_fn: BlockFn,
        num_rows: int,
        num_cols: int,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if not callable(block_fn):
            raise ValueError(f"block_fn must be a callable rows -> (len(rows), num_cols) tensor, got {block_fn!r}.")
        num_rows, num_cols = _count("num_rows", num_rows, 0), _count("num_cols", num_cols, 0)
        chunk_size = _count("chunk_size", chunk_size, 1)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
        self.block_fn, self.num_rows, self.num_cols = block_fn, num_rows, num_cols
        self.chunk_size, self.dtype, self.device = chunk_size, dtype, torch.device(device)
        entry_bytes = torch.finfo(dtype).bits // 8
        self.full: torch.Tensor | None = None
        if num_rows * num_cols * entry_bytes <= cache_bytes:
            self.full = self.block(slice(0, num_rows))

    @classmethod
    def from_matrix(
        cls, cost: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> CostChunks:
        """Row blocks of a full cost matrix ``(num_rows, num_cols)`` (float64 stays float64, other floats become
        float32). When it fits ``cache_bytes``, ``full`` is the matrix itself (no copy if already float32/float64)."""
        if not isinstance(cost, torch.Tensor) or cost.dim() != 2:
            shape = tuple(cost.shape) if isinstance(cost, torch.Tensor) else type(cost).__name__
            raise ValueError(f"cost must be a (num_queries, num_items) tensor, got {shape}.")
        if not cost.is_floating_point():
            raise ValueError(f"cost must be a floating-point tensor, got dtype {cost.dtype}.")
        dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32
        return cls(lambda rows: cost[rows], cost.shape[0], cost.shape[1], chunk_size=chunk_size,
                   cache_bytes=cache_bytes, dtype=dtype, device=cost.device)

    @classmethod
    def from_embeddings(
        cls,
        x: torch.Tensor,
        y: torch.Tensor,
        cost_fn: CostFn,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> CostChunks:
        """Row blocks of ``cost_fn(x, y)`` for ``x`` ``(n, d)`` and ``y`` ``(m, d)``: block ``rows`` is
        ``cost_fn(x[rows], y)``, computed with autocast disabled, in float32 (float64 for float64 ``x``)."""
        if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
            raise ValueError(f"x and y must have shapes (n, d) and (m, d), got {tuple(x.shape)} and {tuple(y.shape)}.")

        def block_fn(rows: slice) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return cost_fn(x[rows], y)  # (rows, m)

        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return cls(block_fn, x.shape[0], y.shape[0], chunk_size=chunk_size, cache_bytes=cache_bytes, dtype=dtype,
                   device=x.device)

    @property
    def shape(self) -> tuple[int, int]:
        """``(num_rows, num_cols)``."""
        return self.num_rows, self.num_cols

    def block(self, rows: slice) -> torch.Tensor:
        """The cost block ``(len(rows), num_cols)`` of ``rows`` (the cached one when ``full`` is kept), validated:
        shape checked, converted to ``dtype`` on ``device``, NaN/inf rejected with the offending rows named."""
        if self.full is not None:
            return self.full[rows]
        with torch.no_grad():
            block = self.block_fn(rows)
        expected = (rows.stop - rows.start, self.num_cols)
        if not isinstance(block, torch.Tensor) or tuple(block.shape) != expected:
            got = tuple(block.shape) if isinstance(block, torch.Tensor) else type(block).__name__
            raise ValueError(
                f"the cost block of rows {rows.start}..{rows.stop - 1} has shape {got}, expected {expected} "
                f"(len(rows), num_cols)."
            )
        block = block.to(device=self.device, dtype=self.dtype)
        bad_rows = (~torch.isfinite(block)).any(dim=1).nonzero()[:, 0]
        if len(bad_rows):
            rows_named = (bad_rows[:5] + rows.start).tolist()
            more = f" and {len(bad_rows) - 5} more" if len(bad_rows) > 5 else ""
            raise ValueError(
                f"the cost has NaN or inf entries in rows {rows_named}{more}; fix the embeddings or the cost function "
                f"for those rows."
            )
        return block

    def __iter__(self) -> Iterator[tuple[slice, torch.Tensor]]:
        for start in range(0, self.num_rows, self.chunk_size):
            rows = slice(start, min(start + self.chunk_size, self.num_rows))
            yield rows, self.block(rows)

    def __repr__(self) -> str:
        cached = "cached" if self.full is not None else "streamed"
        return (f"CostChunks(num_rows={self.num_rows}, num_cols={self.num_cols}, chunk_size={self.chunk_size}, "
                f"dtype={self.dtype}, device={self.device}, {cached})")


def _count(name: str, value: int, minimum: int) -> int:
    """``value`` as a Python int ``>= minimum`` (ints, 0-dim integer tensors and NumPy integers are accepted)."""
    try:
        count = operator.index(value)
    except TypeError:
        count = None
    if count is None or isinstance(value, bool) or count < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return count


def cost_scale(chunks: CostChunks, normalization: str) -> float:
    """The positive factor ``streaming_sinkhorn`` divides the cost by: the cost's maximum for ``"batch_max"`` when it
    is positive (as :func:`hf_mltm.ot.normalize_cost`; a non-positive maximum leaves the cost unscaled), else 1."""
    if normalization == "none":
        return 1.0
    if normalization == "batch_max":
        if chunks.full is not None:
            largest = chunks.full.max().item()
        else:
            largest = max(block.max().item() for _, block in chunks)
        return largest if largest > 0 else 1.0
    raise ValueError(f"Unknown normalization {normalization!r}; use 'none' or 'batch_max'.")


def streaming_sinkhorn(
    chunks: CostChunks,
    epsilon: float,
    *,
    normalization: str = "none",
    max_iter: int = 100,
    tol: float = 1e-6,
) -> OTResult:
    """Potentials of the uniform-marginal entropic OT problem of the cost ``chunks`` ``(n, m)``.

    Args:
        chunks ([`CostChunks`]): the cost, by row blocks (at least one row and one column).
        epsilon (`float`): regularisation relative to the (normalised) cost.
        normalization (`str`): ``"batch_max"`` divides the cost by its global maximum first (when positive; see
            :func:`cost_scale`), ``"none"`` does not.
        max_iter (`int`): maximum iterations (one pass over the cost each, unless cached).
        tol (`float`): stop when the L1 marginal error falls below it (0 runs ``max_iter`` iterations).

    Returns:
        [`OTResult`] with ``f`` ``(n,)``, ``g`` ``(m,)`` in units of the *normalised* cost (multiply by
        ``cost_scale`` for the units of ``chunks``), ``cost_scale``, ``n_iter``, ``marginal_error`` (shape ``()``;
        cached: the dense solver's error; streamed: the row-marginal error before the last column update) and
        ``converged``; no plan (``plan``, ``log_plan``, ``h``, ``value`` are `None`). Never warns: check
        ``converged``.

    Raises:
        ValueError: bad arguments, an empty cost, a non-finite block, or a cost too large for its dtype.
    """
    if not isinstance(chunks, CostChunks):
        raise ValueError(f"chunks must be a CostChunks, got {type(chunks).__name__}.")
    epsilon = check_epsilon(epsilon)
    check_iterations(max_iter, tol, 1)
    n, m = chunks.shape
    if n == 0 or m == 0:
        raise ValueError(f"streaming_sinkhorn needs a cost with at least one row and one column, got shape {(n, m)}.")
    device, dtype = chunks.device, chunks.dtype
    scale = cost_scale(chunks, normalization)
    if chunks.full is not None:
        result = sinkhorn(None, None, chunks.full / scale, epsilon, max_iter=max_iter, tol=tol, warn=False)
        return OTResult(None, None, result.f, result.g, result.n_iter, result.marginal_error, result.converged,
                        cost_scale=scale)
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
        if not (bool(torch.isfinite(f).all()) and bool(torch.isfinite(g).all())):
            raise ValueError(
                f"streaming_sinkhorn left the range of {dtype} (max |cost| / (epsilon * cost_scale) too large for "
                f"epsilon={epsilon:g}, cost_scale={scale:g}); use normalization='batch_max', raise epsilon, or give "
                f"a float64 cost."
            )
    converged = error < tol if tol > 0 else True
    return OTResult(None, None, f * epsilon, g * epsilon, n_iter, torch.tensor(error, dtype=dtype, device=device),
                    converged, cost_scale=scale)


def __getattr__(name: str):
    if name == "StreamingPotentials":
        raise AttributeError(_STREAMING_POTENTIALS_REMOVED)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
