"""Entropic optimal transport for cross-modal matching: solvers, costs, losses and differentiable plans.

Pure PyTorch with no model knowledge. Shapes: costs ``(..., n, m)``, marginals ``(..., n)`` and ``(..., m)``,
embeddings ``(..., n, d)``; ``epsilon`` is in cost units.

Every solver returns one type, [`OTResult`]: `sinkhorn` and `partial_sinkhorn` (plan, log-plan, potentials),
`fragment_ot_scores` (``value``: the ``(B, C)`` pair scores, ``plan`` on request) and
:func:`hf_mltm.ot.streaming.streaming_sinkhorn` (potentials and ``cost_scale``, no plan). Fields a solver does not
produce are `None`.
"""

from .autograd import PartialSinkhornKLLoss, SinkhornKLLoss, kl_to_plan
from .costs import (
    MahalanobisMetric,
    cosine_cost,
    euclidean_cost,
    mahalanobis_cost,
    paper_initial_matrix,
    project_psd,
    sq_euclidean_cost,
)
from .distributed import all_gather_with_grad, gather_tensor_dict, world_info
from .fragments import FRAGMENT_OT_SCORES_REMOVED, fragment_ot_scores
from .losses import (
    InfoNCELoss,
    contrastive_entropy_loss,
    contrastive_loss,
    duplicate_aware_target,
    mltm_loss,
    mltm_partial_loss,
    normalize_cost,
    triplet_loss,
)
from .partial import partial_sinkhorn
from .result import OTResult
from .sinkhorn import sinkhorn
from .streaming import CostChunks, streaming_sinkhorn

__all__ = [
    "CostChunks",
    "InfoNCELoss",
    "all_gather_with_grad",
    "MahalanobisMetric",
    "OTResult",
    "PartialSinkhornKLLoss",
    "SinkhornKLLoss",
    "contrastive_entropy_loss",
    "contrastive_loss",
    "cosine_cost",
    "duplicate_aware_target",
    "euclidean_cost",
    "fragment_ot_scores",
    "gather_tensor_dict",
    "kl_to_plan",
    "mahalanobis_cost",
    "mltm_loss",
    "mltm_partial_loss",
    "normalize_cost",
    "paper_initial_matrix",
    "partial_sinkhorn",
    "project_psd",
    "sinkhorn",
    "sq_euclidean_cost",
    "streaming_sinkhorn",
    "triplet_loss",
    "world_info",
]


def __getattr__(name: str):
    if name == "FragmentOTScores":
        raise AttributeError(FRAGMENT_OT_SCORES_REMOVED)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
