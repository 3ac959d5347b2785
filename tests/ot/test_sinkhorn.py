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


@pytest.mark.parametrize("solver", ["sinkhorn", "partial_sinkhorn"])
@pytest.mark.parametrize(
    ("cost_shape", "kwargs", "match"),
    [
        ((3, 4), {"a": torch.full((2, 3), 1 / 3)}, r"a has shape \(2, 3\), which does not broadcast to \(3,\) as the "
                                                   r"cost of shape \(3, 4\)"),
        ((2, 3, 4), {"b": torch.full((3, 4), 0.25)}, r"b has shape \(3, 4\), which does not broadcast to \(2, 4\) "
                                                     r"as the cost of shape \(2, 3, 4\)"),
        ((2, 3, 4), {"row_mask": torch.ones(5, 3, dtype=torch.bool)}, r"row_mask has shape \(5, 3\).*\(2, 3, 4\)"),
        ((3, 4), {"col_mask": torch.ones(5, dtype=torch.bool)}, r"col_mask has shape \(5,\).*\(3, 4\)"),
    ],
)
def test_shape_mismatch_raises_value_error_naming_both_shapes(solver, cost_shape, kwargs, match):
    from hf_mltm.ot import partial_sinkhorn

    args = {"a": None, "b": None} | kwargs
    a, b = args.pop("a"), args.pop("b")
    cost = torch.rand(cost_shape)
    with pytest.raises(ValueError, match=match):
        if solver == "sinkhorn":
            sinkhorn(a, b, cost, 0.1, **args)
        else:
            partial_sinkhorn(a, b, cost, 0.1, 0.5, **args)


def test_warm_start_of_the_wrong_shape_raises_value_error():
    with pytest.raises(ValueError, match=r"init\[1\] \(g\) has shape \(3,\), which does not broadcast to \(4,\)"):
        sinkhorn(None, None, torch.rand(3, 4), 0.1, init=(torch.zeros(3), torch.zeros(3)))


def test_cost_too_large_for_float32_raises_instead_of_returning_a_nan_plan():
    from hf_mltm.ot import mltm_loss, mltm_partial_loss, partial_sinkhorn

    cost = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) * 3e38  # near the float32 maximum
    for call in (
        lambda: sinkhorn(None, None, cost, 0.05),
        lambda: partial_sinkhorn(None, None, cost, 0.05, 0.5),
        lambda: mltm_loss(cost, 0.05),
        lambda: mltm_partial_loss(cost, 0.05, 0.5),
    ):
        with pytest.raises(ValueError, match=r"too large for torch.float32.*normalization='batch_max'.*float64"):
            call()
    # the suggested remedies work: batch-max normalisation equals solving the pre-divided cost, and float64 solves it
    torch.testing.assert_close(mltm_loss(cost, 0.05, normalization="batch_max"), mltm_loss(cost / cost.max(), 0.05))
    wide = sinkhorn(None, None, cost.double(), 0.05, max_iter=50, warn=False)
    assert torch.isfinite(wide.plan).all() and not torch.isnan(wide.log_plan).any()


def test_overflowing_solve_raises_even_past_the_up_front_check(monkeypatch):
    import hf_mltm.ot._utils as utils

    monkeypatch.setattr(utils, "check_cost_values", lambda *args: None)
    cost = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) * 3e38
    with pytest.raises(ValueError, match="sinkhorn produced a non-finite plan"):
        sinkhorn(None, None, cost, 0.05)


def test_nan_in_valid_entries_is_located_and_does_not_blame_normalisation():
    cost = torch.rand(2, 4, 5)
    row_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    cost[0, 3] = float("nan")  # padding row: allowed
    result = sinkhorn(None, None, cost, 0.1, row_mask=row_mask)
    assert torch.isfinite(result.plan).all() and torch.all(result.plan[0, 3] == 0)
    cost[1, 2, 4] = float("inf")  # a valid entry
    with pytest.raises(ValueError, match=r"1 NaN or inf entries in valid \(unmasked\) positions, the first at index "
                                         r"\(1, 2, 4\)") as error:
        sinkhorn(None, None, cost, 0.1, row_mask=row_mask)
    assert "normali" not in str(error.value)


def test_balanced_and_partial_results_leave_the_other_solvers_fields_empty():
    from hf_mltm.ot import partial_sinkhorn

    cost = torch.rand(3, 4)
    for result in (sinkhorn(None, None, cost, 0.1), partial_sinkhorn(None, None, cost, 0.1, 0.5)):
        assert result.value is None and result.cost_scale == 1.0
        plan, log_plan, f, g, n_iter, marginal_error, converged, h = result[:8]  # historical positional order
        assert plan is result.plan and g is result.g and converged is result.converged and h is result.h
