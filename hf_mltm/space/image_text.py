"""The image-text (OMIT) logic of the Space: score captions against one picture by fragment OT, and show where each
word's transport mass lands on the picture's fragment grid.

Letters: ``T`` captions, ``R = h * w`` image fragments (a CNN's last feature map, row-major: fragment ``w * i + j``
is cell ``(i, j)``; 7 x 7 = 49 for EfficientNet-Lite0 at 224 x 224), ``L`` caption tokens, ``d`` the joint dimension.

The picture goes through the model's own vision tower when it has one, else through a separate grid encoder
(EfficientNet-Lite0, the tower whose fragments `configs/flickr8k_omit_small.yaml` trains on). Captions go through
the text tower; `OMITImageTextModel.pair_scores(..., return_plans=True)` gives the scores ``(1, T)`` and the plans
``(1, T, R, L)`` under the chosen partial-matching rule. A word's mass on the grid is the sum of its tokens' plan
columns (wordpieces of one word are merged), reshaped to ``(h, w)``.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .limits import SpaceInputError

__all__ = ["FragmentExplorer", "FragmentScores", "PARTIAL_MATCHING_RULES", "WordMass"]

PARTIAL_MATCHING_RULES = ("none", "relevance_threshold", "top_fraction", "mass")
"""The values of ``OMITImageTextConfig.partial_matching`` (see ``docs/omit.md``)."""


@dataclass(frozen=True)
class WordMass:
    """Where one word of a caption sends its transport mass.

    Attributes:
        word (`str`): the word as typed (its wordpieces merged).
        grid (`np.ndarray` of shape `(h, w)`): the word's mass on each image cell (sums to ``total``).
        total (`float`): the word's share of the caption's transported mass, in [0, 1]; 0 when the partial-matching
            rule left the word out.
    """

    word: str
    grid: np.ndarray
    total: float


@dataclass(frozen=True)
class FragmentScores:
    """Scores of ``T`` captions against one picture, with their fragment plans.

    Attributes:
        captions (`list[str]`): the captions.
        scores (`np.ndarray` of shape `(T,)`): OT scores in [-1, 1], higher is better.
        plans (`np.ndarray` of shape `(T, R, L)`): the fragment plans (zero on padding and on left-out fragments).
        words (`list[list[tuple[str, list[int]]]]`): per caption, each word and the token positions (plan columns)
            it spans.
        grid_shape (`tuple[int, int]`): ``(h, w)`` of the fragment grid.
        picture (`PIL.Image.Image`): the picture as the model saw it (the resized, centre-cropped input).
        rule (`str`): the partial-matching rule used.
    """

    captions: list[str]
    scores: np.ndarray
    plans: np.ndarray
    words: list[list[tuple[str, list[int]]]]
    grid_shape: tuple[int, int]
    picture: Image.Image
    rule: str

    def word_masses(self, caption_index: int) -> list[WordMass]:
        """Each word of caption ``caption_index`` and its mass on the grid.

        Raises:
            SpaceInputError: ``caption_index`` is not the position of a caption.
        """
        if isinstance(caption_index, bool) or not isinstance(caption_index, (int, np.integer)) or not (
                0 <= caption_index < len(self.captions)):
            raise SpaceInputError(f"Pick a caption number from 1 to {len(self.captions)}.")
        plan = self.plans[caption_index]  # (R, L)
        total = plan.sum()
        masses = []
        for word, columns in self.words[caption_index]:
            grid = plan[:, columns].sum(1).reshape(self.grid_shape)  # (h, w)
            masses.append(WordMass(word, grid, float(grid.sum() / total) if total > 0 else 0.0))
        return masses


class FragmentExplorer:
    """Scores captions against a picture with an OMIT model and exposes the fragment plans.

    Args:
        model (`OMITImageTextModel`): the model, in eval mode.
        tokenizer: its tokenizer (a fast tokenizer, for word boundaries).
        image_processor: the image processor of the vision tower or grid encoder (e.g.
            `OMITImageProcessor.for_efficientnet_lite()`).
        grid_encoder (`torch.nn.Module`, *optional*): ``pixel_values (1, 3, H, W) -> (1, R, image_fragment_dim)``,
            used when the model has no vision tower (e.g. `EfficientNetLite0GridEncoder`).
        untrained (`bool`, defaults to `False`): the projection heads were never trained (shown in the UI).
        description (`str`, defaults to ``""``): where the model comes from, for the UI.

    Raises:
        ValueError: the model has neither a vision tower nor a grid encoder, or the tokenizer is not a fast one.
    """

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, *, grid_encoder: torch.nn.Module | None = None,
                 untrained: bool = False, description: str = "") -> None:
        if getattr(model, "vision_model", None) is None and grid_encoder is None:
            raise ValueError("the OMIT model has no vision tower: pass a grid_encoder (e.g. "
                             "EfficientNetLite0GridEncoder()) that turns pictures into its image fragments.")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("FragmentExplorer needs a fast tokenizer (word boundaries come from word_ids()).")
        self.model, self.tokenizer, self.image_processor = model.eval(), tokenizer, image_processor
        self.grid_encoder = grid_encoder.eval() if grid_encoder is not None else None
        self.untrained, self.description = untrained, description
        self._lock = threading.Lock()  # partial_matching is a config field: one request at a time changes it

    def _picture(self, pixel_values: torch.Tensor) -> Image.Image:
        """The processed input ``(1, 3, H, W)`` back in uint8 RGB: exactly the crop the model saw."""
        processor = self.image_processor
        mean = np.asarray(processor.image_mean, dtype=np.float64).reshape(-1, 1, 1)
        std = np.asarray(processor.image_std, dtype=np.float64).reshape(-1, 1, 1)
        values = pixel_values[0].double().numpy()
        if processor.do_normalize:
            values = values * std + mean
        if processor.do_rescale:
            values = values / processor.rescale_factor
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8).transpose(1, 2, 0))

    def _image_fragments(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model.vision_model is not None:
            return self.model.get_image_fragments(pixel_values=pixel_values)
        raw = self.grid_encoder(pixel_values)  # (1, R, in)
        return self.model.get_image_fragments(image_fragments=raw)

    def _words(self, encoding: Any, row: int, mask: torch.Tensor, caption: str) -> list[tuple[str, list[int]]]:
        """Each word of a tokenized caption and the positions of its tokens that are valid fragments."""
        words: dict[int, list[int]] = {}
        for position, word_id in enumerate(encoding.word_ids(row)):
            if word_id is not None and bool(mask[position]):
                words.setdefault(word_id, []).append(position)
        result = []
        for word_id, positions in words.items():
            span = encoding.word_to_chars(row, word_id)
            result.append((caption[span.start:span.end], positions))
        return result

    def score(self, picture: Image.Image, captions: Sequence[str], *, rule: str = "none") -> FragmentScores:
        """Score ``captions`` against ``picture`` under the partial-matching ``rule``.

        Args:
            picture (`PIL.Image.Image`): an RGB picture (checked by `hf_mltm.space.limits.prepare_image`).
            captions (`Sequence[str]`): ``T`` captions (checked by `hf_mltm.space.limits.parse_lines`).
            rule (`str`, defaults to ``"none"``): one of `PARTIAL_MATCHING_RULES`.

        Returns:
            `FragmentScores`.

        Raises:
            SpaceInputError: an unknown rule, no captions, or a fragment count that is not a square grid.
        """
        if rule not in PARTIAL_MATCHING_RULES:
            raise SpaceInputError(f"Unknown partial-matching rule {rule!r}; pick one of "
                                  f"{', '.join(PARTIAL_MATCHING_RULES)}.")
        captions = list(captions)
        if not captions:
            raise SpaceInputError("Type at least one caption, one per line.")
        pixel_values = self.image_processor(picture, return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
        encoding = self.tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        inputs = {key: encoding[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoding}
        with torch.no_grad(), self._lock:
            image_fragments, image_mask = self._image_fragments(pixel_values)  # (1, R, d), (1, R)
            text_fragments, text_mask = self.model.get_text_fragments(**inputs)  # (T, L, d), (T, L)
            original = self.model.config
            self.model.config = copy.copy(original)
            self.model.config.partial_matching = rule
            try:
                result = self.model.pair_scores(image_fragments, image_mask, text_fragments, text_mask,
                                                return_plans=True)
            finally:
                self.model.config = original
        fragments = image_fragments.shape[1]
        side = math.isqrt(fragments)
        if side * side != fragments:
            raise SpaceInputError(f"The image tower gives {fragments} fragments, not a square grid; the overlay needs "
                                  "a CNN feature map (e.g. 7 x 7).")
        words = [self._words(encoding, row, text_mask[row], caption) for row, caption in enumerate(captions)]
        return FragmentScores(captions, result.value[0].double().numpy(), result.plan[0].double().numpy(), words,
                              (side, side), self._picture(pixel_values), rule)
