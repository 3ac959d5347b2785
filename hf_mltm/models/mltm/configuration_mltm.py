"""Configuration of `MLTMAudioTextModel`: an audio tower and a text tower joined by m-LTM (entropic OT) matching."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

import hf_mltm.models.panns  # noqa: F401  (registers the "panns" model type with AutoConfig, the default audio tower)

__all__ = ["MLTMAudioTextConfig"]

TEXT_POOLINGS = ("cls", "mean")
METRIC_TYPES = ("euclidean", "diagonal", "full", "lowrank", "projected")
METRIC_INITS = ("identity", "paper")
LOSS_TYPES = ("mltm", "mltm_partial", "contrastive", "triplet", "contrastive_entropy")
COST_NORMALIZATIONS = ("batch_max", "none")
RANKINGS = ("distance", "ot")
OT_LOSSES = ("mltm", "mltm_partial")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}.")


@strict
class MLTMAudioTextConfig(PreTrainedConfig):
    r"""Configuration of an [`MLTMAudioTextModel`].

    Two towers (any `AutoConfig`) with projection heads ``Linear(hidden, projection_hidden_size) -> ReLU ->
    Linear(projection_hidden_size, projection_dim)`` and L2 normalisation, matched by a ground cost and a loss.
    Defaults follow Luong et al. (ICLR 2024): PANNs ResNet38 without ``fc1`` (as the audio-retrieval code m-LTM
    builds on), BERT-base with [CLS] pooling and dropout 0.2, joint dimension 1024, a full Mahalanobis metric,
    ``ot_epsilon=0.05`` on the batch cost divided by its maximum.

    Args:
        audio_config (`PreTrainedConfig` or `dict`, *optional*): audio tower; default `PannsConfig(variant="resnet38",
            use_fc1=False)`. Any transformers audio model whose output has ``pooler_output`` works (e.g.
            `ClapAudioConfig`, the HTS-AT encoder; `ASTConfig`).
        text_config (`PreTrainedConfig` or `dict`, *optional*): text tower; default `BertConfig()`.
        text_pooling (`str`, defaults to `"cls"`): ``"cls"`` (first token's last hidden state, the paper) or
            ``"mean"`` (mask-aware mean, as sentence-transformers models such as MiniLM are trained).
        text_dropout_prob (`float`, defaults to 0.2): dropout on the pooled text vector (training only).
        projection_hidden_size (`int`, defaults to 2048), projection_dim (`int`, defaults to 1024): projection heads.
        metric_type (`str`, defaults to `"full"`): the ground cost between embeddings. ``"euclidean"`` (no
            parameters), or a learned Mahalanobis ``sqrt((x-y)^T M (x-y))`` with ``M`` ``"diagonal"``, ``"full"``
            (``L^T L``), ``"lowrank"`` (``L^T L``, ``L`` of shape ``(metric_rank, projection_dim)``) or
            ``"projected"`` (the paper's projected gradient: call ``model.project_metric_()`` after every optimizer
            step).
        metric_rank (`int`, *optional*): rank for ``"lowrank"``.
        metric_init (`str`, defaults to `"identity"`): ``"identity"`` or ``"paper"`` (``PSD((A + A^T)/2 + I)``).
        ot_epsilon (`float`, defaults to 0.05): entropic regularisation relative to the (normalised) cost; also the
            scale of the logits (``-cost / ot_epsilon``).
        ot_max_iter (`int`, defaults to 1000), ot_tol (`float`, defaults to 1e-6): Sinkhorn settings.
        loss_type (`str`, defaults to `"mltm"`): ``"mltm"`` (KL to the entropic OT plan), ``"mltm_partial"``
            (partial OT of mass ``partial_ot_mass``), or the baselines ``"contrastive"`` (symmetric InfoNCE),
            ``"triplet"`` (VSE/VSE++ hinge), ``"contrastive_entropy"`` (InfoNCE minus an entropy bonus).
        partial_ot_mass (`float`, defaults to 0.9): transported mass ``s`` in (0, 1] for ``"mltm_partial"``
            (paper: about 0.9 at 20 % noise, 0.8 at 40 %, 0.7 at 60 %).
        cost_normalization (`str`, defaults to `"batch_max"`): divide the training cost by its batch maximum (the
            reference code) or ``"none"``. Logits always use the raw cost.
        ranking (`str`, defaults to `"distance"`): default ranking mode for evaluation, ``"distance"`` or the
            transductive ``"ot"`` (METHOD.md 1.3). Report the two separately.
        contrastive_temperature (`float`, defaults to 0.07), learnable_temperature (`bool`, defaults to `False`):
            InfoNCE temperature for the contrastive baselines.
        triplet_margin (`float`, defaults to 0.2), triplet_hardest_negative (`bool`, defaults to `True`): hinge
            baseline (VSE++ when hardest).
        entropy_weight (`float`, defaults to 0.1): weight of the entropy bonus of ``"contrastive_entropy"``.

    Example:

    ```python
    >>> from hf_mltm.models.mltm import MLTMAudioTextConfig
    >>> config = MLTMAudioTextConfig(metric_type="lowrank", metric_rank=128)
    >>> config.audio_config.model_type, config.text_config.model_type
    ('panns', 'bert')

    ```
    """

    model_type = "mltm_audio_text"
    sub_configs_defaults = {
        "audio_config": SubConfigSpec(
            config_class=AutoConfig, model_type="panns", init_kwargs={"variant": "resnet38", "use_fc1": False}
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    audio_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    text_pooling: str = "cls"
    text_dropout_prob: float | int = 0.2
    projection_hidden_size: int = 2048
    projection_dim: int = 1024
    metric_type: str = "full"
    metric_rank: int | None = None
    metric_init: str = "identity"
    ot_epsilon: float | int = 0.05
    ot_max_iter: int = 1000
    ot_tol: float | int = 1e-6
    loss_type: str = "mltm"
    partial_ot_mass: float | int = 0.9
    cost_normalization: str = "batch_max"
    ranking: str = "distance"
    contrastive_temperature: float | int = 0.07
    learnable_temperature: bool = False
    triplet_margin: float | int = 0.2
    triplet_hardest_negative: bool = True
    entropy_weight: float | int = 0.1
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        _check_choice("text_pooling", self.text_pooling, TEXT_POOLINGS)
        _check_choice("metric_type", self.metric_type, METRIC_TYPES)
        _check_choice("metric_init", self.metric_init, METRIC_INITS)
        _check_choice("loss_type", self.loss_type, LOSS_TYPES)
        _check_choice("cost_normalization", self.cost_normalization, COST_NORMALIZATIONS)
        _check_choice("ranking", self.ranking, RANKINGS)
        if not self.ot_epsilon > 0:
            raise ValueError(f"ot_epsilon must be > 0, got {self.ot_epsilon}.")
        if not 0 < self.partial_ot_mass <= 1:
            raise ValueError(f"partial_ot_mass must be in (0, 1], got {self.partial_ot_mass}.")
        if self.ot_max_iter < 1 or self.ot_tol < 0:
            raise ValueError(f"ot_max_iter must be >= 1 and ot_tol >= 0, got {self.ot_max_iter} and {self.ot_tol}.")
        if not self.contrastive_temperature > 0:
            raise ValueError(f"contrastive_temperature must be > 0, got {self.contrastive_temperature}.")
        if not 0 <= self.text_dropout_prob < 1:
            raise ValueError(f"text_dropout_prob must be in [0, 1), got {self.text_dropout_prob}.")
        if self.projection_dim < 1 or self.projection_hidden_size < 1:
            raise ValueError("projection_dim and projection_hidden_size must be >= 1.")
        if self.metric_type == "lowrank":
            if self.metric_rank is None or not 1 <= self.metric_rank <= self.projection_dim:
                raise ValueError(
                    f"metric_type='lowrank' needs 1 <= metric_rank <= projection_dim={self.projection_dim}, "
                    f"got {self.metric_rank}."
                )
        elif self.metric_rank is not None:
            raise ValueError(f"metric_rank is only used with metric_type='lowrank' (got {self.metric_type!r}).")
        super().__post_init__(**kwargs)
        for name in ("audio_config", "text_config"):
            if getattr(getattr(self, name), "hidden_size", None) is None:
                raise ValueError(f"{name} ({type(getattr(self, name)).__name__}) has no hidden_size to project from.")

    @property
    def uses_ot_loss(self) -> bool:
        """Whether the training loss (and so the logits) are defined by the OT ground cost."""
        return self.loss_type in OT_LOSSES
