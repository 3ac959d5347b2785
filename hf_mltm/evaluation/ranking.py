"""Rank items for queries from a cost (or embeddings), by plain cost or by transductive OT re-ranking, in bounded
memory.

Two ranking modes (:data:`RANKING_MODES`), to be reported separately and never mixed in one table (METHOD.md 1.3):

- ``"distance"``: item ``j`` is ranked for query ``i`` by the cost ``C_ij`` ascending (from embeddings,
  ``C_ij = cost_fn(query_i, item_j)``; use :func:`hf_mltm.ot.cosine_cost` to rank by cosine similarity).
- ``"ot"``: the m-LTM paper's transductive ranking by the entropic OT plan between *all* queries and *all* items
  (uniform marginals). Ranking row ``i`` of the plan ``P_ij = exp((f_i + g_j - C_ij)/eps)`` equals ranking by
  ``C_ij - g_j``: the cost corrected by the item's dual potential, a hubness correction that uses the whole test set.

:func:`ranks_from_cost` is the core: it takes a full ``(num_queries, num_items)`` cost matrix or a
:class:`hf_mltm.ot.CostChunks` (a cost by row blocks: from embeddings, or from any function scoring a chunk of queries
against the whole gallery). :func:`retrieval_ranks` is the embeddings front end.

Queries and items are matched by ids: item ``j`` is a positive of query ``i`` when ``query_ids[i] == item_ids[j]``.
Memory is ``O(chunk_size * num_items * max_positives)`` (plus the cached cost when it fits ``cache_bytes``); nothing
of size ``num_queries x num_items x d`` is ever built.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..ot.costs import euclidean_cost
from ..ot.streaming import DEFAULT_CACHE_BYTES, DEFAULT_CHUNK_SIZE, CostChunks, CostFn, streaming_sinkhorn

RANKING_MODES = ("distance", "ot")
"""The ranking modes, in the order reports list them: ``"distance"`` (by cost) and ``"ot"`` (transductive OT)."""

RankingMode = Literal["distance", "ot"]


def check_ranking_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`RANKING_MODES`, else raise a `ValueError` listing them."""
    if mode not in RANKING_MODES:
        raise ValueError(f"Unknown ranking mode {mode!r}; use one of {', '.join(map(repr, RANKING_MODES))}.")
    return mode


def positive_indices(query_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """Indices of each query's positive items, shape ``(num_queries, max_positives)``, padded with -1.

    Raises `ValueError` when a query has no positive item. No queries give shape ``(0, 0)``.
    """
    query_ids, item_ids = torch.as_tensor(query_ids).cpu(), torch.as_tensor(item_ids).cpu()
    if len(query_ids) == 0:
        return torch.zeros(0, 0, dtype=torch.long)
    sorted_ids, order = torch.sort(item_ids, stable=True)
    start = torch.searchsorted(sorted_ids, query_ids, side="left")
    count = torch.searchsorted(sorted_ids, query_ids, side="right") - start
    if bool((count == 0).any()):
        missing = query_ids[count == 0][:5].tolist()
        raise ValueError(f"{int((count == 0).sum())} queries have no positive item (query ids {missing}...).")
    width = int(count.max())
    offsets = start[:, None] + torch.arange(width)[None, :]
    valid = torch.arange(width)[None, :] < count[:, None]
    return torch.where(valid, order[offsets.clamp(max=len(order) - 1)], torch.full_like(offsets, -1))


def _check_ids(name: str, ids: torch.Tensor, expected: int, what: str) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of ids, got shape {tuple(ids.shape)}.")
    if len(ids) != expected:
        raise ValueError(f"{name} has {len(ids)} entries but {what}; give one id per row.")
    return ids


def ranks_from_cost(
    cost: torch.Tensor | CostChunks,
    query_ids: torch.Tensor,
    item_ids: torch.Tensor,
    *,
    mode: RankingMode = "distance",
    epsilon: float = 0.05,
    normalization: str = "batch_max",
    ot_max_iter: int = 100,
    ot_tol: float = 1e-6,
) -> torch.Tensor:
    """0-based ranks of every query's positives, shape ``(num_queries, max_positives)``, ascending, padded with -1.

    Args:
        cost (`torch.Tensor` of shape `(num_queries, num_items)` or [`~hf_mltm.ot.CostChunks`]): the cost, lower is
            better (e.g. ``1 - score`` of a model that scores pairs jointly, or a metric's score rows). A tensor is
            read in blocks of 512 rows (and kept whole for ``"ot"`` when it takes at most 128 MiB); a `CostChunks`
            sets its own block size and caching, and may compute its blocks on demand.
        query_ids (`torch.Tensor` of shape `(num_queries,)`), item_ids (`(num_items,)`): integer ids defining
            positives (item ``j`` is a positive of query ``i`` when the ids are equal).
        mode (`str`): ``"distance"`` or ``"ot"`` (see the module docstring).
        epsilon, normalization, ot_max_iter, ot_tol: settings of the transductive OT solve (``"ot"`` only; see
            :func:`hf_mltm.ot.streaming.streaming_sinkhorn`); ``epsilon`` is relative to the cost divided by its
            maximum when ``normalization="batch_max"`` (and that maximum is positive).

    Returns:
        `torch.LongTensor` of shape `(num_queries, max_positives)` on the CPU: ties are broken by item index, as a
        stable sort would.

    Memory: about ``chunk_size * num_items * 4 * (2 + max_positives / 4)`` bytes per block, plus the cached cost.
    """
    check_ranking_mode(mode)
    if isinstance(cost, torch.Tensor):
        chunks = CostChunks.from_matrix(cost, cache_bytes=DEFAULT_CACHE_BYTES if mode == "ot" else 0)
    elif isinstance(cost, CostChunks):
        chunks = cost
    else:
        raise ValueError(f"cost must be a (num_queries, num_items) tensor or a CostChunks, got {type(cost).__name__}.")
    num_queries, num_items = chunks.shape
    query_ids = _check_ids("query_ids", query_ids, num_queries, f"the cost has {num_queries} rows (queries)")
    item_ids = _check_ids("item_ids", item_ids, num_items, f"the cost has {num_items} columns (items)")
    positives = positive_indices(query_ids, item_ids).to(chunks.device)
    ranks = torch.full(positives.shape, -1, dtype=torch.long)
    if num_queries == 0:
        return ranks
    correction = None
    if mode == "ot":
        result = streaming_sinkhorn(chunks, epsilon, normalization=normalization, max_iter=ot_max_iter, tol=ot_tol)
        correction = result.g * result.cost_scale  # back to the units of the cost, (num_items,)
    item_index = torch.arange(num_items, device=chunks.device)
    for rows, block in chunks:
        if correction is not None:
            block = block - correction  # (chunk, N)
        pos = positives[rows]  # (chunk, P)
        valid = pos >= 0
        pos_cost = block.gather(1, pos.clamp_min(0))  # (chunk, P)
        better = (block[:, None, :] < pos_cost[:, :, None]).sum(-1)  # (chunk, P)
        tied_before = ((block[:, None, :] == pos_cost[:, :, None]) & (item_index < pos[:, :, None])).sum(-1)
        chunk_ranks = torch.where(valid, better + tied_before, torch.full_like(better, -1))
        # ascending, with -1 padding kept at the end
        key = torch.where(valid, chunk_ranks, torch.full_like(chunk_ranks, torch.iinfo(torch.long).max))
        ranks[rows] = torch.where(valid.gather(1, key.argsort(1)), key.sort(1).values, -1).cpu()
    return ranks


def retrieval_ranks(
    query_embeds: torch.Tensor,
    item_embeds: torch.Tensor,
    query_ids: torch.Tensor,
    item_ids: torch.Tensor,
    *,
    cost_fn: CostFn = euclidean_cost,
    mode: RankingMode = "distance",
    epsilon: float = 0.05,
    normalization: str = "batch_max",
    ot_max_iter: int = 100,
    ot_tol: float = 1e-6,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> torch.Tensor:
    """`ranks_from_cost` of the cost ``cost_fn(query_embeds, item_embeds)``, computed in row blocks.

    Args:
        query_embeds (`torch.Tensor` of shape `(num_queries, d)`), item_embeds (`(num_items, d)`): embeddings.
        query_ids (`torch.Tensor` of shape `(num_queries,)`), item_ids (`(num_items,)`): integer ids defining positives.
        cost_fn (`Callable`): ``(q, d), (N, d) -> (q, N)`` cost, lower is better (e.g. a ``MahalanobisMetric``).
        mode, epsilon, normalization, ot_max_iter, ot_tol: as in :func:`ranks_from_cost`.
        chunk_size (`int`): queries per block; peak memory about ``chunk_size * num_items * 4 * (2 + max_positives /
            4)`` bytes.
        cache_bytes (`int`): keep the whole cost matrix when it is at most this large (``"ot"`` only, which reuses it).

    Returns:
        `torch.LongTensor` of shape `(num_queries, max_positives)`: ascending 0-based ranks, padded with -1; ties are
        broken by item index.
    """
    check_ranking_mode(mode)
    for name, embeds, ids in (("query", query_embeds, query_ids), ("item", item_embeds, item_ids)):
        if len(ids) != len(embeds):
            raise ValueError(f"{name}_ids has {len(ids)} entries but {name}_embeds has {len(embeds)} rows.")
    chunks = CostChunks.from_embeddings(query_embeds, item_embeds, cost_fn, chunk_size=chunk_size,
                                        cache_bytes=cache_bytes if mode == "ot" else 0)
    return ranks_from_cost(chunks, query_ids, item_ids, mode=mode, epsilon=epsilon, normalization=normalization,
                           ot_max_iter=ot_max_iter, ot_tol=ot_tol)
