"""Configuration of `MLTMAudioTextModel`: an audio tower and a text tower joined by m-LTM (entropic OT) matching."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

import hf_mltm.models.panns  # noqa: F401  (registers the "panns" model type with AutoConfig, the default audio tower)
from hf_mltm.models.vocabulary import LOSS_TYPES, OT_LOSS_TYPES, canonical_loss_type, pop_config_aliases
from hf_mltm.validation import check_choice

__all__ = ["MLTMAudioTextConfig"]

TEXT_POOLINGS = ("cls", "mean")
METRIC_TYPES = ("euclidean", "diagonal", "full", "lowrank", "projected")
METRIC_INITS = ("identity", "paper")
COST_NORMALIZATIONS = ("batch_max", "none")
RANKINGS = ("distance", "ot")  # hf_mltm.evaluation.RANKING_MODES (not imported: configs load without it)


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
            ``"projected"`` (the paper's projected gradient: the training loss module, `MLTMLoss`, projects ``M``
            onto the PSD cone after every optimizer step, ``MLTMLoss.on_optimizer_step()``).
        metric_rank (`int`, *optional*): rank for ``"lowrank"``.
        metric_init (`str`, defaults to `"identity"`): ``"identity"`` or ``"paper"`` (``PSD((A + A^T)/2 + I)``).
        ot_epsilon (`float`, defaults to 0.05): entropic regularisation relative to the (normalised) cost; also the
            scale of the logits (``-cost / ot_epsilon``).
        ot_max_iter (`int`, defaults to 1000), ot_tol (`float`, defaults to 1e-6): Sinkhorn settings.
        loss_type (`str`, defaults to `"mltm"`): ``"mltm"`` (KL to the entropic OT plan), ``"mltm_partial"``
            (partial OT of mass ``partial_ot_mass``), or the baselines ``"infonce"`` (symmetric InfoNCE),
            ``"triplet"`` (VSE/VSE++ hinge), ``"infonce_entropy"`` (InfoNCE minus an entropy bonus). The loss is
            computed by `MLTMLoss` (``loss_mltm.py``); the names shared with OMIT are listed in
            `hf_mltm.models.vocabulary` (old names such as ``"contrastive"`` still load, with a warning).
        partial_ot_mass (`float`, defaults to 0.9): transported mass ``s`` in (0, 1] for ``"mltm_partial"``
            (paper: about 0.9 at 20 % noise, 0.8 at 40 %, 0.7 at 60 %).
        cost_normalization (`str`, defaults to `"batch_max"`): divide the training cost by its batch maximum (the
            reference code) or ``"none"``. Logits always use the raw cost.
        detach_cost_scale (`bool`, defaults to `False`): with ``"batch_max"``, no gradient through the batch maximum
            (the paper's reference code lets it flow). On our audio zero-shot suite it gave +5.5 +- 7.7 accuracy
            points at ``ot_epsilon=0.05`` (not significant over 5 seeds; ``docs/results.md``); evaluation is
            unchanged (ranking has no gradient).
        ranking (`str`, defaults to `"distance"`): default ranking mode for evaluation, ``"distance"`` or the
            transductive ``"ot"`` (METHOD.md 1.3). Report the two separately.
        temperature (`float`, defaults to 0.07), learnable_temperature (`bool`, defaults to `False`):
            InfoNCE temperature of the InfoNCE baselines (formerly ``contrastive_temperature``).
        triplet_margin (`float`, defaults to 0.2), triplet_hardest_negative (`bool`, defaults to `True`),
            triplet_warmup_steps (`int`, defaults to 0): hinge baseline; VSE++ (hardest negative) when
            ``triplet_hardest_negative``, after the first ``triplet_warmup_steps`` optimizer steps, which sum over
            all negatives.
        entropy_weight (`float`, defaults to 0.1): weight of the entropy bonus of ``"infonce_entropy"``.

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
    detach_cost_scale: bool = False
    ranking: str = "distance"
    temperature: float | int = 0.07
    learnable_temperature: bool = False
    triplet_margin: float | int = 0.2
    triplet_hardest_negative: bool = True
    triplet_warmup_steps: int = 0
    entropy_weight: float | int = 0.1
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        pop_config_aliases(self, kwargs)
        self.loss_type = canonical_loss_type(self.loss_type)
        check_choice("text_pooling", self.text_pooling, TEXT_POOLINGS)
        check_choice("metric_type", self.metric_type, METRIC_TYPES)
        check_choice("metric_init", self.metric_init, METRIC_INITS)
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        check_choice("cost_normalization", self.cost_normalization, COST_NORMALIZATIONS)
        check_choice("ranking", self.ranking, RANKINGS)
        if not isinstance(self.detach_cost_scale, bool):
            raise ValueError(f"detach_cost_scale must be true or false, got {self.detach_cost_scale!r}.")
        if not self.ot_epsilon > 0:
            raise ValueError(f"ot_epsilon must be > 0, got {self.ot_epsilon}.")
        if not 0 < self.partial_ot_mass <= 1:
            raise ValueError(f"partial_ot_mass must be in (0, 1], got {self.partial_ot_mass}.")
        if self.ot_max_iter < 1 or self.ot_tol < 0:
            raise ValueError(f"ot_max_iter must be >= 1 and ot_tol >= 0, got {self.ot_max_iter} and {self.ot_tol}.")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}.")
        if self.triplet_margin < 0 or self.triplet_warmup_steps < 0:
            raise ValueError("triplet_margin and triplet_warmup_steps must be >= 0.")
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
        return self.loss_type in OT_LOSS_TYPES
