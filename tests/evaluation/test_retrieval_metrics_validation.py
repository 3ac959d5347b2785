"""`hf_mltm.evaluation.retrieval`: invalid ranks and cut-offs raise, valid ones give hand-checked numbers."""

from __future__ import annotations

import pytest
import torch

from hf_mltm.evaluation.retrieval import check_positive_ranks, check_recall_at, retrieval_metrics


def test_repeated_rank_in_a_row_is_rejected_not_counted_twice():
    # before: [[0, 0]] gave mAP@10 = (1/1 + 2/1) / 2 = 1.5
    with pytest.raises(ValueError, match="positive_ranks row 1 repeats rank 3"):
        retrieval_metrics(torch.tensor([[0, 2], [3, 3]]))
    with pytest.raises(ValueError, match="row 0 repeats rank 0"):
        retrieval_metrics(torch.tensor([[0, 0]]))


def test_rows_in_any_order_and_padding_anywhere_give_the_sorted_result():
    # positives at ranks 0 and 3: AP@10 = (1/1 + 2/4) / 2 = 0.75; second query: rank 2 -> AP 1/3
    expected = retrieval_metrics(torch.tensor([[0, 3], [2, -1]]))
    assert expected["mAP@10"] == pytest.approx((0.75 + 1 / 3) / 2)
    assert expected["MRR@10"] == pytest.approx((1 + 1 / 3) / 2)
    shuffled = retrieval_metrics(torch.tensor([[3, 0], [-1, 2]]))
    assert shuffled == expected
    assert check_positive_ranks(torch.tensor([[3, -1, 0]])).tolist() == [[0, 3, -1]]


def test_whole_float_ranks_are_accepted_other_values_rejected():
    assert retrieval_metrics(torch.tensor([0.0, 2.0])) == retrieval_metrics(torch.tensor([0, 2]))
    for bad, match in (
        (torch.tensor([[0.5]]), "whole numbers"),
        (torch.tensor([[float("nan")]]), "whole numbers"),
        (torch.tensor([[True]]), "integer ranks, got dtype torch.bool"),
        (torch.tensor([[-2, 0]]), "holds -2"),
        (torch.tensor([[-1, -1], [0, 1]]), "query 0 has only -1 padding"),
        (torch.zeros(0, 2, dtype=torch.long), "at least one query"),
        (torch.zeros(2, 2, 2, dtype=torch.long), r"shape \(num_queries, max_positives\)"),
    ):
        with pytest.raises(ValueError, match=match):
            retrieval_metrics(bad)


@pytest.mark.parametrize(
    "recall_at,match",
    [
        ((0,), "integers >= 1.*got 0 in"),
        ((5, -1), "integers >= 1.*got -1 in"),
        ((1.5,), "got 1.5 in"),
        ((True, 5), "got True in"),
        ((1, 5, 1), r"repeats \[1\]"),
        ((), "recall_at is empty"),
        (5, "must be a sequence of integers >= 1 such as"),
        ("15", "must be a sequence of integers >= 1 such as"),
    ],
)
def test_bad_recall_at_is_rejected(recall_at, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(torch.tensor([0, 3]), recall_at)


def test_recall_at_hand_checked_and_normalised():
    # best ranks 0, 1, 4 -> R@1 = 1/3, R@2 = 2/3, R@5 = 3/3
    metrics = retrieval_metrics(torch.tensor([0, 1, 4]), [2, 1, 5])
    assert [key for key in metrics if key.startswith("R@")] == ["R@2", "R@1", "R@5"]
    assert (metrics["R@1"], metrics["R@2"], metrics["R@5"]) == pytest.approx((100 / 3, 200 / 3, 100.0))
    assert check_recall_at([10, 1]) == (10, 1)
