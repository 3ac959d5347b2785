"""Retrieval metrics from the ranks of each query's positives (pure functions, no model knowledge).

Ranks are 0-based positions in a query's ranked item list (0 = retrieved first). A query may have several positives
(audio->text: the 5 captions of a clip); ``positive_ranks`` has shape ``(num_queries, max_positives)``, padded with
``-1``; each row lists distinct ranks (any order: rows are sorted before use). Invalid input (a repeated rank, a
value below -1, a query without positive, a bad ``recall_at``) raises a `ValueError`.

Conventions (METHOD.md 1.3):
- ``R@k`` = 100 * fraction of queries whose best positive has rank < k.
- ``medR`` = floor(median(best rank)) + 1; ``meanR`` = mean(best rank) + 1.
- ``mAP@10`` = mean over queries of ``sum_{positives p with rank < 10} precision@(rank_p + 1) / min(#positives, 10)``;
  with one positive per query (DCASE text->audio) it equals ``MRR@10``.
- ``MRR@10`` = mean of ``1 / (best rank + 1)`` over queries whose best rank is < 10, 0 otherwise.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch

__all__ = ["DEFAULT_RECALL_AT", "check_positive_ranks", "check_recall_at", "retrieval_metrics"]

DEFAULT_RECALL_AT = (1, 5, 10)


def check_recall_at(recall_at: Iterable[int]) -> tuple[int, ...]:
    """``recall_at`` as a tuple of distinct positive integers, in the given order.

    Args:
        recall_at (`Iterable[int]`): Cut-offs ``k`` of ``R@k``, e.g. ``(1, 5, 10)``.

    Returns:
        `tuple[int, ...]`: The cut-offs as Python ints.

    Raises:
        ValueError: ``recall_at`` is a single number or a string, is empty, or holds a value that is not an
            integer >= 1 (a bool, a float, 0, a negative number) or a repeated value.
    """
    if isinstance(recall_at, str | bytes) or not isinstance(recall_at, Iterable):
        raise ValueError(
            f"recall_at must be a sequence of integers >= 1 such as (1, 5, 10), got {recall_at!r}."
        )
    values = tuple(recall_at)
    if not values:
        raise ValueError("recall_at is empty: give at least one cut-off, e.g. (1, 5, 10).")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(
                f"recall_at must hold integers >= 1 (R@k counts the queries whose best positive is among the first "
                f"k items), got {k!r} in {values!r}."
            )
    values = tuple(int(k) for k in values)
    repeated = sorted({k for k in values if values.count(k) > 1})
    if repeated:
        raise ValueError(f"recall_at repeats {repeated} in {values!r}: give each cut-off once.")
    return values


def check_positive_ranks(positive_ranks: torch.Tensor) -> torch.Tensor:
    """Validate ranks and return them as a LongTensor ``(num_queries, max_positives)``, ascending per row, -1 last.

    Args:
        positive_ranks (`torch.Tensor` of shape `(num_queries,)` or `(num_queries, max_positives)`): 0-based ranks
            of each query's positives, padded with -1 (in any order; rows are sorted here). Floating tensors are
            accepted when every value is a whole number.

    Returns:
        `torch.LongTensor` of shape `(num_queries, max_positives)`: sorted ascending, padding at the end.

    Raises:
        ValueError: Wrong shape or no query, a non-integer or bool value, a value below -1, a query without a
            positive (only -1 padding), or a rank repeated within a row (two positives cannot share one position;
            counting one twice would push mAP@10 above 1).
    """
    positive_ranks = torch.as_tensor(positive_ranks)
    if positive_ranks.dtype == torch.bool or positive_ranks.is_complex():
        raise ValueError(f"positive_ranks must hold integer ranks, got dtype {positive_ranks.dtype}.")
    if positive_ranks.dim() == 1:
        positive_ranks = positive_ranks[:, None]
    if positive_ranks.dim() != 2 or positive_ranks.shape[0] == 0 or positive_ranks.shape[1] == 0:
        raise ValueError(
            f"positive_ranks must have shape (num_queries, max_positives) with at least one query, got "
            f"{tuple(positive_ranks.shape)}."
        )
    if positive_ranks.is_floating_point():
        whole = torch.isfinite(positive_ranks) & (positive_ranks == positive_ranks.round())
        if not bool(whole.all()):
            bad = positive_ranks[~whole][0].item()
            raise ValueError(f"positive_ranks must hold whole numbers (0-based ranks), got {bad}.")
    ranks = positive_ranks.long()
    if bool((ranks < -1).any()):
        raise ValueError(
            f"positive_ranks holds {ranks.min().item()}: ranks are 0-based positions (0 = retrieved first) and -1 "
            f"is the only padding value."
        )
    # padding sorts last: ascending valid ranks, then -1
    ranks = torch.where(ranks < 0, torch.iinfo(torch.long).max, ranks).sort(dim=1).values
    ranks = torch.where(ranks == torch.iinfo(torch.long).max, -1, ranks)
    empty = ranks[:, 0] < 0
    if bool(empty.any()):
        query = int(empty.nonzero()[0, 0])
        raise ValueError(
            f"every query needs at least one positive: query {query} has only -1 padding in positive_ranks."
        )
    repeated = (ranks[:, 1:] == ranks[:, :-1]) & (ranks[:, 1:] >= 0)  # (q, p - 1)
    if bool(repeated.any()):
        query, position = (int(v) for v in repeated.nonzero()[0])
        raise ValueError(
            f"positive_ranks row {query} repeats rank {int(ranks[query, position + 1])}: each positive has its own "
            f"position in the ranking, so a rank cannot occur twice in one row."
        )
    return ranks


def retrieval_metrics(
    positive_ranks: torch.Tensor, recall_at: tuple[int, ...] = DEFAULT_RECALL_AT
) -> dict[str, float]:
    """Recall@k, medR, meanR, mAP@10 and MRR@10 (see the module docstring) from ``positive_ranks``.

    Args:
        positive_ranks (`torch.LongTensor` of shape `(num_queries,)` or `(num_queries, max_positives)`): 0-based
            ranks of each query's positives, padded with -1 (see `check_positive_ranks`).
        recall_at (`tuple[int]`): cut-offs for recall, distinct integers >= 1.

    Returns:
        `dict` with keys ``R@k`` (percent), ``medR``, ``meanR``, ``mAP@10``, ``MRR@10`` (fractions in [0, 1]).

    Raises:
        ValueError: Invalid ``positive_ranks`` (`check_positive_ranks`) or ``recall_at`` (`check_recall_at`).

    Example:
        >>> retrieval_metrics(torch.tensor([0, 1, 12]))["R@1"]
        33.33333333333333
    """
    recall_at = check_recall_at(recall_at)
    ranks = check_positive_ranks(positive_ranks)
    valid = ranks >= 0
    best = ranks[:, 0].double()
    metrics = {f"R@{k}": 100.0 * (best < k).double().mean().item() for k in recall_at}
    metrics["medR"] = math.floor(best.quantile(0.5).item()) + 1
    metrics["meanR"] = best.mean().item() + 1
    # precision at each positive's position: (number of positives at or above it) / (rank + 1)
    order = torch.cumsum(valid.long(), dim=1).double()
    hits = valid & (ranks < 10)
    precision = torch.where(hits, order / (ranks.double() + 1), torch.zeros_like(order))
    denominator = valid.sum(1).clamp(max=10).double()
    metrics["mAP@10"] = (precision.sum(1) / denominator).mean().item()
    metrics["MRR@10"] = torch.where(best < 10, 1 / (best + 1), torch.zeros_like(best)).mean().item()
    return metrics
