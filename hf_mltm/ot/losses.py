r"""Matching losses on a batch of paired embeddings: m-LTM (balanced and partial OT) and the usual baselines.

Every loss takes a square ``(b, b)`` matrix whose entry ``(i, j)`` compares item ``i`` of the first modality with
item ``j`` of the second; the diagonal holds the true pairs. ``item_ids`` (shape ``(b,)``, any integer labels)
marks rows that are the same underlying item (e.g. the same clip with several captions in one batch): all pairs
``(i, j)`` with ``item_ids[i] == item_ids[j]`` then count as positives, never as negatives.

m-LTM (Luong et al., ICLR 2024, Eq. 5-6): with ``P*`` the entropic OT plan of the cost matrix and ``T`` the
ground-truth matching (``I / b`` without duplicates),

.. math:: \mathcal{L} = \mathrm{KL}(T \,\|\, P^\star) = \sum_{ij} T_{ij} \log T_{ij} - \sum_{ij} T_{ij} \log P^\star_{ij}

which equals the paper's ``-(1/b) sum_i log P*_ii`` up to the constant ``-log b``. One half-iteration of Sinkhorn
would make this InfoNCE with temperature ``epsilon`` on ``-C``; the full solve makes ``P*`` doubly stochastic.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ._utils import compute_dtype
from .autograd import PartialSinkhornKLLoss, SinkhornKLLoss, kl_to_plan
from .partial import partial_sinkhorn
from .sinkhorn import sinkhorn

CostNormalization = Literal["none", "batch_max"]
Gradient = Literal["implicit", "unrolled"]


def duplicate_aware_target(
    item_ids: torch.Tensor | None, size: int, *, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """The ground-truth coupling ``T`` of shape ``(b, b)`` with uniform marginals ``1/b``.

    Without duplicates ``T = I / b``. A group of ``k`` rows sharing an item id shares its mass over the ``k x k``
    block: ``T_ij = 1 / (b k)`` for every pair in the group, so row and column sums stay ``1/b``.
    """
    if item_ids is None:
        return torch.eye(size, dtype=dtype, device=device) / size
    item_ids = torch.as_tensor(item_ids, device=device)
    if item_ids.shape != (size,):
        raise ValueError(f"item_ids must have shape ({size},) to match the batch, got {tuple(item_ids.shape)}.")
    same = (item_ids[:, None] == item_ids[None, :]).to(dtype)  # (b, b)
    return same / (same.sum(-1, keepdim=True) * size)


def normalize_cost(
    cost: torch.Tensor, normalization: CostNormalization, *, detach_scale: bool = False
) -> torch.Tensor:
    """Normalise a cost ``(..., n, m)`` per problem before the OT solve.

    Args:
        cost (`torch.Tensor` of shape `(..., n, m)`): the cost.
        normalization (`str`): ``"none"`` returns the cost unchanged. ``"batch_max"`` divides each problem by its
            largest entry (the reference code's choice) **when that maximum is positive**; a problem whose maximum is
            0 or negative (an all-zero cost, or a cost such as ``-similarity``) is left unscaled, since dividing by it
            would give NaN/inf or flip the sign of the cost (which turns the OT plan into its opposite).
        detach_scale (`bool`, defaults to `False`): with ``"batch_max"``, treat the maximum as a constant. By default
            (the reference code) the maximum entry receives gradient too: moving the farthest pair moves every
            normalised entry. Detached, ``epsilon`` stays relative to a cost in ``[0, 1]`` but the loss no longer
            pushes on that one entry (``docs/results.md`` section 6 measures both).

    Returns:
        `torch.Tensor` of shape `(..., n, m)`: the cost divided by the per-problem scale (maximum or 1).
    """
    if normalization == "none":
        return cost
    if normalization == "batch_max":
        scale = cost.amax(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
        if detach_scale:
            scale = scale.detach()
        # where() keeps the gradient away from a maximum that is not used (and from the clamp's 1 / tiny).
        positive = scale > 0
        return cost / torch.where(positive, scale, torch.ones_like(scale))
    raise ValueError(f"Unknown cost normalization {normalization!r}; use 'none' or 'batch_max'.")


def _check_square(matrix: torch.Tensor, name: str) -> int:
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise ValueError(f"{name} must be a square (..., b, b) matrix of paired items, got shape {tuple(matrix.shape)}.")
    return matrix.shape[-1]


def _checked_target(cost: torch.Tensor, item_ids: torch.Tensor | None, dense: bool = True) -> torch.Tensor | None:
    """The ground-truth coupling of a square ``(..., b, b)`` cost, expanded to its shape in the solver's dtype, after
    checking the shapes; `None` for the identity coupling when ``dense`` is false and there are no ``item_ids``."""
    size = _check_square(cost, "cost")
    if item_ids is not None and torch.as_tensor(item_ids).shape != (size,):
        raise ValueError(
            f"item_ids has shape {tuple(torch.as_tensor(item_ids).shape)} but the cost of shape {tuple(cost.shape)} "
            f"pairs a batch of {size} items; pass one id per row, shape ({size},)."
        )
    if item_ids is None and not dense:
        return None
    return duplicate_aware_target(item_ids, size, dtype=compute_dtype(cost), device=cost.device).expand_as(cost)


def _cost_and_target(
    cost: torch.Tensor, normalization: CostNormalization, item_ids: torch.Tensor | None, detach_scale: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised ``(..., b, b)`` cost and the ground-truth coupling in the solver's dtype."""
    target = _checked_target(cost, item_ids)
    return normalize_cost(cost, normalization, detach_scale=detach_scale), target


def mltm_loss(
    cost: torch.Tensor,
    epsilon: float = 0.05,
    *,
    item_ids: torch.Tensor | None = None,
    normalization: CostNormalization = "none",
    detach_scale: bool = False,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    gradient: Gradient = "implicit",
) -> torch.Tensor:
    """m-LTM loss ``KL(T || P*)`` on a batch cost matrix, averaged over leading batch dimensions.

    Args:
        cost (`torch.Tensor` of shape `(..., b, b)`): ground cost between the two modalities' embeddings.
        epsilon (`float`): entropic regularisation relative to the (normalised) cost; the paper uses 0.05.
        item_ids (`torch.Tensor` of shape `(b,)`, *optional*): duplicate-aware target (see
            :func:`duplicate_aware_target`).
        normalization (`str`): ``"batch_max"`` (paper) or ``"none"``; see :func:`normalize_cost`.
        detach_scale (`bool`): no gradient through the ``"batch_max"`` scale (see :func:`normalize_cost`).
        max_iter, tol, check_every: Sinkhorn settings (see :func:`hf_mltm.ot.sinkhorn`).
        gradient (`str`): ``"implicit"`` (closed form ``(T - P*) / epsilon``, Sinkhorn under ``no_grad``) or
            ``"unrolled"`` (autograd through every iteration; for verification only).

    Numerics: Sinkhorn runs in float32 (float64 for float64 costs) even under autocast; the loss is computed from the
    log-domain potentials (:class:`hf_mltm.ot.SinkhornKLLoss`), so it stays finite at small ``epsilon`` where the
    plan's entries underflow. Memory O(b^2).
    """
    if gradient == "implicit":
        # The Function normalises, solves and differentiates in one step (no normalised copy of the cost, no log-plan).
        target = _checked_target(cost, item_ids, dense=False)
        loss = SinkhornKLLoss.apply(cost, target, float(epsilon), max_iter, tol, check_every, normalization,
                                    detach_scale)
    elif gradient == "unrolled":
        cost, target = _cost_and_target(cost, normalization, item_ids, detach_scale)
        result = sinkhorn(target.sum(-1), target.sum(-2), cost, epsilon, max_iter=max_iter, tol=tol,
                          check_every=check_every)
        loss = kl_to_plan(target, result.log_plan)
    else:
        raise ValueError(f"Unknown gradient mode {gradient!r}; use 'implicit' or 'unrolled'.")
    return loss.mean()


def mltm_partial_loss(
    cost: torch.Tensor,
    epsilon: float = 0.05,
    mass: float = 0.9,
    *,
    item_ids: torch.Tensor | None = None,
    normalization: CostNormalization = "none",
    detach_scale: bool = False,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    gradient: Gradient = "implicit",
) -> torch.Tensor:
    """m-LTM with partial OT: ``KL(T || P*_s)`` where ``P*_s`` transports only ``mass`` ``s`` in ``(0, 1]`` (uniform
    capacities ``1/b``), so that mismatched pairs can stay untransported. ``mass=1`` is :func:`mltm_loss`.

    The implicit gradient solves the active-set KKT system once per problem (see
    :class:`hf_mltm.ot.autograd.PartialSinkhornKLLoss`). Arguments as in :func:`mltm_loss`.
    """
    if not 0 < float(mass) <= 1:
        raise ValueError(f"mass must be in (0, 1] (a fraction of the batch's total mass), got {mass}.")
    cost, target = _cost_and_target(cost, normalization, item_ids, detach_scale)
    if gradient == "implicit":
        loss = PartialSinkhornKLLoss.apply(cost, target, float(epsilon), float(mass), None, None, max_iter, tol,
                                           check_every)
    elif gradient == "unrolled":
        result = partial_sinkhorn(None, None, cost, epsilon, mass, max_iter=max_iter, tol=tol, check_every=check_every)
        loss = kl_to_plan(target, result.log_plan, mass)
    else:
        raise ValueError(f"Unknown gradient mode {gradient!r}; use 'implicit' or 'unrolled'.")
    return loss.mean()


def _soft_targets(item_ids: torch.Tensor | None, size: int, device, dtype) -> torch.Tensor:
    """Row-stochastic targets ``(b, b)``: one-hot on the diagonal, spread over duplicates when ``item_ids`` is given."""
    return duplicate_aware_target(item_ids, size, dtype=dtype, device=device) * size


def contrastive_loss(
    similarity: torch.Tensor, temperature: float | torch.Tensor = 0.07, *, item_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP/NT-Xent) on a ``(b, b)`` similarity matrix.

    ``(CE(S / tau, targets) + CE(S^T / tau, targets)) / 2``; ``temperature`` may be a tensor (learnable). With
    ``item_ids``, the target distribution of a row is uniform over its duplicates.
    """
    size = _check_square(similarity, "similarity")
    logits = similarity / temperature
    targets = _soft_targets(item_ids, size, similarity.device, logits.dtype)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2


def contrastive_entropy_loss(
    similarity: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
    entropy_weight: float = 0.1,
    *,
    item_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE plus an entropic regulariser (the m-LTM paper's Table 7 baseline, as we read it).

    ``contrastive_loss - entropy_weight * (H(softmax rows) + H(softmax columns)) / 2``: the same entropy bonus that
    entropic OT adds (``- epsilon H(P)``), but on the one-sided softmax instead of a doubly stochastic plan, which
    isolates the effect of the Sinkhorn normalisation.
    """
    _check_square(similarity, "similarity")
    logits = similarity / temperature
    log_rows, log_cols = logits.log_softmax(-1), logits.log_softmax(0)
    entropy_rows = -(log_rows.exp() * log_rows).sum(-1).mean()
    entropy_cols = -(log_cols.exp() * log_cols).sum(0).mean()
    return contrastive_loss(similarity, temperature, item_ids=item_ids) - entropy_weight * (entropy_rows + entropy_cols) / 2


def triplet_loss(
    similarity: torch.Tensor,
    margin: float = 0.2,
    *,
    hardest_negative: bool = True,
    item_ids: torch.Tensor | None = None,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Bidirectional hinge triplet loss (VSE / VSE++) on a ``(b, b)`` similarity matrix.

    For each positive pair ``(i, i)`` and negative ``j``: ``[margin - S_ii + S_ij]_+`` (row direction) and
    ``[margin - S_ii + S_ji]_+`` (column direction). ``hardest_negative=True`` keeps only the largest violation per
    anchor (VSE++), ``False`` sums over negatives (VSE). Duplicates of the anchor are never negatives. The result is
    the sum over both directions, averaged (``"mean"``) or summed (``"sum"``, as in VSE++) over anchors.
    """
    size = _check_square(similarity, "similarity")
    positive = similarity.diagonal()
    same = duplicate_aware_target(item_ids, size, device=similarity.device) > 0  # anchor and its duplicates
    cost_rows = (margin - positive[:, None] + similarity).clamp_min(0).masked_fill(same, 0)
    cost_cols = (margin - positive[None, :] + similarity).clamp_min(0).masked_fill(same, 0)
    if hardest_negative:
        per_anchor = cost_rows.amax(1) + cost_cols.amax(0)
    else:
        per_anchor = cost_rows.sum(1) + cost_cols.sum(0)
    if reduction == "sum":
        return per_anchor.sum()
    if reduction == "mean":
        return per_anchor.mean()
    raise ValueError(f"Unknown reduction {reduction!r}; use 'mean' or 'sum'.")


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE with a fixed or learnable temperature (CLIP's ``logit_scale``, clamped at 100).

    Args:
        temperature (`float`): initial temperature ``tau``.
        learnable (`bool`): learn ``log(1 / tau)``.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        log_scale = torch.tensor(-math.log(temperature))
        if learnable:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale)

    def forward(self, similarity: torch.Tensor, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        return contrastive_loss(similarity, 1 / scale, item_ids=item_ids)
