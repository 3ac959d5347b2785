import math

import pytest
import torch
from torch.nn import functional as F

from hf_mltm.ot import (
    InfoNCELoss,
    PartialSinkhornKLLoss,
    SinkhornKLLoss,
    contrastive_entropy_loss,
    contrastive_loss,
    duplicate_aware_target,
    euclidean_cost,
    mltm_loss,
    mltm_partial_loss,
    normalize_cost,
    sinkhorn,
    triplet_loss,
)


def relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


def paired_cost(b=6, d=5, dtype=torch.float64):
    """A batch cost in [0, 1] (as after batch-max normalisation) whose diagonal pairs are somewhat closer."""
    x = torch.randn(b, d, dtype=dtype)
    cost = euclidean_cost(x, x + 1.5 * torch.randn(b, d, dtype=dtype))
    return cost / cost.max()


@pytest.mark.parametrize("epsilon", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("item_ids", [None, torch.tensor([0, 1, 1, 2, 3, 3])])
def test_closed_form_gradient_equals_unrolled_autograd(epsilon, item_ids):
    cost = paired_cost().requires_grad_()
    implicit = mltm_loss(cost, epsilon, item_ids=item_ids, tol=1e-14, max_iter=100000)
    (grad_implicit,) = torch.autograd.grad(implicit, cost)
    unrolled = mltm_loss(cost, epsilon, item_ids=item_ids, gradient="unrolled", tol=0, max_iter=2000)
    (grad_unrolled,) = torch.autograd.grad(unrolled, cost)
    torch.testing.assert_close(implicit, unrolled, atol=1e-12, rtol=0)
    assert relative_error(grad_implicit, grad_unrolled) < 1e-6


@pytest.mark.parametrize("epsilon,mass", [(0.05, 0.7), (0.1, 0.9), (0.5, 0.5), (0.1, 1.0)])
@pytest.mark.parametrize("item_ids", [None, torch.tensor([0, 1, 1, 2, 3, 4])])
def test_partial_gradient_equals_unrolled_autograd(epsilon, mass, item_ids):
    cost = paired_cost().requires_grad_()
    implicit = mltm_partial_loss(cost, epsilon, mass, item_ids=item_ids, tol=1e-14, max_iter=100000)
    (grad_implicit,) = torch.autograd.grad(implicit, cost)
    unrolled = mltm_partial_loss(cost, epsilon, mass, item_ids=item_ids, gradient="unrolled", tol=0, max_iter=3000)
    (grad_unrolled,) = torch.autograd.grad(unrolled, cost)
    torch.testing.assert_close(implicit, unrolled, atol=1e-12, rtol=0)
    assert relative_error(grad_implicit, grad_unrolled) < 1e-6


def test_gradcheck_balanced_function():
    cost = torch.rand(4, 4, dtype=torch.float64, requires_grad=True)
    target = duplicate_aware_target(None, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda c: SinkhornKLLoss.apply(c, target, 0.2, 100000, 1e-15, 1), (cost,), eps=1e-6, atol=1e-6
    )


def test_gradcheck_partial_function():
    cost = torch.rand(4, 4, dtype=torch.float64, requires_grad=True)
    target = duplicate_aware_target(None, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda c: PartialSinkhornKLLoss.apply(c, target, 0.2, 0.6, None, None, 100000, 1e-15, 1), (cost,), eps=1e-6,
        atol=1e-6,
    )


def test_gradient_flows_through_batch_max_normalisation_to_embeddings():
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, 4, dtype=torch.float64)
    loss = mltm_loss(euclidean_cost(x, y), 0.05, normalization="batch_max", tol=1e-12)
    loss.backward()
    unrolled_x = x.detach().clone().requires_grad_()
    mltm_loss(euclidean_cost(unrolled_x, y), 0.05, normalization="batch_max", gradient="unrolled", tol=0,
              max_iter=1500).backward()
    assert relative_error(x.grad, unrolled_x.grad) < 1e-6


def test_loss_equals_paper_formula_up_to_log_b():
    cost = paired_cost(b=7)
    plan = sinkhorn(None, None, cost, 0.05, tol=1e-13, max_iter=100000).plan
    paper = -(plan.diagonal().log()).mean()  # -(1/b) sum_i log P_ii
    torch.testing.assert_close(mltm_loss(cost, 0.05, tol=1e-13, max_iter=100000), paper - math.log(7))


def test_loss_is_zero_when_the_plan_is_the_target():
    cost = 10 * (1 - torch.eye(5, dtype=torch.float64))
    assert mltm_loss(cost, 0.05).item() < 1e-12


def test_duplicate_aware_target_has_uniform_marginals_and_shares_mass():
    target = duplicate_aware_target(torch.tensor([3, 7, 3, 3, 9]), 5, dtype=torch.float64)
    torch.testing.assert_close(target.sum(0), torch.full((5,), 0.2, dtype=torch.float64))
    torch.testing.assert_close(target.sum(1), torch.full((5,), 0.2, dtype=torch.float64))
    assert target[0, 2] == target[0, 0] == pytest.approx(0.2 / 3)
    assert target[0, 1] == 0


def test_duplicates_are_not_negatives():
    clip = torch.randn(1, 8, dtype=torch.float64)
    audio = torch.cat([clip, clip, torch.randn(2, 8, dtype=torch.float64)])  # rows 0 and 1: the same clip
    text = audio + 0.01 * torch.randn(4, 8, dtype=torch.float64)
    cost = euclidean_cost(audio, text)
    naive = mltm_loss(cost, 0.05)
    aware = mltm_loss(cost, 0.05, item_ids=torch.tensor([0, 0, 1, 2]))
    assert aware < 0.05 < naive  # the naive target punishes matching a caption to its own (duplicate) clip


def test_small_epsilon_large_cost_loss_and_gradient_are_finite():
    cost = (torch.rand(32, 32) * 10).requires_grad_()  # up to 1000 x epsilon
    loss = mltm_loss(cost, 0.01, max_iter=200, tol=0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cost.grad).all()
    partial = mltm_partial_loss(cost, 0.01, 0.8, max_iter=200, tol=0)
    assert torch.isfinite(partial)


def test_bf16_autocast_loss_is_float32():
    x, y = torch.randn(16, 8), torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = euclidean_cost(x.bfloat16(), y.bfloat16()).requires_grad_()
        loss = mltm_loss(cost, 0.05, normalization="batch_max")
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and cost.grad.dtype == torch.bfloat16


def test_contrastive_loss_equals_cross_entropy():
    similarity = torch.randn(5, 5)
    expected = (F.cross_entropy(similarity / 0.1, torch.arange(5)) + F.cross_entropy(similarity.T / 0.1, torch.arange(5))) / 2
    torch.testing.assert_close(contrastive_loss(similarity, 0.1), expected)
    torch.testing.assert_close(InfoNCELoss(0.1)(similarity), expected)


def test_learnable_temperature_receives_gradient():
    loss_fn = InfoNCELoss(0.07, learnable=True)
    loss_fn(torch.randn(4, 4)).backward()
    assert loss_fn.logit_scale.grad is not None and loss_fn.logit_scale.grad != 0


def test_triplet_loss_hand_computed():
    similarity = torch.tensor([[0.9, 0.5, 0.1], [0.3, 0.6, 0.65], [0.2, 0.8, 0.7]])
    margin = 0.2
    # rows (anchor i vs column negatives j): [m - S_ii + S_ij]_+
    rows = torch.tensor([[0, 0.0 + 0.2 - 0.4, 0], [0.2 - 0.3, 0, 0.2 + 0.05], [0, 0.2 + 0.1, 0]]).clamp_min(0)
    # columns (anchor j vs row negatives i): [m - S_jj + S_ij]_+
    cols = torch.tensor([[0, 0.2 - 0.1, 0.2 - 0.6], [0.2 - 0.6, 0, 0.2 - 0.05], [0.2 - 0.7, 0.2 + 0.2, 0]]).clamp_min(0)
    hardest = rows.amax(1) + cols.amax(0)  # [0, 0.25, 0.3] + [0, 0.4, 0.15]
    torch.testing.assert_close(triplet_loss(similarity, margin), hardest.mean())
    torch.testing.assert_close(triplet_loss(similarity, margin, reduction="sum"), torch.tensor(1.1))
    summed = rows.sum(1) + cols.sum(0)
    torch.testing.assert_close(triplet_loss(similarity, margin, hardest_negative=False, reduction="sum"), summed.sum())
    assert triplet_loss(similarity, margin, item_ids=torch.tensor([0, 1, 1])) < triplet_loss(similarity, margin)


def test_contrastive_entropy_loss_adds_the_entropy_term():
    similarity = torch.randn(6, 6)
    logits = similarity / 0.5
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
    entropy_t = -(logits.T.softmax(-1) * logits.T.log_softmax(-1)).sum(-1).mean()
    expected = contrastive_loss(similarity, 0.5) - 0.3 * (entropy + entropy_t) / 2
    torch.testing.assert_close(contrastive_entropy_loss(similarity, 0.5, 0.3), expected)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: mltm_loss(torch.rand(3, 4), 0.05), "square"),
        (lambda: mltm_loss(torch.rand(3, 3), 0.05, gradient="magic"), "gradient mode"),
        (lambda: mltm_loss(torch.rand(3, 3), 0.05, normalization="l2"), "normalization"),
        (lambda: mltm_loss(torch.rand(3, 3), 0.05, item_ids=torch.tensor([1, 2])), "item_ids"),
        (lambda: mltm_partial_loss(torch.rand(3, 3), 0.05, mass=1.5), "mass"),
        (lambda: triplet_loss(torch.rand(3, 3), reduction="max"), "reduction"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name", ["negative", "all_zero"])
def test_batch_max_of_a_non_positive_cost_is_not_applied_and_the_loss_stays_finite(name):
    # Regression: dividing by a negative maximum gave NaN; by a zero maximum a gradient of 3.2e38.
    cost = -torch.rand(3, 3, generator=torch.Generator().manual_seed(1)) if name == "negative" else torch.zeros(3, 3)
    cost.requires_grad_()
    loss = mltm_loss(cost, 0.05, normalization="batch_max")
    (grad,) = torch.autograd.grad(loss, cost)
    reference = mltm_loss(cost, 0.05, normalization="none")
    (reference_grad,) = torch.autograd.grad(reference, cost)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, reference, atol=0, rtol=0)
    torch.testing.assert_close(grad, reference_grad, atol=0, rtol=0)
    if name == "all_zero":  # plan uniform 1/9, target I/3: KL = log 3, gradient (T - P) / epsilon
        torch.testing.assert_close(loss, torch.tensor(math.log(3)))
        expected = (torch.eye(3) / 3 - 1 / 9) / 0.05
        torch.testing.assert_close(grad, expected)
    normalized = normalize_cost(cost.detach(), "batch_max")
    torch.testing.assert_close(normalized, cost.detach(), atol=0, rtol=0)


def test_batch_max_normalises_each_problem_by_its_own_positive_maximum():
    cost = torch.stack([torch.tensor([[1.0, 4.0], [2.0, 0.0]]), -torch.ones(2, 2)])
    torch.testing.assert_close(normalize_cost(cost, "batch_max"),
                               torch.stack([torch.tensor([[0.25, 1.0], [0.5, 0.0]]), -torch.ones(2, 2)]))


def test_item_ids_of_the_wrong_length_name_both_shapes():
    with pytest.raises(ValueError, match=r"item_ids has shape \(2,\) but the cost of shape \(3, 3\) pairs a batch of 3"):
        mltm_loss(torch.rand(3, 3), 0.05, item_ids=torch.tensor([1, 2]))


@pytest.mark.parametrize("loss_fn", [lambda c, **kw: mltm_loss(c, 0.1, **kw),
                                     lambda c, **kw: mltm_partial_loss(c, 0.1, 0.8, **kw)], ids=["full", "partial"])
def test_detached_batch_max_equals_dividing_by_a_constant_and_differs_only_at_the_maximum(loss_fn):
    torch.manual_seed(3)
    cost = (torch.rand(5, 5, dtype=torch.float64) + 0.1).requires_grad_(True)
    peak = cost.detach().argmax()
    detached = loss_fn(cost, normalization="batch_max", detach_scale=True, tol=1e-12)
    (grad_detached,) = torch.autograd.grad(detached, cost)
    constant = loss_fn(cost / cost.detach().amax().item(), normalization="none", tol=1e-12)
    (grad_constant,) = torch.autograd.grad(constant, cost)
    torch.testing.assert_close(detached, constant, rtol=0, atol=0)
    torch.testing.assert_close(grad_detached, grad_constant, rtol=1e-12, atol=1e-12)
    attached = loss_fn(cost, normalization="batch_max", tol=1e-12)
    (grad_attached,) = torch.autograd.grad(attached, cost)
    torch.testing.assert_close(attached, detached, rtol=0, atol=0)  # the same value: only the gradient differs
    # d/dC_max of f(C / C_max) adds -sum_ij g_ij C_ij / C_max^2 to the maximum entry and nothing elsewhere.
    difference = (grad_attached - grad_detached).flatten()
    expected = -(grad_constant * cost.detach()).sum() / cost.detach().amax()
    torch.testing.assert_close(difference[peak], expected, rtol=1e-9, atol=1e-12)
    assert torch.count_nonzero(difference.abs() > 1e-12) == 1
