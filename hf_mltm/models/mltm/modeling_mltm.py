"""`MLTMAudioTextModel`: audio-text retrieval trained with mini-batch learning-to-match (Luong et al., ICLR 2024).

Letters: ``A`` audio clips and ``T`` captions in a batch (``A == T == b`` for paired training), ``d`` the joint
embedding dimension (``config.projection_dim``).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

# Non-sibling imports are absolute: a saved folder loaded with trust_remote_code gets only this family's files.
from hf_mltm.models.towers import (
    restore_attention_implementation,
    text_model_from_config,
    text_model_from_pretrained,
)
from hf_mltm.models.vocabulary import reject_removed_arguments, removed_member_error
from hf_mltm.ot import MahalanobisMetric, cosine_cost, euclidean_cost, normalize_cost, sinkhorn

from .configuration_mltm import MLTMAudioTextConfig
from .loss_mltm import MLTMLoss

__all__ = ["MLTMAudioTextModel", "MLTMAudioTextOutput", "MLTMPreTrainedModel"]

# Audio towers that take log-mels as (batch, channels, frames, mel_bins): CLAP's HTS-AT encoder.
CHANNEL_FIRST_AUDIO_TOWERS = ("clap_audio_model",)


@dataclass
class MLTMAudioTextOutput(ModelOutput):
    r"""Output of [`MLTMAudioTextModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): the training loss (``return_loss=True``).
        logits_per_audio (`torch.FloatTensor` of shape `(audio_batch_size, text_batch_size)`): audio-caption scores,
            higher is better. OT losses: ``-cost / ot_epsilon`` with the raw (un-normalised) ground cost, so ranking
            by logits is ranking by distance; baselines: ``cos / temperature``.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, audio_batch_size)`): the transpose.
        audio_embeds (`torch.FloatTensor` of shape `(audio_batch_size, projection_dim)`): L2-normalised.
        text_embeds (`torch.FloatTensor` of shape `(text_batch_size, projection_dim)`): L2-normalised.
        cost_matrix (`torch.FloatTensor` of shape `(audio_batch_size, text_batch_size)`): the ground cost the model
            ranks by (learned metric or Euclidean for OT losses; ``1 - cos`` for the baselines), float32.
        transport_plan (`torch.FloatTensor` of shape `(audio_batch_size, text_batch_size)`, *optional*): entropic
            OT plan of the (normalised) cost with uniform marginals (``output_transport_plan=True``).
        audio_model_output (`BaseModelOutputWithPooling`, *optional*): the audio tower's output (``None`` when the
            forward got cached tower embeddings).
        text_model_output (`BaseModelOutputWithPooling`, *optional*): the text tower's output (likewise).
    """

    loss: torch.FloatTensor | None = None
    logits_per_audio: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    cost_matrix: torch.FloatTensor | None = None
    transport_plan: torch.FloatTensor | None = None
    audio_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k].to_tuple() if k in ("audio_model_output", "text_model_output") else self[k] for k in self.keys()
        )


class MLTMProjection(nn.Module):
    """``Linear(in, hidden) -> ReLU -> Linear(hidden, out)``: (..., in) -> (..., out)."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(in_features, hidden_size)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(hidden_size, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.activation(self.linear1(hidden_states)))


class MLTMPreTrainedModel(PreTrainedModel):
    config_class = MLTMAudioTextConfig
    base_model_prefix = "mltm"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    # The metric and the temperature define the OT problem; they stay float32 under bf16/fp16.
    _keep_in_fp32_modules_strict = ["metric"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, MLTMProjection):
            for linear in (module.linear1, module.linear2):
                init.normal_(linear.weight, mean=0.0, std=self.config.initializer_range)
                init.zeros_(linear.bias)
        elif isinstance(module, MahalanobisMetric):
            init.copy_(module.weight, module.initial_weight().to(module.weight.device, module.weight.dtype))
        elif isinstance(module, MLTMAudioTextModel):
            init.constant_(module.logit_scale, -math.log(self.config.temperature))
        else:
            super()._init_weights(module)


def _accepted_arguments(module: nn.Module) -> set[str]:
    return set(inspect.signature(module.forward).parameters)


class MLTMAudioTextModel(MLTMPreTrainedModel):
    r"""Audio and text towers with projection heads, matched through entropic optimal transport.

    Training (``return_loss=True`` on a paired batch, ``A == T``) uses ``config.loss_type`` through `MLTMLoss`: the
    m-LTM loss ``KL(T || P*)`` between the ground-truth matching and the entropic OT plan of the batch cost
    (closed-form gradient), its partial-OT variant, or an InfoNCE / triplet baseline. ``item_ids`` marks batch rows
    that are the same clip (several captions of one clip) so that they are not treated as negatives. A trainer that
    gathers embeddings across processes calls ``MLTMLoss.from_model(model, gather=True)(outputs, item_ids, step)``
    on the outputs of a plain ``model(**batch)``.

    Example:

    ```python
    >>> import torch
    >>> from transformers import BertConfig
    >>> from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel
    >>> from hf_mltm.models.panns import PannsConfig
    >>> config = MLTMAudioTextConfig(
    ...     audio_config=PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16),
    ...     text_config=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
    ...     projection_hidden_size=32, projection_dim=16,
    ... )
    >>> model = MLTMAudioTextModel(config).eval()
    >>> out = model(input_features=torch.randn(3, 64, 16), input_ids=torch.randint(0, 100, (3, 7)), return_loss=True)
    >>> out.logits_per_audio.shape, out.loss.ndim
    (torch.Size([3, 3]), 0)

    ```
    """

    main_input_name = "input_ids"

    def __init__(
        self,
        config: MLTMAudioTextConfig,
        audio_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        self.audio_model = audio_model if audio_model is not None else _audio_model_from_config(config.audio_config)
        self.text_model = text_model if text_model is not None else text_model_from_config(config.text_config)
        restore_attention_implementation(self.audio_model, self.text_model)
        self.config.audio_config = self.audio_model.config
        self.config.text_config = self.text_model.config
        self.audio_projection = MLTMProjection(
            config.audio_config.hidden_size, config.projection_hidden_size, config.projection_dim
        )
        self.text_projection = MLTMProjection(
            config.text_config.hidden_size, config.projection_hidden_size, config.projection_dim
        )
        self.text_dropout = nn.Dropout(config.text_dropout_prob)
        self.metric = (
            None
            if config.metric_type == "euclidean"
            else MahalanobisMetric(config.projection_dim, config.metric_type, config.metric_rank, config.metric_init)
        )
        # log(1 / temperature) of the InfoNCE baselines (CLIP's logit_scale): a parameter when learnable, else a
        # buffer (same state-dict entry). A fixed one must not be a parameter: FSDP2 cannot shard 0-dim parameters.
        logit_scale = torch.tensor(-math.log(config.temperature))
        if config.learnable_temperature:
            self.logit_scale = nn.Parameter(logit_scale)
        else:
            self.register_buffer("logit_scale", logit_scale)
        self._audio_arguments = _accepted_arguments(self.audio_model)
        self.post_init()

    def __getattr__(self, name: str) -> Any:
        error = removed_member_error(type(self), name)
        if error is not None:
            raise error
        return super().__getattr__(name)

    def get_input_embeddings(self) -> nn.Module:
        """The text tower's token embedding (transformers' resizing and accelerate's FSDP preparation look it up)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    @classmethod
    def from_audio_text_pretrained(
        cls,
        audio_pretrained_model_name_or_path: str,
        text_pretrained_model_name_or_path: str,
        **kwargs: Any,
    ) -> MLTMAudioTextModel:
        """Compose pretrained towers with freshly initialised projection heads and metric.

        Args:
            audio_pretrained_model_name_or_path (`str`): a folder or Hub id loadable by `AutoModel` (e.g. a converted
                PANNs or aisfx folder, ``laion/clap-htsat-unfused``'s audio model).
            text_pretrained_model_name_or_path (`str`): the same for the text tower (e.g. BERT, MiniLM).
            kwargs: `MLTMAudioTextConfig` fields (``metric_type``, ``loss_type``, ...); ``audio_model_kwargs`` /
                ``text_model_kwargs`` (dicts) go to the towers' ``from_pretrained``.
        """
        audio_kwargs = kwargs.pop("audio_model_kwargs", {})
        text_kwargs = kwargs.pop("text_model_kwargs", {})
        audio_model = AutoModel.from_pretrained(audio_pretrained_model_name_or_path, **audio_kwargs)
        text_config = AutoConfig.from_pretrained(text_pretrained_model_name_or_path)
        text_model = text_model_from_pretrained(text_pretrained_model_name_or_path, config=text_config, **text_kwargs)
        config = MLTMAudioTextConfig(audio_config=audio_model.config, text_config=text_model.config, **kwargs)
        model = cls(config, audio_model=audio_model, text_model=text_model)
        return model

    # ----------------------------------------------------------------------------------------------------------------
    # Towers and embeddings

    def get_audio_features(
        self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """Run the audio tower; ``pooler_output`` is replaced by the L2-normalised projection ``(A, d)``.

        Args:
            input_features (`torch.FloatTensor` of shape `(A, frames, mel_bins)`): log-mel features from
                [`MLTMFeatureExtractor`] (or whatever the audio tower takes as ``input_features``/``input_values``).
            audio_attention_mask (`torch.LongTensor` of shape `(A, frames)`, *optional*): 1 for real frames.
        """
        outputs = self._run_audio_tower(input_features, audio_attention_mask, **kwargs)
        outputs.pooler_output = self.project_audio(outputs.pooler_output)
        return outputs

    def _run_audio_tower(
        self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        audio_kwargs = dict(kwargs)
        if input_features.dim() == 3 and self.config.audio_config.model_type in CHANNEL_FIRST_AUDIO_TOWERS:
            input_features = input_features[:, None]  # (A, 1, frames, mel_bins)
        if "input_features" in self._audio_arguments:
            audio_kwargs["input_features"] = input_features
        else:
            audio_kwargs["input_values"] = input_features
        if audio_attention_mask is not None and "attention_mask" in self._audio_arguments:
            audio_kwargs["attention_mask"] = audio_attention_mask
        return self.audio_model(**audio_kwargs, return_dict=True)

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Run the text tower; ``pooler_output`` is the L2-normalised projection ``(T, d)`` of the pooled state
        (``config.text_pooling``: [CLS] or mask-aware mean)."""
        outputs, pooled = self._run_text_tower(input_ids, attention_mask, token_type_ids, **kwargs)
        outputs.pooler_output = self.project_text(pooled)
        return outputs

    def _run_text_tower(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """The text tower's output and its pooled state ``(T, hidden)`` (``config.text_pooling``: [CLS] or
        mask-aware mean)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        hidden = outputs.last_hidden_state  # (T, L, hidden)
        if self.config.text_pooling == "cls":
            return outputs, hidden[:, 0]
        weights = attention_mask[..., None].to(hidden.dtype)
        return outputs, (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)

    def project_audio(self, audio_tower_embeds: torch.Tensor) -> torch.Tensor:
        """The audio head: pooled tower output ``(A, hidden)`` -> L2-normalised joint embedding ``(A, d)``."""
        return F.normalize(self.audio_projection(audio_tower_embeds), dim=-1)

    def project_text(self, text_tower_embeds: torch.Tensor) -> torch.Tensor:
        """The text head: pooled tower output ``(T, hidden)`` -> L2-normalised joint embedding ``(T, d)`` (with the
        text dropout in training)."""
        return F.normalize(self.text_projection(self.text_dropout(text_tower_embeds)), dim=-1)

    def get_tower_outputs(
        self,
        input_features: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """The pooled outputs of the two towers, before the heads, for caching frozen towers.

        Returns a dict whose keys ``forward`` accepts in place of the raw inputs: ``audio_tower_embeds``
        `(A, audio_hidden)` and ``text_tower_embeds`` `(T, text_hidden)` (only the modalities given). Runs under the
        caller's grad mode.
        """
        outputs = {}
        if input_features is not None:
            audio = self._run_audio_tower(input_features, audio_attention_mask, **kwargs)
            outputs["audio_tower_embeds"] = audio.pooler_output
        if input_ids is not None:
            outputs["text_tower_embeds"] = self._run_text_tower(input_ids, attention_mask, token_type_ids)[1]
        return outputs

    def embed_audio(self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised audio embeddings ``(A, d)``."""
        return self.get_audio_features(input_features, audio_attention_mask).pooler_output

    def embed_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised text embeddings ``(T, d)``."""
        return self.get_text_features(input_ids, attention_mask, token_type_ids).pooler_output

    # ----------------------------------------------------------------------------------------------------------------
    # Matching

    def pairwise_cost(self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """The ground cost ``(A, T)`` the model matches and ranks by, in float32 (see `MLTMAudioTextOutput`)."""
        with torch.autocast(device_type=audio_embeds.device.type, enabled=False):
            if not self.config.uses_ot_loss:
                return cosine_cost(audio_embeds.float(), text_embeds.float())
            if self.metric is None:
                return euclidean_cost(audio_embeds.float(), text_embeds.float())
            return self.metric(audio_embeds, text_embeds)

    def logits_from_cost(self, cost: torch.Tensor) -> torch.Tensor:
        """``(A, T)`` scores, higher is better: ``-cost / ot_epsilon`` (OT losses) or ``cos / temperature``."""
        if self.config.uses_ot_loss:
            return -cost / self.config.ot_epsilon
        return (1 - cost) * self.logit_scale.exp()

    def transport_plan(self, cost: torch.Tensor) -> torch.Tensor:
        """Uniform-marginal entropic OT plan ``(A, T)`` of the (normalised) cost, without gradient."""
        with torch.no_grad():
            normalized = normalize_cost(cost, self.config.cost_normalization)
            return sinkhorn(None, None, normalized, self.config.ot_epsilon, max_iter=self.config.ot_max_iter,
                            tol=self.config.ot_tol, warn=False).plan

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        audio_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        item_ids: torch.Tensor | None = None,
        audio_tower_embeds: torch.Tensor | None = None,
        text_tower_embeds: torch.Tensor | None = None,
        return_loss: bool | None = None,
        loss_step: int | None = None,
        output_transport_plan: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MLTMAudioTextOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(T, L)`), attention_mask (`(T, L)`), token_type_ids (`(T, L)`):
                tokenized captions.
            input_features (`torch.FloatTensor` of shape `(A, frames, mel_bins)`): log-mel features.
            audio_attention_mask (`torch.LongTensor` of shape `(A, frames)`, *optional*): 1 for real frames.
            item_ids (`torch.LongTensor` of shape `(b,)`, *optional*): ids of the underlying clips of a paired batch;
                rows sharing an id are all positives of each other in the loss.
            audio_tower_embeds (`torch.FloatTensor` of shape `(A, audio_hidden)`, *optional*): cached pooled audio
                tower outputs (`get_tower_outputs`), in place of ``input_features`` (frozen-tower training).
            text_tower_embeds (`torch.FloatTensor` of shape `(T, text_hidden)`, *optional*): likewise for the text
                tower, in place of ``input_ids``.
            return_loss (`bool`, *optional*): compute ``config.loss_type`` with `MLTMLoss` on this (local) batch
                (needs ``A == T``, pairs on the diagonal).
            loss_step (`int`, *optional*): optimizer steps done so far, for the ``"triplet"`` warm-up (`None`: after
                the warm-up).
            output_transport_plan (`bool`, defaults to `False`): also return the batch's entropic OT plan.
        """
        reject_removed_arguments(kwargs)
        if (input_features is None) == (audio_tower_embeds is None):
            raise ValueError("MLTMAudioTextModel.forward needs exactly one of input_features (audio) or "
                             "audio_tower_embeds (cached audio tower outputs).")
        if (input_ids is None) == (text_tower_embeds is None):
            raise ValueError("MLTMAudioTextModel.forward needs exactly one of input_ids (captions) or "
                             "text_tower_embeds (cached text tower outputs).")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        audio_outputs = text_outputs = None
        if input_features is not None:
            audio_outputs = self.get_audio_features(input_features, audio_attention_mask)
            audio_embeds = audio_outputs.pooler_output
        else:
            audio_embeds = self.project_audio(audio_tower_embeds)
        if input_ids is not None:
            text_outputs = self.get_text_features(input_ids, attention_mask, token_type_ids)
            text_embeds = text_outputs.pooler_output
        else:
            text_embeds = self.project_text(text_tower_embeds)
        cost = self.pairwise_cost(audio_embeds, text_embeds)  # (A, T)
        logits_per_audio = self.logits_from_cost(cost)
        loss = MLTMLoss.from_model(self).loss_from_cost(cost, item_ids, loss_step) if return_loss else None
        plan = self.transport_plan(cost) if output_transport_plan else None
        output = MLTMAudioTextOutput(
            loss=loss,
            logits_per_audio=logits_per_audio,
            logits_per_text=logits_per_audio.T,
            audio_embeds=audio_embeds,
            text_embeds=text_embeds,
            cost_matrix=cost,
            transport_plan=plan,
            audio_model_output=audio_outputs,
            text_model_output=text_outputs,
        )
        return output if return_dict else output.to_tuple()


def _audio_model_from_config(audio_config) -> PreTrainedModel:
    """The audio tower for ``audio_config``: through `AutoModel`, or the class transformers has for a tower that it
    does not map to `AutoModel` (CLAP's HTS-AT audio encoder is only mapped as part of `ClapModel`)."""
    if audio_config.model_type == "clap_audio_model":
        from transformers import ClapAudioModel

        return ClapAudioModel(audio_config)
    return AutoModel.from_config(audio_config)
