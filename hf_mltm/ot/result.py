"""The one return type of every solver in :mod:`hf_mltm.ot`."""

from __future__ import annotations

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
