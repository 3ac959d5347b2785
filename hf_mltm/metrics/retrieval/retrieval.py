"""Cross-modal retrieval metrics (R@k, medR, meanR, mAP@10, MRR@10) as an `evaluate` module.

A thin wrapper over :mod:`hf_mltm.evaluation`: ranks come from :func:`hf_mltm.evaluation.ranks_from_cost` and the
numbers from :func:`hf_mltm.evaluation.retrieval_metrics`, so the metric logic exists in one place.

Two input formats, chosen by ``config_name``:

- ``"scores"`` (default): ``predictions`` are score rows, one per query (shape ``(num_items,)`` each, higher is
  better unless ``greater_is_better=False``), ``references`` the 0-based indices of that query's positive items.
- ``"ranks"``: ``predictions`` are the precomputed 0-based ranks of each query's positives (any order, at least one,
  each rank at most once); there are no ``references``.

Arguments are checked before any work: ``recall_at`` must hold distinct integers >= 1, ``greater_is_better`` must be
a bool, a positive index or rank may not repeat within a query, and scores must be finite.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from hf_mltm.evaluation import ranks_from_cost, retrieval_metrics
from hf_mltm.evaluation.retrieval import check_recall_at
from hf_mltm.validation import check_bool

_DESCRIPTION = """\
Retrieval metrics for queries with one or several positive items (text-to-audio: one clip per caption;
audio-to-text: the five captions of a clip). ``R@k`` is the percentage of queries whose best-ranked positive is
among the first ``k`` items; ``medR``/``meanR`` the median (floored) and mean best rank, 1-based; ``mAP@10`` the mean
average precision over the positives ranked in the top 10, divided by ``min(#positives, 10)``; ``MRR@10`` the mean
reciprocal best rank, 0 beyond 10. Ties in a score row are broken by item index.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: config ``"scores"``: `list[list[float]]`, one score row of length ``num_items`` per query (all rows
        the same length). Config ``"ranks"``: `list[list[int]]`, the 0-based ranks of each query's positives.
    references: config ``"scores"`` only: `list[list[int]]`, the indices of each query's positive items (at least one,
        each in ``[0, num_items)``, none repeated).
    recall_at (`tuple[int]`, defaults to ``(1, 5, 10)``): cut-offs of ``R@k``, distinct integers >= 1.
    greater_is_better (`bool`, defaults to `True`): config ``"scores"``: rank items by descending score (`True`,
        similarities or logits) or ascending score (`False`, costs or distances). Only a bool is accepted.

Returns:
    ``R@k`` (percent), ``medR``, ``meanR`` (1-based ranks), ``mAP@10`` and ``MRR@10`` (fractions in [0, 1]).

Examples:
    >>> import evaluate
    >>> metric = evaluate.load("hf_mltm/metrics/retrieval")  # doctest: +SKIP
    >>> metric.compute(predictions=[[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]], references=[[2], [1]])["R@1"]  # doctest: +SKIP
    50.0
"""

_CITATION = """\
@inproceedings{luong2024revisiting,
  title={Revisiting Deep Audio-Text Retrieval Through the Lens of Transportation},
  author={Luong, Manh and Nguyen, Khai and Ho, Nhat and Haffari, Reza and Phung, Dinh and Qu, Lizhen},
  booktitle={International Conference on Learning Representations},
  year={2024}
}
"""

_FEATURES = {
    "scores": datasets.Features(
        {
            "predictions": datasets.Sequence(datasets.Value("float64")),
            "references": datasets.Sequence(datasets.Value("int64")),
        }
    ),
    "ranks": datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64"))}),
}


def _int_rows(rows: Sequence[Sequence[Any]], name: str, what: str) -> list[list[int]]:
    """``rows`` as lists of ints: each row non-empty, integer values (no bool), none repeated within a row.

    Args:
        rows (`Sequence[Sequence]`): One row per query.
        name (`str`): The argument's name, for messages (``"references"``).
        what (`str`): What one value is, for messages (``"rank"``, ``"positive item index"``).
    """
    result = []
    for index, row in enumerate(rows):
        if row is None or len(row) == 0:
            raise ValueError(f"{name}[{index}] is empty: every query needs at least one positive.")
        values = []
        for value in row:
            if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name}[{index}] = {list(row)} holds {value!r}: each {what} is an integer.")
            values.append(int(value))
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(
                f"{name}[{index}] = {values} repeats {repeated}: list each {what} of a query once (a repeated one "
                f"would be counted twice)."
            )
        result.append(values)
    return result


def _pad(rows: Sequence[Sequence[int]], name: str) -> torch.Tensor:
    """``(num_rows, max_len)`` LongTensor of sorted rows, padded with -1; every row must be non-empty."""
    for index, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"{name}[{index}] is empty: every query needs at least one positive.")
    width = max(len(row) for row in rows)
    return torch.tensor([sorted(row) + [-1] * (width - len(row)) for row in rows], dtype=torch.long)


def _positive_groups(
    positives: list[tuple[int, ...]], num_items: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Ids such that item ``j`` is a positive of query ``i`` iff ``query_ids[i] == item_ids[j]``, or `None`.

    Possible when any two queries' positive sets are equal or disjoint (retrieval with several captions per item,
    classification); overlapping sets (multi-label) return `None`.
    """
    group_of_set: dict[tuple[int, ...], int] = {}
    item_ids = torch.full((num_items,), -1, dtype=torch.long)  # -1: a positive of no query
    query_ids = torch.empty(len(positives), dtype=torch.long)
    for query, items in enumerate(positives):
        group = group_of_set.get(items)
        if group is None:
            group = group_of_set[items] = len(group_of_set)
            index = torch.tensor(items, dtype=torch.long)
            if bool((item_ids[index] >= 0).any()):
                return None
            item_ids[index] = group
        query_ids[query] = group
    return query_ids, item_ids


def ranks_from_score_rows(
    scores: torch.Tensor, positives: Sequence[Sequence[int]], greater_is_better: bool = True
) -> torch.Tensor:
    """0-based ranks of each query's positives, shape ``(num_queries, max_positives)``, ascending, padded with -1.

    Args:
        scores (`torch.Tensor` of shape `(num_queries, num_items)`): one score row per query.
        positives (`list[list[int]]`): positive item indices per query (distinct within a query).
        greater_is_better (`bool`): rank by descending (`True`) or ascending score.

    Raises:
        ValueError: ``greater_is_better`` is not a bool, ``scores`` is not 2-D, the number of positive lists differs
            from the number of rows, or a positive list is empty, repeats an index or leaves ``[0, num_items)``.
    """
    greater_is_better = check_bool("greater_is_better", greater_is_better)
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (num_queries, num_items), got {tuple(scores.shape)}.")
    if len(positives) != scores.shape[0]:
        raise ValueError(
            f"Got {scores.shape[0]} score rows but {len(positives)} positive lists: pass one per query."
        )
    cost = -scores if greater_is_better else scores  # (q, N), lower is better
    num_queries, num_items = cost.shape
    sets = []
    for query, row in enumerate(_int_rows(positives, "references", "positive item index")):
        items = tuple(sorted(row))
        if items[0] < 0 or items[-1] >= num_items:
            raise ValueError(
                f"references[{query}] = {list(row)} has an item index outside [0, {num_items}): references are "
                f"0-based column indices into the score rows."
            )
        sets.append(items)
    groups = _positive_groups(sets, num_items)
    if groups is not None:
        return ranks_from_cost(cost, *groups)
    # Overlapping positive sets: one query at a time, with its own positives marked by id 1.
    per_query = []
    for query, items in enumerate(sets):
        item_ids = torch.zeros(num_items, dtype=torch.long)
        item_ids[list(items)] = 1
        ranks = ranks_from_cost(cost[query : query + 1], torch.ones(1, dtype=torch.long), item_ids)
        per_query.append(ranks[0].tolist())
    return _pad([[r for r in row if r >= 0] for row in per_query], "ranks")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    """Retrieval metrics with several positives per query (see the module docstring for the two input formats)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in _FEATURES and self.config_name != "default":
            raise ValueError(
                f"Unknown config_name {self.config_name!r} for the retrieval metric; use 'scores' (score rows + "
                f"positive indices) or 'ranks' (precomputed ranks of the positives)."
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES["ranks" if self.config_name == "ranks" else "scores"],
            reference_urls=["https://openreview.net/forum?id=l60EM8md3t"],
        )

    def _compute(
        self,
        predictions: list[list[float]] | list[list[int]],
        references: list[list[int]] | None = None,
        recall_at: tuple[int, ...] = (1, 5, 10),
        greater_is_better: bool = True,
    ) -> dict[str, float]:
        recall_at = check_recall_at(recall_at)
        greater_is_better = check_bool("greater_is_better", greater_is_better)
        if len(predictions) == 0:
            raise ValueError("The retrieval metric got no queries: pass at least one prediction row.")
        if self.config_name == "ranks":
            rows = _int_rows(predictions, "predictions", "rank")
            for index, row in enumerate(rows):
                if min(row) < 0:
                    raise ValueError(
                        f"predictions[{index}] = {row} holds negative ranks: ranks are 0-based positions "
                        f"(0 = retrieved first)."
                    )
            return retrieval_metrics(_pad(rows, "predictions"), recall_at)
        if references is None or len(references) != len(predictions):
            raise ValueError(
                f"Got {len(predictions)} score rows (predictions) but "
                f"{0 if references is None else len(references)} positive lists (references): pass one list of "
                f"positive item indices per query."
            )
        lengths = {len(row) for row in predictions}
        if len(lengths) != 1:
            raise ValueError(
                f"Score rows (predictions) have different lengths {sorted(lengths)}: every row must score all "
                f"num_items items."
            )
        scores = torch.tensor(predictions, dtype=torch.float64)  # (q, N)
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("Score rows (predictions) hold NaN or inf: pass finite scores.")
        return retrieval_metrics(ranks_from_score_rows(scores, references, greater_is_better), recall_at)
