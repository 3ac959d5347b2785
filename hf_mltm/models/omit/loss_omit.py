"""`OMITLoss`: the training loss of `OMITImageTextModel`, computed from the model's outputs (open_clip style).

The model returns projected, L2-normalised image and word fragments with their masks (and, for its own batch, the
OT score of every image-caption pair). The loss gathers the fragments across processes when asked, scores every
pair of the global batch by fragment OT (with the model's partial-matching rule) and applies ``config.loss_type``
to the ``(b, b)`` score matrix. One training step is therefore::

    outputs = model(**batch)
    loss = loss_fn(outputs, item_ids=batch_item_ids, step=optimizer_step)

Letters: ``b`` pairs in the (global) batch, ``R`` image fragments, ``L`` word fragments, ``d`` the fragment dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hf_mltm.ot import all_gather_with_grad, contrastive_loss, mltm_loss, triplet_loss, world_info

from .configuration_omit import OMITImageTextConfig

__all__ = ["OMITLoss"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class OMITLoss(nn.Module):
    r"""``config.loss_type`` on the fragment-OT scores of a paired image-caption batch.

    Losses: ``"triplet"`` (VSE++ hinge with margin ``triplet_margin``: all negatives during the first
    ``triplet_warmup_steps`` optimizer steps, then the hardest one), ``"infonce"`` (symmetric InfoNCE with
    ``temperature``) and ``"mltm"`` (KL to the entropic OT plan of the batch cost ``1 - score`` with
    ``batch_ot_epsilon``).

    Args:
        config (`OMITImageTextConfig`): read at every call.
        score_fn (`Callable`): ``(image_fragments (B, R, d), image_mask (B, R), text_fragments (T, L, d), text_mask
            (T, L)) -> scores (B, T)`` with gradient (the model's `pair_scores(...).value`, which applies its
            partial-matching rule).
        gather (`bool`, defaults to `False`): all-gather the fragments and masks (padded to the largest ``R`` and
            ``L`` over processes, masks with `False`) and ``item_ids`` before scoring, so every process computes
            the loss of the global batch.

    When the model's outputs already hold the ``(b, b)`` scores of the whole batch (one process, or ``gather``
    off), they are reused instead of solved again.
    """

    def __init__(self, config: OMITImageTextConfig, score_fn: ScoreFn, *, gather: bool = False) -> None:
        super().__init__()
        self.config = config
        self.score_fn = score_fn
        self.gather = gather

    @classmethod
    def from_model(cls, model: nn.Module, *, gather: bool = False) -> OMITLoss:
        """The loss of an `OMITImageTextModel` (its config and pair scoring)."""

        def score_fn(image_fragments, image_mask, text_fragments, text_mask):
            return model.pair_scores(image_fragments, image_mask, text_fragments, text_mask).value

        return cls(model.config, score_fn, gather=gather)

    def forward(self, outputs: Any, item_ids: torch.Tensor | None = None, step: int | None = None) -> torch.Tensor:
        """The loss of a paired batch.

        Args:
            outputs (`OMITImageTextOutput` or mapping): holds ``image_fragments`` ``(b_local, R, d)``,
                ``image_fragment_mask`` ``(b_local, R)``, ``text_fragments`` ``(b_local, L, d)``,
                ``text_fragment_mask`` ``(b_local, L)`` and optionally ``scores`` ``(b_local, b_local)``.
            item_ids (`torch.LongTensor` of shape `(b_local,)`, *optional*): the image of each row.
            step (`int`, *optional*): optimizer steps done so far (``"triplet"`` warm-up); `None` counts as after
                the warm-up.

        Returns:
            `torch.FloatTensor` of shape `()`.
        """
        keys = ("image_fragments", "image_fragment_mask", "text_fragments", "text_fragment_mask")
        missing = [key for key in keys if outputs.get(key) is None]
        if missing:
            raise ValueError(f"OMITLoss needs model outputs with {list(keys)}; missing {missing}.")
        distributed = self.gather and world_info()[1] > 1
        scores = outputs.get("scores")
        if scores is None or distributed:
            images, image_mask, texts, text_mask = (outputs[key] for key in keys)
            if distributed:
                images, texts = all_gather_with_grad(images), all_gather_with_grad(texts)
                image_mask = all_gather_with_grad(image_mask, pad_value=False)
                text_mask = all_gather_with_grad(text_mask, pad_value=False)
                item_ids = None if item_ids is None else all_gather_with_grad(item_ids)
            scores = self.score_fn(images, image_mask.bool(), texts, text_mask.bool())  # (b, b)
        return self.loss_from_scores(scores, item_ids, step)

    def loss_from_scores(
        self, scores: torch.Tensor, item_ids: torch.Tensor | None = None, step: int | None = None
    ) -> torch.Tensor:
        """``config.loss_type`` on a paired ``(b, b)`` score matrix (image ``i`` and caption ``i`` are a true pair);
        rows sharing an ``item_ids`` entry are positives of each other."""
        config = self.config
        if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
            raise ValueError(f"the training loss needs paired batches (as many images as captions), got scores of "
                             f"shape {tuple(scores.shape)}.")
        if config.loss_type == "triplet":
            hardest = config.triplet_hardest_negative and (step is None or step >= config.triplet_warmup_steps)
            return triplet_loss(scores, config.triplet_margin, hardest_negative=hardest, item_ids=item_ids)
        if config.loss_type == "infonce":
            return contrastive_loss(scores, config.temperature, item_ids=item_ids)
        return mltm_loss(1 - scores, config.batch_ot_epsilon, item_ids=item_ids)

    def on_optimizer_step(self) -> None:
        """Nothing to do after an optimizer step (the same hook as `MLTMLoss.on_optimizer_step`)."""
