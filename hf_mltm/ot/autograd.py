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

import math

import torch

from ._utils import (
    autocast_disabled,
    check_cost,
    check_cost_values,
    check_epsilon,
    compute_dtype,
    log_marginal,
)
from .partial import partial_sinkhorn
from .result import finish_solve
from .sinkhorn import check_balanced, check_iterations, initial_potentials, solve_scaled


def kl_to_plan(target: torch.Tensor, log_plan: torch.Tensor, plan_mass: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Generalised ``KL(T || P) = sum T log(T / P) - sum T + sum P`` per problem, shape ``(...)`` (``0 log 0 = 0``)."""
    positive = target > 0
    safe_target = torch.where(positive, target, torch.ones_like(target))
    terms = torch.where(positive, target * (safe_target.log() - log_plan), torch.zeros_like(target))
    return terms.sum((-2, -1)) - target.sum((-2, -1)) + plan_mass


class SinkhornKLLoss(torch.autograd.Function):
    r"""``KL(T || P*(C / s))`` with ``P*`` the balanced Sinkhorn plan whose marginals are those of ``T``.

    Inputs: ``cost`` ``(..., n, m)``; ``target`` ``(..., n, m)`` (no gradient), or `None` for the identity coupling
    ``I / n`` of a square cost; ``epsilon``, ``max_iter``, ``tol``, ``check_every`` (as in :func:`sinkhorn`);
    ``normalization`` (``"none"``, or ``"batch_max"``: the scale ``s`` is each problem's largest entry when positive,
    else 1, as in :func:`hf_mltm.ot.normalize_cost`) and ``detach_scale`` (``s`` counts as a constant). Output: loss
    of shape ``(...)``, in the compute dtype (float32 or float64).

    The forward never forms ``log P``: with ``log P_ij = f_i + g_j - C_ij / (s epsilon)`` (potentials divided by
    epsilon) and ``T``'s marginals ``a``, ``b``,

    .. math:: \mathrm{KL} = \sum T \log T - (a^\top f + b^\top g + \langle T, -C / (s\varepsilon) \rangle) - \sum T + \sum P.

    The backward is ``(T - P) / (s epsilon)``, plus, through ``s``, ``-<T - P, C> / (s^2 epsilon)`` shared evenly by
    the entries equal to the maximum (the gradient of ``amax``): one ``(n, m)`` buffer and one read of ``P`` and ``C``.
    """

    @staticmethod
    def forward(ctx, cost, target, epsilon, max_iter, tol, check_every, normalization="none", detach_scale=False):
        check_iterations(max_iter, tol, check_every)
        check_cost(cost)
        epsilon = check_epsilon(epsilon)
        batch_shape, (n, m) = cost.shape[:-2], cost.shape[-2:]
        if target is None and n != m:
            raise ValueError(f"target=None is the identity coupling of a square cost; got cost of shape "
                             f"{tuple(cost.shape)}. Pass a target of the cost's shape.")
        if target is not None and target.shape[-2:] != (n, m):
            raise ValueError(f"target has shape {tuple(target.shape)}, which does not match the cost of shape "
                             f"{tuple(cost.shape)}; give it shape (..., {n}, {m}).")
        if normalization not in ("none", "batch_max"):
            raise ValueError(f"Unknown cost normalization {normalization!r}; use 'none' or 'batch_max'.")
        with torch.no_grad(), autocast_disabled(cost.device):
            solved = cost.to(compute_dtype(cost))
            scale = row_max = None
            if normalization == "batch_max":
                row_max = solved.amax(-1)  # (..., n): the backward looks for ties of the maximum in these rows only
                largest = row_max.amax(-1)[..., None, None]  # (..., 1, 1)
                scale = torch.where(largest > 0, largest, torch.ones_like(largest))
            check_cost_values("mltm_loss", solved, epsilon * (1.0 if scale is None else float(scale.min())))
            if target is None:
                log_a = log_marginal(None, None, batch_shape, n, solved.dtype, solved.device, "a")
                log_b = log_marginal(None, None, batch_shape, m, solved.dtype, solved.device, "b")
            else:
                target = target.to(solved.dtype)
                log_a = log_marginal(target.sum(-1), None, batch_shape, n, solved.dtype, solved.device, "a")
                log_b = log_marginal(target.sum(-2), None, batch_shape, m, solved.dtype, solved.device, "b")
                check_balanced(log_a, log_b)
            divisor = -epsilon if scale is None else scale * -epsilon
            f0, g0 = initial_potentials(None, log_a, log_b, solved, epsilon)
            # The first iteration turns the log-kernel's buffer into the kernel; it is rebuilt only if needed again.
            state = solve_scaled(solved / divisor, log_a, log_b, f0, g0, max_iter, tol, check_every,
                                 rebuild=lambda: solved / divisor)
            f, g = state.potentials()
            finish_solve("mltm_loss", state.kernel, None, (f, g), epsilon, state.n_iter, state.marginal_error, tol,
                         warn=True)
            loss = _kl_from_potentials(target, solved, divisor, log_a, log_b, f, g, state.mass()).to(solved.dtype)
            plan = state.plan_()
        scale_has_gradient = scale is not None and not detach_scale and ctx.needs_input_grad[0]
        ctx.save_for_backward(plan, target, scale, *((solved, row_max) if scale_has_gradient else (None, None)))
        ctx.epsilon, ctx.cost_dtype, ctx.scale_has_gradient = epsilon, cost.dtype, scale_has_gradient
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        plan, target, scale, cost, row_max = ctx.saved_tensors
        coef = grad_loss.to(plan.dtype)[..., None, None] / ctx.epsilon  # (..., 1, 1)
        if scale is not None:
            coef = coef / scale
        grad_cost = torch.mul(plan, -coef)  # -P / (s epsilon): the one (..., n, m) buffer
        if target is None:
            grad_cost.diagonal(dim1=-2, dim2=-1).add_(coef[..., 0] / plan.shape[-1])
        else:
            grad_cost.addcmul_(target, coef)
        if ctx.scale_has_gradient:
            _add_scale_gradient(grad_cost, plan, target, cost, row_max, scale, coef)
        return grad_cost.to(ctx.cost_dtype), None, None, None, None, None, None, None


def _kl_from_potentials(
    target: torch.Tensor | None, cost: torch.Tensor, divisor: torch.Tensor | float, log_a: torch.Tensor,
    log_b: torch.Tensor, f: torch.Tensor, g: torch.Tensor, plan_mass: torch.Tensor,
) -> torch.Tensor:
    """``KL(T || P)`` per problem ``(...)`` from the potentials (divided by epsilon) and the log-kernel
    ``cost / divisor`` (``divisor = -s epsilon``, a float or ``(..., 1, 1)``), in float64: ``T`` is the identity
    coupling when `None`. Terms of zero-mass rows/columns are 0 (their potentials are ``-inf``)."""
    a, b = log_a.exp().double(), log_b.exp().double()
    potential_terms = (torch.where(a > 0, a * f.double(), 0.0).sum(-1)
                       + torch.where(b > 0, b * g.double(), 0.0).sum(-1))
    divisor = torch.as_tensor(divisor, dtype=torch.float64)
    divisor = divisor[..., 0, 0] if divisor.dim() >= 2 else divisor  # (...) or ()
    if target is None:
        size = cost.shape[-1]
        kernel_term = cost.diagonal(dim1=-2, dim2=-1).double().sum(-1) / size / divisor
        entropy, total = -math.log(size), 1.0
    else:
        kernel_term = torch.einsum("...ij,...ij->...i", target, cost).double().sum(-1) / divisor
        entropy, total = torch.special.xlogy(target, target).double().sum((-2, -1)), target.double().sum((-2, -1))
    return entropy - (potential_terms + kernel_term) - total + plan_mass.double()


def _add_scale_gradient(grad_cost, plan, target, cost, row_max, scale, coef) -> None:
    """Add the gradient that reaches the cost through ``s = max C`` (in place on ``grad_cost`` ``(..., n, m)``):
    ``dL/ds = -coef * <T - P, C> / s`` with ``coef = dL / (s epsilon)``, shared evenly by the maximal entries (found
    in the rows whose maximum ``row_max`` ``(..., n)`` is ``s``, so only those rows are compared)."""
    plan_cost = torch.einsum("...ij,...ij->...i", plan, cost).double().sum(-1)
    if target is None:
        target_cost = cost.diagonal(dim1=-2, dim2=-1).double().sum(-1) / cost.shape[-1]
    else:
        target_cost = torch.einsum("...ij,...ij->...i", target, cost).double().sum(-1)
    grad_scale = -coef[..., 0, 0].double() * (target_cost - plan_cost) / scale[..., 0, 0].double()  # (...)
    # A non-positive maximum is not used as the scale (no gradient): compare with NaN there, which equals nothing.
    n, m = cost.shape[-2:]
    used_scale = torch.where(scale > 0, scale, torch.nan).reshape(-1)  # (problems,)
    problem, row = (row_max.reshape(-1, n) == used_scale[:, None]).nonzero(as_tuple=True)
    hit, column = (cost.reshape(-1, n, m)[problem, row] == used_scale[problem, None]).nonzero(as_tuple=True)
    problem, row = problem[hit], row[hit]
    ties = torch.bincount(problem, minlength=used_scale.shape[0]).clamp_min(1)
    share = (grad_scale.reshape(-1) / ties).to(grad_cost.dtype)
    grad_cost.view(-1, n, m).index_put_((problem, row, column), share[problem], accumulate=True)


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
