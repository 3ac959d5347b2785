r"""The vector space a gallery index searches in, chosen so that nearest neighbours are exact for the model's cost.

Letters: ``N`` gallery items, ``q`` queries, ``d`` the model's joint dimension, ``r`` the index dimension.

An m-LTM model (`MLTMAudioTextModel`) ranks by its ground cost ``C(x, y)`` between embeddings (``pairwise_cost``):

- learned Mahalanobis metric (OT losses, ``metric_type`` ``diagonal``/``full``/``lowrank``/``projected``):
  :math:`C(x, y) = \sqrt{(x - y)^\top M (x - y)}` with :math:`M = L^\top L`. Since
  :math:`(x - y)^\top L^\top L (x - y) = \lVert x L^\top - y L^\top \rVert^2`, the cost is the Euclidean distance
  between the *transformed* vectors ``x L^T`` ``(r,)``. The index stores ``y L^T`` and searches by L2, so its
  neighbours are exactly the model's (``C = sqrt(L2^2)``; the square root is monotone);
- plain Euclidean metric (``metric_type="euclidean"``): ``L = I``;
- InfoNCE / triplet baselines: :math:`C = 1 - \cos(x, y)`, so the index stores L2-normalised vectors and searches by
  inner product (``C = 1 - IP``).

The transform lives inside the faiss index (an ``IndexPreTransform``: a ``LinearTransform`` by ``L`` or a
``NormalizationTransform``), so the gallery keeps the model's own embeddings and queries are given in model space.

Image-text OMIT models score every image-caption pair jointly by fragment OT: that score is not a distance between
two vectors, so no vector index is exact for it, and `IndexSpace.from_model` refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F

from hf_mltm.ot.costs import euclidean_cost, project_psd

__all__ = ["SPACE_KINDS", "IndexSpace"]

SPACE_KINDS = ("mahalanobis", "euclidean", "cosine")
# A "projected" metric whose most negative eigenvalue is below -tol * the largest one is not PSD: its cost (which
# clamps negative quadratic forms to 0) is not a distance between transformed vectors.
_PSD_TOLERANCE = 1e-5


@dataclass(frozen=True)
class IndexSpace:
    """How a model's cost between embeddings becomes a faiss search (see the module docstring).

    Attributes:
        kind (`str`): ``"mahalanobis"`` (L2 after ``x L^T``), ``"euclidean"`` (L2) or ``"cosine"`` (inner product of
            normalised vectors).
        dim (`int`): ``d``, the dimension of the model's embeddings.
        transform (`torch.Tensor` of shape `(r, d)` or `None`): ``L`` (float32, CPU) for ``"mahalanobis"``; a diagonal
            metric's ``(d,)`` factor is stored as ``diag(L)``.
    """

    kind: Literal["mahalanobis", "euclidean", "cosine"]
    dim: int
    transform: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in SPACE_KINDS:
            raise ValueError(f"IndexSpace: kind={self.kind!r} is not one of {SPACE_KINDS}.")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"IndexSpace: dim must be a positive int, got {self.dim!r}.")
        if (self.kind == "mahalanobis") != (self.transform is not None):
            raise ValueError(
                f"IndexSpace: kind={self.kind!r} {'needs' if self.kind == 'mahalanobis' else 'takes no'} transform "
                f"(the metric factor L of shape (r, d))."
            )
        if self.transform is not None:
            transform = self.transform
            if not isinstance(transform, torch.Tensor) or transform.dim() != 2 or transform.shape[1] != self.dim:
                shape = tuple(transform.shape) if isinstance(transform, torch.Tensor) else type(transform).__name__
                raise ValueError(f"IndexSpace: transform must be a (r, d={self.dim}) tensor, got {shape}.")
            if not bool(torch.isfinite(transform).all()):
                raise ValueError("IndexSpace: transform (the metric factor L) holds NaN or inf; check the model.")
            object.__setattr__(self, "transform", transform.detach().to("cpu", torch.float32).contiguous())

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> IndexSpace:
        """The space in which L2 / inner-product neighbours are exactly the model's ``pairwise_cost`` neighbours.

        Args:
            model (`MLTMAudioTextModel`): an audio-text model (``model_type="mltm_audio_text"``).

        Returns:
            `IndexSpace`.

        Raises:
            ValueError: another model type (OMIT scores pairs by fragment OT, which no vector index reproduces), or a
                ``"projected"`` metric that is not positive semi-definite (call ``model.metric.project_()``).
        """
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type != "mltm_audio_text":
            raise ValueError(
                f"the gallery index needs a model that ranks by a cost between embeddings (model_type "
                f"'mltm_audio_text'), got model_type={model_type!r}. Image-text OMIT models score each image-caption "
                f"pair jointly by fragment OT, which a vector index cannot reproduce exactly."
            )
        dim = int(config.projection_dim)
        if not config.uses_ot_loss:
            return cls("cosine", dim)
        metric = getattr(model, "metric", None)
        if metric is None:
            return cls("euclidean", dim)
        with torch.no_grad():
            factor = metric.factor()
            if factor is None:  # "projected": M itself is the parameter
                factor = _projected_factor(metric.matrix().double())
            elif factor.dim() == 1:
                factor = torch.diag(factor)
        return cls("mahalanobis", dim, factor.float())

    # -- properties -----------------------------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        """``"l2"`` or ``"ip"``: what the faiss index compares."""
        return "ip" if self.kind == "cosine" else "l2"

    @property
    def index_dim(self) -> int:
        """``r``, the dimension of the vectors the faiss index stores."""
        return self.transform.shape[0] if self.transform is not None else self.dim

    # -- maths ----------------------------------------------------------------------------------------------------

    def to_index(self, embeds: torch.Tensor) -> torch.Tensor:
        """Model embeddings ``(n, d)`` -> the vectors the index compares ``(n, r)``, float32.

        Raises:
            ValueError: ``embeds`` is not ``(n, d)`` or holds NaN/inf.
        """
        embeds = self.check_embeddings(embeds, "embeds")
        if self.kind == "mahalanobis":
            return embeds @ self.transform.T  # (n, r)
        if self.kind == "cosine":
            return F.normalize(embeds, dim=-1)
        return embeds

    def index_cost(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's cost ``(n, m)`` between vectors already in index space (`to_index`)."""
        if self.kind == "cosine":
            return 1 - x @ y.T
        return euclidean_cost(x, y)

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's cost ``(n, m)`` between model embeddings ``x`` ``(n, d)`` and ``y`` ``(m, d)``, float32."""
        return self.index_cost(self.to_index(x), self.to_index(y))

    def cost_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """faiss scores -> the model's cost: ``sqrt(max(L2^2, 0))`` (faiss returns squared L2) or ``1 - IP``."""
        scores = np.asarray(scores, dtype=np.float32)
        if self.metric == "ip":
            return 1 - scores
        return np.sqrt(np.maximum(scores, 0))

    def check_embeddings(self, embeds: Any, name: str) -> torch.Tensor:
        """``embeds`` as a float32 CPU tensor ``(n, d)``, or a `ValueError` naming ``name``."""
        if isinstance(embeds, np.ndarray):
            embeds = torch.from_numpy(embeds)
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2 or embeds.shape[1] != self.dim:
            shape = tuple(embeds.shape) if hasattr(embeds, "shape") else type(embeds).__name__
            raise ValueError(f"{name} must be a (n, d={self.dim}) array of model embeddings, got {shape}.")
        embeds = embeds.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(embeds).all()):
            bad = (~torch.isfinite(embeds)).any(1).nonzero()[:5, 0].tolist()
            raise ValueError(f"{name} holds NaN or inf in rows {bad}; fix the model or its inputs for those rows.")
        return embeds

    def faiss_transform(self):
        """The faiss ``VectorTransform`` applied before the index (`None` for ``"euclidean"``)."""
        import faiss

        if self.kind == "mahalanobis":
            rows, dim = self.transform.shape
            linear = faiss.LinearTransform(dim, rows, False)
            faiss.copy_array_to_vector(self.transform.numpy().reshape(-1), linear.A)
            linear.is_trained = True
            return linear
        if self.kind == "cosine":
            return faiss.NormalizationTransform(self.dim, 2.0)
        return None

    # -- serialisation --------------------------------------------------------------------------------------------

    def to_manifest(self) -> dict[str, Any]:
        """The JSON-able part (the transform is stored separately, as a tensor)."""
        return {"kind": self.kind, "dim": self.dim, "index_dim": self.index_dim, "metric": self.metric}

    @classmethod
    def from_manifest(cls, entry: Any, transform: torch.Tensor | None, where: str) -> IndexSpace:
        """Inverse of `to_manifest`; ``where`` names the manifest in error messages."""
        if not isinstance(entry, dict) or "kind" not in entry or "dim" not in entry:
            raise ValueError(f"{where}: field 'space' must be an object with 'kind' and 'dim', got {entry!r}.")
        try:
            return cls(entry["kind"], entry["dim"], transform)
        except ValueError as error:
            raise ValueError(f"{where}: field 'space': {error}") from error


def _projected_factor(matrix: torch.Tensor) -> torch.Tensor:
    """``L`` ``(d, d)`` with ``L^T L = M`` for a PSD ``M`` (float64 eigendecomposition)."""
    sym = (matrix + matrix.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(sym)
    largest = eigenvalues.abs().max().clamp_min(torch.finfo(sym.dtype).tiny)
    if eigenvalues.min() < -_PSD_TOLERANCE * largest:
        raise ValueError(
            f"the model's 'projected' metric M is not positive semi-definite (smallest eigenvalue "
            f"{eigenvalues.min().item():.3g}, largest {eigenvalues.max().item():.3g}), so its cost is no distance "
            f"between vectors; call model.metric.project_() (as the trainer does after every step) before indexing."
        )
    eigenvalues, eigenvectors = torch.linalg.eigh(project_psd(sym))
    return eigenvalues.clamp_min(0).sqrt()[:, None] * eigenvectors.T
