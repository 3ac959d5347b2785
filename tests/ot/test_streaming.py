import pytest
import torch

from hf_mltm.ot import cosine_cost, euclidean_cost, sinkhorn
from hf_mltm.ot.streaming import CostChunks, streaming_sinkhorn


@pytest.mark.parametrize("cache_bytes", [0, 2**30])
@pytest.mark.parametrize("normalization", ["none", "batch_max"])
def test_streamed_potentials_equal_the_dense_solver(cache_bytes, normalization):
    x, y = torch.randn(37, 6, dtype=torch.float64), torch.randn(53, 6, dtype=torch.float64)
    chunks = CostChunks(x, y, euclidean_cost, chunk_size=8, cache_bytes=cache_bytes)
    assert (chunks.full is None) == (cache_bytes == 0)
    potentials = streaming_sinkhorn(chunks, 0.1, normalization=normalization, max_iter=5000, tol=1e-12)
    cost = euclidean_cost(x, y)
    scale = cost.max() if normalization == "batch_max" else 1.0
    dense = sinkhorn(None, None, cost / scale, 0.1, max_iter=5000, tol=1e-12)
    assert potentials.marginal_error < 1e-10
    # potentials are unique up to a constant shift between f and g
    shift = (potentials.f - dense.f).mean()
    torch.testing.assert_close(potentials.f - shift, dense.f, atol=1e-9, rtol=0)
    torch.testing.assert_close(potentials.g + shift, dense.g, atol=1e-9, rtol=0)


def test_chunks_cover_every_row_once():
    x, y = torch.randn(10, 3), torch.randn(4, 3)
    chunks = CostChunks(x, y, cosine_cost, chunk_size=3, cache_bytes=0)
    rows = [r for r, _ in chunks]
    assert [(r.start, r.stop) for r in rows] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    torch.testing.assert_close(torch.cat([c for _, c in chunks]), cosine_cost(x, y))


def test_non_finite_cost_is_reported_with_rows():
    x, y = torch.randn(5, 3), torch.randn(4, 3)
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="rows 3..6"):
        list(CostChunks(x, y, euclidean_cost, chunk_size=3, cache_bytes=0))
