import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_mltm.ot import sinkhorn


def random_problem(rng, n, m, uniform=False):
    """Marginals and a normalised squared-Euclidean cost between random 2-D point clouds."""
    a = np.full(n, 1 / n) if uniform else rng.random(n) + 0.1
    b = np.full(m, 1 / m) if uniform else rng.random(m) + 0.1
    cost = ot.dist(rng.random((n, 2)), rng.random((m, 2)))
    return a / a.sum(), b / b.sum(), cost / cost.max()


def pot_marginal_error(plan, a, b):
    return np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()


def pot_converged_problem(solver, epsilon, shape, uniform, seed):
    """The first of a few seeded problems that POT solves to a marginal error < 1e-10 (parity needs a converged
    reference; square problems at epsilon 0.01 can be near-degenerate and take POT minutes)."""
    for attempt in range(10):
        rng = np.random.default_rng([seed, attempt])
        a, b, cost = random_problem(rng, *shape, uniform=uniform)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = solver(a, b, cost, epsilon)
        if pot_marginal_error(expected, a, b) < 1e-10:
            return a, b, cost, expected
    raise AssertionError("POT converged on none of the seeded problems")


@pytest.mark.parametrize("epsilon", [0.01, 0.05, 0.5])
@pytest.mark.parametrize("shape,uniform", [((8, 8), True), ((7, 12), False), ((15, 4), False)])
def test_plan_equals_pot_sinkhorn_log(epsilon, shape, uniform):
    def solver(a, b, cost, epsilon):
        return ot.bregman.sinkhorn_log(a, b, cost, epsilon, numItermax=5000, stopThr=1e-13)

    a, b, cost, expected = pot_converged_problem(solver, epsilon, shape, uniform, seed=shape[0] * 100 + shape[1])
    result = sinkhorn(torch.tensor(a), torch.tensor(b), torch.tensor(cost), epsilon, max_iter=200000, tol=1e-13)
    assert result.converged
    np.testing.assert_allclose(result.plan.numpy(), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.log_plan.exp().numpy(), result.plan.numpy(), atol=1e-15)


@pytest.mark.parametrize("epsilon", [0.05, 0.5])
def test_plan_equals_pot_kernel_sinkhorn(epsilon):
    def solver(a, b, cost, epsilon):
        return ot.sinkhorn(a, b, cost, epsilon, numItermax=20000, stopThr=1e-13)

    a, b, cost, expected = pot_converged_problem(solver, epsilon, (9, 6), False, seed=1)
    result = sinkhorn(torch.tensor(a), torch.tensor(b), torch.tensor(cost), epsilon, max_iter=200000, tol=1e-13)
    np.testing.assert_allclose(result.plan.numpy(), expected, atol=1e-6, rtol=0)


def test_batched_equals_individual_solves():
    cost = torch.rand(3, 2, 5, 6, dtype=torch.float64)
    batched = sinkhorn(None, None, cost, 0.1, tol=1e-12, max_iter=10000)
    for i in range(3):
        for j in range(2):
            single = sinkhorn(None, None, cost[i, j], 0.1, tol=1e-12, max_iter=10000)
            torch.testing.assert_close(batched.plan[i, j], single.plan, atol=1e-10, rtol=0)
    assert batched.marginal_error.shape == (3, 2)


def test_masks_give_exactly_zero_mass_and_solve_the_unpadded_problem():
    cost = torch.rand(2, 6, 7, dtype=torch.float64)
    row_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    col_mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    cost[0, 4:] = float("nan")  # padding may hold anything
    result = sinkhorn(None, None, cost, 0.1, row_mask=row_mask, col_mask=col_mask, tol=1e-12, max_iter=10000)
    assert torch.all(result.plan[0, 4:] == 0) and torch.all(result.plan[0, :, 3:] == 0)
    assert torch.all(result.plan[1, :, 6] == 0)
    assert torch.isneginf(result.log_plan[0, 4:]).all()
    assert result.converged
    small = sinkhorn(None, None, cost[0, :4, :3], 0.1, tol=1e-12, max_iter=10000)
    torch.testing.assert_close(result.plan[0, :4, :3], small.plan, atol=1e-10, rtol=0)
    assert torch.isfinite(result.f[0, :4]).all() and torch.isneginf(result.f[0, 4:]).all()


def test_small_epsilon_and_unnormalised_costs_stay_finite():
    cost = torch.rand(64, 64) * 10.0  # up to 1000 x epsilon
    result = sinkhorn(None, None, cost, 0.01, max_iter=500, tol=0)
    assert torch.isfinite(result.log_plan).all()
    assert torch.isfinite(result.f).all() and torch.isfinite(result.g).all()
    # columns are exact after every g-update; rows approach 1/64 (error is reported, not hidden)
    torch.testing.assert_close(result.plan.sum(-2), torch.full((64,), 1 / 64), atol=1e-6, rtol=0)
    assert torch.isfinite(result.marginal_error).all() and result.marginal_error.item() < 0.5


def test_permutation_cost_recovers_the_permutation():
    perm = torch.randperm(6)
    cost = torch.ones(6, 6, dtype=torch.float64)
    cost[torch.arange(6), perm] = 0.0
    result = sinkhorn(None, None, cost, 0.01, tol=1e-12)
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[torch.arange(6), perm] = 1 / 6
    torch.testing.assert_close(result.plan, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_input_is_solved_in_float32(dtype):
    cost = torch.rand(16, 16).to(dtype)
    result = sinkhorn(None, None, cost, 0.05)
    assert result.plan.dtype == torch.float32 and result.converged


def test_autocast_does_not_lower_precision():
    cost = torch.rand(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = sinkhorn(None, None, cost, 0.05)
    reference = sinkhorn(None, None, cost, 0.05)
    assert result.plan.dtype == torch.float32
    torch.testing.assert_close(result.plan, reference.plan)


def test_warm_start_converges_immediately():
    cost = torch.rand(10, 12, dtype=torch.float64)
    first = sinkhorn(None, None, cost, 0.05, tol=1e-10)
    second = sinkhorn(None, None, cost, 0.05, tol=1e-10, init=(first.f, first.g))
    assert second.n_iter <= 10 < first.n_iter
    torch.testing.assert_close(second.plan, first.plan, atol=1e-10, rtol=0)


def test_non_convergence_warns():
    with pytest.warns(UserWarning, match="did not converge"):
        result = sinkhorn(None, None, torch.rand(20, 20) * 5, 0.01, max_iter=3, tol=1e-9, check_every=1)
    assert not result.converged and result.n_iter == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"a": torch.tensor([0.5, 0.5, 0.5])}, "sum\\(a\\) == sum\\(b\\)"),
        ({"a": torch.tensor([1.5, -0.5, 0.0])}, "non-negative"),
        ({"row_mask": torch.zeros(3, dtype=torch.bool)}, "no valid entry"),
        ({"max_iter": 0}, "max_iter"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = {"a": None, "b": None, "cost": torch.rand(3, 4), "epsilon": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        sinkhorn(args.pop("a"), args.pop("b"), args.pop("cost"), args.pop("epsilon"), **args)


def test_nan_cost_raises():
    cost = torch.rand(3, 3)
    cost[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        sinkhorn(None, None, cost, 0.1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 12),
    epsilon=st.floats(0.02, 2.0),
    scale=st.floats(0.1, 20.0),
    seed=st.integers(0, 2**16),
)
def test_marginals_are_met(n, m, epsilon, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=generator, dtype=torch.float64) * scale
    a = torch.rand(n, generator=generator, dtype=torch.float64) + 0.05
    b = torch.rand(m, generator=generator, dtype=torch.float64) + 0.05
    a, b = a / a.sum(), b / b.sum()
    result = sinkhorn(a, b, cost, epsilon, max_iter=100000, tol=1e-9, warn=False)
    assert result.converged
    assert torch.isfinite(result.log_plan).all() and (result.plan >= 0).all()
    torch.testing.assert_close(result.plan.sum(-1), a, atol=1e-8, rtol=0)
    torch.testing.assert_close(result.plan.sum(-2), b, atol=1e-8, rtol=0)
