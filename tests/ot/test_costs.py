import pytest
import torch

from hf_mltm.ot import (
    MahalanobisMetric,
    cosine_cost,
    euclidean_cost,
    mahalanobis_cost,
    paper_initial_matrix,
    project_psd,
    sq_euclidean_cost,
)


def brute_force_quadratic(x, y, matrix):
    diff = x[:, None, :] - y[None, :, :]  # (n, m, d)
    return torch.einsum("nmd,de,nme->nm", diff, matrix, diff)


def test_euclidean_costs_match_cdist():
    x, y = torch.randn(5, 7, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64)
    torch.testing.assert_close(euclidean_cost(x, y), torch.cdist(x, y))
    torch.testing.assert_close(sq_euclidean_cost(x, y), torch.cdist(x, y) ** 2)
    expected = 1 - torch.nn.functional.cosine_similarity(x[:, None], y[None], dim=-1)
    torch.testing.assert_close(cosine_cost(x, y), expected)


def test_euclidean_gradient_is_finite_at_coincident_points():
    x = torch.randn(4, 3, requires_grad=True)
    euclidean_cost(x, x.detach().clone()).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_nan_inputs_give_nan_costs_not_zero():
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    for cost in (euclidean_cost(x, torch.randn(2, 4)), mahalanobis_cost(x, torch.randn(2, 4), torch.randn(4, 4))):
        assert torch.isnan(cost[1]).all() and torch.isfinite(cost[[0, 2]]).all()


def test_mahalanobis_equals_brute_force_with_full_non_diagonal_matrix():
    d = 6
    factor = torch.randn(d, d, dtype=torch.float64)
    matrix = factor.T @ factor
    assert (matrix - torch.diag(matrix.diagonal())).abs().max() > 0.5
    x, y = torch.randn(5, d, dtype=torch.float64), torch.randn(8, d, dtype=torch.float64)
    expected = brute_force_quadratic(x, y, matrix)
    torch.testing.assert_close(mahalanobis_cost(x, y, factor, squared=True), expected)
    torch.testing.assert_close(mahalanobis_cost(x, y, matrix=matrix), expected.sqrt())
    lowrank = torch.randn(2, d, dtype=torch.float64)
    torch.testing.assert_close(mahalanobis_cost(x, y, lowrank), brute_force_quadratic(x, y, lowrank.T @ lowrank).sqrt())


@pytest.mark.parametrize("parametrization", ["full", "lowrank", "projected"])
def test_gradient_reaches_off_diagonal_entries(parametrization):
    metric = MahalanobisMetric(5, parametrization, rank=3, init="paper").double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    metric(x, y).sum().backward()
    grad = metric.weight.grad
    off_diagonal = grad - torch.diag_embed(grad.diagonal()) if grad.shape[0] == grad.shape[1] else grad
    assert off_diagonal.abs().max() > 1e-3


@pytest.mark.parametrize("parametrization", ["diagonal", "full", "lowrank", "projected"])
@pytest.mark.parametrize("init", ["identity", "paper"])
def test_matrix_stays_psd_through_optimizer_steps(parametrization, init):
    metric = MahalanobisMetric(8, parametrization, rank=4, init=init)
    optimizer = torch.optim.SGD(metric.parameters(), lr=1.0)
    for _ in range(5):
        x, y = torch.randn(6, 8), torch.randn(6, 8)
        loss = -metric(x, y).mean() + metric(x, x).mean()  # pushes towards indefinite directions
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        metric.project_()
        eigenvalues = torch.linalg.eigvalsh((metric.matrix() + metric.matrix().T) / 2)
        assert eigenvalues.min() >= -1e-4 * eigenvalues.abs().max()
    torch.testing.assert_close(metric(x, y) ** 2, brute_force_quadratic(x, y, metric.matrix()).clamp_min(0),
                               atol=1e-3, rtol=1e-3)


def test_identity_init_is_euclidean():
    x, y = torch.randn(3, 4), torch.randn(5, 4)
    for parametrization in ("diagonal", "full", "projected"):
        torch.testing.assert_close(MahalanobisMetric(4, parametrization)(x, y), euclidean_cost(x, y), atol=1e-5, rtol=0)


def test_project_psd_clamps_negative_eigenvalues_where_svd_clamping_does_nothing():
    matrix = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # eigenvalues 3 and -1
    u, s, vh = torch.linalg.svd(matrix)
    torch.testing.assert_close(u @ torch.diag(s.clamp_min(0)) @ vh, matrix)  # the reference's no-op "projection"
    projected = project_psd(matrix)
    torch.testing.assert_close(projected, torch.tensor([[1.5, 1.5], [1.5, 1.5]], dtype=torch.float64))
    torch.testing.assert_close(project_psd(projected), projected)


def test_paper_init_is_psd_and_near_identity():
    matrix = paper_initial_matrix(16, torch.Generator().manual_seed(0))
    assert torch.linalg.eigvalsh(matrix).min() >= -1e-6
    assert (matrix - torch.eye(16)).abs().max() > 0.01


@pytest.mark.parametrize(
    "kwargs,match", [({"parametrization": "cholesky"}, "Unknown metric"), ({"parametrization": "lowrank"}, "rank")]
)
def test_bad_metric_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MahalanobisMetric(4, **kwargs)


def test_metric_stays_float32_under_autocast():
    metric = MahalanobisMetric(4, "full")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = metric(torch.randn(3, 4).bfloat16(), torch.randn(3, 4).bfloat16())
    assert cost.dtype == torch.float32
