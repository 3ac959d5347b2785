import pytest
import torch

import hf_mltm.ot.streaming as streaming_module
from hf_mltm.ot import OTResult, cosine_cost, euclidean_cost, sinkhorn
from hf_mltm.ot.streaming import CostChunks, streaming_sinkhorn


@pytest.mark.parametrize("cache_bytes", [0, 2**30])
@pytest.mark.parametrize("normalization", ["none", "batch_max"])
def test_streamed_potentials_equal_the_dense_solver(cache_bytes, normalization):
    x, y = torch.randn(37, 6, dtype=torch.float64), torch.randn(53, 6, dtype=torch.float64)
    chunks = CostChunks.from_embeddings(x, y, euclidean_cost, chunk_size=8, cache_bytes=cache_bytes)
    assert (chunks.full is None) == (cache_bytes == 0)
    result = streaming_sinkhorn(chunks, 0.1, normalization=normalization, max_iter=5000, tol=1e-12)
    cost = euclidean_cost(x, y)
    scale = cost.max() if normalization == "batch_max" else 1.0
    dense = sinkhorn(None, None, cost / scale, 0.1, max_iter=5000, tol=1e-12)
    assert isinstance(result, OTResult) and result.converged and result.marginal_error < 1e-10
    assert result.plan is None and result.log_plan is None and result.value is None and result.h is None
    assert result.cost_scale == pytest.approx(float(scale), rel=0, abs=0)
    # potentials are unique up to a constant shift between f and g
    shift = (result.f - dense.f).mean()
    torch.testing.assert_close(result.f - shift, dense.f, atol=1e-9, rtol=0)
    torch.testing.assert_close(result.g + shift, dense.g, atol=1e-9, rtol=0)


def test_chunks_cover_every_row_once():
    x, y = torch.randn(10, 3), torch.randn(4, 3)
    chunks = CostChunks.from_embeddings(x, y, cosine_cost, chunk_size=3, cache_bytes=0)
    rows = [r for r, _ in chunks]
    assert [(r.start, r.stop) for r in rows] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    torch.testing.assert_close(torch.cat([c for _, c in chunks]), cosine_cost(x, y))


def test_non_finite_cost_is_reported_with_rows():
    x, y = torch.randn(5, 3), torch.randn(4, 3)
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf entries in rows \[3\]"):
        list(CostChunks.from_embeddings(x, y, euclidean_cost, chunk_size=3, cache_bytes=0))


@pytest.mark.parametrize("cache_bytes", [0, 2**30])
def test_block_function_matrix_and_embedding_chunks_give_the_same_potentials(cache_bytes):
    x, y = torch.randn(23, 4, dtype=torch.float64), torch.randn(17, 4, dtype=torch.float64)
    cost = euclidean_cost(x, y)
    calls = []

    def score_rows(rows: slice) -> torch.Tensor:  # e.g. a model scoring a chunk of queries against the gallery
        calls.append((rows.start, rows.stop))
        return euclidean_cost(x[rows], y)

    sources = {
        "block": CostChunks(score_rows, 23, 17, chunk_size=5, cache_bytes=cache_bytes, dtype=torch.float64),
        "matrix": CostChunks.from_matrix(cost, chunk_size=5, cache_bytes=cache_bytes),
        "embeddings": CostChunks.from_embeddings(x, y, euclidean_cost, chunk_size=5, cache_bytes=cache_bytes),
    }
    results = {name: streaming_sinkhorn(chunks, 0.1, normalization="batch_max", max_iter=3000, tol=1e-12)
               for name, chunks in sources.items()}
    for name in ("matrix", "embeddings"):
        torch.testing.assert_close(results[name].f, results["block"].f, atol=1e-12, rtol=0)
        torch.testing.assert_close(results[name].g, results["block"].g, atol=1e-12, rtol=0)
    if cache_bytes:
        assert calls == [(0, 23)]  # cached: one call for the whole cost
    else:  # streamed: blocks of 5 rows, one pass for the max and one per iteration
        assert calls[:5] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
        assert len(calls) == 5 * (1 + results["block"].n_iter)


def test_from_matrix_keeps_the_matrix_without_copying_when_cached():
    cost = torch.rand(6, 4)
    chunks = CostChunks.from_matrix(cost, cache_bytes=2**20)
    assert chunks.full.data_ptr() == cost.data_ptr() and chunks.shape == (6, 4)
    assert CostChunks.from_matrix(cost.half(), cache_bytes=2**20).full.dtype == torch.float32


def test_block_of_the_wrong_shape_is_rejected_with_both_shapes():
    chunks = CostChunks(lambda rows: torch.zeros(rows.stop - rows.start, 3), 4, 5, cache_bytes=0)
    with pytest.raises(ValueError, match=r"rows 0\.\.3 has shape \(4, 3\), expected \(4, 5\)"):
        list(chunks)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_rows": -1}, "num_rows must be an integer >= 0"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"dtype": torch.float16}, "dtype must be torch.float32 or torch.float64"),
        ({"block_fn": "cost"}, "block_fn must be a callable"),
    ],
)
def test_bad_cost_chunks_arguments_raise(kwargs, match):
    args = {"block_fn": lambda rows: torch.zeros(rows.stop - rows.start, 2), "num_rows": 3, "num_cols": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        CostChunks(args.pop("block_fn"), args.pop("num_rows"), args.pop("num_cols"), **args)


@pytest.mark.parametrize("cache_bytes", [0, 2**30])
def test_batch_max_leaves_a_non_positive_cost_unscaled(cache_bytes):
    # Regression: dividing by a negative maximum flipped the sign of the cost (and so the ranking).
    cost = -torch.rand(7, 5, dtype=torch.float64) - 0.1
    chunks = CostChunks.from_matrix(cost, chunk_size=3, cache_bytes=cache_bytes)
    normalised = streaming_sinkhorn(chunks, 0.1, normalization="batch_max", max_iter=2000, tol=1e-12)
    unscaled = streaming_sinkhorn(chunks, 0.1, normalization="none", max_iter=2000, tol=1e-12)
    assert normalised.cost_scale == 1.0
    torch.testing.assert_close(normalised.g, unscaled.g, atol=0, rtol=0)


def test_streaming_rejects_a_cost_too_large_for_float32():
    chunks = CostChunks.from_matrix(torch.rand(6, 5) * 3e38, chunk_size=2, cache_bytes=0)
    with pytest.raises(ValueError, match="left the range of torch.float32"):
        streaming_sinkhorn(chunks, 0.05)


def test_streaming_potentials_was_replaced_by_ot_result():
    with pytest.raises(AttributeError, match="StreamingPotentials was replaced by OTResult"):
        streaming_module.StreamingPotentials  # noqa: B018
