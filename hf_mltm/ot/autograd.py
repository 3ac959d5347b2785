r"""Autograd Functions with hand-written backward passes for the OT matching losses.

Both compute ``KL(T || P*(C))`` where ``T`` is a fixed target coupling and ``P*(C)`` the entropic plan of cost ``C``,
solving the OT problem under ``no_grad`` (no unrolled iterations, O(n m) memory for the backward).

Balanced (:class:`SinkhornKLLoss`): when ``P*`` is solved with the marginals of ``T``, the gradient is exactly

.. math:: \partial \mathrm{KL}(T \| P^\star) / \partial C = (T - P^\star) / \varepsilon.

Partial (:class:`PartialSinkhornKLLoss`): the plan is ``P = exp((f + g + h - C)/eps)`` with ``f = 0`` off the set
``S`` of active (saturated) rows and ``g = 0`` off the set ``T`` of active columns. Differentiating the active KKT
equations (row sums on ``S``, column sums on ``T``, total mass) gives, with ``H`` the Hessian of the dual in
``x = (f_S, g_T, h)``

.. math::
    H = \sum_{ij} P_{ij}\, e_{ij} e_{ij}^\top, \quad e_{ij} = (1_{i \in S}\, \delta_i,\ 1_{j \in T}\, \delta_j,\ 1),
    \qquad H \nu = -(T 1_S,\ T^\top 1_T,\ 1^\top T 1), \qquad
    \partial \mathrm{KL} / \partial C = \big(T + P \odot (\nu_i + \nu_j + \nu_h)\big) / \varepsilon.

``H`` has size ``|S| + |T| + 1 <= n + m + 1`` and is solved once in float64 by Cholesky with a 1e-12 relative ridge
(harmless for the gauge freedom of the balanced case ``mass = 1``, see ``_partial_adjoint``): O((n + m)^3) for the
backward, O(n m) per forward iteration.
This assumes strict complementarity (no row exactly at its capacity with a zero potential), which holds generically.
"""

from __future__ import annotations

import torch

from .partial import partial_sinkhorn
from .sinkhorn import sinkhorn


def kl_to_plan(target: torch.Tensor, log_plan: torch.Tensor, plan_mass: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Generalised ``KL(T || P) = sum T log(T / P) - sum T + sum P`` per problem, shape ``(...)`` (``0 log 0 = 0``)."""
    positive = target > 0
    safe_target = torch.where(positive, target, torch.ones_like(target))
    terms = torch.where(positive, target * (safe_target.log() - log_plan), torch.zeros_like(target))
    return terms.sum((-2, -1)) - target.sum((-2, -1)) + plan_mass


class SinkhornKLLoss(torch.autograd.Function):
    """``KL(T || P*(C))`` with ``P*`` the balanced Sinkhorn plan whose marginals are those of ``T``.

    Inputs: ``cost`` ``(..., n, m)``, ``target`` ``(..., n, m)`` (no gradient), ``epsilon``, ``max_iter``, ``tol``,
    ``check_every``. Output: loss of shape ``(...)``, in the compute dtype (float32 or float64).
    """

    @staticmethod
    def forward(ctx, cost, target, epsilon, max_iter, tol, check_every):
        with torch.no_grad():
            result = sinkhorn(
                target.sum(-1), target.sum(-2), cost, epsilon, max_iter=max_iter, tol=tol, check_every=check_every
            )
            target = target.to(result.plan.dtype)
            loss = kl_to_plan(target, result.log_plan)
        ctx.save_for_backward(result.plan, target)
        ctx.epsilon, ctx.cost_dtype = epsilon, cost.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        plan, target = ctx.saved_tensors
        grad_cost = torch.sub(target, plan).mul_(grad_loss[..., None, None] / ctx.epsilon)  # one (..., n, m) buffer
        return grad_cost.to(ctx.cost_dtype), None, None, None, None, None


def _partial_adjoint(plan: torch.Tensor, target: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``P ⊙ (nu_i + nu_j + nu_h)`` for one problem ``(n, m)`` (see the module docstring), in float64."""
    plan64, target64 = plan.double(), target.double()
    rows_active, cols_active = f < 0, g < 0
    plan_rows = plan64[rows_active]  # (|S|, m)
    row_sums, col_sums = plan64.sum(1), plan64.sum(0)
    block_st = plan_rows[:, cols_active]  # (|S|, |T|)
    size_s, size_t = int(rows_active.sum()), int(cols_active.sum())
    hessian = plan64.new_zeros(size_s + size_t + 1, size_s + size_t + 1)
    hessian[:size_s, :size_s] = torch.diag(row_sums[rows_active])
    hessian[:size_s, size_s:-1] = block_st
    hessian[size_s:-1, :size_s] = block_st.T
    hessian[size_s:-1, size_s:-1] = torch.diag(col_sums[cols_active])
    hessian[:size_s, -1] = hessian[-1, :size_s] = row_sums[rows_active]
    hessian[size_s:-1, -1] = hessian[-1, size_s:-1] = col_sums[cols_active]
    hessian[-1, -1] = plan64.sum()
    rhs = -torch.cat([target64.sum(1)[rows_active], target64.sum(0)[cols_active], target64.sum().reshape(1)])
    # H is positive definite except for the gauge direction of the balanced case (mass = sum(a) = sum(b)); the
    # right-hand side is orthogonal to that null space and null components do not change P * (nu_i + nu_j + nu_h),
    # so a tiny ridge and a Cholesky solve give the exact gradient.
    hessian.diagonal().add_(1e-12 * hessian.diagonal().mean())
    nu = torch.cholesky_solve(rhs[:, None], torch.linalg.cholesky(hessian))[:, 0]
    nu_rows = plan64.new_zeros(plan.shape[0]).masked_scatter(rows_active, nu[:size_s])
    nu_cols = plan64.new_zeros(plan.shape[1]).masked_scatter(cols_active, nu[size_s:-1])
    return plan64 * (nu_rows[:, None] + nu_cols[None, :] + nu[-1])


class PartialSinkhornKLLoss(torch.autograd.Function):
    """``KL(T || P*(C))`` with ``P*`` the partial entropic plan of total mass ``mass`` and capacities ``a``, ``b``.

    Inputs: ``cost`` ``(..., n, m)``, ``target`` ``(..., n, m)``, ``epsilon``, ``mass``, ``a`` ``(..., n)`` or `None`,
    ``b`` ``(..., m)`` or `None`, ``max_iter``, ``tol``, ``check_every``. Output: loss of shape ``(...)``.
    """

    @staticmethod
    def forward(ctx, cost, target, epsilon, mass, a, b, max_iter, tol, check_every):
        with torch.no_grad():
            result = partial_sinkhorn(a, b, cost, epsilon, mass, max_iter=max_iter, tol=tol, check_every=check_every)
            target = target.to(result.plan.dtype)
            loss = kl_to_plan(target, result.log_plan, mass)
        ctx.save_for_backward(result.plan, target, result.f, result.g)
        ctx.epsilon, ctx.cost_dtype = epsilon, cost.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        plan, target, f, g = ctx.saved_tensors
        n, m = plan.shape[-2:]
        flat = [t.reshape(-1, *t.shape[-2:]) for t in (plan, target)]
        f_flat, g_flat = f.reshape(-1, n), g.reshape(-1, m)
        adjoint = torch.stack(
            [_partial_adjoint(p, t, fi, gi) for p, t, fi, gi in zip(*flat, f_flat, g_flat, strict=True)]
        ).reshape(plan.shape)
        grad_cost = (target.double() + adjoint) * (grad_loss.double()[..., None, None] / ctx.epsilon)
        return grad_cost.to(ctx.cost_dtype), None, None, None, None, None, None, None, None
