"""Rank items for queries from embeddings, by plain cost or by transductive OT re-ranking, in bounded memory.

Two ranking modes, to be reported separately and never mixed in one table (METHOD.md 1.3):

- ``"distance"``: item ``j`` is ranked for query ``i`` by ``C_ij = cost_fn(query_i, item_j)`` ascending (use
  :func:`hf_mltm.ot.cosine_cost` to rank by cosine similarity).
- ``"ot"``: the m-LTM paper's transductive ranking by the entropic OT plan between *all* queries and *all* items
  (uniform marginals). Ranking row ``i`` of the plan ``P_ij = exp((f_i + g_j - C_ij)/eps)`` equals ranking by
  ``C_ij - g_j``: the cost corrected by the item's dual potential, a hubness correction that uses the whole test set.

Queries and items are matched by ids: item ``j`` is a positive of query ``i`` when ``query_ids[i] == item_ids[j]``.
Memory is ``O(chunk_size * num_items)`` (plus the cached cost when it fits ``cache_bytes``); nothing of size
``num_queries x num_items x d`` is ever built.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..ot.costs import euclidean_cost
from ..ot.streaming import CostChunks, CostFn, streaming_sinkhorn

RankingMode = Literal["distance", "ot"]


def positive_indices(query_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """Indices of each query's positive items, shape ``(num_queries, max_positives)``, padded with -1.

    Raises `ValueError` when a query has no positive item.
    """
    query_ids, item_ids = torch.as_tensor(query_ids), torch.as_tensor(item_ids)
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
    chunk_size: int = 512,
    cache_bytes: int = 128 * 2**20,
) -> torch.Tensor:
    """0-based ranks of every query's positives, shape ``(num_queries, max_positives)``, ascending, padded with -1.

    Args:
        query_embeds (`torch.Tensor` of shape `(num_queries, d)`), item_embeds (`(num_items, d)`): embeddings.
        query_ids (`torch.Tensor` of shape `(num_queries,)`), item_ids (`(num_items,)`): integer ids defining positives.
        cost_fn (`Callable`): ``(q, d), (N, d) -> (q, N)`` cost, lower is better (e.g. a ``MahalanobisMetric``).
        mode (`str`): ``"distance"`` or ``"ot"`` (see the module docstring).
        epsilon, normalization, ot_max_iter, ot_tol: settings of the transductive OT solve (``"ot"`` only);
            ``epsilon`` is relative to the cost divided by its maximum when ``normalization="batch_max"``.
        chunk_size (`int`): queries per chunk; peak memory about ``chunk_size * num_items * 4 * (2 + max_positives /
            4)`` bytes.
        cache_bytes (`int`): keep the whole cost matrix when it is at most this large (OT mode reuses it).

    Ties are broken by item index, as a stable sort would.
    """
    if mode not in ("distance", "ot"):
        raise ValueError(f"Unknown ranking mode {mode!r}; use 'distance' or 'ot'.")
    for name, embeds, ids in (("query", query_embeds, query_ids), ("item", item_embeds, item_ids)):
        if len(ids) != len(embeds):
            raise ValueError(f"{name}_ids has {len(ids)} entries but {name}_embeds has {len(embeds)} rows.")
    positives = positive_indices(query_ids, item_ids).to(item_embeds.device)
    chunks = CostChunks(query_embeds, item_embeds, cost_fn, chunk_size, cache_bytes if mode == "ot" else 0)
    correction = None
    if mode == "ot":
        potentials = streaming_sinkhorn(chunks, epsilon, normalization=normalization, max_iter=ot_max_iter, tol=ot_tol)
        correction = potentials.g * potentials.scale  # back to raw cost units
    item_index = torch.arange(item_embeds.shape[0], device=item_embeds.device)
    ranks = torch.full(positives.shape, -1, dtype=torch.long)
    for rows, cost in chunks:
        if correction is not None:
            cost = cost - correction  # (chunk, N)
        pos = positives[rows]  # (chunk, P)
        valid = pos >= 0
        pos_cost = cost.gather(1, pos.clamp_min(0))  # (chunk, P)
        better = (cost[:, None, :] < pos_cost[:, :, None]).sum(-1)  # (chunk, P)
        tied_before = ((cost[:, None, :] == pos_cost[:, :, None]) & (item_index < pos[:, :, None])).sum(-1)
        chunk_ranks = torch.where(valid, better + tied_before, torch.full_like(better, -1))
        # ascending, with -1 padding kept at the end
        key = torch.where(valid, chunk_ranks, torch.full_like(chunk_ranks, torch.iinfo(torch.long).max))
        ranks[rows] = torch.where(valid.gather(1, key.argsort(1)), key.sort(1).values, -1).cpu()
    return ranks


def ranks_from_cost(
    cost: torch.Tensor,
    query_ids: torch.Tensor,
    item_ids: torch.Tensor,
    *,
    mode: RankingMode = "distance",
    epsilon: float = 0.05,
    normalization: str = "batch_max",
    ot_max_iter: int = 100,
    ot_tol: float = 1e-6,
) -> torch.Tensor:
    """`retrieval_ranks` from a precomputed cost matrix ``(num_queries, num_items)`` (lower is better), e.g. ``1 -
    score`` of a model that scores pairs jointly (OMIT) or a metric's score rows."""
    # The cost rows stand in for query embeddings and the cost function returns them as they are; the items are a
    # zero-stride (num_items, num_items) placeholder that only carries their count.
    placeholder_items = cost.new_zeros(1, 1).expand(cost.shape[1], cost.shape[1])
    return retrieval_ranks(cost, placeholder_items, query_ids, item_ids, cost_fn=_rows_as_cost, mode=mode,
                           epsilon=epsilon, normalization=normalization, ot_max_iter=ot_max_iter, ot_tol=ot_tol)


def _rows_as_cost(query_rows: torch.Tensor, _items: torch.Tensor) -> torch.Tensor:
    return query_rows
