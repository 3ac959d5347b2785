r"""OT re-ranking at gallery scale: column potentials estimated once, applied to each query's candidates.

Letters: ``N`` gallery items, ``n`` queries of the potential sample, ``q`` search queries, ``K`` candidates per query,
``k`` results per query.

The transductive OT ranking of the m-LTM paper (:func:`hf_mltm.evaluation.ranks_from_cost` with ``mode="ot"``) ranks
item ``j`` for query ``i`` by the entropic plan between *all* test queries and *all* items, i.e. by

.. math::
    C_{ij} - g_j = C_{ij} - \varepsilon s \log v_j,

with ``g`` the column dual potential of the uniform-marginal problem on the cost ``C / s`` (``s`` the normalisation's
``cost_scale``, e.g. the cost's maximum) and ``v = exp(g / (eps s))`` its scaling. ``g_j`` is large for an item few
queries are close to, so the correction lifts "anti-hubs" and pushes down hubs.

At gallery scale the test queries are not known in advance, so the index estimates ``g`` **once**, from a sample of
``n`` queries (e.g. the gallery's own captions) against the whole gallery (:func:`estimate_column_potentials`,
:func:`hf_mltm.ot.streaming_sinkhorn` on :class:`hf_mltm.ot.CostChunks`), stores it, and re-ranks each query's
``K`` nearest candidates by ``C_ij - g_j`` (:func:`rerank_candidates`). Two approximations, measured in
docs/index.md:

1. *Potentials from a sample*: ``g`` solves the problem of the sample, not of the actual queries (it no longer
   adapts to a query batch; one query at a time is answered with the same ``g``). The normalisation's scale ``s`` is
   that of the sample's cost.
2. *Candidates*: only the ``K`` nearest items by ``C`` are re-ranked. This is exact, for the stored ``g``, whenever
   the k-th corrected cost is at most ``C_(K) - max(g)`` (``C_(K)`` the largest candidate cost): every item outside
   the candidates has ``C >= C_(K)``, so its corrected cost is ``>= C_(K) - max(g)``. :func:`rerank_candidates`
   reports this certificate per query, and the index widens ``K`` until it holds (up to a cap).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from hf_mltm.ot.streaming import CostChunks, streaming_sinkhorn

__all__ = [
    "ColumnPotentials",
    "RerankResult",
    "estimate_column_potentials",
    "recall_at_k",
    "rerank_candidates",
    "top1_agreement",
    "topk_overlap",
]

DEFAULT_BLOCK_BYTES = 256 * 2**20
DEFAULT_POTENTIAL_CACHE_BYTES = 512 * 2**20


@dataclass
class ColumnPotentials:
    """The gallery's column dual potential ``g`` and how it was estimated.

    Attributes:
        g (`torch.Tensor` of shape `(N,)`): float32, in *raw* cost units (the solver's ``g`` times ``cost_scale``), so
            that a query's OT ranking cost is ``C_ij - g_j``. Defined up to a constant (which no ranking sees).
        epsilon (`float`): entropic regularisation, relative to the cost divided by ``cost_scale``.
        normalization (`str`): ``"batch_max"`` (``cost_scale`` = the sample cost's maximum) or ``"none"``.
        cost_scale (`float`): the factor the cost was divided by before solving.
        num_queries (`int`): ``n``, the size of the query sample.
        n_iter (`int`), marginal_error (`float`), converged (`bool`): the solve's report.
        source (`str`): what the query sample was (e.g. ``"captions of the gallery (5000 of 25000)"``).
    """

    g: torch.Tensor
    epsilon: float
    normalization: str
    cost_scale: float
    num_queries: int
    n_iter: int
    marginal_error: float
    converged: bool
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.g, torch.Tensor) or self.g.dim() != 1:
            shape = tuple(self.g.shape) if isinstance(self.g, torch.Tensor) else type(self.g).__name__
            raise ValueError(f"ColumnPotentials: g must be a 1-D tensor (one potential per gallery item), got {shape}.")
        self.g = self.g.detach().to("cpu", torch.float32).contiguous()
        if not bool(torch.isfinite(self.g).all()):
            raise ValueError("ColumnPotentials: g holds NaN or inf; estimate the potentials again (raise epsilon).")

    @property
    def g_max(self) -> float:
        """``max_j g_j``, the bound used by the candidate certificate."""
        return float(self.g.max()) if len(self.g) else 0.0

    def to_manifest(self) -> dict[str, Any]:
        """Everything but ``g`` (stored as a tensor), JSON-able."""
        entry = asdict(self)
        del entry["g"]
        return entry

    @classmethod
    def from_manifest(cls, entry: Any, g: torch.Tensor, where: str) -> ColumnPotentials:
        """Inverse of `to_manifest`; ``where`` names the manifest in error messages."""
        fields = ("epsilon", "normalization", "cost_scale", "num_queries", "n_iter", "marginal_error", "converged")
        if not isinstance(entry, dict) or any(name not in entry for name in fields):
            missing = [name for name in fields if not isinstance(entry, dict) or name not in entry]
            raise ValueError(f"{where}: field 'potentials' lacks {missing}; rebuild the index's potentials.")
        return cls(g=g, **{name: entry[name] for name in (*fields, "source") if name in entry})


def estimate_column_potentials(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    cost_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epsilon: float,
    normalization: str = "batch_max",
    max_iter: int = 100,
    tol: float = 1e-6,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    cache_bytes: int = DEFAULT_POTENTIAL_CACHE_BYTES,
    source: str = "",
) -> ColumnPotentials:
    """The gallery's column potentials of the uniform-marginal entropic OT problem between a query sample and it.

    Solves :func:`hf_mltm.ot.streaming_sinkhorn` on the cost ``cost_fn(queries, gallery)`` ``(n, N)``, given as
    :class:`hf_mltm.ot.CostChunks` of about ``block_bytes`` each (never the whole ``(n, N)`` matrix, unless it fits
    ``cache_bytes``, when the dense solver runs on it).

    Args:
        queries (`torch.Tensor` of shape `(n, r)`): the query sample, in the space ``cost_fn`` takes.
        gallery (`torch.Tensor` of shape `(N, r)`): the gallery, same space.
        cost_fn (`Callable`): ``(b, r), (N, r) -> (b, N)`` cost, lower is better (e.g.
            `IndexSpace.index_cost`).
        epsilon (`float`): regularisation relative to the (normalised) cost, e.g. the model's ``ot_epsilon``.
        normalization (`str`): ``"batch_max"`` or ``"none"`` (see `streaming_sinkhorn`).
        max_iter (`int`), tol (`float`): Sinkhorn stopping rule (as `ranks_from_cost`'s ``ot_max_iter``/``ot_tol``).
        block_bytes (`int`): size of one streamed cost block (float32), i.e. the working memory.
        cache_bytes (`int`): keep the whole cost when it is at most this large and solve it densely (the dense
            solver then needs about five times this much); a larger cost is streamed, recomputing every block on
            every iteration (``n * N * r`` multiply-adds per iteration: pick ``n`` so the cost fits, see
            docs/index.md).
        source (`str`): a note on where the queries come from, kept with the potentials.

    Returns:
        [`ColumnPotentials`] with ``g`` ``(N,)`` in raw cost units. A `UserWarning` says when the solve did not reach
        ``tol``.

    Raises:
        ValueError: empty or mismatched inputs, NaN/inf costs, or an ``epsilon`` the solver rejects.
    """
    for name, value in (("queries", queries), ("gallery", gallery)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or len(value) == 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"estimate_column_potentials: {name} must be a non-empty (rows, r) tensor, got {shape}.")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"estimate_column_potentials: queries have dimension {queries.shape[1]} but the gallery "
            f"{gallery.shape[1]}; embed both with the same model and space."
        )
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1:
        raise ValueError(f"estimate_column_potentials: block_bytes must be a positive int, got {block_bytes!r}.")
    chunk_size = max(1, block_bytes // (4 * len(gallery)))
    chunks = CostChunks.from_embeddings(queries.float(), gallery.float(), cost_fn, chunk_size=chunk_size,
                                        cache_bytes=cache_bytes)
    result = streaming_sinkhorn(chunks, epsilon, normalization=normalization, max_iter=max_iter, tol=tol)
    if not result.converged:
        warnings.warn(
            f"estimate_column_potentials: Sinkhorn stopped after {result.n_iter} iterations with marginal error "
            f"{float(result.marginal_error):.3g} >= tol {tol:g}; the potentials are approximate (raise max_iter or "
            f"epsilon).",
            UserWarning,
            stacklevel=2,
        )
    return ColumnPotentials(
        g=result.g * result.cost_scale,
        epsilon=float(epsilon),
        normalization=normalization,
        cost_scale=float(result.cost_scale),
        num_queries=len(queries),
        n_iter=int(result.n_iter),
        marginal_error=float(result.marginal_error),
        converged=bool(result.converged),
        source=source,
    )


class RerankResult(NamedTuple):
    """The top ``k`` of each query after OT re-ranking of its candidates.

    Attributes:
        rows (`np.ndarray` of shape `(q, k)`, int64): gallery rows, best first; -1 where fewer than ``k`` candidates.
        costs (`np.ndarray` of shape `(q, k)`, float32): the model's cost ``C_ij`` of each (``inf`` for -1 rows).
        ranking_costs (`np.ndarray` of shape `(q, k)`, float32): ``C_ij - g_j``, ascending (``inf`` for -1 rows).
        certified (`np.ndarray` of shape `(q,)`, bool): the top ``k`` equals the top ``k`` by ``C - g`` over the
            whole gallery (up to ties), given that the candidates were the ``K`` nearest items by ``C``.
    """

    rows: np.ndarray
    costs: np.ndarray
    ranking_costs: np.ndarray
    certified: np.ndarray


def rerank_candidates(
    costs: np.ndarray,
    rows: np.ndarray,
    potentials: ColumnPotentials | np.ndarray | torch.Tensor,
    k: int,
    *,
    complete: np.ndarray | bool = False,
) -> RerankResult:
    """Re-rank each query's candidates by ``C_ij - g_j`` and keep the best ``k``.

    Args:
        costs (`np.ndarray` of shape `(q, K)`): the model's cost of each candidate, ascending along each row (as a
            nearest-neighbour search returns them).
        rows (`np.ndarray` of shape `(q, K)`): the candidates' gallery rows; -1 marks an empty slot.
        potentials ([`ColumnPotentials`] or array of shape `(N,)`): ``g`` in raw cost units.
        k (`int`): results per query (``1 <= k``).
        complete (`bool` or `np.ndarray` of shape `(q,)`): the candidates are the whole gallery (then every query is
            certified).

    Returns:
        [`RerankResult`]. Ties in ``C - g`` keep the candidates' order (a stable sort).

    Raises:
        ValueError: mismatched shapes, ``k < 1``, or a row outside ``[-1, N)``.
    """
    g = potentials.g if isinstance(potentials, ColumnPotentials) else potentials
    g = np.asarray(g.numpy() if isinstance(g, torch.Tensor) else g, dtype=np.float32)
    costs, rows = np.asarray(costs, dtype=np.float32), np.asarray(rows, dtype=np.int64)
    if costs.ndim != 2 or costs.shape != rows.shape:
        raise ValueError(f"rerank_candidates: costs and rows must both be (q, K), got {costs.shape} and {rows.shape}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"rerank_candidates: k must be a positive int, got {k!r}.")
    if rows.size and (rows.min() < -1 or rows.max() >= len(g)):
        raise ValueError(
            f"rerank_candidates: rows must lie in [-1, {len(g)}) (the gallery has {len(g)} potentials), got "
            f"[{rows.min()}, {rows.max()}]; were the potentials estimated for another gallery?"
        )
    valid = rows >= 0
    corrected = np.where(valid, costs - g[np.maximum(rows, 0)], np.inf).astype(np.float32)  # (q, K)
    order = np.argsort(corrected, axis=1, kind="stable")[:, :k]  # (q, min(k, K))
    top_rows = np.take_along_axis(np.where(valid, rows, -1), order, axis=1)
    top_costs = np.take_along_axis(np.where(valid, costs, np.inf), order, axis=1).astype(np.float32)
    top_corrected = np.take_along_axis(corrected, order, axis=1)
    if top_rows.shape[1] < k:  # fewer candidates than k: pad
        pad = k - top_rows.shape[1]
        top_rows = np.pad(top_rows, ((0, 0), (0, pad)), constant_values=-1)
        top_costs = np.pad(top_costs, ((0, 0), (0, pad)), constant_values=np.inf)
        top_corrected = np.pad(top_corrected, ((0, 0), (0, pad)), constant_values=np.inf)
    # Every item outside the candidates costs at least the largest candidate cost C_(K), so its corrected cost is at
    # least C_(K) - max(g): the top k cannot change when its k-th corrected cost does not exceed that bound.
    largest = np.where(valid, costs, -np.inf).max(axis=1) if costs.shape[1] else np.full(len(costs), -np.inf)
    g_max = float(g.max()) if len(g) else 0.0
    kth = top_corrected[:, k - 1]
    certified = (kth <= largest - g_max) | np.broadcast_to(np.asarray(complete, dtype=bool), kth.shape)
    return RerankResult(top_rows, top_costs, top_corrected, np.asarray(certified, dtype=bool))


def topk_overlap(reference: np.ndarray, rows: np.ndarray) -> float:
    """Mean fraction of each query's reference top ``k`` found in ``rows``' top ``k`` (recall@k of an approximate
    search against an exact one): ``mean_i |ref_i ∩ rows_i| / k``.

    Args:
        reference (`np.ndarray` of shape `(q, k)`), rows (`np.ndarray` of shape `(q, k')` with ``k' >= k``): gallery
            rows per query, best first (-1 slots never match).
    """
    reference, rows = np.asarray(reference), np.asarray(rows)
    if reference.ndim != 2 or rows.ndim != 2 or len(reference) != len(rows) or rows.shape[1] < reference.shape[1]:
        raise ValueError(
            f"topk_overlap: reference (q, k) and rows (q, k' >= k) expected, got {reference.shape} and {rows.shape}."
        )
    k = reference.shape[1]
    if len(reference) == 0 or k == 0:
        return math.nan
    rows = rows[:, :k]
    hits = [len(set(ref[ref >= 0].tolist()) & set(row[row >= 0].tolist())) for ref, row in zip(reference, rows,
                                                                                                 strict=True)]
    return float(np.mean(hits) / k)


def top1_agreement(reference: np.ndarray, rows: np.ndarray) -> float:
    """Fraction of queries whose best item is the same in both rankings (``(q, >=1)`` arrays of gallery rows)."""
    reference, rows = np.asarray(reference), np.asarray(rows)
    if reference.ndim != 2 or rows.ndim != 2 or len(reference) != len(rows):
        raise ValueError(f"top1_agreement: two (q, k) arrays expected, got {reference.shape} and {rows.shape}.")
    return float((reference[:, 0] == rows[:, 0]).mean()) if len(rows) else math.nan


def recall_at_k(rows: np.ndarray, query_ids: np.ndarray, item_ids: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
                ) -> dict[str, float]:
    """Retrieval R@k from ranked gallery rows: the fraction of queries with a positive item (``item_ids[row] ==
    query_ids[i]``) among their first ``k`` rows.

    Args:
        rows (`np.ndarray` of shape `(q, K)`): gallery rows, best first (-1 slots never match).
        query_ids (`np.ndarray` of shape `(q,)`), item_ids (`np.ndarray` of shape `(N,)`): ids defining positives.
        ks (`tuple[int, ...]`): cut-offs, each at most ``K``.

    Returns:
        `dict[str, float]`: ``{"R@1": ..., "R@5": ..., ...}`` in ``[0, 1]``.
    """
    rows, query_ids, item_ids = np.asarray(rows), np.asarray(query_ids), np.asarray(item_ids)
    if rows.ndim != 2 or len(rows) != len(query_ids):
        raise ValueError(f"recall_at_k: rows (q, K) and query_ids (q,) expected, got {rows.shape}, {query_ids.shape}.")
    if any(k < 1 or k > rows.shape[1] for k in ks):
        raise ValueError(f"recall_at_k: every k in {ks} must lie in [1, {rows.shape[1]}] (the columns of rows).")
    hit = (item_ids[np.maximum(rows, 0)] == query_ids[:, None]) & (rows >= 0)  # (q, K)
    return {f"R@{k}": float(hit[:, :k].any(1).mean()) for k in ks}
