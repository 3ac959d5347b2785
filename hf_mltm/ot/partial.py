r"""Partial entropic optimal transport: move only a total mass ``s`` (``mass``) between the two marginals.

.. math::
    P^\star = \arg\min_{P \in \Pi_s(a, b)} \langle P, C \rangle - \varepsilon H(P), \qquad
    \Pi_s(a, b) = \{P \ge 0 : P 1_m \le a,\ P^\top 1_n \le b,\ 1_n^\top P 1_m = s\}

with ``0 < s <= min(sum(a), sum(b))``; this is the KL projection of the Gibbs kernel ``exp(-C/epsilon)`` onto
``Pi_s``, the problem that POT's ``ot.partial.entropic_partial_wasserstein`` solves. The optimum has the form
``P_ij = exp((f_i + g_j + h - C_ij) / epsilon)`` with ``f <= 0``, ``g <= 0``: ``f_i < 0`` exactly on rows whose
constraint is active (``sum_j P_ij = a_i``), and ``f_i = 0`` on rows that keep spare mass. The solver maximises the
dual by exact block coordinate ascent (Dykstra's algorithm written in potentials):

.. math::
    f &= \min\big(\varepsilon \log a - \varepsilon \operatorname{LSE}_j((g_j + h - C_{ij})/\varepsilon),\ 0\big) \\
    g &= \min\big(\varepsilon \log b - \varepsilon \operatorname{LSE}_i((f_i + h - C_{ij})/\varepsilon),\ 0\big) \\
    h &= \varepsilon \log s - \varepsilon \operatorname{LSE}_{ij}((f_i + g_j - C_{ij})/\varepsilon)

Numerics: O(n m) work and memory per iteration and problem, log domain throughout (no kernel underflow), float32 or
float64 as in :func:`hf_mltm.ot.sinkhorn`. With ``mass == sum(a) == sum(b)`` the constraints are the balanced ones and
the plan equals the balanced Sinkhorn plan. POT's kernel-domain iteration omits the Dykstra correction (the
``min(., 0)`` here lets a row regain mass after a global rescaling); the two agree where POT converges.
"""

from __future__ import annotations

import warnings

import torch

from ._utils import autocast_disabled, check_cost, check_epsilon, compute_dtype, log_marginal, masked_cost
from .result import OTResult
from .sinkhorn import _check_iterations


def _check_mass(mass: float, log_a: torch.Tensor, log_b: torch.Tensor) -> float:
    mass = float(mass)
    limit = torch.minimum(torch.logsumexp(log_a, -1), torch.logsumexp(log_b, -1)).exp().min().item()
    if not 0 < mass <= limit * (1 + 1e-6):
        raise ValueError(
            f"mass must be in (0, min(sum(a), sum(b))] = (0, {limit:.6g}] for the partial OT problem to be feasible, "
            f"got {mass}."
        )
    return min(mass, limit)


def partial_kkt_error(
    log_plan: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, f: torch.Tensor, g: torch.Tensor, mass: float
) -> torch.Tensor:
    """KKT residual of a partial plan, shape ``(...)``: equality on active rows/columns (potential < 0), inequality
    elsewhere, plus the total-mass gap."""
    rows = torch.logsumexp(log_plan, -1).exp() - log_a.exp()
    cols = torch.logsumexp(log_plan, -2).exp() - log_b.exp()
    rows = torch.where(f < 0, rows.abs(), rows.clamp_min(0))
    cols = torch.where(g < 0, cols.abs(), cols.clamp_min(0))
    total = torch.logsumexp(log_plan.flatten(-2), -1).exp()
    return rows.nan_to_num(0.0).sum(-1) + cols.nan_to_num(0.0).sum(-1) + (total - mass).abs()


def partial_sinkhorn(
    a: torch.Tensor | None,
    b: torch.Tensor | None,
    cost: torch.Tensor,
    epsilon: float,
    mass: float,
    *,
    row_mask: torch.Tensor | None = None,
    col_mask: torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    warn: bool = True,
) -> OTResult:
    """Solve partial entropic OT of total mass `mass` in the log domain, batched over leading dimensions.

    Args:
        a (`torch.Tensor` of shape `(..., n)` or `None`): row capacities; `None` is uniform (sum 1) over valid rows.
        b (`torch.Tensor` of shape `(..., m)` or `None`): column capacities; `None` is uniform over valid columns.
        cost (`torch.Tensor` of shape `(..., n, m)`): ground cost.
        epsilon (`float`): entropic regularisation, in cost units.
        mass (`float`): total transported mass ``s``, in ``(0, min(sum(a), sum(b))]``.
        row_mask, col_mask (`torch.BoolTensor`, *optional*): `False` marks padding (zero mass).
        max_iter, tol, check_every, warn: as in :func:`hf_mltm.ot.sinkhorn`; the error is the KKT residual.

    Returns:
        [`OTResult`] whose `f`, `g` are the (non-positive) capacity potentials and `h` the mass potential.
    """
    check_cost(cost)
    epsilon = check_epsilon(epsilon)
    _check_iterations(max_iter, tol, check_every)
    dtype = compute_dtype(cost)
    with autocast_disabled(cost.device):
        cost = masked_cost(cost.to(dtype), row_mask, col_mask)
        batch_shape, (n, m) = cost.shape[:-2], cost.shape[-2:]
        log_a = log_marginal(a, row_mask, batch_shape, n, dtype, cost.device, "a")
        log_b = log_marginal(b, col_mask, batch_shape, m, dtype, cost.device, "b")
        mass = _check_mass(mass, log_a, log_b)
        log_mass = torch.log(torch.tensor(mass, dtype=dtype, device=cost.device))
        log_kernel = cost / -epsilon  # (..., n, m)

        f_scaled = torch.where(torch.isinf(log_a), log_a, torch.zeros_like(log_a))
        g_scaled = torch.where(torch.isinf(log_b), log_b, torch.zeros_like(log_b))
        h_scaled = log_mass - torch.logsumexp((log_kernel + f_scaled[..., :, None] + g_scaled[..., None, :]).flatten(-2), -1)
        n_iter = 0
        for n_iter in range(1, int(max_iter) + 1):
            f_scaled = (log_a - torch.logsumexp(log_kernel + (g_scaled[..., None, :] + h_scaled[..., None, None]), -1)
                        ).clamp_max(0)
            g_scaled = (log_b - torch.logsumexp(log_kernel + (f_scaled[..., :, None] + h_scaled[..., None, None]), -2)
                        ).clamp_max(0)
            h_scaled = log_mass - torch.logsumexp(
                (log_kernel + f_scaled[..., :, None] + g_scaled[..., None, :]).flatten(-2), -1
            )
            if tol > 0 and n_iter % check_every == 0:
                log_plan = log_kernel + f_scaled[..., :, None] + g_scaled[..., None, :] + h_scaled[..., None, None]
                if partial_kkt_error(log_plan, log_a, log_b, f_scaled, g_scaled, mass).max().item() < tol:
                    break

        log_plan = log_kernel + f_scaled[..., :, None] + g_scaled[..., None, :] + h_scaled[..., None, None]
        marginal_error = partial_kkt_error(log_plan, log_a, log_b, f_scaled, g_scaled, mass)
        converged = bool((marginal_error < tol).all()) if tol > 0 else True
        if warn and not converged:
            warnings.warn(
                f"partial_sinkhorn did not converge in {n_iter} iterations (max KKT residual "
                f"{marginal_error.max().item():.3g} >= tol {tol:g}); raise max_iter or epsilon.",
                UserWarning,
                stacklevel=2,
            )
        return OTResult(
            plan=log_plan.exp(),
            log_plan=log_plan,
            f=f_scaled * epsilon,
            g=g_scaled * epsilon,
            n_iter=n_iter,
            marginal_error=marginal_error,
            converged=converged,
            h=h_scaled * epsilon,
        )

