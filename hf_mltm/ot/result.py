"""The one return type of every solver in :mod:`hf_mltm.ot`."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch


class OTResult(NamedTuple):
    """Solution of an entropic OT problem (or a batch of them) with cost ``C`` of shape ``(..., n, m)``.

    The plan is ``P_ij = exp((f_i + g_j + h - C_ij) / epsilon)``. Every solver of :mod:`hf_mltm.ot` returns this type;
    a field the solver does not produce is `None`:

    - `sinkhorn`: ``plan``, ``log_plan``, ``f``, ``g`` (``h``, ``value`` are `None`).
    - `partial_sinkhorn`: ``plan``, ``log_plan``, ``f``, ``g``, ``h`` (``value`` is `None`).
    - `fragment_ot_scores`: ``value`` (the ``(B, C)`` scores) and, with ``return_plans=True``, ``plan``; no
      potentials (``log_plan``, ``f``, ``g``, ``h`` are `None`). One problem per image-caption pair.
    - `streaming_sinkhorn`: ``f``, ``g`` and ``cost_scale``; no plan (``plan``, ``log_plan``, ``h``, ``value`` are
      `None`).

    All fill ``n_iter``, ``marginal_error`` and ``converged``. The first eight fields keep their historical order,
    so ``plan, log_plan, f, g, n_iter, marginal_error, converged, h, *_ = result`` unpacks them.

    Attributes:
        plan (`torch.Tensor` of shape `(..., n, m)` or `None`): the transport plan ``P``; masked rows/columns are
            exactly 0.
        log_plan (`torch.Tensor` of shape `(..., n, m)` or `None`): ``log P`` (``-inf`` where masked), computed in
            the log domain, so it is finite wherever the plan is positive even when ``P`` underflows.
        f (`torch.Tensor` of shape `(..., n)` or `None`): row dual potential, in units of the cost the solver saw
            (``-inf`` on masked rows); multiply by ``cost_scale`` for the units of the cost given.
        g (`torch.Tensor` of shape `(..., m)` or `None`): column dual potential, same units (``-inf`` on masked
            columns).
        n_iter (`int`): iterations run (one iteration updates every potential once); the most over a batch solved
            in chunks.
        marginal_error (`torch.Tensor` of shape `(...)`): L1 violation of the constraints at the returned solution,
            one entry per problem. Balanced OT: ``||P1 - a||_1 + ||P^T 1 - b||_1``; partial OT: the KKT residual of
            the row/column inequalities plus ``|sum(P) - mass|``; fragment OT: the balanced error of the (augmented)
            problem of each image-caption pair, shape `(B, C)`; streaming: the row error before the last column
            update, shape `()`.
        converged (`bool`): whether every problem reached ``marginal_error < tol`` (always `True` for ``tol = 0``).
        h (`torch.Tensor` of shape `(...)` or `None`): potential of the total-mass constraint (partial OT only), in
            cost units.
        value (`torch.Tensor` or `None`): the solver's scalar output per problem where it has one: the fragment OT
            similarity of every image-caption pair, shape `(B, C)` (differentiable).
        cost_scale (`float`): the positive factor the cost was divided by before solving (``normalization=
            "batch_max"`` of `streaming_sinkhorn`); 1.0 when the cost was solved as given.
    """

    plan: torch.Tensor | None
    log_plan: torch.Tensor | None
    f: torch.Tensor | None
    g: torch.Tensor | None
    n_iter: int
    marginal_error: torch.Tensor
    converged: bool
    h: torch.Tensor | None = None
    value: torch.Tensor | None = None
    cost_scale: float = 1.0


def finish_solve(
    solver: str,
    plan: torch.Tensor,
    log_plan: torch.Tensor | None,
    potentials: tuple[torch.Tensor, ...],
    epsilon: float,
    n_iter: int,
    marginal_error: torch.Tensor,
    tol: float,
    warn: bool,
) -> OTResult:
    """Build the `OTResult` of a solve from scaled potentials ``(f, g[, h]) / epsilon``, warning once when ``tol`` was
    not reached (``tol = 0`` means a fixed number of iterations and always counts as converged).

    Raises `ValueError` instead of returning a NaN plan (a last guard behind
    :func:`hf_mltm.ot._utils.check_cost_values`)."""
    # Without a log-plan (a caller that needs only the plan), NaN potentials are the same signal.
    # amax propagates NaN: one read of the (n, m) log-plan and no boolean copy of it.
    nan_found = any(bool(torch.isnan(t.amax())) for t in ([log_plan] if log_plan is not None else potentials)
                    if t.numel())
    if not bool(torch.isfinite(marginal_error).all()) or nan_found:
        raise ValueError(
            f"{solver} produced a non-finite plan (cost dtype {plan.dtype}, epsilon {epsilon:g}): the solve left the "
            f"range of the dtype. Normalise the cost, raise epsilon, or pass a float64 cost."
        )
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

