"""`OMITImageTextModel`: image-text matching by optimal (partial) transport between image and word fragments
(Pan et al., "Learning Image-Text Matching with Optimal Partial Transport", ICASSP 2025).

Letters: ``B`` images with ``R`` fragments, ``T`` captions with ``L`` tokens, ``d`` the joint fragment dimension
(``config.embed_dim``). Every image-caption pair is scored by the entropic OT plan between its fragments
(`hf_mltm.ot.fragment_ot_scores`); pairs are independent (no transduction).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

# Non-sibling imports are absolute: a saved folder loaded with trust_remote_code gets only this family's files.
from hf_mltm.models.towers import restore_attention_implementation, text_model_from_config
from hf_mltm.models.vocabulary import reject_removed_arguments, removed_member_error
from hf_mltm.ot import OTResult, fragment_ot_scores

from .configuration_omit import OMITImageTextConfig
from .loss_omit import OMITLoss

__all__ = ["OMITImageTextModel", "OMITImageTextOutput", "OMITPreTrainedModel"]


@dataclass
class OMITImageTextOutput(ModelOutput):
    r"""Output of [`OMITImageTextModel`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): the training loss (``return_loss=True``).
        logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`): OT scores divided by
            ``config.temperature``.
        logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`): the transpose.
        scores (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`): the OT similarity
            ``sum(P * S) / mass`` of every pair, in ``[-1, 1]``.
        image_embeds (`torch.FloatTensor` of shape `(image_batch_size, embed_dim)`): L2-normalised mean of each image's
            fragments, for fast pre-ranking with a dot product.
        text_embeds (`torch.FloatTensor` of shape `(text_batch_size, embed_dim)`): likewise for the captions.
        image_fragments (`torch.FloatTensor` of shape `(image_batch_size, num_fragments, embed_dim)`): the projected,
            L2-normalised image fragments the scores are computed from (in training, after the random fragment
            drop); `OMITLoss` scores them across processes.
        image_fragment_mask (`torch.BoolTensor` of shape `(image_batch_size, num_fragments)`): valid fragments.
        text_fragments (`torch.FloatTensor` of shape `(text_batch_size, num_tokens, embed_dim)`): the word
            fragments.
        text_fragment_mask (`torch.BoolTensor` of shape `(text_batch_size, num_tokens)`): valid word fragments.
        transport_plan (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size, num_fragments,
            num_tokens)`, *optional*): the fragment plans (``output_transport_plan=True``), for visualisation
            (formerly ``transport_plans``, still readable).
        vision_model_output (`BaseModelOutputWithPooling`, *optional*): the vision tower's output.
        text_model_output (`BaseModelOutputWithPooling`, *optional*): the text tower's output.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_fragments: torch.FloatTensor | None = None
    image_fragment_mask: torch.BoolTensor | None = None
    text_fragments: torch.FloatTensor | None = None
    text_fragment_mask: torch.BoolTensor | None = None
    transport_plan: torch.FloatTensor | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(
            self[k].to_tuple() if k in ("vision_model_output", "text_model_output") else self[k] for k in self.keys()
        )

    @property
    def transport_plans(self) -> torch.FloatTensor | None:
        """Deprecated name of ``transport_plan``."""
        warnings.warn("OMITImageTextOutput.transport_plans is deprecated; read transport_plan.", FutureWarning,
                      stacklevel=2)
        return self.transport_plan


class OMITFragmentProjection(nn.Module):
    """Image fragment encoder of the paper: ``Linear(x) + MLP(x)`` (a linear map plus a two-layer ReLU MLP)."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden_size), nn.ReLU(), nn.Linear(hidden_size, out_features))

    def forward(self, fragments: torch.Tensor) -> torch.Tensor:
        return self.linear(fragments) + self.mlp(fragments)


class OMITPreTrainedModel(PreTrainedModel):
    config_class = OMITImageTextConfig
    base_model_prefix = "omit"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, OMITImageTextModel):
            for linear in (module.text_projection,):
                init.normal_(linear.weight, mean=0.0, std=self.config.initializer_range)
                init.zeros_(linear.bias)
        elif isinstance(module, OMITFragmentProjection):
            for linear in (module.linear, module.mlp[0], module.mlp[2]):
                init.normal_(linear.weight, mean=0.0, std=self.config.initializer_range)
                init.zeros_(linear.bias)
        else:
            super()._init_weights(module)


def keep_top(scores: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mask ``(..., n)`` of the ``keep`` (``(...)`` counts) valid entries with the highest ``scores``; ties go to
    the lower index."""
    order = scores.masked_fill(~valid, -math.inf).argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return (ranks < keep[..., None]) & valid


def _masked_mean(fragments: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean ``(n, d)`` of the valid fragments ``(n, k, d)``."""
    weights = mask[..., None].to(fragments.dtype)
    return F.normalize((fragments * weights).sum(-2) / weights.sum(-2).clamp_min(1), dim=-1)


class OMITImageTextModel(OMITPreTrainedModel):
    r"""Vision (or precomputed fragments) and text towers whose fragments are matched by entropic OT per pair.

    ``forward`` scores every image against every caption of the batch (``logits_per_image`` ``(B, T)``); with
    ``return_loss=True`` on a paired batch (``B == T``, pairs on the diagonal) it adds ``config.loss_type`` on the
    score matrix (`OMITLoss`; a trainer gathering across processes calls ``OMITLoss.from_model(model,
    gather=True)(outputs, item_ids, step)`` instead). The partial-matching rules (``config.partial_matching``) are
    described in ``docs/omit.md``. Retrieval over a gallery: `hf_mltm.evaluation.score_retrieval`.

    Example:

    ```python
    >>> import torch
    >>> from transformers import BertConfig
    >>> from hf_mltm.models.omit import OMITImageTextConfig, OMITImageTextModel
    >>> config = OMITImageTextConfig(
    ...     image_fragment_dim=12, embed_dim=16, image_projection_hidden_size=8,
    ...     text_config=BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37),
    ... )
    >>> model = OMITImageTextModel(config).eval()
    >>> out = model(image_fragments=torch.randn(3, 5, 12), input_ids=torch.randint(0, 100, (3, 7)), return_loss=True)
    >>> out.logits_per_image.shape, out.loss.ndim
    (torch.Size([3, 3]), 0)

    ```
    """

    main_input_name = "input_ids"

    def __init__(
        self,
        config: OMITImageTextConfig,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        if vision_model is None and config.vision_config is not None:
            vision_model = AutoModel.from_config(config.vision_config)
        self.vision_model = vision_model
        self.text_model = text_model if text_model is not None else text_model_from_config(config.text_config)
        restore_attention_implementation(self.vision_model, self.text_model)
        if self.vision_model is not None:
            self.config.vision_config = self.vision_model.config
        self.config.text_config = self.text_model.config
        self.image_projection = OMITFragmentProjection(
            config.image_fragment_input_dim, config.image_projection_hidden_size, config.embed_dim
        )
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.embed_dim)
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

    # ----------------------------------------------------------------------------------------------------------------
    # Fragments

    def _vision_tower_fragments(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """Tower fragments ``(B, R, hidden)``: patch tokens (ViT-style) or feature-map cells (CNN-style)."""
        if self.vision_model is None:
            raise ValueError("this OMIT model has no vision tower (vision_config=None): pass precomputed "
                             "image_fragments (B, R, image_fragment_dim) instead of pixel_values.")
        outputs = self.vision_model(pixel_values=pixel_values, return_dict=True)
        hidden = outputs.last_hidden_state
        if hidden.dim() == 4:  # (B, channels, h, w) feature map -> (B, h * w, channels), row-major cells
            hidden = hidden.flatten(2).transpose(1, 2)
        elif self.config.drop_vision_cls_token:
            hidden = hidden[:, 1:]
        return hidden, outputs

    def _text_tower_states(self, input_ids, attention_mask, token_type_ids) -> BaseModelOutputWithPooling:
        kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)

    def project_image_fragments(
        self, image_fragments: torch.Tensor, image_fragment_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tower or precomputed fragments ``(B, R, in)`` -> L2-normalised fragments ``(B, R, d)`` and their mask
        ``(B, R)``; in training each image keeps a random ``config.fragment_keep_ratio`` of its valid fragments."""
        if image_fragments.dim() != 3 or image_fragments.shape[-1] != self.config.image_fragment_input_dim:
            raise ValueError(
                f"image_fragments must have shape (B, R, {self.config.image_fragment_input_dim}), got "
                f"{tuple(image_fragments.shape)}."
            )
        mask = (
            torch.ones(image_fragments.shape[:2], dtype=torch.bool, device=image_fragments.device)
            if image_fragment_mask is None
            else image_fragment_mask.to(device=image_fragments.device, dtype=torch.bool)
        )
        if self.training and self.config.fragment_keep_ratio < 1:
            counts = mask.sum(-1)
            keep = torch.ceil(counts * self.config.fragment_keep_ratio).long().clamp_min(1)
            mask = keep_top(torch.rand(mask.shape, device=mask.device), mask, keep)
        fragments = F.normalize(self.image_projection(image_fragments), dim=-1)
        return fragments, mask

    def project_text_fragments(
        self, text_hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``(T, L, hidden)`` -> L2-normalised word fragments ``(T, L, d)`` and their mask ``(T, L)``.
        Unless ``config.include_special_tokens``, the first ([CLS]) and last valid ([SEP]) token of captions with
        at least three tokens are left out."""
        if attention_mask is None:
            attention_mask = torch.ones(text_hidden_states.shape[:2], dtype=torch.long, device=text_hidden_states.device)
        mask = attention_mask.bool()
        if not self.config.include_special_tokens:
            lengths = mask.sum(-1)
            positions = torch.arange(mask.shape[1], device=mask.device)
            special = (positions[None] == 0) | (positions[None] == lengths[:, None] - 1)
            mask = mask & ~(special & (lengths[:, None] >= 3))
        return F.normalize(self.text_projection(text_hidden_states), dim=-1), mask

    def get_image_fragments(
        self,
        pixel_values: torch.Tensor | None = None,
        image_fragments: torch.Tensor | None = None,
        image_fragment_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image fragments ``(B, R, d)`` and mask ``(B, R)`` from images (``pixel_values``, through the
        vision tower) or precomputed fragments (``image_fragments`` ``(B, R, image_fragment_dim)``)."""
        if (pixel_values is None) == (image_fragments is None):
            raise ValueError("pass exactly one of pixel_values (images) or image_fragments (precomputed fragments).")
        if pixel_values is not None:
            image_fragments = self._vision_tower_fragments(pixel_values)[0]
        return self.project_image_fragments(image_fragments, image_fragment_mask)

    def get_text_fragments(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised word fragments ``(T, L, d)`` and mask ``(T, L)`` of tokenized captions."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self._text_tower_states(input_ids, attention_mask, token_type_ids).last_hidden_state
        return self.project_text_fragments(states, attention_mask)

    def get_image_features(self, pixel_values=None, image_fragments=None, image_fragment_mask=None, **kwargs):
        """`BaseModelOutputWithPooling` with the image fragments ``(B, R, d)`` as ``last_hidden_state`` and their
        L2-normalised masked mean ``(B, d)`` as ``pooler_output`` (use `get_image_fragments` for the mask)."""
        fragments, mask = self.get_image_fragments(pixel_values, image_fragments, image_fragment_mask)
        return BaseModelOutputWithPooling(last_hidden_state=fragments, pooler_output=_masked_mean(fragments, mask))

    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        """`BaseModelOutputWithPooling` with the word fragments ``(T, L, d)`` and the pooled embedding ``(T, d)``."""
        fragments, mask = self.get_text_fragments(input_ids, attention_mask, token_type_ids)
        return BaseModelOutputWithPooling(last_hidden_state=fragments, pooler_output=_masked_mean(fragments, mask))

    def get_tower_outputs(
        self,
        pixel_values: torch.Tensor | None = None,
        image_fragments: torch.Tensor | None = None,
        image_fragment_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """The towers' outputs before the projections, for caching frozen towers: ``image_fragments``
        ``(B, R, in)`` + ``image_fragment_mask`` and ``text_hidden_states`` ``(T, L, hidden)`` + ``attention_mask``,
        all keyword arguments of ``forward``. Runs under the caller's grad mode."""
        outputs = {}
        if pixel_values is not None:
            image_fragments = self._vision_tower_fragments(pixel_values)[0]
        if image_fragments is not None:
            outputs["image_fragments"] = image_fragments
            outputs["image_fragment_mask"] = (
                torch.ones(image_fragments.shape[:2], dtype=torch.bool, device=image_fragments.device)
                if image_fragment_mask is None
                else image_fragment_mask.bool()
            )
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            outputs["text_hidden_states"] = self._text_tower_states(input_ids, attention_mask, token_type_ids).last_hidden_state
            outputs["attention_mask"] = attention_mask
        return outputs

    # ----------------------------------------------------------------------------------------------------------------
    # Scoring

    def partial_matching_masks(
        self,
        image_fragments: torch.Tensor,
        image_mask: torch.Tensor,
        text_fragments: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair fragment masks ``(B, T, R)``, ``(B, T, L)`` of the relevance rules (``config.partial_matching``
        ``"relevance_threshold"`` or ``"top_fraction"``).

        The relevance of an image fragment to a caption is its cosine with the caption's pooled embedding, and that
        of a word to an image its cosine with the image's pooled embedding (local-to-global similarity). A fragment
        is kept when its relevance reaches ``relevance_threshold``, or when it is among the
        ``ceil(relevance_top_fraction * n_valid)`` most relevant of its side; the most relevant valid fragment of
        each side is always kept, so no pair is left empty.
        """
        image_global = _masked_mean(image_fragments, image_mask)  # (B, d)
        text_global = _masked_mean(text_fragments, text_mask)  # (T, d)
        image_relevance = torch.einsum("brd,td->btr", image_fragments, text_global)  # (B, T, R)
        text_relevance = torch.einsum("tld,bd->btl", text_fragments, image_global)  # (B, T, L)
        masks = []
        for relevance, valid in ((image_relevance, image_mask[:, None]), (text_relevance, text_mask[None])):
            valid = valid.expand_as(relevance)
            if self.config.partial_matching == "relevance_threshold":
                best = keep_top(relevance, valid, torch.ones(relevance.shape[:-1], dtype=torch.long,
                                                             device=relevance.device))
                masks.append((valid & (relevance >= self.config.relevance_threshold)) | best)
            else:
                keep = torch.ceil(valid.sum(-1) * self.config.relevance_top_fraction).long().clamp_min(1)
                masks.append(keep_top(relevance, valid, keep))
        return masks[0], masks[1]

    def pair_scores(
        self,
        image_fragments: torch.Tensor,
        image_mask: torch.Tensor,
        text_fragments: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        return_plans: bool = False,
        chunk_size: int | None = None,
    ) -> OTResult:
        """OT scores of every image-caption pair, with ``config.partial_matching`` applied: an `OTResult` whose
        ``value`` is the ``(B, T)`` score matrix (differentiable) and ``plan`` the ``(B, T, R, L)`` plans when
        ``return_plans``."""
        config = self.config
        if config.partial_matching in ("relevance_threshold", "top_fraction"):
            image_mask, text_mask = self.partial_matching_masks(image_fragments, image_mask, text_fragments, text_mask)
        mass = config.partial_ot_mass if config.partial_matching == "mass" else 1.0
        return fragment_ot_scores(
            image_fragments, text_fragments, image_mask, text_mask, config.ot_epsilon, mass=mass,
            max_iter=config.ot_max_iter, tol=config.ot_tol,
            pair_chunk_size=chunk_size if chunk_size is not None else config.score_chunk_size,
            return_plans=return_plans, warn=False,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_fragments: torch.Tensor | None = None,
        image_fragment_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        text_hidden_states: torch.Tensor | None = None,
        item_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        loss_step: int | None = None,
        output_transport_plan: bool = False,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> OMITImageTextOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(T, L)`), attention_mask (`(T, L)`), token_type_ids (`(T, L)`):
                tokenized captions.
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`, *optional*): images (needs a vision tower).
            image_fragments (`torch.FloatTensor` of shape `(B, R, image_fragment_dim)`, *optional*): precomputed
                region/grid fragments instead of ``pixel_values`` (or cached vision-tower fragments).
            image_fragment_mask (`torch.BoolTensor` of shape `(B, R)`, *optional*): valid fragments.
            text_hidden_states (`torch.FloatTensor` of shape `(T, L, hidden)`, *optional*): cached text-tower states
                in place of ``input_ids`` (with ``attention_mask``).
            item_ids (`torch.LongTensor` of shape `(b,)`, *optional*): ids of the images of a paired batch; rows
                sharing an id are positives of each other in the loss.
            return_loss (`bool`, *optional*): compute ``config.loss_type`` with `OMITLoss` on this batch (needs
                ``B == T``).
            loss_step (`int`, *optional*): optimizer steps done so far, for the ``"triplet"`` warm-up (`None`: after
                the warm-up).
            output_transport_plan (`bool`): also return the fragment plans ``(B, T, R, L)``
                (``output_transport_plans`` is accepted as a deprecated alias).
        """
        reject_removed_arguments(kwargs)
        if "output_transport_plans" in kwargs:
            warnings.warn("output_transport_plans is deprecated; pass output_transport_plan.", FutureWarning,
                          stacklevel=2)
            output_transport_plan = bool(kwargs.pop("output_transport_plans"))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (pixel_values is None) == (image_fragments is None):
            raise ValueError("OMITImageTextModel.forward needs exactly one of pixel_values or image_fragments.")
        if (input_ids is None) == (text_hidden_states is None):
            raise ValueError("OMITImageTextModel.forward needs exactly one of input_ids or text_hidden_states.")
        vision_outputs = text_outputs = None
        if pixel_values is not None:
            image_fragments, vision_outputs = self._vision_tower_fragments(pixel_values)
        images, image_mask = self.project_image_fragments(image_fragments, image_fragment_mask)
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_outputs = self._text_tower_states(input_ids, attention_mask, token_type_ids)
            text_hidden_states = text_outputs.last_hidden_state
        texts, text_mask = self.project_text_fragments(text_hidden_states, attention_mask)
        result = self.pair_scores(images, image_mask, texts, text_mask, return_plans=output_transport_plan)
        scores = result.value  # (B, T)
        loss = OMITLoss.from_model(self).loss_from_scores(scores, item_ids, loss_step) if return_loss else None
        logits_per_image = scores / self.config.temperature
        output = OMITImageTextOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.T,
            scores=scores,
            image_embeds=_masked_mean(images, image_mask),
            text_embeds=_masked_mean(texts, text_mask),
            image_fragments=images,
            image_fragment_mask=image_mask,
            text_fragments=texts,
            text_fragment_mask=text_mask,
            transport_plan=result.plan,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )
        return output if return_dict else output.to_tuple()
