"""Shared helpers for the OT solvers: marginals, masks, dtypes and validation.

Letters used across ``hf_mltm.ot``: ``n`` rows (source points), ``m`` columns (target points), ``d`` embedding
dimension, ``...`` any number of leading batch dimensions.
"""

from __future__ import annotations

import contextlib
import math

import torch


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype the solvers compute in: float64 stays float64, everything else (half, bfloat16, float32) is float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which autocast cannot push the solver into half precision."""
    return torch.autocast(device_type=device.type, enabled=False)


def check_epsilon(epsilon: float) -> float:
    epsilon = float(epsilon)
    if not epsilon > 0 or epsilon != epsilon or epsilon == float("inf"):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon}.")
    return epsilon


def check_cost(cost: torch.Tensor) -> None:
    if cost.dim() < 2:
        raise ValueError(f"cost must have shape (..., n, m), got a tensor of shape {tuple(cost.shape)}.")
    if cost.shape[-1] == 0 or cost.shape[-2] == 0:
        raise ValueError(f"cost must have n >= 1 rows and m >= 1 columns, got shape {tuple(cost.shape)}.")
    if not cost.is_floating_point():
        raise ValueError(f"cost must be a floating-point tensor, got dtype {cost.dtype}.")


def log_marginal(
    weights: torch.Tensor | None,
    mask: torch.Tensor | None,
    batch_shape: torch.Size,
    size: int,
    dtype: torch.dtype,
    device: torch.device,
    name: str,
) -> torch.Tensor:
    """Log-weights of one marginal, broadcast to ``(*batch_shape, size)``.

    ``weights=None`` means uniform over the unmasked entries. Masked entries (``mask`` False) get weight 0, i.e. a
    log-weight of ``-inf``, so they receive exactly zero mass. Explicit weights are used as given (no
    renormalisation); masked entries of explicit weights are zeroed.
    """
    if mask is not None:
        if mask.shape[-1] != size:
            raise ValueError(f"{name}_mask must end in size {size}, got shape {tuple(mask.shape)}.")
        mask = mask.to(device=device, dtype=torch.bool).expand(*batch_shape, size)
        if not bool(mask.any(dim=-1).all()):
            raise ValueError(f"{name}_mask leaves a problem with no valid entry; every problem needs at least one.")
    if weights is None:
        if mask is None:
            return torch.full((*batch_shape, size), -math.log(size), dtype=dtype, device=device)
        count = mask.sum(dim=-1, keepdim=True).to(dtype)
        return torch.where(mask, -torch.log(count), torch.tensor(float("-inf"), dtype=dtype, device=device))
    weights = weights.to(device=device, dtype=dtype)
    if weights.shape[-1] != size:
        raise ValueError(f"marginal {name} must end in size {size}, got shape {tuple(weights.shape)}.")
    if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
        raise ValueError(f"marginal {name} must be finite and non-negative.")
    weights = weights.expand(*batch_shape, size)
    if mask is not None:
        weights = weights * mask
    if not bool((weights.sum(dim=-1) > 0).all()):
        raise ValueError(f"marginal {name} has zero total mass in some problem.")
    return torch.log(weights)


def check_broadcasts(name: str, tensor: torch.Tensor, expected: tuple[int, ...], cost_shape: torch.Size) -> None:
    """Raise a `ValueError` naming both shapes unless ``tensor`` broadcasts to ``expected`` (a marginal, mask or
    potential of a problem whose cost has shape ``cost_shape``); torch would raise a bare `RuntimeError` later."""
    try:
        fits = tuple(torch.broadcast_shapes(tensor.shape, expected)) == tuple(expected)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}, which does not broadcast to {tuple(expected)} as the cost of "
            f"shape {tuple(cost_shape)} needs; give it shape (..., {expected[-1]}) with leading dims that broadcast "
            f"to the cost's batch dims {tuple(cost_shape[:-2])}."
        )


def masked_cost(cost: torch.Tensor, row_mask: torch.Tensor | None, col_mask: torch.Tensor | None) -> torch.Tensor:
    """Replace the cost of masked entries by 0 (their mass is zero anyway), shape ``(..., n, m)``.

    Padding may hold anything, NaN included; :func:`check_cost_values` then checks the valid entries only."""
    valid = None
    if row_mask is not None:
        valid = row_mask.to(device=cost.device, dtype=torch.bool)[..., :, None]
    if col_mask is not None:
        col = col_mask.to(device=cost.device, dtype=torch.bool)[..., None, :]
        valid = col if valid is None else valid & col
    if valid is not None:
        cost = torch.where(valid, cost, torch.zeros((), dtype=cost.dtype, device=cost.device))
    return cost


def check_cost_values(solver: str, cost: torch.Tensor, epsilon: float) -> None:
    """Reject NaN/inf entries and a log-kernel ``cost / epsilon`` too large for the compute dtype, in one pass.

    One ``aminmax`` reads the cost once: NaN propagates into both extremes and an infinity becomes one of them, so
    finite extremes prove every entry finite; only then is an error located entry by entry. The log-domain iterates
    add up to about four terms of the kernel's size (kernel, ``f``, ``g``, ``h``), so ``max |C| / epsilon`` must stay
    below 1/16 of the largest float."""
    if cost.numel() == 0:
        return
    low, high = (value.item() for value in torch.aminmax(cost))
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = ~torch.isfinite(cost)
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"cost has {int(bad.sum())} NaN or inf entries in valid (unmasked) positions, the first at index {first}; "
            f"fix the cost there, or mark padding with row_mask/col_mask (masked entries may hold anything)."
        )
    limit = torch.finfo(cost.dtype).max / 16
    largest = max(abs(low), abs(high))
    if largest / epsilon > limit:
        raise ValueError(
            f"{solver}: the cost is too large for {cost.dtype}: max |cost| / epsilon = {largest:.3g} / {epsilon:g} "
            f"exceeds {limit:.3g}, so the log-domain solve cannot be represented. Normalise the cost (e.g. "
            f"normalization='batch_max' or divide by its maximum), raise epsilon, or pass a float64 cost."
        )


def prepare_problem(
    a: torch.Tensor | None,
    b: torch.Tensor | None,
    cost: torch.Tensor,
    epsilon: float,
    row_mask: torch.Tensor | None,
    col_mask: torch.Tensor | None,
    solver: str = "sinkhorn",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Validate one OT problem and bring it to the solvers' form (call inside :func:`autocast_disabled`).

    Checks, before any computation: shapes (``a``, ``row_mask`` broadcast to ``(..., n)``, ``b``, ``col_mask`` to
    ``(..., m)``), ``epsilon``, finite valid cost entries and a log-kernel ``cost / epsilon`` representable in the
    compute dtype (see :func:`check_cost_values`).

    Returns the cost in the compute dtype with masked entries zeroed ``(..., n, m)``, the log-marginals ``(..., n)``
    and ``(..., m)`` (``-inf`` on masked entries) and ``epsilon`` as a float.
    """
    check_cost(cost)
    epsilon = check_epsilon(epsilon)
    batch_shape, (n, m) = cost.shape[:-2], cost.shape[-2:]
    for name, tensor, size in (("a", a, n), ("b", b, m), ("row_mask", row_mask, n), ("col_mask", col_mask, m)):
        if tensor is not None:
            check_broadcasts(name, torch.as_tensor(tensor), (*batch_shape, size), cost.shape)
    dtype = compute_dtype(cost)
    cost = masked_cost(cost.to(dtype), row_mask, col_mask)
    check_cost_values(solver, cost, epsilon)
    log_a = log_marginal(a, row_mask, batch_shape, n, dtype, cost.device, "a")
    log_b = log_marginal(b, col_mask, batch_shape, m, dtype, cost.device, "b")
    return cost, log_a, log_b, epsilon


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with the denominator clamped at the smallest normal number, so that zero-mass
    (masked) entries give 0 rather than NaN, also in the backward pass."""
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny)


def matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """Batched ``matrix @ vector``: ``(..., n, m) x (..., m) -> (..., n)``.

    A single problem goes through ``torch.mv``: on CPU an ``(n, m) @ (m, 1)`` matmul takes a GEMM path that was measured
    about 100x slower per call at n = m = 256.
    """
    if matrix.dim() == 2:
        return torch.mv(matrix, vector)
    return (matrix @ vector[..., None])[..., 0]


def scalings_are_safe(*scalings: torch.Tensor) -> bool:
    """Whether scaling vectors stayed non-negative, finite and within float range (else the caller falls back to the
    log domain)."""
    limit = torch.finfo(scalings[0].dtype).max ** 0.5
    return all(bool(((s >= 0) & (s < limit)).all()) for s in scalings)
