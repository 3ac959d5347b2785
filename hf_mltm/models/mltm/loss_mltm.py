"""`MLTMLoss`: the training loss of `MLTMAudioTextModel`, computed from the model's outputs (open_clip style).

The model returns L2-normalised embeddings; the loss gathers them across processes when asked (so the OT problem
is the *global* batch), builds the ground cost with the model's metric and calls the `hf_mltm.ot` loss. One
training step is therefore::

    outputs = model(**batch)                                   # local embeddings (and logits for the local batch)
    loss = loss_fn(outputs, item_ids=batch_item_ids, step=optimizer_step)

``model(..., return_loss=True)`` uses the same class on the local batch.

Letters: ``b`` pairs in the (global) batch, ``d`` the joint embedding dimension.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hf_mltm.ot import (
    all_gather_with_grad,
    contrastive_entropy_loss,
    contrastive_loss,
    mltm_loss,
    mltm_partial_loss,
    triplet_loss,
)

from .configuration_mltm import MLTMAudioTextConfig

__all__ = ["MLTMLoss"]

CostFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MLTMLoss(nn.Module):
    r"""``config.loss_type`` of a paired batch of audio and text embeddings.

    Losses (``config.loss_type``): ``"mltm"`` (KL between the duplicate-aware ground-truth coupling and the entropic
    OT plan of the cost, closed-form gradient), ``"mltm_partial"`` (partial OT of mass ``partial_ot_mass``),
    ``"infonce"``, ``"infonce_entropy"`` and ``"triplet"`` (on the cosine similarity ``1 - cost``). Row ``i`` of the
    audio and of the text embeddings are a true pair; rows sharing an ``item_ids`` entry are all positives of each
    other.

    The module holds no parameters: the cost function (the model's learned metric) and the temperature are the
    model's, so gradients reach them through this loss.

    Args:
        config (`MLTMAudioTextConfig`): the loss settings are read at every call (a config schedule may change
            them during training).
        cost_fn (`Callable`): ``(audio (n, d), text (m, d)) -> cost (n, m)``, float32, lower is better (the model's
            `pairwise_cost`).
        logit_scale (`torch.Tensor` or `Callable`, *optional*): ``log(1 / temperature)`` of the InfoNCE losses (the
            model's parameter when learnable, else its buffer), or a function returning it at each call (what
            `from_model` passes, so that moving the model to another device or FSDP's parameter swap is followed);
            default ``-log(config.temperature)``.
        metric (`nn.Module`, *optional*): the model's `MahalanobisMetric`, projected onto the PSD cone by
            `on_optimizer_step` when ``config.metric_type == "projected"`` (the paper's projected gradient).
        gather (`bool`, defaults to `False`): all-gather the embeddings (with gradient) and ``item_ids`` of every
            process before forming the cost, so each process computes the loss of the global batch
            (`hf_mltm.ot.all_gather_with_grad`; the gradient scaling is exact under DDP, see its docstring).

    Example:

    ```python
    >>> import torch
    >>> from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMLoss
    >>> from hf_mltm.ot import euclidean_cost
    >>> config = MLTMAudioTextConfig(loss_type="mltm", ot_epsilon=0.1)
    >>> loss_fn = MLTMLoss(config, euclidean_cost)
    >>> embeds = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    >>> outputs = {"audio_embeds": embeds, "text_embeds": embeds}
    >>> bool(loss_fn(outputs) < loss_fn({"audio_embeds": embeds, "text_embeds": embeds.flip(0)}))
    True

    ```
    """

    def __init__(
        self,
        config: MLTMAudioTextConfig,
        cost_fn: CostFn,
        logit_scale: torch.Tensor | Callable[[], torch.Tensor] | None = None,
        *,
        metric: nn.Module | None = None,
        gather: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        self.cost_fn = cost_fn
        # Plain lists: the model owns these parameters, so they are not registered again here.
        self._logit_scale = [logit_scale]
        self._metric = [metric]
        self.gather = gather

    @classmethod
    def from_model(cls, model: nn.Module, *, gather: bool = False) -> MLTMLoss:
        """The loss of an `MLTMAudioTextModel` (its config, metric and temperature)."""
        return cls(model.config, model.pairwise_cost, lambda: model.logit_scale, metric=model.metric, gather=gather)

    def forward(
        self,
        outputs: Any,
        item_ids: torch.Tensor | None = None,
        step: int | None = None,
    ) -> torch.Tensor:
        """The loss of a paired batch.

        Args:
            outputs (`MLTMAudioTextOutput` or mapping): holds ``audio_embeds`` and ``text_embeds``, each
                ``(b_local, d)``.
            item_ids (`torch.LongTensor` of shape `(b_local,)`, *optional*): the clip of each row; rows sharing an
                id are positives of each other.
            step (`int`, *optional*): optimizer steps done so far (``"triplet"`` warm-up); `None` counts as after
                the warm-up.

        Returns:
            `torch.FloatTensor` of shape `()`: the loss of the (global) batch.
        """
        audio, text = outputs["audio_embeds"], outputs["text_embeds"]
        if audio is None or text is None:
            raise ValueError("MLTMLoss needs outputs with audio_embeds and text_embeds (a paired batch).")
        if self.gather:
            audio, text = all_gather_with_grad(audio), all_gather_with_grad(text)
            item_ids = None if item_ids is None else all_gather_with_grad(item_ids)
        cost = self.cost_fn(audio, text)  # (b, b)
        return self.loss_from_cost(cost, item_ids, step)

    def loss_from_cost(
        self, cost: torch.Tensor, item_ids: torch.Tensor | None = None, step: int | None = None
    ) -> torch.Tensor:
        """``config.loss_type`` on a paired ``(b, b)`` cost matrix (row ``i`` and column ``i`` are a true pair)."""
        config = self.config
        if cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
            raise ValueError(f"the training loss needs paired batches (as many clips as captions), got a cost of "
                             f"shape {tuple(cost.shape)}.")
        solver = {"max_iter": config.ot_max_iter, "tol": config.ot_tol}
        if config.loss_type == "mltm":
            return mltm_loss(cost, config.ot_epsilon, item_ids=item_ids, normalization=config.cost_normalization,
                             detach_scale=config.detach_cost_scale, **solver)
        if config.loss_type == "mltm_partial":
            return mltm_partial_loss(cost, config.ot_epsilon, config.partial_ot_mass, item_ids=item_ids,
                                     normalization=config.cost_normalization,
                                     detach_scale=config.detach_cost_scale, **solver)
        similarity = 1 - cost
        if config.loss_type == "triplet":
            hardest = config.triplet_hardest_negative and (step is None or step >= config.triplet_warmup_steps)
            return triplet_loss(similarity, config.triplet_margin, hardest_negative=hardest, item_ids=item_ids)
        logit_scale = self._logit_scale[0]
        if callable(logit_scale):
            logit_scale = logit_scale()
        if logit_scale is None:
            logit_scale = torch.tensor(config.temperature, device=cost.device).log().neg()
        temperature = logit_scale.exp().reciprocal()
        if config.loss_type == "infonce":
            return contrastive_loss(similarity, temperature, item_ids=item_ids)
        return contrastive_entropy_loss(similarity, temperature, config.entropy_weight, item_ids=item_ids)

    @torch.no_grad()
    def on_optimizer_step(self) -> None:
        """Call after every optimizer step: projects a ``metric_type="projected"`` metric onto the PSD cone (the
        paper's projected gradient; the other metric types are PSD by construction and need nothing)."""
        metric = self._metric[0]
        if metric is not None and self.config.metric_type == "projected":
            metric.project_()
