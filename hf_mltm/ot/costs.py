r"""Ground costs between two point sets, built from matrix products (never from ``(n, m, d)`` difference tensors).

``x`` has shape ``(..., n, d)``, ``y`` shape ``(..., m, d)``; every cost returns shape ``(..., n, m)``.

The Mahalanobis cost is :math:`c(x, y) = \sqrt{(x - y)^\top M (x - y)}` with ``M`` positive semi-definite. With
``M = L^\top L`` it is the Euclidean distance between ``x L^\top`` and ``y L^\top``, which costs ``O((n + m) d r + n m r)``
for ``L`` of shape ``(r, d)``; the public m-LTM code instead materialises ``(b, b, d)`` tensors and, through an
einsum with a repeated index, only ever reads ``diag(M)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

MetricParametrization = Literal["diagonal", "full", "lowrank", "projected"]


def sq_euclidean_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``||x_i - y_j||^2``, clamped at 0 against rounding, shape ``(..., n, m)``."""
    x_sq = x.pow(2).sum(-1)[..., :, None]
    y_sq = y.pow(2).sum(-1)[..., None, :]
    # In place on the fresh matmul output: one (n, m) buffer instead of four (the matmul's backward needs only x, y).
    return (x @ y.transpose(-1, -2)).mul_(-2).add_(x_sq).add_(y_sq).clamp_min_(0)


class EuclideanDistance(torch.autograd.Function):
    r"""``||x_i - y_j||`` ``(..., n, m)`` from ``x`` ``(..., n, d)`` and ``y`` ``(..., m, d)``, with a hand-written backward.

    Forward: one matrix product with the squared norms folded in, then the clamp at 0 (rounding) and the square root
    in place: three passes over the ``(n, m)`` output. Backward: with ``W = G / D`` (0 where ``D = 0``: the square
    root's derivative is infinite there, and the gradient is taken as 0, so coincident points get value 0 and
    gradient 0),

    .. math:: \partial x_i = x_i \textstyle\sum_j W_{ij} - (W y)_i, \qquad \partial y_j = y_j \sum_i W_{ij} - (W^\top x)_j

    i.e. one ``(n, m)`` buffer and two matrix products, where autograd through the norms, the clamp and the square
    root would make about ten passes over ``(n, m)`` matrices. NaN inputs give NaN values and gradients.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_sq, y_sq = x.pow(2).sum(-1), y.pow(2).sum(-1)
        if x.dim() == 2:
            squared = torch.addmm(y_sq[None, :], x, y.T, alpha=-2)
        else:
            squared = (x @ y.transpose(-1, -2)).mul_(-2).add_(y_sq[..., None, :])
        distance = squared.add_(x_sq[..., :, None]).clamp_min_(0).sqrt_()
        ctx.has_zero = bool(distance.amin() == 0) if distance.numel() else False
        ctx.save_for_backward(x, y, distance)
        return distance

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, y, distance = ctx.saved_tensors
        weight = torch.div(grad, distance)
        if ctx.has_zero:
            weight.masked_fill_(distance == 0, 0.0)
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = _rows_times_points_minus(weight.sum(-1), x, weight, y)
        if ctx.needs_input_grad[1]:
            grad_y = _rows_times_points_minus(weight.sum(-2), y, weight.transpose(-1, -2), x)
        return grad_x, grad_y


def _rows_times_points_minus(
    row_weights: torch.Tensor, points: torch.Tensor, weight: torch.Tensor, other: torch.Tensor
) -> torch.Tensor:
    """``row_weights[..., None] * points - weight @ other``, shape ``(..., n, d)`` (one fused GEMM for 2-D inputs)."""
    if weight.dim() == 2:
        return torch.addmm(row_weights[:, None] * points, weight, other, alpha=-1)
    return row_weights[..., None] * points - weight @ other


def _safe_sqrt(squared: torch.Tensor) -> torch.Tensor:
    # sqrt has an infinite derivative at 0 (identical points); give those entries value 0 and gradient 0.
    # Test for == 0 (not > 0) so that NaN inputs stay NaN instead of silently becoming distance 0.
    root = squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt_()  # in place on the clamp's own output
    return torch.where(squared == 0, 0.0, root)


def euclidean_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``||x_i - y_j||``, shape ``(..., n, m)``; the gradient is 0 (not NaN) at coincident points.

    Inputs of the same shape prefix and dtype go through :class:`EuclideanDistance` (hand-written backward); others
    (broadcast batch dimensions, mixed dtypes) through autograd."""
    if x.dim() >= 2 and x.shape[:-2] == y.shape[:-2] and x.dtype == y.dtype and x.is_floating_point():
        return EuclideanDistance.apply(x, y)
    return _safe_sqrt(sq_euclidean_cost(x, y))


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_i, y_j)``, in ``[0, 2]``, shape ``(..., n, m)``."""
    return 1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-1, -2)


def mahalanobis_cost(
    x: torch.Tensor,
    y: torch.Tensor,
    factor: torch.Tensor | None = None,
    *,
    matrix: torch.Tensor | None = None,
    squared: bool = False,
) -> torch.Tensor:
    """Mahalanobis distances ``sqrt((x_i - y_j)^T M (x_i - y_j))``, shape ``(..., n, m)``.

    Args:
        x (`torch.Tensor` of shape `(..., n, d)`), y (`torch.Tensor` of shape `(..., m, d)`): the points.
        factor (`torch.Tensor` of shape `(r, d)` or `(d,)`): ``L`` with ``M = L^T L`` (PSD by construction); a vector
            is the square root of a diagonal ``M``.
        matrix (`torch.Tensor` of shape `(d, d)`): ``M`` itself, used when no factor is given (e.g. a projected-gradient
            parametrisation). Only its symmetric part matters; it must be PSD for the square root to be meaningful
            (negative quadratic forms are clamped to 0).
        squared (`bool`): return the quadratic form without the square root.
    """
    if (factor is None) == (matrix is None):
        raise ValueError("mahalanobis_cost needs exactly one of `factor` (M = L^T L) or `matrix` (M).")
    if factor is not None:
        if factor.dim() == 1:
            x_proj, y_proj = x * factor, y * factor
        else:
            x_proj, y_proj = x @ factor.transpose(-1, -2), y @ factor.transpose(-1, -2)
        if not squared:
            return euclidean_cost(x_proj, y_proj)
        quadratic = sq_euclidean_cost(x_proj, y_proj)
    else:
        sym = (matrix + matrix.transpose(-1, -2)) / 2
        x_m = x @ sym  # (..., n, d)
        cross = x_m @ y.transpose(-1, -2)  # (..., n, m)
        x_quad = (x_m * x).sum(-1)[..., :, None]
        y_quad = ((y @ sym) * y).sum(-1)[..., None, :]
        quadratic = (x_quad + y_quad - 2 * cross).clamp_min(0)
    return quadratic if squared else _safe_sqrt(quadratic)


def project_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of a square matrix onto the PSD cone: symmetrise, then clamp eigenvalues at 0.

    This is the projection the m-LTM paper intends; its public code clamps *singular* values, which are never
    negative, so it leaves the matrix unchanged.
    """
    sym = (matrix + matrix.transpose(-1, -2)) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(sym)
    return (eigenvectors * eigenvalues.clamp_min(0)[..., None, :]) @ eigenvectors.transpose(-1, -2)


def paper_initial_matrix(dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The m-LTM initialisation ``M = PSD((A + A^T) / 2 + I)`` with ``A`` standard normal scaled by ``1/sqrt(d)``
    (so that the perturbation has spectral norm O(1) whatever ``dim``), shape ``(d, d)``, float32."""
    noise = torch.randn(dim, dim, generator=generator) / math.sqrt(dim)
    return project_psd((noise + noise.T) / 2 + torch.eye(dim))


def _psd_factor(matrix: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """A factor ``L`` (``rank x d``) with ``L^T L`` the best rank-``rank`` PSD approximation of ``matrix``."""
    eigenvalues, eigenvectors = torch.linalg.eigh(project_psd(matrix))
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    if rank is not None:
        eigenvalues, eigenvectors = eigenvalues[:rank], eigenvectors[:, :rank]
    return eigenvalues.clamp_min(0).sqrt()[:, None] * eigenvectors.T


class MahalanobisMetric(nn.Module):
    """A learned Mahalanobis ground metric ``c(x, y) = sqrt((x - y)^T M (x - y))`` with ``M`` PSD.

    Parametrisations of ``M`` (all PSD by construction except ``projected``):

    - ``"diagonal"``: ``M = diag(softplus(w))``, ``d`` parameters.
    - ``"full"``: ``M = L^T L`` with ``L`` of shape ``(d, d)``.
    - ``"lowrank"``: ``M = L^T L`` with ``L`` of shape ``(rank, d)``.
    - ``"projected"``: ``M`` is the parameter itself, as in the paper; call :meth:`project_` after every optimizer step
      (an eigenvalue projection of the symmetric part). Between steps ``M`` may leave the cone; the cost clamps
      negative quadratic forms to 0.

    Args:
        dim (`int`): embedding dimension ``d``.
        parametrization (`str`): one of the above.
        rank (`int`, *optional*): rank ``r`` for ``"lowrank"``.
        init (`str`): ``"identity"`` (``M = I``; for ``"lowrank"``, ``r`` random orthonormal directions scaled by
            ``sqrt(d / r)`` so that ``trace(M) = d``) or ``"paper"`` (:func:`paper_initial_matrix`, truncated to rank
            ``r`` for ``"lowrank"``, and its diagonal for ``"diagonal"``).

    Example:
        >>> import torch
        >>> metric = MahalanobisMetric(4, "full")
        >>> metric(torch.zeros(2, 4), torch.ones(3, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        dim: int,
        parametrization: MetricParametrization = "full",
        rank: int | None = None,
        init: Literal["identity", "paper"] = "identity",
    ) -> None:
        super().__init__()
        if parametrization not in ("diagonal", "full", "lowrank", "projected"):
            raise ValueError(
                f"Unknown metric parametrization {parametrization!r}; use 'diagonal', 'full', 'lowrank' or 'projected'."
            )
        if init not in ("identity", "paper"):
            raise ValueError(f"Unknown metric init {init!r}; use 'identity' or 'paper'.")
        if parametrization == "lowrank" and (rank is None or not 1 <= rank <= dim):
            raise ValueError(f"'lowrank' needs 1 <= rank <= dim={dim}, got rank={rank}.")
        self.dim, self.parametrization, self.init = dim, parametrization, init
        self.rank = rank if parametrization == "lowrank" else None
        shape = {"diagonal": (dim,), "full": (dim, dim), "lowrank": (rank, dim), "projected": (dim, dim)}
        self.weight = nn.Parameter(torch.empty(shape[parametrization]))
        if not self.weight.is_meta:  # models built on the meta device initialise it later (transformers' _init_weights)
            self.reset_parameters()

    @torch.no_grad()
    def initial_weight(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """The initial value of ``weight`` according to ``init`` (float32, on the CPU)."""
        d = self.dim
        if self.parametrization == "diagonal":
            target = torch.ones(d) if self.init == "identity" else paper_initial_matrix(d, generator).diagonal()
            return target + torch.log(-torch.expm1(-target))  # inverse softplus
        if self.init == "paper":
            matrix = paper_initial_matrix(d, generator)
            return matrix if self.parametrization == "projected" else _psd_factor(matrix, self.rank)
        if self.parametrization == "lowrank":
            directions, _ = torch.linalg.qr(torch.randn(d, self.rank, generator=generator))
            return directions.T * math.sqrt(d / self.rank)
        return torch.eye(d)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """(Re-)initialise ``weight`` with :meth:`initial_weight`."""
        self.weight.copy_(self.initial_weight(generator).to(self.weight.dtype))

    def factor(self) -> torch.Tensor | None:
        """``L`` with ``M = L^T L``: shape ``(d,)`` (diagonal square roots), ``(d, d)`` or ``(r, d)``; `None` for
        ``"projected"``."""
        if self.parametrization == "diagonal":
            return F.softplus(self.weight).sqrt()
        if self.parametrization == "projected":
            return None
        return self.weight

    def matrix(self) -> torch.Tensor:
        """``M``, shape ``(d, d)``."""
        if self.parametrization == "diagonal":
            return torch.diag(F.softplus(self.weight))
        if self.parametrization == "projected":
            return self.weight
        return self.weight.T @ self.weight

    @torch.no_grad()
    def project_(self) -> None:
        """Project ``M`` onto the PSD cone in place (``"projected"`` only; the other parametrisations need none)."""
        if self.parametrization == "projected":
            self.weight.copy_(project_psd(self.weight))

    def forward(self, x: torch.Tensor, y: torch.Tensor, squared: bool = False) -> torch.Tensor:
        """Cost matrix of shape ``(..., n, m)`` between ``x`` ``(..., n, d)`` and ``y`` ``(..., m, d)``, computed in the
        metric's dtype (float32 under autocast)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = x.to(self.weight.dtype), y.to(self.weight.dtype)
            factor = self.factor()
            if factor is None:
                return mahalanobis_cost(x, y, matrix=self.weight, squared=squared)
            return mahalanobis_cost(x, y, factor, squared=squared)

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.parametrization == "lowrank" else ""
        return f"dim={self.dim}, parametrization={self.parametrization!r}{rank}, init={self.init!r}"
