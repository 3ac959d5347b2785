"""Retrieval metrics from the ranks of each query's positives (pure functions, no model knowledge).

Ranks are 0-based positions in a query's ranked item list (0 = retrieved first). A query may have several positives
(audio->text: the 5 captions of a clip); ``positive_ranks`` has shape ``(num_queries, max_positives)``, sorted
ascending per row, and padded with ``-1``.

Conventions (METHOD.md 1.3):
- ``R@k`` = 100 * fraction of queries whose best positive has rank < k.
- ``medR`` = floor(median(best rank)) + 1; ``meanR`` = mean(best rank) + 1.
- ``mAP@10`` = mean over queries of ``sum_{positives p with rank < 10} precision@(rank_p + 1) / min(#positives, 10)``;
  with one positive per query (DCASE text->audio) it equals ``MRR@10``.
- ``MRR@10`` = mean of ``1 / (best rank + 1)`` over queries whose best rank is < 10, 0 otherwise.
"""

from __future__ import annotations

import math

import torch

DEFAULT_RECALL_AT = (1, 5, 10)


def _check_ranks(positive_ranks: torch.Tensor) -> torch.Tensor:
    positive_ranks = torch.as_tensor(positive_ranks)
    if positive_ranks.dim() == 1:
        positive_ranks = positive_ranks[:, None]
    if positive_ranks.dim() != 2 or positive_ranks.shape[0] == 0:
        raise ValueError(f"positive_ranks must have shape (num_queries, max_positives), got {tuple(positive_ranks.shape)}.")
    if bool((positive_ranks[:, 0] < 0).any()):
        raise ValueError("every query needs at least one positive (its first rank is -1 padding).")
    return positive_ranks.long()


def retrieval_metrics(positive_ranks: torch.Tensor, recall_at: tuple[int, ...] = DEFAULT_RECALL_AT) -> dict[str, float]:
    """Recall@k, medR, meanR, mAP@10 and MRR@10 (see the module docstring) from ``positive_ranks``.

    Args:
        positive_ranks (`torch.LongTensor` of shape `(num_queries,)` or `(num_queries, max_positives)`): 0-based
            ranks of each query's positives, ascending, padded with -1.
        recall_at (`tuple[int]`): cut-offs for recall.

    Returns:
        `dict` with keys ``R@k`` (percent), ``medR``, ``meanR``, ``mAP@10``, ``MRR@10`` (fractions in [0, 1]).

    Example:
        >>> retrieval_metrics(torch.tensor([0, 1, 12]))["R@1"]
        33.33333333333333
    """
    ranks = _check_ranks(positive_ranks)
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
