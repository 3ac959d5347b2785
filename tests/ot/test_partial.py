import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_mltm.ot import partial_sinkhorn, sinkhorn

from .test_sinkhorn import random_problem


def pot_partial_converged(a, b, cost, epsilon, mass):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = ot.partial.entropic_partial_wasserstein(a, b, cost, epsilon, m=mass, numItermax=20000, stopThr=1e-15)
    ok = (
        abs(plan.sum() - mass) < 1e-10
        and (plan.sum(1) <= a + 1e-10).all()
        and (plan.sum(0) <= b + 1e-10).all()
    )
    return plan, ok


@pytest.mark.parametrize("epsilon", [0.01, 0.05, 0.5])
@pytest.mark.parametrize("shape,uniform,mass", [((8, 8), True, 0.7), ((6, 10), False, 0.5), ((12, 5), False, 0.9)])
def test_plan_equals_pot_entropic_partial_wasserstein(epsilon, shape, uniform, mass):
    compared = 0
    for attempt in range(6):
        a, b, cost = random_problem(np.random.default_rng([shape[0], attempt]), *shape, uniform=uniform)
        expected, pot_ok = pot_partial_converged(a, b, cost, epsilon, mass)
        if not pot_ok:
            continue
        result = partial_sinkhorn(torch.tensor(a), torch.tensor(b), torch.tensor(cost), epsilon, mass,
                                  max_iter=20000, tol=1e-11, warn=False)
        if not result.converged:  # near-degenerate problem at small epsilon: no converged reference to compare
            continue
        np.testing.assert_allclose(result.plan.numpy(), expected, atol=1e-6, rtol=0)
        compared += 1
    assert compared >= 1


def test_full_mass_gives_the_balanced_plan():
    cost = torch.rand(7, 9, dtype=torch.float64)
    partial = partial_sinkhorn(None, None, cost, 0.05, 1.0, tol=1e-11, max_iter=100000)
    balanced = sinkhorn(None, None, cost, 0.05, tol=1e-11, max_iter=100000)
    torch.testing.assert_close(partial.plan, balanced.plan, atol=1e-8, rtol=0)


def test_potentials_identify_active_constraints():
    cost = torch.rand(10, 10, dtype=torch.float64)
    result = partial_sinkhorn(None, None, cost, 0.05, 0.6, tol=1e-12, max_iter=100000)
    rows = result.plan.sum(-1)
    active = result.f < 0
    assert active.any() and (~active).any()
    torch.testing.assert_close(rows[active], torch.full_like(rows[active], 0.1), atol=1e-10, rtol=0)
    assert (rows[~active] < 0.1).all()
    assert (result.f <= 0).all() and (result.g <= 0).all()


def test_masked_entries_get_zero_mass():
    cost = torch.rand(5, 6)
    row_mask = torch.tensor([1, 1, 1, 0, 1], dtype=torch.bool)
    result = partial_sinkhorn(None, None, cost, 0.05, 0.5, row_mask=row_mask)
    assert torch.all(result.plan[3] == 0)
    torch.testing.assert_close(result.plan.sum(), torch.tensor(0.5), atol=1e-6, rtol=0)


def test_small_epsilon_large_cost_is_finite():
    result = partial_sinkhorn(None, None, torch.rand(32, 32) * 10, 0.01, 0.8, max_iter=300, tol=0)
    assert torch.isfinite(result.log_plan).all() and torch.isfinite(result.h).all()


def test_mass_close_to_the_total_converges_quickly():
    # Regression: updating the mass potential separately from g zig-zagged, shrinking the mass scaling only by
    # mass / sum(b) per iteration (100000 iterations were not enough at mass = 0.99999 * sum(b)).
    a = torch.ones(1, dtype=torch.float64)
    b = torch.tensor([0.1, 0.2, 0.25, 0.25], dtype=torch.float64)
    cost = torch.tensor([[0.3, 0.9, 0.1, 0.5]], dtype=torch.float64)
    result = partial_sinkhorn(a, b, cost, 1.0, 0.99999 * 0.8, tol=1e-12)
    assert result.converged and result.n_iter <= 50
    assert (result.plan.sum(-2) <= b + 1e-12).all()
    torch.testing.assert_close(result.plan.sum(), torch.tensor(0.99999 * 0.8, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("mass", [0.0, -0.1, 1.2])
def test_infeasible_mass_raises(mass):
    with pytest.raises(ValueError, match="mass must be in"):
        partial_sinkhorn(None, None, torch.rand(3, 3), 0.1, mass)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 10),
    m=st.integers(1, 10),
    epsilon=st.floats(0.05, 2.0),
    mass_fraction=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_partial_constraints_hold(n, m, epsilon, mass_fraction, seed):
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=generator, dtype=torch.float64)
    a = torch.rand(n, generator=generator, dtype=torch.float64) + 0.05
    b = torch.rand(m, generator=generator, dtype=torch.float64) + 0.05
    a, b = a / a.sum(), 0.8 * b / b.sum()
    mass = mass_fraction * 0.8
    result = partial_sinkhorn(a, b, cost, epsilon, mass, max_iter=100000, tol=1e-9, warn=False)
    assert result.converged
    assert (result.plan.sum(-1) <= a + 1e-8).all()
    assert (result.plan.sum(-2) <= b + 1e-8).all()
    torch.testing.assert_close(result.plan.sum(), torch.tensor(mass, dtype=torch.float64), atol=1e-8, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mass_scale_saturated_guess_gives_the_hand_solved_root(dtype, monkeypatch):
    # sum_j min(c_j, lam w_j) = 0.8 with c = (0.5, 0.5), w = (1, 3): lam = 0.3 with only the second entry saturated
    # (0.3 + 0.5 = 0.8); with mass 0.6 nothing saturates and lam = 0.6 / 4 = 0.15
    from hf_mltm.ot.partial import _solve_mass_scale

    capacity, weight = torch.tensor([0.5, 0.5], dtype=dtype), torch.tensor([1.0, 3.0], dtype=dtype)
    exact = {0.8: (0.3, [False, True]), 0.6: (0.15, [False, False])}
    for mass, (lam_expected, saturated_expected) in exact.items():  # no guess, a wrong guess: the breakpoint solve
        for guess in (None, torch.tensor([True, True]), torch.tensor([not s for s in saturated_expected])):
            lam, saturated = _solve_mass_scale(capacity, weight, mass, guess)
            assert lam.item() == pytest.approx(lam_expected, rel=1e-6)
            assert saturated.tolist() == saturated_expected

    def no_breakpoint_solve(*args, **kwargs):
        raise AssertionError("a correct saturated-set guess must not need the breakpoint search")

    monkeypatch.setattr(torch, "searchsorted", no_breakpoint_solve)
    for mass, (lam_expected, saturated_expected) in exact.items():  # the right guess: closed form only
        lam, saturated = _solve_mass_scale(capacity, weight, mass, torch.tensor(saturated_expected))
        assert lam.item() == pytest.approx(lam_expected, rel=1e-6)
        assert saturated.tolist() == saturated_expected
    batched, guesses = torch.stack([weight, weight.flip(0)]), torch.tensor([[False, True], [True, False]])
    lam, saturated = _solve_mass_scale(capacity.expand(2, 2), batched, 0.8, guesses)
    assert lam.tolist() == pytest.approx([0.3, 0.3], rel=1e-6) and torch.equal(saturated, guesses)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mass_scale_takes_the_mass_and_zero_as_tensors_with_identical_results(dtype):
    """The iterations pass ``mass`` and ``zero`` as 0-dim tensors (fewer conversions): bit-identical to numbers."""
    from hf_mltm.ot.partial import _solve_mass_scale

    generator = torch.Generator().manual_seed(0)
    capacity = torch.rand(3, 40, generator=generator, dtype=dtype)
    weight = torch.rand(3, 40, generator=generator, dtype=dtype)
    for guess in (None, torch.rand(3, 40, generator=generator) < 0.5):
        for shape in ((3, 40), (40,)):
            index = (slice(None),) if len(shape) == 2 else (0,)
            numbers = _solve_mass_scale(capacity[index], weight[index], 4.0, None if guess is None else guess[index])
            tensors = _solve_mass_scale(capacity[index], weight[index], torch.tensor(4.0, dtype=dtype),
                                        None if guess is None else guess[index], torch.zeros((), dtype=dtype))
            assert torch.equal(numbers[0], tensors[0]) and torch.equal(numbers[1], tensors[1])
            assert (numbers[0] > 0).all() and numbers[0].shape == shape[:-1]
