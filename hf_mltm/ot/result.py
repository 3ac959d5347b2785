"""The one return type of every solver in :mod:`hf_mltm.ot`."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch


class OTResult(NamedTuple):
    """Solution of an entropic OT problem with cost ``C`` of shape ``(..., n, m)``.

    The plan is ``P_ij = exp((f_i + g_j + h - C_ij) / epsilon)``.

    Attributes:
        plan (`torch.Tensor` of shape `(..., n, m)`): the transport plan ``P``; masked rows/columns are exactly 0.
        log_plan (`torch.Tensor` of shape `(..., n, m)`): ``log P`` (``-inf`` where masked), computed in the log
            domain, so it is finite wherever the plan is positive even when ``P`` underflows.
        f (`torch.Tensor` of shape `(..., n)`): row dual potential, in cost units (``-inf`` on masked rows).
        g (`torch.Tensor` of shape `(..., m)`): column dual potential, in cost units (``-inf`` on masked columns).
        n_iter (`int`): iterations run (one iteration updates every potential once).
        marginal_error (`torch.Tensor` of shape `(...)`): L1 violation of the constraints at the returned plan. For
            balanced OT ``||P1 - a||_1 + ||P^T 1 - b||_1``; for partial OT the KKT residual of the row/column
            inequalities plus ``|sum(P) - mass|``.
        converged (`bool`): whether every problem reached ``marginal_error < tol``.
        h (`torch.Tensor` of shape `(...)` or `None`): potential of the total-mass constraint (partial OT only),
            in cost units.
    """

    plan: torch.Tensor
    log_plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    n_iter: int
    marginal_error: torch.Tensor
    converged: bool
    h: torch.Tensor | None = None


def finish_solve(
    solver: str,
    plan: torch.Tensor,
    log_plan: torch.Tensor,
    potentials: tuple[torch.Tensor, ...],
    epsilon: float,
    n_iter: int,
    marginal_error: torch.Tensor,
    tol: float,
    warn: bool,
) -> OTResult:
    """Build the `OTResult` of a solve from scaled potentials ``(f, g[, h]) / epsilon``, warning once when ``tol`` was
    not reached (``tol = 0`` means a fixed number of iterations and always counts as converged)."""
    converged = bool((marginal_error < tol).all()) if tol > 0 else True
    if warn and not converged:
        warnings.warn(
            f"{solver} did not converge in {n_iter} iterations (max constraint error "
            f"{marginal_error.max().item():.3g} >= tol {tol:g}); raise max_iter or epsilon.",
            UserWarning,
            stacklevel=3,
        )
    f, g, *h = (potential * epsilon for potential in potentials)
    return OTResult(plan, log_plan, f, g, n_iter, marginal_error, converged, h[0] if h else None)
