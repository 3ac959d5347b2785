"""OT re-ranking primitives: candidate re-ranking with its certificate, potential estimation, agreement metrics."""

import numpy as np
import ot
import pytest
import torch

from hf_mltm.index import (
    ColumnPotentials,
    estimate_column_potentials,
    recall_at_k,
    rerank_candidates,
    top1_agreement,
    topk_overlap,
)
from hf_mltm.ot import euclidean_cost


def test_rerank_candidates_hand_checked_with_certificate():
    costs = np.array([[0.1, 0.2, 0.3]], np.float32)
    rows = np.array([[2, 0, 1]])
    # corrected: row 2 -> 0.05, row 0 -> 0.2, row 1 -> 0.15
    result = rerank_candidates(costs, rows, np.array([0.0, 0.15, 0.05, 0.0]), 2)
    assert result.rows.tolist() == [[2, 1]]
    np.testing.assert_allclose(result.costs, [[0.1, 0.3]], rtol=1e-6)
    np.testing.assert_allclose(result.ranking_costs, [[0.05, 0.15]], rtol=1e-6)
    # outside item 3 costs >= 0.3 and has g = 0: its corrected cost >= 0.3 - max(g) = 0.15 >= the 2nd best
    assert result.certified.tolist() == [True]
    # with g_3 = 0.2, item 3 at cost 0.31 would score 0.11 < 0.15: not certified
    assert rerank_candidates(costs, rows, np.array([0.0, 0.15, 0.05, 0.2]), 2).certified.tolist() == [False]
    assert rerank_candidates(costs, rows, np.array([0.0, 0.15, 0.05, 0.2]), 2, complete=True).certified.tolist() \
        == [True]


def test_rerank_candidates_pads_empty_slots_and_rejects_bad_input():
    result = rerank_candidates(np.array([[0.4, np.inf]]), np.array([[1, -1]]), np.zeros(3), 3)
    assert result.rows.tolist() == [[1, -1, -1]]
    assert np.isinf(result.costs[0, 1:]).all()
    with pytest.raises(ValueError, match="were the potentials estimated for another gallery"):
        rerank_candidates(np.zeros((1, 2)), np.array([[0, 5]]), np.zeros(3), 1)
    with pytest.raises(ValueError, match="k must be a positive int"):
        rerank_candidates(np.zeros((1, 2)), np.array([[0, 1]]), np.zeros(3), 0)
    with pytest.raises(ValueError, match=r"both be \(q, K\)"):
        rerank_candidates(np.zeros((1, 2)), np.array([[0, 1, 2]]), np.zeros(3), 1)


def test_potentials_match_pot_sinkhorn_log_in_float64():
    generator = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(12, 5, generator=generator), torch.randn(30, 5, generator=generator)
    potentials = estimate_column_potentials(queries.double(), gallery.double(), euclidean_cost, epsilon=0.1,
                                            max_iter=2000, tol=1e-10)
    cost = euclidean_cost(queries.double(), gallery.double())
    scale = cost.max().item()
    assert potentials.cost_scale == pytest.approx(scale)
    _, log = ot.bregman.sinkhorn_log(np.full(12, 1 / 12), np.full(30, 1 / 30), (cost / scale).numpy(), 0.1,
                                     numItermax=5000, stopThr=1e-12, log=True)
    expected = 0.1 * scale * log["log_v"]  # g in raw cost units, up to a constant
    got = potentials.g.double().numpy()
    np.testing.assert_allclose(got - got.mean(), expected - expected.mean(), atol=1e-5)
    assert potentials.converged and potentials.num_queries == 12


def test_streamed_potentials_equal_the_cached_solve():
    generator = torch.Generator().manual_seed(1)
    queries, gallery = torch.randn(20, 8, generator=generator), torch.randn(100, 8, generator=generator)
    cached = estimate_column_potentials(queries, gallery, euclidean_cost, epsilon=0.05)
    streamed = estimate_column_potentials(queries, gallery, euclidean_cost, epsilon=0.05, cache_bytes=0,
                                          block_bytes=7 * 100 * 4)  # blocks of 7 queries
    assert streamed.cost_scale == pytest.approx(cached.cost_scale)
    g1, g2 = cached.g - cached.g.mean(), streamed.g - streamed.g.mean()
    torch.testing.assert_close(g1, g2, atol=2e-5, rtol=0)


def test_potentials_reject_bad_input():
    with pytest.raises(ValueError, match="queries must be a non-empty"):
        estimate_column_potentials(torch.zeros(0, 3), torch.zeros(4, 3), euclidean_cost, epsilon=0.1)
    with pytest.raises(ValueError, match="queries have dimension 3 but the gallery 2"):
        estimate_column_potentials(torch.zeros(2, 3), torch.zeros(4, 2), euclidean_cost, epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        estimate_column_potentials(torch.zeros(2, 3), torch.ones(4, 3), euclidean_cost, epsilon=0.0)
    with pytest.raises(ValueError, match="g holds NaN"):
        ColumnPotentials(torch.tensor([0.0, float("nan")]), 0.05, "none", 1.0, 2, 1, 0.0, True)


def test_agreement_metrics_hand_checked():
    reference = np.array([[1, 2, 3], [4, 5, 6]])
    rows = np.array([[1, 3, 9], [5, 4, 6]])
    assert topk_overlap(reference, rows) == pytest.approx((2 / 3 + 3 / 3) / 2)
    assert top1_agreement(reference, rows) == 0.5
    item_ids = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    # query id 1: rows 1, 3, 9 hold items 0, 1, 4 (hit at 2); query id 3: rows 5, 4, 6 hold items 2, 2, 3 (hit at 3)
    assert recall_at_k(rows, np.array([1, 3]), item_ids, ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 0.5, "R@3": 1.0}
    with pytest.raises(ValueError, match="every k"):
        recall_at_k(rows, np.array([1, 2]), item_ids, ks=(4,))
