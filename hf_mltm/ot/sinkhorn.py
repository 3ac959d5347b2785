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

Numerics: the potentials live in the log domain (Schmitzer's stabilisation). The first iteration is an exact
log-sum-exp update; after it the solver iterates on the *absorbed kernel* ``K = exp((f_i + g_j - C_ij)/eps)`` (the
current plan, so no row underflows as a whole) with the equivalent scalings ``u = a / (K v)``, ``v = b / (K^T u)``:
two matrix-vector products per iteration instead of two log-sum-exp passes. The scalings are absorbed into ``f``,
``g`` (and ``K`` recomputed) only when they leave ``[e^-30, e^30]``; in between they carry the refinement at full
relative precision, which float32 potentials of magnitude ~10 could not (their ulp is ~1e-6). Should scalings leave
the float range, the iterations are redone with log-sum-exp updates. ``log_plan = (f + g - C)/eps`` is computed in
the log domain, so small ``epsilon`` (0.01 and below) and unnormalised costs are safe. Convergence is checked every
``check_every`` iterations on the marginals of ``K * u v^T`` (one extra matrix-vector product per check). Once the
linear convergence rate ``rho`` of the plain iteration has been measured (third check), the updates are
over-relaxed with ``omega = 2 / (1 + sqrt(1 - rho))`` (successive over-relaxation, Thibault et al. 2017, Lehmann et
al. 2022), refined adaptively and backed off if the error grows tenfold (``Overrelaxation``); this cuts the
iterations on nearly-diagonal batch plans several-fold and does not change the fixed point. The solver
computes in float32 (float64 for float64 input) even inside an autocast region. Memory is O(n m) per problem. The
loop is autograd-transparent: with grad enabled it is differentiated by unrolling (use this only to verify the
closed-form gradients of :mod:`hf_mltm.ot.losses`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ._utils import (
    autocast_disabled,
    check_broadcasts,
    matvec,
    prepare_problem,
    safe_divide,
    scalings_are_safe,
)
from .result import OTResult, finish_solve


def check_iterations(max_iter: int, tol: float, check_every: int) -> None:
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
        [`OTResult`] with `plan`, `log_plan`, potentials `f`, `g`, `n_iter`, `marginal_error`, `converged` (`h` and
        `value` are `None`, `cost_scale` is 1).

    Raises:
        ValueError: before solving, for shapes that do not fit the cost (marginals, masks, `init`; both shapes are
            named), NaN/inf in valid (unmasked) cost entries (the first is located; padding may hold anything), a
            cost too large for its dtype (``max |cost| / epsilon`` above 1/16 of the dtype's maximum: normalise it or
            pass float64) and bad settings; after solving, instead of returning a NaN plan.

    Example:
        >>> import torch
        >>> from hf_mltm.ot import sinkhorn
        >>> result = sinkhorn(None, None, torch.tensor([[0.0, 1.0], [1.0, 0.0]]), epsilon=0.05)
        >>> result.plan.round(decimals=4)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.5000]])
    """
    check_iterations(max_iter, tol, check_every)
    with autocast_disabled(cost.device):
        cost, log_a, log_b, epsilon = prepare_problem(a, b, cost, epsilon, row_mask, col_mask, "sinkhorn")
        if a is not None or b is not None:
            check_balanced(log_a, log_b)
        f_scaled, g_scaled = initial_potentials(init, log_a, log_b, cost, epsilon)
        log_kernel = cost / -epsilon  # (..., n, m)
        state = solve_scaled(log_kernel, log_a, log_b, f_scaled, g_scaled, max_iter, tol, check_every)
        f_scaled, g_scaled = state.potentials()
        if state.kernel.requires_grad:  # unrolled differentiation: no in-place updates of saved tensors
            plan = state.kernel * state.u[..., :, None] * state.v[..., None, :]
            log_plan = log_kernel + f_scaled[..., :, None] + g_scaled[..., None, :]
        else:  # in place on buffers this function owns: at b = 4096 every fresh (b, b) buffer costs page faults
            plan = state.plan_()
            log_plan = log_kernel.add_(f_scaled[..., :, None]).add_(g_scaled[..., None, :])
        return finish_solve("sinkhorn", plan, log_plan, (f_scaled, g_scaled), epsilon, state.n_iter,
                            state.marginal_error, tol, warn)


def check_balanced(log_a: torch.Tensor, log_b: torch.Tensor) -> None:
    """Raise a `ValueError` unless the marginals ``exp(log_a)`` ``(..., n)`` and ``exp(log_b)`` ``(..., m)`` have equal
    total mass in every problem (relative tolerance 1e-5)."""
    mass_a, mass_b = torch.logsumexp(log_a, -1).exp(), torch.logsumexp(log_b, -1).exp()
    if not torch.allclose(mass_a, mass_b, rtol=1e-5, atol=1e-8):
        raise ValueError(
            f"balanced OT needs sum(a) == sum(b); got {mass_a.flatten()[:4].tolist()} vs "
            f"{mass_b.flatten()[:4].tolist()}. Use partial_sinkhorn for unequal masses."
        )


def initial_potentials(
    init: tuple[torch.Tensor, torch.Tensor] | None, log_a: torch.Tensor, log_b: torch.Tensor, cost: torch.Tensor,
    epsilon: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting potentials divided by ``epsilon``, ``(..., n)`` and ``(..., m)``: zeros, or a checked warm start;
    ``-inf`` on masked entries either way."""
    if init is None:
        f_scaled, g_scaled = torch.zeros_like(log_a), torch.zeros_like(log_b)
    else:
        if len(init) != 2:
            raise ValueError(f"init must be a pair (f, g) of potentials, got {len(init)} tensors.")
        check_broadcasts("init[0] (f)", init[0], tuple(log_a.shape), cost.shape)
        check_broadcasts("init[1] (g)", init[1], tuple(log_b.shape), cost.shape)
        f_scaled = init[0].to(device=cost.device, dtype=cost.dtype) / epsilon
        g_scaled = init[1].to(device=cost.device, dtype=cost.dtype) / epsilon
    return torch.where(torch.isinf(log_a), log_a, f_scaled), torch.where(torch.isinf(log_b), log_b, g_scaled)


class ScaledSolution(NamedTuple):
    """The state at the end of :func:`solve_scaled`: the plan is ``kernel * u_i * v_j`` and its logarithm
    ``log_kernel + f_scaled_i + log u_i + g_scaled_j + log v_j`` (potentials divided by ``epsilon``).

    ``column_sums`` is ``K^T u`` (so the plan's column marginals are ``v * column_sums``); ``marginal_error`` has
    shape ``(...)``."""

    kernel: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    f_scaled: torch.Tensor
    g_scaled: torch.Tensor
    column_sums: torch.Tensor
    n_iter: int
    marginal_error: torch.Tensor

    def potentials(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``f / epsilon`` ``(..., n)`` and ``g / epsilon`` ``(..., m)`` with the scalings absorbed."""
        return self.f_scaled + self.u.log(), self.g_scaled + self.v.log()

    def plan_(self) -> torch.Tensor:
        """The plan ``(..., n, m)``, computed in place on ``kernel`` (which is then gone)."""
        return self.kernel.mul_(self.u[..., :, None]).mul_(self.v[..., None, :])

    def mass(self) -> torch.Tensor:
        """Total mass of the plan per problem, shape ``(...)``."""
        return (self.v * self.column_sums).sum(-1)


def solve_scaled(
    log_kernel: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, f_scaled: torch.Tensor,
    g_scaled: torch.Tensor, max_iter: int, tol: float, check_every: int,
    rebuild: Callable[[], torch.Tensor] | None = None,
) -> ScaledSolution:
    """The Sinkhorn iterations on a prepared problem: ``log_kernel = -C / epsilon`` ``(..., n, m)``, log-marginals
    ``(..., n)``, ``(..., m)`` (``-inf`` on masked entries) and starting potentials divided by ``epsilon``.

    The caller builds the plan and/or its logarithm from the returned state, so a caller that needs only one of them
    (the m-LTM loss needs the plan and the potentials) never pays for the other. ``log_kernel`` is not modified,
    unless ``rebuild`` is given: then the first iteration turns its buffer into the kernel (one ``(n, m)`` buffer
    fewer, which at n = m = 4096 saves about 40 ms of page faults) and ``rebuild()`` must return ``-C / epsilon``
    again for the rare steps that need it (absorption, log-domain fallback)."""
    a, b = log_a.exp(), log_b.exp()
    first = None
    if not (torch.is_grad_enabled() and (log_kernel.requires_grad or f_scaled.requires_grad or g_scaled.requires_grad)):
        first = _first_iteration(log_kernel, a, b, g_scaled, in_place=rebuild is not None)
        if rebuild is not None:
            log_kernel = _Rebuilt(rebuild)
    if first is None:  # exact log-sum-exp updates (unrolled differentiation, or a column's mass underflowed)
        log_kernel = _materialised(log_kernel)
        f_scaled, g_scaled = _log_domain_block(log_kernel, log_a, log_b, f_scaled, g_scaled, 1)
        kernel = _absorbed_kernel(log_kernel, f_scaled, g_scaled)
        u, v, column_sums = torch.ones_like(a), torch.ones_like(b), None
    else:
        # Fold the first scalings into the kernel (two in-place passes): the iterations then refine u, v around 1,
        # where float32 marginals can settle exactly (a state scaled by u = a / r stalls at a few ulps instead).
        kernel, f_scaled, g_scaled, u, v = first
        kernel.mul_(u[..., :, None]).mul_(v[..., None, :])
        f_scaled, g_scaled = f_scaled + u.log(), g_scaled + v.log()
        u, v, column_sums = torch.ones_like(a), torch.ones_like(b), None
    # K v and K^T u of the current scalings: a check reuses the column sums of the block's last update and
    # hands its row sums to the next block's first update, so convergence checks cost no matrix-vector product.
    row_sums = None
    n_iter, relaxation = 1, Overrelaxation()
    while True:
        if needs_absorption(u, v):
            f_scaled, g_scaled = f_scaled + u.log(), g_scaled + v.log()
            u, v, row_sums, column_sums = torch.ones_like(a), torch.ones_like(b), None, None
            log_kernel = _materialised(log_kernel)
            kernel = _absorbed_kernel(log_kernel, f_scaled, g_scaled)
        if row_sums is None:
            row_sums = matvec(kernel, v)
        if column_sums is None:
            column_sums = matvec(kernel.transpose(-1, -2), u)
        plan_rows, plan_cols = u * row_sums, v * column_sums
        marginal_error = (plan_rows - a).abs().sum(-1) + (plan_cols - b).abs().sum(-1)
        error = marginal_error.max().item()
        if n_iter >= max_iter or (tol > 0 and error < tol) or not math.isfinite(error):
            break  # a non-finite error is reported by finish_solve
        steps = min(int(check_every), int(max_iter) - n_iter)
        omega = relaxation.update(error, steps)
        new_u, new_v, new_column_sums = _scaling_block(kernel, a, b, u, v, steps, omega, row_sums)
        row_sums = None
        if scalings_are_safe(new_u, new_v):
            u, v, column_sums = new_u, new_v, new_column_sums
        else:  # redo the block in the log domain from the last safe scalings, without over-relaxation
            relaxation.disable()
            log_kernel = _materialised(log_kernel)
            f_scaled, g_scaled = _log_domain_block(log_kernel, log_a, log_b, f_scaled + u.log(),
                                                   g_scaled + v.log(), steps)
            u, v, column_sums = torch.ones_like(a), torch.ones_like(b), None
            kernel = _absorbed_kernel(log_kernel, f_scaled, g_scaled)
        n_iter += steps
    return ScaledSolution(kernel, u, v, f_scaled, g_scaled, column_sums, n_iter, marginal_error)


class _Rebuilt:
    """A log-kernel whose buffer was consumed: ``_materialised`` builds it again on first use."""

    def __init__(self, rebuild: Callable[[], torch.Tensor]) -> None:
        self.rebuild = rebuild


def _materialised(log_kernel: torch.Tensor | _Rebuilt) -> torch.Tensor:
    return log_kernel.rebuild() if isinstance(log_kernel, _Rebuilt) else log_kernel


def _first_iteration(
    log_kernel: torch.Tensor, a: torch.Tensor, b: torch.Tensor, g_scaled: torch.Tensor, in_place: bool = False
) -> tuple[torch.Tensor, ...] | None:
    """The exact first iteration (``f`` from ``g``, then ``g`` from ``f``) in four passes over the kernel.

    With row maxima ``m_i = max_j (log_kernel_ij + g_j)``, ``K = exp(log_kernel + g_j - m_i)`` has entries in
    ``[0, 1]`` and row sums ``r >= 1``; the row update is ``f = log a - m - log r``, i.e. the scaling ``u = a / r`` of
    ``K``, and the column update is ``v = b / (K^T u)``. This is the log-sum-exp iteration with the maxima taken per
    row, so it is exact unless a column's whole mass underflows; then (any valid column with ``K^T u`` below
    ``n * tiny / eps`` of the dtype, where subnormal terms could cost relative precision) it returns `None` and the
    caller uses log-sum-exp updates. Returns ``K``, the potentials ``-m`` and ``g`` it is scaled by, ``u`` and
    ``v``. ``in_place`` computes ``K`` in the buffer of ``log_kernel`` (cold starts only).
    """
    if bool((g_scaled == 0).all()):  # the usual cold start: no shifted copy of the kernel needed
        row_max = log_kernel.amax(-1, keepdim=True)
        kernel = log_kernel.sub_(row_max).exp_() if in_place else torch.sub(log_kernel, row_max).exp_()
    else:
        shifted = log_kernel + g_scaled[..., None, :]  # (..., n, m), -inf on masked columns
        row_max = shifted.amax(-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        kernel = shifted.sub_(row_max).exp_()
    u = safe_divide(a, kernel.sum(-1))
    column_sums = matvec(kernel.transpose(-1, -2), u)
    info = torch.finfo(kernel.dtype)
    if bool(((column_sums < kernel.shape[-2] * info.tiny / info.eps) & (b > 0)).any()):
        return None
    return kernel, -row_max[..., 0], g_scaled, u, safe_divide(b, column_sums)


ABSORB_LOG_THRESHOLD = 30.0


def _absorbed_kernel(log_kernel: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``exp(log_kernel + f_i + g_j)`` for scaled potentials: the plan the potentials describe, ``(..., n, m)``."""
    if torch.is_grad_enabled() and (log_kernel.requires_grad or f.requires_grad or g.requires_grad):
        return (log_kernel + f[..., :, None] + g[..., None, :]).exp()
    return (log_kernel + f[..., :, None]).add_(g[..., None, :]).exp_()  # one (..., n, m) buffer


def needs_absorption(*scalings: torch.Tensor) -> bool:
    """Whether any non-zero scaling left ``[e^-30, e^30]`` (zeros are masked entries and stay zero)."""
    return any(bool((s.log().abs().nan_to_num(0.0, posinf=0.0) > ABSORB_LOG_THRESHOLD).any()) for s in scalings)


def _log_domain_block(
    log_kernel: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, f: torch.Tensor, g: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` exact log-sum-exp iterations on the scaled potentials ``f / eps``, ``g / eps``."""
    for _ in range(steps):
        f = log_a - torch.logsumexp(log_kernel + g[..., None, :], dim=-1)
        g = log_b - torch.logsumexp(log_kernel + f[..., :, None], dim=-2)
    return f, g


def _scaling_block(
    kernel: torch.Tensor, a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, v: torch.Tensor, steps: int,
    omega: float = 1.0, row_sums: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` Sinkhorn iterations as scalings ``u``, ``v`` of the absorbed kernel ``(..., n, m)``.

    With ``omega > 1`` each update but the block's last is over-relaxed in the log domain:
    ``u <- u * (a / (u * K v))^omega`` (``omega = 1`` is the plain update ``u = a / (K v)``); the fixed point is the
    same, and the plain last update leaves the column marginals exact after every block. ``row_sums`` is ``K v`` of
    the incoming ``v`` when the caller already has it. Returns ``u``, ``v`` and ``K^T u`` of the last update (the
    column marginals are ``v * K^T u``).
    """
    for step in range(steps):
        if row_sums is None:
            row_sums = matvec(kernel, v)
        if omega == 1.0 or step == steps - 1:
            u = safe_divide(a, row_sums)
            column_sums = matvec(kernel.transpose(-1, -2), u)
            v = safe_divide(b, column_sums)
        else:
            u = u * safe_divide(a, u * row_sums).pow(omega)
            column_sums = matvec(kernel.transpose(-1, -2), u)
            v = v * safe_divide(b, v * column_sums).pow(omega)
        row_sums = None
    return u, v, column_sums


class Overrelaxation:
    """Adaptive over-relaxation factor for Sinkhorn (successive over-relaxation of the dual updates).

    Plain Sinkhorn converges linearly with a rate ``rho`` per iteration; for such Gauss-Seidel-type iterations the
    optimal relaxation is ``omega = 2 / (1 + sqrt(1 - rho))`` (Young's SOR theory, applied to Sinkhorn by Thibault
    et al. 2017 and Lehmann et al. 2022), which turns the rate into about ``omega - 1``. ``rho`` is first measured
    from two consecutive plain blocks after the transient first one. Early blocks converge faster than the
    asymptotic rate, so the estimate is refined while relaxed (Hageman and Young's adaptive SOR): an observed rate
    ``r`` at ``omega`` implies ``sqrt(rho) = (r + omega - 1) / (sqrt(r) omega)``, and ``omega`` is raised (never
    lowered) to the optimum for that ``rho``. If the error ever grows tenfold, ``omega - 1`` is halved. The fixed
    point, and so the plan, does not depend on ``omega``.
    """

    MAX_OMEGA = 1.95
    DIVERGENCE_FACTOR = 10.0  # relaxed iterations may overshoot at first; back off only beyond this growth

    def __init__(self) -> None:
        self.omega, self.previous, self.blocks, self.backed_off = 1.0, None, 0, False
        self.reference = None  # error when omega was last set

    def update(self, error: float, steps: int) -> float:
        previous, self.previous = self.previous, error
        self.blocks += 1
        if previous is None or not (error > 0 and previous > 0) or self.blocks < 3:
            return self.omega
        rate = (error / previous) ** (1.0 / steps)
        if self.omega > 1.0 and error > self.DIVERGENCE_FACTOR * self.reference:
            self.omega, self.reference, self.backed_off = 1.0 + (self.omega - 1.0) / 2, error, True
        elif not self.backed_off and 0.0 < rate < 1.0:
            sqrt_rho = (rate + self.omega - 1.0) / (math.sqrt(rate) * self.omega)  # = sqrt(rate) when omega = 1
            optimum = 2.0 / (1.0 + math.sqrt(max(1.0 - sqrt_rho**2, 0.0)))
            if optimum > self.omega:
                self.omega, self.reference = min(optimum, self.MAX_OMEGA), error
        return self.omega

    def disable(self) -> None:
        self.omega, self.backed_off = 1.0, True
