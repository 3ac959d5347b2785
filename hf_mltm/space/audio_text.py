"""The audio-text logic of the Space: a searchable clip gallery, zero-shot labelling of one clip, and the OT plan
between a few clips and captions.

Letters: ``N`` gallery clips, ``K`` context prompts (one per distinct gallery label), ``C`` labels or captions,
``n`` clips picked for the plan explorer, ``d`` the joint embedding dimension.

Everything runs through the model's adapter (`hf_mltm.adapters.get_adapter`): clips are encoded by
``encode_items`` / ``item_tower_rows`` (gallery clips through the content-keyed feature cache, so a restart reads
them from disk instead of running the audio tower again), texts by ``encode_texts`` and costs by ``cost_block``
(lower is better). Ranking follows `hf_mltm.evaluation.ranking`:

- ``"distance"``: clips sorted by their cost to the query.
- ``"ot"``: transductive OT re-ranking (m-LTM). One query alone cannot be re-ranked by OT: with a single row, the
  uniform plan sends ``1/N`` to every clip whatever the costs. The query is therefore solved together with ``K``
  context queries, the gallery's own class prompts (``"the sound of {label}"``); clips are then ranked by
  ``C_qj - g_j``, the cost corrected by clip ``j``'s dual potential, exactly as `ranks_from_cost` does with
  ``mode="ot"``. A clip that is close to every query (a hub) gets a large ``g_j`` and moves down.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_mltm.adapters import Encoded, get_adapter
from hf_mltm.evaluation.ranking import check_ranking_mode
from hf_mltm.ot import CostChunks, normalize_cost, partial_sinkhorn, sinkhorn, streaming_sinkhorn

from .limits import DEFAULT_LIMITS, InputLimits, PreparedAudio, SpaceInputError, check_query, check_template

__all__ = [
    "AudioGallery",
    "GalleryClip",
    "LabelScore",
    "SearchHit",
    "TransportView",
    "UserClips",
    "classify_clip",
    "encode_clips",
    "transport_plan",
]

DEFAULT_CONTEXT_TEMPLATE = "the sound of {label}"


@dataclass(frozen=True)
class GalleryClip:
    """One clip of the gallery.

    Attributes:
        item_id (`str`): unique name shown in the UI (e.g. the ESC-50 file stem ``"1-100032-A-0"``).
        label (`str`): its class or description (``"dog"``).
        audio (`str`): path of the audio file (served to the browser's player).
        source (`str`): where it comes from (``"ESC-50"``, ``"upload"``, ...).
    """

    item_id: str
    label: str
    audio: str
    source: str

    @property
    def display_name(self) -> str:
        """``"<label> (<item_id>)"``, unique within a gallery."""
        return f"{self.label} ({self.item_id})"


@dataclass(frozen=True)
class SearchHit:
    """One ranked clip of a text query.

    Attributes:
        rank (`int`): 1-based position.
        clip (`GalleryClip`): the clip.
        cost (`float`): the model's cost between query and clip (lower is better).
        score (`float`): what the ranking sorts by, ascending: ``cost`` (distance) or ``cost - g`` (OT).
    """

    rank: int
    clip: GalleryClip
    cost: float
    score: float


@dataclass
class UserClips:
    """Clips one visitor added to the gallery (kept in that visitor's session only, never on disk).

    Attributes:
        clips (`list[GalleryClip]`): the clips, in the order added.
        embeds (`Encoded` or `None`): their encoding, rows in the order of ``clips``.
    """

    clips: list[GalleryClip] = field(default_factory=list)
    embeds: Encoded | None = None

    def __len__(self) -> int:
        return len(self.clips)


@dataclass(frozen=True)
class LabelScore:
    """A label's zero-shot result for one clip: ``probability`` (softmax of the model's logits over the labels, in
    [0, 1]), ``cost`` (lower is better) and the ``prompt`` that was encoded."""

    label: str
    prompt: str
    probability: float
    cost: float


def concat_encoded(parts: Sequence[Encoded]) -> Encoded:
    """Rows of several `Encoded` of one family, one after the other (embeddings ``(N, d)`` only, no padding)."""
    parts = [part for part in parts if part is not None and len(part)]
    if not parts:
        raise ValueError("concat_encoded needs at least one non-empty Encoded.")
    if len(parts) == 1:
        return parts[0]
    keys = parts[0].tensors.keys()
    tensors = {key: torch.cat([part.tensors[key] for part in parts]) for key in keys}
    return Encoded(tensors, torch.cat([part.pooled for part in parts]))


def select_rows(encoded: Encoded, rows: Sequence[int]) -> Encoded:
    """The rows ``rows`` of an `Encoded`, in that order."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    return Encoded({key: value[index] for key, value in encoded.tensors.items()}, encoded.pooled[index])


def _check_audio_model(model: Any) -> Any:
    adapter = get_adapter(model)
    if adapter.item_column != "audio":
        raise ValueError(f"the audio tabs need an audio-text model, got model_type={model.config.model_type!r}; "
                         "set HF_MLTM_SPACE_MODEL to an m-LTM (mltm_audio_text) folder or Hub id.")
    return adapter


def encode_clips(model: Any, processor: Any, audio_values: Sequence[Any], *, cache_dir: str | os.PathLike | None = None,
                 batch_size: int = 16, progress: bool = False) -> Encoded:
    """Encode clips for matching: ``audio_values`` are paths or decoded ``{"array", "sampling_rate"}`` values.

    With ``cache_dir``, the audio tower's outputs come from (and go to) the content-keyed feature cache, so only
    clips never seen with this tower and these settings run through it.

    Returns:
        `Encoded`: the clips' embeddings (``tensors["embeds"]`` ``(N, d)`` for m-LTM).
    """
    adapter = _check_audio_model(model)
    return adapter.encode_items(model, {adapter.item_column: list(audio_values)}, processor, batch_size=batch_size,
                                progress=progress, cache_dir=cache_dir)


def _encode_texts(model: Any, processor: Any, texts: Sequence[str], cache_dir=None) -> Encoded:
    return get_adapter(model).encode_texts(model, list(texts), processor, progress=False, cache_dir=cache_dir)


def _costs(model: Any, items: Encoded, texts: Encoded) -> torch.Tensor:
    """The cost ``(len(items), len(texts))``, float32 on the CPU, in one block."""
    with torch.no_grad():
        return get_adapter(model).cost_block(model, items, texts, slice(0, len(items)))


class AudioGallery:
    """A text-searchable gallery of clips, encoded once (through the feature cache) when it is built.

    Args:
        model: an m-LTM model (`MLTMAudioTextModel`), in eval mode.
        processor: its processor (`MLTMProcessor`).
        clips (`Sequence[GalleryClip]`): the clips; their ``audio`` files are read once per content (cache misses).
        cache_dir (`str` or `os.PathLike`, *optional*): the feature-cache root (e.g. ``~/.cache/hf_mltm/features``);
            `None` computes everything in memory.
        context_template (`str`, defaults to ``"the sound of {label}"``): prompt of the context queries used by the
            ``"ot"`` ranking (one per distinct gallery label).
        batch_size (`int`, defaults to 16): clips per tower call on a cache miss.
        progress (`bool`, defaults to `False`): show a progress bar while encoding.
        embeds (`Encoded`, *optional*): the clips' encoding when already known (e.g. a benchmark repeating clips);
            skips the audio tower.

    Raises:
        ValueError: no clips, duplicate ``item_id``, or a model that is not audio-text.
    """

    def __init__(self, model: Any, processor: Any, clips: Sequence[GalleryClip], *,
                 cache_dir: str | os.PathLike | None = None, context_template: str = DEFAULT_CONTEXT_TEMPLATE,
                 batch_size: int = 16, progress: bool = False, embeds: Encoded | None = None) -> None:
        self.adapter = _check_audio_model(model)
        self.model, self.processor = model, processor
        self.clips = list(clips)
        if not self.clips:
            raise ValueError("the gallery needs at least one clip.")
        names = [clip.item_id for clip in self.clips]
        if len(set(names)) != len(names):
            duplicate = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"gallery item_id {duplicate!r} appears twice; give every clip a unique item_id.")
        self.cache_dir = cache_dir
        self.embeds = embeds if embeds is not None else encode_clips(
            model, processor, [clip.audio for clip in self.clips], cache_dir=cache_dir, batch_size=batch_size,
            progress=progress)
        if len(self.embeds) != len(self.clips):
            raise ValueError(f"embeds has {len(self.embeds)} rows for {len(self.clips)} clips.")
        self.context_prompts = [context_template.format(label=label)
                                for label in dict.fromkeys(clip.label for clip in self.clips)]
        self.context = _encode_texts(model, processor, self.context_prompts, cache_dir=cache_dir)
        self.context_cost = _costs(model, self.embeds, self.context)  # (N, K)
        self.settings = self.adapter.ranking_settings(model)
        self._by_name = {clip.display_name: index for index, clip in enumerate(self.clips)}

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def display_names(self) -> list[str]:
        """The clips' display names, in gallery order."""
        return list(self._by_name)

    def clip_by_name(self, name: str) -> tuple[int, GalleryClip]:
        """The index and clip of a display name (as listed by `display_names`)."""
        if name not in self._by_name:
            raise SpaceInputError(f"No clip named {name!r} in the gallery; pick one from the list.")
        index = self._by_name[name]
        return index, self.clips[index]

    def add_clips(self, user: UserClips | None, clips: Sequence[PreparedAudio], *,
                  limits: InputLimits = DEFAULT_LIMITS) -> UserClips:
        """A new `UserClips` with ``clips`` appended (encoded now, in memory; nothing is written to disk).

        Raises:
            SpaceInputError: no clip, or more than ``limits.max_uploads`` clips in all.
        """
        user = user if user is not None else UserClips()
        if not clips:
            raise SpaceInputError("No clip to add: upload one or more audio files first.")
        if len(user) + len(clips) > limits.max_uploads:
            raise SpaceInputError(f"At most {limits.max_uploads} clips can be added per visit; you have "
                                  f"{len(user)} and tried to add {len(clips)}.")
        encoded = encode_clips(self.model, self.processor, [clip.as_audio_value() for clip in clips])
        start = len(user)
        added = [GalleryClip(f"upload {start + i + 1}", Path(clip.name).stem, clip.path or clip.name, "upload")
                 for i, clip in enumerate(clips)]
        return UserClips(user.clips + added, concat_encoded([user.embeds, encoded]))

    def search(self, query: str, *, mode: str = "distance", top_k: int = 10, user: UserClips | None = None,
               limits: InputLimits = DEFAULT_LIMITS) -> list[SearchHit]:
        """Rank the gallery (and the visitor's clips) for a text query.

        Args:
            query (`str`): what to look for (checked by `check_query`).
            mode (`str`, defaults to ``"distance"``): ``"distance"`` or ``"ot"`` (see the module docstring).
            top_k (`int`, defaults to 10): how many hits to return (at most the gallery size).
            user (`UserClips`, *optional*): the visitor's uploaded clips, ranked with the gallery.

        Returns:
            `list[SearchHit]`: the ``top_k`` best clips, best first; ties are broken by gallery order (uploads last).

        Raises:
            SpaceInputError: an empty or too long query, an unknown mode, or ``top_k < 1``.
        """
        query = check_query(query, limits=limits)
        try:
            check_ranking_mode(mode)
        except ValueError as error:
            raise SpaceInputError(str(error)) from error
        if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or top_k < 1:
            raise SpaceInputError(f"The number of results must be at least 1, got {top_k!r}.")
        clips, items, context_cost = self.clips, self.embeds, self.context_cost
        if user is not None and len(user):
            clips = clips + user.clips
            items = concat_encoded([items, user.embeds])
            context_cost = torch.cat([context_cost, _costs(self.model, user.embeds, self.context)])
        query_codes = _encode_texts(self.model, self.processor, [query])
        cost = _costs(self.model, items, query_codes)[:, 0]  # (N,)
        score = cost if mode == "distance" else cost - ot_correction(
            torch.cat([cost[None], context_cost.T]), **self.settings)  # (N,)
        order = torch.sort(score, stable=True).indices[: int(top_k)].tolist()
        return [SearchHit(rank + 1, clips[j], float(cost[j]), float(score[j])) for rank, j in enumerate(order)]

    def plan_between(self, names: Sequence[str], captions: Sequence[str], *, epsilon: float, mass: float = 1.0
                     ) -> TransportView:
        """The entropic OT plan between the gallery clips ``names`` and ``captions`` (see `transport_plan`).

        Raises:
            SpaceInputError: fewer than two clips, an unknown or repeated clip name.
        """
        names = list(dict.fromkeys(names or []))
        if len(names) < 2:
            raise SpaceInputError("Pick at least two clips for the plan explorer.")
        rows = [self.clip_by_name(name)[0] for name in names]
        texts = _encode_texts(self.model, self.processor, captions)
        cost = _costs(self.model, select_rows(self.embeds, rows), texts)  # (n, C)
        return transport_plan(cost, epsilon=epsilon, mass=mass, normalization=self.settings["normalization"])


def ot_correction(cost: torch.Tensor, *, epsilon: float, normalization: str = "batch_max", max_iter: int = 100,
                  tol: float = 1e-6) -> torch.Tensor:
    """The transductive-OT correction ``g * cost_scale`` ``(N,)`` of the items of a cost ``(Q, N)`` (queries x
    items), in the cost's units: ranking ``cost[q] - correction`` is `ranks_from_cost`'s ``mode="ot"``."""
    result = streaming_sinkhorn(CostChunks.from_matrix(cost), epsilon, normalization=normalization,
                                max_iter=max_iter, tol=tol)
    return (result.g * result.cost_scale).to(cost.dtype)


def classify_clip(model: Any, processor: Any, clip: PreparedAudio, labels: Sequence[str], *,
                  template: str = DEFAULT_CONTEXT_TEMPLATE, limits: InputLimits = DEFAULT_LIMITS) -> list[LabelScore]:
    """Zero-shot labelling of one clip: every label becomes ``template.format(label=...)`` (underscores as spaces)
    and the prompts are ranked by the model's cost to the clip.

    Probabilities are the softmax of the model's logits over the labels (``-cost / ot_epsilon`` for OT-trained
    m-LTM models, ``cos / temperature`` for the InfoNCE baseline), as the zero-shot audio pipeline reports them.

    Returns:
        `list[LabelScore]`: one per label, most probable first (ties in the order given).

    Raises:
        SpaceInputError: a bad template (see `check_template`) or no labels.
    """
    template = check_template(template, limits=limits)
    if not labels:
        raise SpaceInputError("Type at least one label, one per line.")
    prompts = [template.format(label=label.replace("_", " ")) for label in labels]
    clip_codes = encode_clips(model, processor, [clip.as_audio_value()])
    cost = _costs(model, clip_codes, _encode_texts(model, processor, prompts))[0]  # (C,)
    logits = model.logits_from_cost(cost) if hasattr(model, "logits_from_cost") else -cost
    probabilities = torch.softmax(logits.double(), dim=-1)
    order = torch.sort(-probabilities, stable=True).indices.tolist()
    return [LabelScore(labels[i], prompts[i], float(probabilities[i]), float(cost[i])) for i in order]


@dataclass(frozen=True)
class TransportView:
    """An entropic OT plan between ``n`` clips (rows) and ``C`` captions (columns), uniform capacities.

    Attributes:
        plan (`np.ndarray` of shape `(n, C)`): the plan; rows sum to at most ``1/n``, columns to at most ``1/C``,
            and everything to ``mass``.
        cost (`np.ndarray` of shape `(n, C)`): the model's cost (before normalisation).
        epsilon (`float`): regularisation, relative to the normalised cost.
        mass (`float`): transported mass in (0, 1].
        row_left (`np.ndarray` of shape `(n,)`), col_left (`(C,)`): capacity left untransported per clip/caption.
    """

    plan: np.ndarray
    cost: np.ndarray
    epsilon: float
    mass: float
    row_left: np.ndarray
    col_left: np.ndarray

    def left_fraction(self) -> tuple[np.ndarray, np.ndarray]:
        """The fraction of each clip's (row) and caption's (column) capacity left untransported, in [0, 1]."""
        n, c = self.plan.shape
        return np.clip(self.row_left * n, 0, 1), np.clip(self.col_left * c, 0, 1)


def transport_plan(cost: torch.Tensor, *, epsilon: float, mass: float = 1.0, normalization: str = "batch_max",
                   max_iter: int = 2000, tol: float = 1e-9) -> TransportView:
    """The entropic OT plan of a cost ``(n, C)`` with uniform capacities, balanced or partial.

    The cost is normalised as the model normalises it in training (``"batch_max"``: divided by its largest entry),
    then solved in float64 with `hf_mltm.ot.sinkhorn` (``mass == 1``) or `hf_mltm.ot.partial_sinkhorn`
    (``mass < 1``: only ``mass`` is transported, and the worst-matched clips and captions keep their capacity).

    Args:
        cost (`torch.Tensor` of shape `(n, C)`): the cost, lower is better.
        epsilon (`float`): entropic regularisation, relative to the normalised cost, in (0, 10].
        mass (`float`, defaults to 1): transported mass, in (0, 1].
        normalization (`str`, defaults to ``"batch_max"``): ``"batch_max"`` or ``"none"``.

    Raises:
        SpaceInputError: ``epsilon`` or ``mass`` outside their ranges, or an empty cost.
    """
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and 0 < epsilon <= 10):
        raise SpaceInputError(f"epsilon must be a number in (0, 10], got {epsilon!r}.")
    if not (isinstance(mass, (int, float)) and math.isfinite(mass) and 0 < mass <= 1):
        raise SpaceInputError(f"The transported mass must be in (0, 1], got {mass!r}.")
    if cost.dim() != 2 or min(cost.shape) == 0:
        raise SpaceInputError(f"The plan needs at least one clip and one caption, got a cost of shape "
                              f"{tuple(cost.shape)}.")
    normalized = normalize_cost(cost.double(), normalization)
    if mass >= 1:
        result = sinkhorn(None, None, normalized, float(epsilon), max_iter=max_iter, tol=tol, warn=False)
    else:
        result = partial_sinkhorn(None, None, normalized, float(epsilon), float(mass), max_iter=max_iter, tol=tol,
                                  warn=False)
    plan = result.plan.numpy()
    n, c = plan.shape
    return TransportView(plan, cost.double().numpy(), float(epsilon), float(mass),
                         np.clip(1 / n - plan.sum(1), 0, None), np.clip(1 / c - plan.sum(0), 0, None))
