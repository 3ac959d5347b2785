"""Parity tests for the speed paths of the balanced solver: checks that reuse the block's matrix-vector products and
in-place updates of the solver's own (n, m) buffers."""

from __future__ import annotations

import ot
import pytest
import torch

from hf_mltm.ot import SinkhornKLLoss, duplicate_aware_target, kl_to_plan, mltm_loss, sinkhorn
from hf_mltm.ot.costs import EuclideanDistance
from hf_mltm.ot.sinkhorn import _first_iteration


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


def _reference_loss(cost, epsilon, item_ids=None, detach_scale=False):
    """m-LTM loss by autograd through `normalize_cost` (torch's own `amax` gradient) and the unrolled iterations."""
    return mltm_loss(cost, epsilon, item_ids=item_ids, normalization="batch_max", detach_scale=detach_scale,
                     gradient="unrolled", tol=0, max_iter=3000)


@pytest.mark.parametrize("detach_scale", [False, True])
@pytest.mark.parametrize("item_ids", [None, torch.tensor([0, 1, 1, 2, 3, 4])])
def test_fused_batch_max_loss_equals_normalising_first_with_ties_and_a_non_positive_maximum(detach_scale, item_ids):
    generator = torch.Generator().manual_seed(4)
    cost = torch.rand(3, 6, 6, generator=generator, dtype=torch.float64) + 0.5
    cost[0, 1, 4] = cost[0, 3, 2] = cost[0].max() + 0.25  # two tied maxima share the gradient of the scale
    cost[2] = -cost[2]  # a non-positive maximum: that problem is solved unscaled, and its maximum gets no extra term
    cost.requires_grad_()
    fused = mltm_loss(cost, 0.1, item_ids=item_ids, normalization="batch_max", detach_scale=detach_scale, tol=1e-14,
                      max_iter=100000)
    (grad_fused,) = torch.autograd.grad(fused, cost)
    reference = _reference_loss(cost, 0.1, item_ids, detach_scale)
    (grad_reference,) = torch.autograd.grad(reference, cost)
    torch.testing.assert_close(fused, reference, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_fused, grad_reference, atol=1e-9, rtol=1e-7)
    if not detach_scale:  # the scale's gradient is there, shared equally by the two tied maxima
        detached = mltm_loss(cost, 0.1, item_ids=item_ids, normalization="batch_max", detach_scale=True, tol=1e-14,
                             max_iter=100000)
        extra = grad_fused - torch.autograd.grad(detached, cost)[0]
        assert abs(extra[0, 1, 4].item()) > 1e-3
        assert extra[0, 1, 4].item() == pytest.approx(extra[0, 3, 2].item(), abs=1e-12)
        assert int((extra[0].abs() > 1e-12).sum()) == 2 and extra[2].abs().max().item() < 1e-12


def test_identity_target_none_equals_the_dense_identity_target():
    cost = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64).requires_grad_()
    dense = duplicate_aware_target(None, 7, dtype=torch.float64).expand_as(cost)
    values, grads = [], []
    for target in (None, dense):
        for normalization in ("none", "batch_max"):
            loss = SinkhornKLLoss.apply(cost, target, 0.1, 100000, 1e-14, 1, normalization)
            values.append(loss)
            grads.append(torch.autograd.grad(loss.sum(), cost)[0])
    torch.testing.assert_close(values[0], values[2], atol=1e-13, rtol=0)
    torch.testing.assert_close(values[1], values[3], atol=1e-13, rtol=0)
    torch.testing.assert_close(grads[0], grads[2], atol=1e-12, rtol=0)
    torch.testing.assert_close(grads[1], grads[3], atol=1e-12, rtol=0)


def test_sinkhorn_kl_loss_rejects_a_target_of_the_wrong_shape_and_none_for_a_rectangular_cost():
    with pytest.raises(ValueError, match=r"target=None is the identity coupling of a square cost.*\(4, 5\)"):
        SinkhornKLLoss.apply(torch.rand(4, 5), None, 0.1, 100, 1e-6, 1)
    with pytest.raises(ValueError, match=r"target has shape \(4, 4\).*cost of shape \(4, 5\)"):
        SinkhornKLLoss.apply(torch.rand(4, 5), torch.eye(4) / 4, 0.1, 100, 1e-6, 1)


@pytest.mark.parametrize("shape", [(6, 5), (2, 6, 5)])
def test_euclidean_distance_backward_equals_autograd_of_the_formula_and_is_zero_at_coincident_points(shape):
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    y = torch.randn(*shape[:-2], 4, shape[-1], generator=generator, dtype=torch.float64)
    y[..., 1, :] = x[..., 2, :]  # a coincident pair: distance 0, gradient 0 (not NaN or inf)
    x.requires_grad_(), y.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, q: EuclideanDistance.apply(p, q)[..., [0, 1, 3, 4], :],
                                    (x, y), eps=1e-6, atol=1e-7)
    weights = torch.randn(*shape[:-2], shape[-2], 4, generator=generator, dtype=torch.float64)
    fast = EuclideanDistance.apply(x, y)
    grads = torch.autograd.grad((fast * weights).sum(), (x, y))
    difference = x[..., :, None, :] - y[..., None, :, :]  # (..., n, m, d), the brute-force formula
    norm = difference.pow(2).sum(-1)
    brute = torch.where(norm == 0, 0.0, norm.clamp_min(1e-300).sqrt())
    expected = torch.autograd.grad((brute * weights).sum(), (x, y))
    torch.testing.assert_close(fast, brute.detach(), atol=1e-12, rtol=0)
    assert fast[..., 2, 1].eq(0).all()
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_first_iteration_falls_back_to_log_sum_exp_when_a_column_underflows(dtype):
    generator = torch.Generator().manual_seed(7)
    cost = torch.rand(12, 9, generator=generator, dtype=torch.float64)
    cost[:, 0] += 50.0  # column 0 is 980 epsilons past every row's minimum: exp underflows in both dtypes
    a, b = torch.full((12,), 1 / 12, dtype=dtype), torch.full((9,), 1 / 9, dtype=dtype)
    log_kernel = (cost / -0.05).to(dtype)
    assert _first_iteration(log_kernel, a, b, torch.zeros(9, dtype=dtype)) is None
    result = sinkhorn(None, None, cost.to(dtype), 0.05, tol=1e-6 if dtype == torch.float32 else 1e-12,
                      max_iter=20000)
    reference = ot.bregman.sinkhorn_log(a.double().numpy(), b.double().numpy(), cost.numpy(), 0.05,
                                        numItermax=20000, stopThr=1e-13)
    torch.testing.assert_close(result.plan.double(), torch.as_tensor(reference),
                               atol=1e-7 if dtype == torch.float32 else 1e-12, rtol=0)
    assert result.plan[:, 0].sum().item() == pytest.approx(1 / 9, rel=1e-5)


def test_mltm_loss_rebuilds_its_consumed_log_kernel_when_a_column_underflows():
    generator = torch.Generator().manual_seed(8)
    cost = torch.rand(10, 10, generator=generator, dtype=torch.float64)
    cost[:, 3] += 50.0  # the first iteration's kernel loses column 3: log-sum-exp fallback on the rebuilt log-kernel
    cost.requires_grad_()
    loss = mltm_loss(cost, 0.05, tol=1e-12, max_iter=20000)
    (grad,) = torch.autograd.grad(loss, cost)
    solved = sinkhorn(None, None, cost.detach(), 0.05, tol=1e-12, max_iter=20000)
    target = torch.eye(10, dtype=torch.float64) / 10
    torch.testing.assert_close(loss, kl_to_plan(target, solved.log_plan), atol=1e-10, rtol=0)
    torch.testing.assert_close(grad, (target - solved.plan) / 0.05, atol=1e-10, rtol=0)


def test_float32_marginals_settle_exactly_after_the_fast_first_iteration():
    # Regression: with the first iteration's scalings u = a / r left unfolded, this float32 solve stalled at an L1
    # error of 2.2e-8 (a few ulps) and ran to max_iter; folded into the kernel, u and v settle at 1 and the error at 0.
    generator = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(12, 5, generator=generator), torch.randn(30, 5, generator=generator)
    cost = torch.cdist(queries, gallery)
    result = sinkhorn(None, None, cost / cost.max(), 0.1, tol=1e-10, max_iter=2000)
    assert result.converged and result.n_iter <= 40
