r"""Balanced entropic optimal transport solved in the log domain.

.. math::
    P^\star = \arg\min_{P \ge 0,\ P 1_m = a,\ P^\top 1_n = b} \langle P, C \rangle - \varepsilon H(P),
    \qquad H(P) = -\sum_{ij} P_{ij} (\log P_{ij} - 1)

where ``C`` has shape ``(..., n, m)``, ``a`` shape ``(..., n)``, ``b`` shape ``(..., m)`` and ``sum(a) == sum(b)``.
The optimum is ``P_ij = exp((f_i + g_j - C_ij) / epsilon)``; Sinkhorn alternates the exact maximisation of the dual
in ``f`` and in ``g``:

.. math::
    f_i = \varepsilon \log a_i - \varepsilon \operatorname{LSE}_j \big((g_j - C_{ij})/\varepsilon\big), \qquad
    g_j = \varepsilon \log b_j - \varepsilon \operatorname{LSE}_i \big((f_i - C_{ij})/\varepsilon\big).

Numerics: log-sum-exp updates never underflow, so small ``epsilon`` (0.01 and below) and unnormalised costs are safe.
The solver computes in float32 (float64 for float64 input) even inside an autocast region. Memory is O(n m) per
problem. The loop is autograd-transparent: called with grad enabled it is differentiated by unrolling (use this only
to verify the closed-form gradients of :mod:`hf_mltm.ot.losses`).
"""

from __future__ import annotations

import warnings

import torch

from ._utils import (
    autocast_disabled,
    check_cost,
    check_epsilon,
    compute_dtype,
    log_marginal,
    marginal_l1_error,
    masked_cost,
)
from .result import OTResult


def _check_iterations(max_iter: int, tol: float, check_every: int) -> None:
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}.")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}.")
    if int(check_every) < 1:
        raise ValueError(f"check_every must be >= 1, got {check_every}.")


def sinkhorn(
    a: torch.Tensor | None,
    b: torch.Tensor | None,
    cost: torch.Tensor,
    epsilon: float,
    *,
    row_mask: torch.Tensor | None = None,
    col_mask: torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    warn: bool = True,
) -> OTResult:
    """Solve balanced entropic OT in the log domain, batched over leading dimensions.

    Args:
        a (`torch.Tensor` of shape `(..., n)` or `None`): row marginal; `None` is uniform over the valid rows.
        b (`torch.Tensor` of shape `(..., m)` or `None`): column marginal; `None` is uniform over the valid columns.
            Explicit marginals must have equal total mass per problem.
        cost (`torch.Tensor` of shape `(..., n, m)`): ground cost. Any float dtype; half precision is upcast.
        epsilon (`float`): entropic regularisation, in the units of `cost`.
        row_mask (`torch.BoolTensor` of shape `(..., n)`, *optional*): `False` marks padded rows; they get zero mass.
        col_mask (`torch.BoolTensor` of shape `(..., m)`, *optional*): the same for columns.
        max_iter (`int`): maximum number of iterations (each updates `f` then `g`).
        tol (`float`): stop once the L1 marginal error of every problem is below `tol`; 0 runs `max_iter` iterations.
        check_every (`int`): check convergence every this many iterations (a check costs one host sync).
        init (`tuple` of `f`, `g`, *optional*): warm-start potentials in cost units.
        warn (`bool`): emit a `UserWarning` when `tol` is not reached.

    Returns:
        [`OTResult`] with `plan`, `log_plan`, potentials `f`, `g`, `n_iter`, `marginal_error`, `converged`.

    Example:
        >>> import torch
        >>> from hf_mltm.ot import sinkhorn
        >>> result = sinkhorn(None, None, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), epsilon=0.05)
        >>> result.plan.round(decimals=4)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.5000]])
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
        if a is not None or b is not None:
            mass_a, mass_b = torch.logsumexp(log_a, -1).exp(), torch.logsumexp(log_b, -1).exp()
            if not torch.allclose(mass_a, mass_b, rtol=1e-5, atol=1e-8):
                raise ValueError(
                    f"balanced OT needs sum(a) == sum(b); got {mass_a.flatten()[:4].tolist()} vs "
                    f"{mass_b.flatten()[:4].tolist()}. Use partial_sinkhorn for unequal masses."
                )
        log_kernel = cost / -epsilon  # (..., n, m)
        if init is None:
            f_scaled = torch.zeros_like(log_a)
            g_scaled = torch.zeros_like(log_b)
        else:
            f_scaled = init[0].to(dtype) / epsilon
            g_scaled = init[1].to(dtype) / epsilon
        # Masked entries carry -inf potentials from the first update on; keep them -inf in the warm start too.
        f_scaled = torch.where(torch.isinf(log_a), log_a, f_scaled)
        g_scaled = torch.where(torch.isinf(log_b), log_b, g_scaled)

        n_iter, error = 0, None
        for n_iter in range(1, int(max_iter) + 1):
            f_new = log_a - torch.logsumexp(log_kernel + g_scaled[..., None, :], dim=-1)
            if tol > 0 and n_iter % check_every == 0:
                # Row sums of the current plan are a * exp(f - f_new): the check costs no extra pass.
                row_error = (log_a.exp() * torch.expm1(f_scaled - f_new).nan_to_num(0.0)).abs().sum(-1)
                error = row_error.max().item()
            f_scaled = f_new
            g_scaled = log_b - torch.logsumexp(log_kernel + f_scaled[..., :, None], dim=-2)
            if error is not None and error < tol:
                break

        log_plan = log_kernel + f_scaled[..., :, None] + g_scaled[..., None, :]
        marginal_error = marginal_l1_error(log_plan, log_a, log_b)
        converged = bool((marginal_error < tol).all()) if tol > 0 else True
        if warn and not converged:
            warnings.warn(
                f"sinkhorn did not converge in {n_iter} iterations (max marginal error "
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
        )
