"""Parity tests for the speed paths of the balanced solver: checks that reuse the block's matrix-vector products and
in-place updates of the solver's own (n, m) buffers."""

from __future__ import annotations

import ot
import torch

from hf_mltm.ot import mltm_loss, sinkhorn


def _problem(n: int = 40, m: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=generator, dtype=torch.float64)
    a = torch.rand(n, generator=generator, dtype=torch.float64) + 0.5
    b = torch.rand(m, generator=generator, dtype=torch.float64) + 0.5
    return cost, a / a.sum(), b / b.sum()


def test_sinkhorn_with_reused_checks_matches_pot_sinkhorn_log_in_float64():
    cost, a, b = _problem()
    # check_every=3 runs many short blocks, so the over-relaxed updates and the reused row/column sums are exercised
    result = sinkhorn(a, b, cost, 0.05, tol=1e-12, check_every=3, max_iter=5000)
    reference = torch.as_tensor(ot.bregman.sinkhorn_log(a.numpy(), b.numpy(), cost.numpy(), 0.05, numItermax=20000,
                                                        stopThr=1e-14))
    torch.testing.assert_close(result.plan, reference, atol=1e-12, rtol=1e-9)


def test_sinkhorn_reported_marginal_error_equals_the_error_of_the_returned_plan():
    generator = torch.Generator().manual_seed(1)
    cost = torch.rand(3, 50, 60, generator=generator)  # a batch of float32 problems
    for check_every in (1, 4, 10):
        result = sinkhorn(None, None, cost, 0.05, tol=1e-4, check_every=check_every)
        plan = result.plan.double()
        recomputed = (plan.sum(-1) - 1 / 50).abs().sum(-1) + (plan.sum(-2) - 1 / 60).abs().sum(-1)
        torch.testing.assert_close(result.marginal_error.double(), recomputed, atol=2e-6, rtol=0)
        assert result.converged and bool((recomputed < 1e-4 + 2e-6).all())


def test_sinkhorn_in_place_path_equals_the_differentiable_path():
    cost, a, b = _problem(seed=2)
    with torch.no_grad():
        fast = sinkhorn(a, b, cost, 0.05, tol=1e-10)
    slow = sinkhorn(a, b, cost.clone().requires_grad_(), 0.05, tol=1e-10)  # autograd-safe, out-of-place path
    assert slow.plan.requires_grad and not fast.plan.requires_grad
    assert fast.n_iter == slow.n_iter
    torch.testing.assert_close(fast.plan, slow.plan.detach(), atol=0, rtol=1e-14)
    torch.testing.assert_close(fast.log_plan, slow.log_plan.detach(), atol=1e-13, rtol=0)


def test_mltm_loss_backward_twice_gives_the_closed_form_gradient_both_times():
    cost, _, _ = _problem(n=24, m=24, seed=3)
    cost.requires_grad_()
    loss = mltm_loss(cost, 0.05, tol=1e-12)
    (first,) = torch.autograd.grad(loss, cost, retain_graph=True)
    (second,) = torch.autograd.grad(loss, cost)  # the saved plan must not have been changed in place
    plan = sinkhorn(None, None, cost.detach(), 0.05, tol=1e-12).plan
    expected = (torch.eye(24, dtype=torch.float64) / 24 - plan) / 0.05
    torch.testing.assert_close(first, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
