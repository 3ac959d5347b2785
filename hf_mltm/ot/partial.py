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

Numerics: as in :func:`hf_mltm.ot.sinkhorn`: an exact log-domain first iteration, then scalings ``u``, ``v``, ``lam``
of the absorbed kernel ``K = exp((f + g + h - C)/eps)``, absorbed into the potentials only when they leave
``[e^-30, e^30]``, with a log-sum-exp fallback; float32 or float64. Each half-iteration maximises the dual *jointly*
over one side's potentials and the mass potential: for rows, with ``r = K v`` and caps ``u <= e^{-f}``, the row masses
are ``min(a_i, lam r_i e^{-f_i})`` and ``lam`` solves ``sum_i min(a_i, lam r_i e^{-f_i}) = s`` (a monotone piecewise
linear equation, solved exactly by sorting its breakpoints, O(n log n)); then ``u = min(a / (lam r), e^{-f})``. The
columns follow with ``K^T u``. Updating ``h`` separately would zig-zag with ``g`` when ``s`` is close to ``sum(b)``
(each step shrinks ``lam`` only by ``s / sum(b)``). Two matrix-vector products per iteration, O(n m). Updates are
over-relaxed with the adaptive factor of :func:`hf_mltm.ot.sinkhorn` (same fixed point). With ``mass == sum(a) == sum(b)`` the constraints are the balanced ones and
the plan equals the balanced Sinkhorn plan. POT's kernel-domain iteration omits the Dykstra correction (the
``min(., 0)`` here lets a row regain mass after a global rescaling); the two agree where POT converges.
"""

from __future__ import annotations

import math

import torch

from ._utils import autocast_disabled, matvec, prepare_problem, safe_divide, scalings_are_safe
from .result import OTResult, finish_solve
from .sinkhorn import Overrelaxation, check_iterations, needs_absorption

Potentials = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # scaled f (..., n), g (..., m), h (...)


def _check_mass(mass: float, log_a: torch.Tensor, log_b: torch.Tensor) -> float:
    mass = float(mass)
    limit = torch.minimum(torch.logsumexp(log_a, -1), torch.logsumexp(log_b, -1)).exp().min().item()
    if not 0 < mass <= limit * (1 + 1e-6):
        raise ValueError(
            f"mass must be in (0, min(sum(a), sum(b))] = (0, {limit:.6g}] for the partial OT problem to be feasible, "
            f"got {mass}."
        )
    return min(mass, limit)


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
        [`OTResult`] whose `f`, `g` are the (non-positive) capacity potentials and `h` the mass potential (`value` is
        `None`, `cost_scale` is 1).

    Raises:
        ValueError: as :func:`hf_mltm.ot.sinkhorn` (shapes, non-finite valid costs, a cost too large for its dtype,
            a NaN result), and for an infeasible `mass`.
    """
    check_iterations(max_iter, tol, check_every)
    with autocast_disabled(cost.device):
        cost, log_a, log_b, epsilon = prepare_problem(a, b, cost, epsilon, row_mask, col_mask, "partial_sinkhorn")
        dtype, batch_shape = cost.dtype, cost.shape[:-2]
        mass = _check_mass(mass, log_a, log_b)
        log_mass = torch.log(torch.tensor(mass, dtype=dtype, device=cost.device))
        log_kernel = cost / -epsilon  # (..., n, m)
        a, b = log_a.exp(), log_b.exp()

        f_scaled = torch.where(torch.isinf(log_a), log_a, torch.zeros_like(log_a))
        g_scaled = torch.where(torch.isinf(log_b), log_b, torch.zeros_like(log_b))
        h_scaled = torch.zeros(batch_shape, dtype=dtype, device=cost.device)
        potentials = _log_domain_block(log_kernel, log_a, log_b, log_mass, (f_scaled, g_scaled, h_scaled), 1)
        kernel = _absorbed_kernel(log_kernel, *potentials)
        scalings = (torch.ones_like(a), torch.ones_like(b), torch.ones_like(h_scaled))
        n_iter, relaxation = 1, Overrelaxation()
        guesses = None, None  # saturated rows and columns of the last update, carried from block to block
        while True:
            marginal_error = _kkt_error(kernel, a, b, mass, potentials, scalings)
            error = marginal_error.max().item()
            if n_iter >= max_iter or (tol > 0 and error < tol) or not math.isfinite(error):
                break  # a non-finite error is reported by finish_solve
            steps = min(int(check_every), int(max_iter) - n_iter)
            omega = relaxation.update(error, steps)
            new_scalings, new_guesses = _scaling_block(kernel, a, b, mass, potentials, scalings, steps, omega, guesses)
            if scalings_are_safe(*new_scalings):
                scalings, guesses = new_scalings, new_guesses
            else:  # redo the block in the log domain from the last safe scalings, without over-relaxation
                relaxation.disable()
                potentials = _log_domain_block(log_kernel, log_a, log_b, log_mass, _absorb(potentials, scalings), steps)
                scalings = tuple(torch.ones_like(s) for s in scalings)
                kernel = _absorbed_kernel(log_kernel, *potentials)
            n_iter += steps
            if needs_absorption(*scalings):
                potentials = _absorb(potentials, scalings)
                scalings = tuple(torch.ones_like(s) for s in scalings)
                kernel = _absorbed_kernel(log_kernel, *potentials)

        u, v, lam = scalings
        plan = kernel * (lam[..., None, None] * u[..., :, None] * v[..., None, :])
        f_scaled, g_scaled, h_scaled = _absorb(potentials, scalings)
        log_plan = log_kernel + f_scaled[..., :, None] + g_scaled[..., None, :] + h_scaled[..., None, None]
        return finish_solve("partial_sinkhorn", plan, log_plan, (f_scaled, g_scaled, h_scaled), epsilon, n_iter,
                            marginal_error, tol, warn)


def _absorbed_kernel(log_kernel: torch.Tensor, f: torch.Tensor, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``exp(log_kernel + f_i + g_j + h)``: the plan the scaled potentials describe, ``(..., n, m)``."""
    return (log_kernel + f[..., :, None] + g[..., None, :] + h[..., None, None]).exp()


def _absorb(potentials: Potentials, scalings: Potentials) -> Potentials:
    """Fold scalings into the potentials. Rows/columns whose scaling sits at its cap (inactive constraint) get a
    potential of exactly 0, which the backward pass relies on to find the active set."""
    f, g, h = potentials
    u, v, lam = scalings
    f_new = torch.where(u < (-f).exp(), f + u.log(), torch.zeros_like(f)).where(~torch.isinf(f), f)
    g_new = torch.where(v < (-g).exp(), g + v.log(), torch.zeros_like(g)).where(~torch.isinf(g), g)
    return f_new.clamp_max(0), g_new.clamp_max(0), h + lam.log()


def _log_domain_block(
    log_kernel: torch.Tensor,
    log_a: torch.Tensor,
    log_b: torch.Tensor,
    log_mass: torch.Tensor,
    potentials: Potentials,
    steps: int,
) -> Potentials:
    """``steps`` exact log-sum-exp iterations of the dual block coordinate ascent (module docstring)."""
    f, g, h = potentials
    for _ in range(steps):
        f = (log_a - torch.logsumexp(log_kernel + (g[..., None, :] + h[..., None, None]), -1)).clamp_max(0)
        g = (log_b - torch.logsumexp(log_kernel + (f[..., :, None] + h[..., None, None]), -2)).clamp_max(0)
        h = log_mass - torch.logsumexp((log_kernel + f[..., :, None] + g[..., None, :]).flatten(-2), -1)
    return f, g, h


def _per_problem(values: torch.Tensor) -> torch.Tensor:
    """``values`` ``(...)`` broadcastable against ``(..., k)``: as is for a single problem (no view op), else
    ``values[..., None]``."""
    return values if values.dim() == 0 else values[..., None]


def _solve_mass_scale(
    capacity: torch.Tensor,
    weight: torch.Tensor,
    mass: float | torch.Tensor,
    saturated: torch.Tensor | None = None,
    zero: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``lam > 0`` with ``sum_j min(capacity_j, lam * weight_j) = mass`` and its saturated set
    ``lam * weight >= capacity``, per problem: shapes ``(...)`` and ``(..., k)``.

    ``capacity``, ``weight`` have shape ``(..., k)`` and are non-negative with ``sum(capacity) >= mass``. Given a guess
    of the saturated set (the previous iteration's, which rarely changes), ``lam`` has the closed form
    ``(mass - saturated capacity) / unsaturated weight``, accepted when it reproduces the guess. Otherwise: between two
    consecutive breakpoints ``t_j = capacity_j / weight_j`` the sum is ``(saturated capacity) + lam * (remaining
    weight)``, and the first breakpoint where it reaches ``mass`` brackets the root.

    ``mass`` and ``zero`` may be 0-dim tensors of ``capacity``'s dtype (the iterations pass them so): the same values
    as Python numbers, without converting a number on every call (this runs twice per iteration, and at b = 256 the
    solve is bound by per-operation overhead).
    """
    big = torch.finfo(weight.dtype).max / (weight.shape[-1] + 1)
    weight = weight.nan_to_num(nan=0.0, posinf=big).clamp_max(big)
    if saturated is not None:
        # torch.where instead of multiplying by the mask (no bool -> float copy) and torch.equal for the check: the
        # same values with fewer small operations
        saturated_capacity = torch.where(saturated, capacity, zero).sum(-1)
        lam = safe_divide(mass - saturated_capacity, torch.where(saturated, zero, weight).sum(-1))
        now_saturated = _per_problem(lam) * weight >= capacity
        positive = lam.item() > 0 if lam.dim() == 0 else bool((lam > 0).all())
        if positive and torch.equal(now_saturated, saturated):
            return lam, now_saturated
    breakpoints = safe_divide(capacity, weight).clamp_max(big)
    breakpoints, order = breakpoints.sort(-1)
    sorted_capacity, sorted_weight = capacity.gather(-1, order), weight.gather(-1, order)
    saturated_before = sorted_capacity.cumsum(-1) - sorted_capacity
    remaining_weight = sorted_weight.flip(-1).cumsum(-1).flip(-1)  # suffix sums (no cancellation with huge weights)
    # the sum at each breakpoint is non-decreasing: the first one reaching the mass brackets the root
    at_breakpoints = (saturated_before + breakpoints * remaining_weight).contiguous()
    target = torch.full_like(at_breakpoints[..., :1], float(mass))
    index = torch.searchsorted(at_breakpoints, target).clamp_max(at_breakpoints.shape[-1] - 1)
    lam = safe_divide(target - saturated_before.gather(-1, index), remaining_weight.gather(-1, index))[..., 0]
    return lam, _per_problem(lam) * weight >= capacity


def _capped_side_update(
    kernel_sums: torch.Tensor,
    capacity: torch.Tensor,
    cap: torch.Tensor,
    mass: float | torch.Tensor,
    saturated: torch.Tensor | None = None,
    zero: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact joint update of one side's scalings and the mass scaling: returns ``(scalings, lam, saturated)``.

    ``kernel_sums`` ``(..., k)`` are the kernel's sums against the other side's scalings (``K v`` or ``K^T u``),
    ``capacity`` the marginal (``a`` or ``b``), ``cap`` the largest allowed scaling (``e^{-f}`` or ``e^{-g}``) and
    ``saturated`` a guess of the entries at capacity; ``mass``, ``zero`` as in :func:`_solve_mass_scale`.
    """
    lam, saturated = _solve_mass_scale(capacity, kernel_sums * cap, mass, saturated, zero)
    scalings = safe_divide(capacity, _per_problem(lam) * kernel_sums)
    if torch.is_grad_enabled():  # unrolled differentiation: no out= or in-place operations
        return torch.minimum(scalings, cap), lam, saturated
    return torch.minimum(scalings, cap, out=scalings), lam, saturated


def _relaxed(scalings: torch.Tensor, target: torch.Tensor, omega: float, cap: torch.Tensor) -> torch.Tensor:
    """``min(scalings * (target / scalings)^omega, cap)``: the over-relaxed step (in one buffer without autograd)."""
    if torch.is_grad_enabled():
        return torch.minimum(scalings * safe_divide(target, scalings).pow(omega), cap)
    step = safe_divide(target, scalings).pow_(omega).mul_(scalings)
    return torch.minimum(step, cap, out=step)


def _scaling_block(
    kernel: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    mass: float,
    potentials: Potentials,
    scalings: Potentials,
    steps: int,
    omega: float = 1.0,
    guesses: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> tuple[Potentials, tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` iterations as scalings ``u <= e^{-f}``, ``v <= e^{-g}``, ``lam`` of the absorbed kernel.

    ``guesses`` are the saturated rows and columns ``(..., n)``, ``(..., m)`` of the previous block's last update
    (or ``None``), the first guesses of :func:`_solve_mass_scale`; returns the scalings and this block's last ones.

    With ``omega > 1`` each side's update but the block's last moves ``omega`` times the exact update in the log
    domain (``u <- min(u (u* / u)^omega, e^{-f})``); the block's last step is exact, so the returned ``lam`` makes
    the mass exact.
    """
    f, g, _ = potentials
    u_cap, v_cap = (-f).exp(), (-g).exp()
    u, v, lam = scalings
    rows_saturated, columns_saturated = guesses
    mass_tensor, zero = a.new_tensor(mass), a.new_zeros(())
    kernel_transposed = kernel.transpose(-1, -2)
    for step in range(steps):
        relax = omega != 1.0 and step != steps - 1
        target, lam, rows_saturated = _capped_side_update(
            matvec(kernel, v), a, u_cap, mass_tensor, rows_saturated, zero
        )
        u = _relaxed(u, target, omega, u_cap) if relax else target
        target, lam, columns_saturated = _capped_side_update(
            matvec(kernel_transposed, u), b, v_cap, mass_tensor, columns_saturated, zero
        )
        # a relaxed step's lam is never used: the next row update solves its own, and the last step is exact
        v = _relaxed(v, target, omega, v_cap) if relax else target
    return (u, v, lam), (rows_saturated, columns_saturated)


def _kkt_error(
    kernel: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mass: float, potentials: Potentials, scalings: Potentials
) -> torch.Tensor:
    """KKT residual of the plan ``lam K * u v^T`` per problem, shape ``(...)``: equality on active rows/columns
    (scaling below its cap), inequality elsewhere, plus the total-mass gap."""
    f, g, _ = potentials
    u, v, lam = scalings
    row_masses = lam[..., None] * u * matvec(kernel, v)
    cols = lam[..., None] * v * matvec(kernel.transpose(-1, -2), u) - b
    rows = torch.where(u < (-f).exp(), (row_masses - a).abs(), (row_masses - a).clamp_min(0))
    cols = torch.where(v < (-g).exp(), cols.abs(), cols.clamp_min(0))
    total = row_masses.sum(-1)
    return rows.sum(-1) + cols.sum(-1) + (total - mass).abs()
