import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_mltm.evaluation import positive_indices, retrieval_metrics, retrieval_ranks
from hf_mltm.ot import cosine_cost, euclidean_cost, sinkhorn


def test_metrics_hand_checked_single_positive():
    # ranks 0, 1, 4, 9, 30 -> R@1 1/5, R@5 3/5, R@10 4/5; medR floor(4)+1 = 5; meanR 44/5 + 1
    metrics = retrieval_metrics(torch.tensor([0, 1, 4, 9, 30]))
    assert metrics["R@1"] == pytest.approx(20.0)
    assert metrics["R@5"] == pytest.approx(60.0)
    assert metrics["R@10"] == pytest.approx(80.0)
    assert metrics["medR"] == 5
    assert metrics["meanR"] == pytest.approx(9.8)
    expected_mrr = (1 + 1 / 2 + 1 / 5 + 1 / 10 + 0) / 5
    assert metrics["MRR@10"] == pytest.approx(expected_mrr)
    assert metrics["mAP@10"] == pytest.approx(expected_mrr)  # one positive per query


def test_metrics_hand_checked_several_positives():
    # query 0: positives at ranks 0, 2 (of 5 positives): AP@10 = (1/1 + 2/3) / 5
    # query 1: positives at ranks 1, 3, 12: AP@10 = (1/2 + 2/4) / 3
    ranks = torch.tensor([[0, 2, 20, 30, 40], [1, 3, 12, -1, -1]])
    metrics = retrieval_metrics(ranks)
    assert metrics["mAP@10"] == pytest.approx(((1 + 2 / 3) / 5 + (1 / 2 + 2 / 4) / 3) / 2)
    assert metrics["R@1"] == pytest.approx(50.0)
    assert metrics["medR"] == 1  # floor(median(0, 1)) + 1
    assert metrics["MRR@10"] == pytest.approx((1 + 1 / 2) / 2)


def test_even_count_median_is_floored():
    assert retrieval_metrics(torch.tensor([1, 2]))["medR"] == 2  # floor(1.5) + 1


def test_missing_positive_is_rejected():
    with pytest.raises(ValueError, match="at least one positive"):
        retrieval_metrics(torch.tensor([[-1, -1]]))
    with pytest.raises(ValueError, match="no positive item"):
        positive_indices(torch.tensor([0, 5]), torch.tensor([0, 1, 2]))


def test_positive_indices_groups_items_by_id():
    indices = positive_indices(torch.tensor([2, 0]), torch.tensor([0, 2, 1, 2, 0, 2]))
    assert indices.tolist() == [[1, 3, 5], [0, 4, -1]]


def brute_force_ranks(cost, query_ids, item_ids):
    order = torch.argsort(cost, dim=1, stable=True)
    ranks = []
    for i in range(cost.shape[0]):
        positions = [p for p, j in enumerate(order[i].tolist()) if item_ids[j] == query_ids[i]]
        ranks.append(positions)
    width = max(map(len, ranks))
    return torch.tensor([r + [-1] * (width - len(r)) for r in ranks])


@pytest.mark.parametrize("cost_fn", [euclidean_cost, cosine_cost])
def test_distance_ranks_equal_brute_force_sorting(cost_fn):
    audio = torch.randn(12, 6)
    text = audio.repeat_interleave(3, 0) + 0.8 * torch.randn(36, 6)
    audio_ids, text_ids = torch.arange(12), torch.arange(12).repeat_interleave(3)
    for queries, items, q_ids, i_ids in ((text, audio, text_ids, audio_ids), (audio, text, audio_ids, text_ids)):
        ranks = retrieval_ranks(queries, items, q_ids, i_ids, cost_fn=cost_fn, chunk_size=5)
        assert torch.equal(ranks, brute_force_ranks(cost_fn(queries, items), q_ids, i_ids))


def test_ties_are_broken_by_item_index():
    queries, items = torch.zeros(1, 2), torch.zeros(4, 2)  # every cost ties
    ranks = retrieval_ranks(queries, items, torch.tensor([0]), torch.tensor([1, 0, 1, 0]))
    assert ranks.tolist() == [[1, 3]]


def test_ot_ranks_equal_ranking_by_the_dense_plan():
    queries, items = torch.randn(20, 4, dtype=torch.float64), torch.randn(9, 4, dtype=torch.float64)
    query_ids, item_ids = torch.randint(0, 9, (20,)), torch.arange(9)
    ranks = retrieval_ranks(queries, items, query_ids, item_ids, mode="ot", epsilon=0.05, ot_max_iter=5000,
                            ot_tol=1e-12, chunk_size=7, cache_bytes=0)
    cost = euclidean_cost(queries, items)
    plan = sinkhorn(None, None, cost / cost.max(), 0.05, tol=1e-12, max_iter=5000).plan
    assert torch.equal(ranks, brute_force_ranks(-plan, query_ids, item_ids))
    distance = retrieval_ranks(queries, items, query_ids, item_ids)
    assert not torch.equal(ranks, distance)  # the hubness correction changes some ranks


def test_ot_ranking_cached_and_streamed_agree():
    queries, items = torch.randn(30, 5), torch.randn(11, 5)
    ids = (torch.randint(0, 11, (30,)), torch.arange(11))
    cached = retrieval_ranks(queries, items, *ids, mode="ot", chunk_size=8)
    streamed = retrieval_ranks(queries, items, *ids, mode="ot", chunk_size=8, cache_bytes=0)
    assert torch.equal(cached, streamed)


def test_bad_ranking_arguments_raise():
    with pytest.raises(ValueError, match="ranking mode"):
        retrieval_ranks(torch.randn(2, 3), torch.randn(2, 3), torch.arange(2), torch.arange(2), mode="plan")
    with pytest.raises(ValueError, match="query_ids has 3 entries"):
        retrieval_ranks(torch.randn(2, 3), torch.randn(2, 3), torch.arange(3), torch.arange(2))


@settings(max_examples=50, deadline=None)
@given(
    ranks=st.lists(st.integers(0, 60), min_size=1, max_size=40),
    seed=st.integers(0, 1000),
)
def test_metric_invariants(ranks, seed):
    metrics = retrieval_metrics(torch.tensor(ranks))
    assert 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= 100
    assert 1 <= metrics["medR"] <= max(ranks) + 1
    assert 1 <= metrics["meanR"] <= max(ranks) + 1
    assert 0 <= metrics["mAP@10"] <= 1 and metrics["MRR@10"] == pytest.approx(metrics["mAP@10"])
    assert metrics["MRR@10"] * 100 >= metrics["R@1"] - 1e-9
    shuffled = torch.tensor(ranks)[torch.randperm(len(ranks), generator=torch.Generator().manual_seed(seed))]
    assert retrieval_metrics(shuffled) == pytest.approx(metrics)  # query order does not matter


@settings(max_examples=25, deadline=None)
@given(num_items=st.integers(2, 15), num_queries=st.integers(1, 10), seed=st.integers(0, 1000))
def test_rank_invariants_under_item_permutation_and_perfect_retrieval(num_items, num_queries, seed):
    generator = torch.Generator().manual_seed(seed)
    items = torch.randn(num_items, 3, generator=generator, dtype=torch.float64)
    query_ids = torch.randint(0, num_items, (num_queries,), generator=generator)
    item_ids = torch.arange(num_items)
    queries = torch.randn(num_queries, 3, generator=generator, dtype=torch.float64)
    ranks = retrieval_ranks(queries, items, query_ids, item_ids)
    perm = torch.randperm(num_items, generator=generator)
    permuted = retrieval_ranks(queries, items[perm], query_ids, item_ids[perm])
    assert torch.equal(ranks, permuted)  # continuous random costs: no ties
    assert ((ranks >= 0) & (ranks < num_items)).all()
    perfect = retrieval_ranks(items[query_ids], items, query_ids, item_ids)
    assert retrieval_metrics(perfect)["R@1"] == 100.0


@pytest.mark.parametrize("mode", ["distance", "ot"])
@pytest.mark.parametrize("cache_bytes", [0, 2**30])
def test_ranks_from_a_block_function_equal_ranks_from_the_full_cost(mode, cache_bytes):
    from hf_mltm.evaluation import ranks_from_cost
    from hf_mltm.ot import CostChunks

    generator = torch.Generator().manual_seed(4)
    queries = torch.randn(19, 5, generator=generator, dtype=torch.float64)
    items = torch.randn(8, 5, generator=generator, dtype=torch.float64)
    query_ids, item_ids = torch.randint(0, 4, (19,), generator=generator), torch.arange(8) % 4
    cost = euclidean_cost(queries, items)

    def score_chunk(rows: slice) -> torch.Tensor:  # a "model" scoring a chunk of queries against the whole gallery
        return euclidean_cost(queries[rows], items)

    settings = {"mode": mode, "ot_max_iter": 3000, "ot_tol": 1e-12}
    chunks = CostChunks(score_chunk, 19, 8, chunk_size=4, cache_bytes=cache_bytes, dtype=torch.float64)
    from_blocks = ranks_from_cost(chunks, query_ids, item_ids, **settings)
    assert torch.equal(from_blocks, ranks_from_cost(cost, query_ids, item_ids, **settings))
    assert torch.equal(from_blocks, retrieval_ranks(queries, items, query_ids, item_ids, chunk_size=4, **settings))
    if mode == "distance":
        assert torch.equal(from_blocks, brute_force_ranks(cost, query_ids, item_ids))
    else:
        plan = sinkhorn(None, None, cost / cost.max(), 0.05, tol=1e-12, max_iter=3000).plan
        assert torch.equal(from_blocks, brute_force_ranks(-plan, query_ids, item_ids))


def test_ot_ranking_of_a_negative_cost_is_not_inverted_by_batch_max():
    # Regression: batch_max divided a cost with a negative maximum (e.g. -similarity) by it, flipping its sign.
    from hf_mltm.evaluation import ranks_from_cost

    generator = torch.Generator().manual_seed(5)
    cost = -torch.rand(12, 6, generator=generator, dtype=torch.float64) - 0.5  # every entry negative
    query_ids, item_ids = torch.randint(0, 6, (12,), generator=generator), torch.arange(6)
    ranks = ranks_from_cost(cost, query_ids, item_ids, mode="ot", ot_max_iter=5000, ot_tol=1e-12)
    plan = sinkhorn(None, None, cost, 0.05, tol=1e-12, max_iter=5000).plan  # unscaled
    assert torch.equal(ranks, brute_force_ranks(-plan, query_ids, item_ids))


def test_ranks_from_cost_rejects_ids_that_do_not_match_the_cost():
    from hf_mltm.evaluation import ranks_from_cost

    with pytest.raises(ValueError, match=r"query_ids has 3 entries but the cost has 2 rows"):
        ranks_from_cost(torch.rand(2, 4), torch.arange(3), torch.arange(4))
    with pytest.raises(ValueError, match=r"item_ids has 3 entries but the cost has 4 columns"):
        ranks_from_cost(torch.rand(2, 4), torch.arange(2), torch.arange(3))
    with pytest.raises(ValueError, match=r"cost must be a \(num_queries, num_items\) tensor, got \(2, 4, 1\)"):
        ranks_from_cost(torch.rand(2, 4, 1), torch.arange(2), torch.arange(4))


def test_ranking_modes_are_one_vocabulary():
    from hf_mltm.evaluation.ranking import RANKING_MODES, ranks_from_cost

    assert RANKING_MODES == ("distance", "ot")
    with pytest.raises(ValueError, match=r"Unknown ranking mode 'plan'; use one of 'distance', 'ot'"):
        ranks_from_cost(torch.rand(2, 2), torch.arange(2), torch.arange(2), mode="plan")


def test_no_queries_give_an_empty_ranking():
    from hf_mltm.evaluation import ranks_from_cost

    for mode in ("distance", "ot"):
        assert ranks_from_cost(torch.rand(0, 3), torch.arange(0), torch.arange(3), mode=mode).shape == (0, 0)
