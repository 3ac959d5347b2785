"""Evaluate a model on a dataset in the *items view*: cross-modal retrieval and zero-shot classification.

Letters: ``N`` items (audio clips or images), ``T`` captions in all, ``C`` classes, ``d`` the embedding dimension.
The items view has one row per item: ``audio`` (absolute path, or ``{"bytes", "path"}``) or ``image``, ``captions``
(``list[str]``) and, for labelled sets, ``label``/``label_id``.

Every model family is reached through its adapter (`hf_mltm.adapters.get_adapter`): it encodes the items and the
captions once (frozen-tower outputs through the content-keyed feature cache when ``cache_dir`` is given) and gives
the ``(N, T)`` cost in chunks; both directions are ranked from that cost by :func:`hf_mltm.evaluation.ranks_from_cost`
and scored by :func:`hf_mltm.evaluation.retrieval_metrics`.

Ranking modes are reported separately and never mixed: ``"distance"`` ranks by the model's cost, ``"ot"`` by the
transductive entropic OT plan over the whole test set (a hubness correction, METHOD.md 1.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..adapters import get_adapter
from ..adapters.base import batch_slices, model_device, stack_rows
from ..data import class_prompts, label_text
from .ranking import RANKING_MODES, ranks_from_cost
from .retrieval import retrieval_metrics

__all__ = ["evaluate_retrieval", "modality_gap", "score_retrieval", "zero_shot_classification"]

DEFAULT_TEMPLATE = "This is a sound of {label}."


def modality_gap(item_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    """Distance between the modality centroids: ``|| mean(text) - mean(item) ||_2`` of L2-normalised embeddings.

    Args:
        item_embeds (`torch.Tensor` of shape `(N, d)`): audio or image embeddings (normalised here).
        text_embeds (`torch.Tensor` of shape `(T, d)`): caption embeddings (normalised here).

    Returns:
        `float` in ``[0, 2]``: 0 when the centroids coincide.

    Example:
        >>> modality_gap(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]]))  # sqrt(2)
        1.4142135623730951
    """
    if item_embeds.dim() != 2 or text_embeds.dim() != 2 or item_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"modality_gap needs item_embeds (N, d) and text_embeds (T, d) with the same d, got "
            f"{tuple(item_embeds.shape)} and {tuple(text_embeds.shape)}."
        )
    if item_embeds.shape[0] == 0 or text_embeds.shape[0] == 0:
        raise ValueError("modality_gap needs at least one item embedding and one text embedding.")
    items = torch.nn.functional.normalize(item_embeds.double(), dim=-1)
    texts = torch.nn.functional.normalize(text_embeds.double(), dim=-1)
    return float(torch.linalg.vector_norm(texts.mean(0) - items.mean(0)))


# --------------------------------------------------------------------------------------------------------------------
# Reading the items view


def _check_columns(items: Any, required: Iterable[str], purpose: str) -> None:
    columns = set(getattr(items, "column_names", []) or [])
    missing = [name for name in required if name not in columns]
    if missing:
        raise ValueError(
            f"The items dataset lacks the column(s) {missing} needed for {purpose} (it has {sorted(columns)}). "
            f"Build it in the items view, e.g. hf_mltm.data.build_clotho(data_dir, view='items')."
        )


def _flatten_captions(items) -> tuple[list[str], torch.Tensor]:
    """All captions and the row index of the item each belongs to, shape ``(T,)``."""
    texts, owners = [], []
    for row, captions in enumerate(items["captions"]):
        if isinstance(captions, str) or not captions:
            raise ValueError(
                f"Row {row} of the items dataset has 'captions' = {captions!r}: expected a non-empty list of "
                f"strings (the items view keeps all captions of an item in one list)."
            )
        texts.extend(captions)
        owners.extend([row] * len(captions))
    return texts, torch.tensor(owners, dtype=torch.long)


# --------------------------------------------------------------------------------------------------------------------
# Retrieval


def evaluate_retrieval(
    model,
    items,
    processor,
    *,
    ranking_modes: Sequence[str] = ("distance",),
    batch_size: int = 32,
    ot_epsilon: float | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    return_embeddings: bool = False,
    fragments: Any = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Text-to-item and item-to-text retrieval metrics of a model on a `datasets.Dataset` in the items view.

    The model's adapter encodes every item and caption once and gives the ``(N, T)`` cost (audio-text models: the
    model's ground cost between embeddings; image-text models: ``1 - `` the fragment-OT score of every pair).
    ``text_to_<item>`` ranks the items for each caption (one positive: its item); ``<item>_to_text`` ranks all
    captions for each item (positives: its captions; ``R@k`` uses the best of them). ``<item>`` is ``audio`` or
    ``image``.

    Args:
        model: an `MLTMAudioTextModel` or `OMITImageTextModel` (any model with a registered adapter).
        items (`datasets.Dataset`): items view: the media column (``audio`` or ``image``; or ``item_id`` with
            ``fragments``) and ``captions``, one row per item.
        processor: the model's processor.
        ranking_modes (`Sequence[str]`, defaults to ``("distance",)``): any of ``"distance"`` (plain cost) and
            ``"ot"`` (transductive OT re-ranking over the whole test set), each reported under its own key.
        batch_size (`int`, defaults to 32): items or captions per forward pass.
        ot_epsilon (`float`, *optional*): entropic regularisation of ``"ot"`` ranking, relative to the cost divided
            by its maximum when the model's ``cost_normalization`` is ``"batch_max"``; defaults to the model's.
        device (`str` or `torch.device`, *optional*): where to run the model; defaults to the model's device.
        progress (`bool`, defaults to `True`): show tqdm progress bars.
        return_embeddings (`bool`, defaults to `False`): also return the pooled embeddings (CPU float32).
        fragments (`datasets.Dataset` or `Mapping`, *optional*): precomputed image fragments (``item_id``,
            ``fragments`` columns) for an image-text model without a vision tower.
        cache_dir (`str` or `os.PathLike`, *optional*): a `hf_mltm.feature_cache.FeatureCache` folder for the
            frozen towers' outputs (computed once per item content, tower and settings).

    Returns:
        `dict`: for each ranking mode, ``{"text_to_<item>": metrics, "<item>_to_text": metrics, "rsum": float}``
        with the metrics of :func:`hf_mltm.evaluation.retrieval_metrics` and ``rsum`` the sum of R@1, R@5 and R@10
        of both directions; ``"modality_gap"`` (:func:`modality_gap`), ``"num_items"``, ``"num_captions"``,
        ``"settings"`` (the OT settings used); ``"cost"``, the ``(N, T)`` cost matrix; with ``return_embeddings``,
        ``"embeddings"``: ``{"<item>_embeds" (N, d), "text_embeds" (T, d), "text_item_index" (T,)}``.

    Raises:
        ValueError: an unknown ranking mode, missing columns or an unusable media/``captions`` value.
    """
    modes = _check_modes(ranking_modes)
    adapter = get_adapter(model)
    media = ("item_id",) if fragments is not None else (adapter.item_column,)
    _check_columns(items, (*media, "captions"), "retrieval")
    device = model_device(model, device)
    texts, text_item = _flatten_captions(items)
    encode = {"batch_size": batch_size, "device": device, "progress": progress, "cache_dir": cache_dir}
    item_codes = adapter.encode_items(model, items, processor, fragments=fragments, **encode)
    text_codes = adapter.encode_texts(model, texts, processor, **encode)
    cost = adapter.cost_matrix(model, item_codes, text_codes)  # (N, T)
    settings = adapter.ranking_settings(model)
    if ot_epsilon is not None:
        settings["epsilon"] = float(ot_epsilon)
    item_ids = torch.arange(len(item_codes))
    name = adapter.item_name
    results: dict[str, Any] = {}
    for mode in modes:
        to_item = retrieval_metrics(ranks_from_cost(cost.T, text_item, item_ids, mode=mode, **settings))
        to_text = retrieval_metrics(ranks_from_cost(cost, item_ids, text_item, mode=mode, **settings))
        rsum = sum(metrics[f"R@{k}"] for metrics in (to_item, to_text) for k in (1, 5, 10))
        results[mode] = {f"text_to_{name}": to_item, f"{name}_to_text": to_text, "rsum": rsum}
    results["modality_gap"] = modality_gap(item_codes.pooled, text_codes.pooled)
    results["num_items"], results["num_captions"] = len(item_codes), len(text_codes)
    results["settings"] = ({"ot_epsilon": settings["epsilon"], "cost_normalization": settings["normalization"]}
                           if "ot" in modes else {})
    results["cost"] = cost
    if return_embeddings:
        results["embeddings"] = {f"{name}_embeds": item_codes.pooled, "text_embeds": text_codes.pooled,
                                 "text_item_index": text_item}
    return results


def _check_modes(ranking_modes: Sequence[str]) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(ranking_modes))
    unknown = [mode for mode in modes if mode not in RANKING_MODES]
    if unknown or not modes:
        raise ValueError(f"Unknown ranking mode(s) {unknown or list(ranking_modes)}; use any of {RANKING_MODES}.")
    return modes


@torch.no_grad()
def score_retrieval(
    model,
    images: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
    captions: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
    *,
    batch_size: int = 128,
    progress: bool = False,
) -> torch.Tensor:
    """OMIT scores of ``N`` images against ``M`` captions from model inputs (e.g. a 1K test set with 5 captions per
    image): each image and caption is encoded once, then every pair is scored by fragment OT in chunks of about
    ``config.score_chunk_size`` pairs, which bounds the memory.

    Args:
        model (`OMITImageTextModel`): the model (put in eval mode).
        images: ``{"pixel_values": (N, 3, H, W)}`` or ``{"image_fragments": (N, R, in), "image_fragment_mask":
            (N, R)}``, split into batches of ``batch_size``; or an iterable of such batches (e.g. a collator's).
        captions: ``{"input_ids": (M, L), "attention_mask": (M, L)}`` (+ ``token_type_ids``), or an iterable of
            such batches.

    Returns:
        `torch.FloatTensor` of shape `(N, M)`: OT scores, higher is better.
    """
    from tqdm.auto import tqdm

    model.eval()
    device = model_device(model)
    codes = []
    for name, inputs, encode in (("images", images, model.get_image_fragments),
                                 ("captions", captions, model.get_text_fragments)):
        batches = ([{key: value[rows] for key, value in inputs.items()}
                    for rows in batch_slices(len(next(iter(inputs.values()))), batch_size)]
                   if isinstance(inputs, Mapping) else inputs)
        rows = []
        for batch in tqdm(batches, desc=f"encoding {name}", disable=not progress):
            fragments, mask = encode(**{key: value.to(device) for key, value in batch.items()})
            rows.extend({"fragments": f, "mask": m} for f, m in zip(fragments.float().cpu(), mask.cpu(), strict=True))
        codes.append(stack_rows(rows))
    (images, texts), chunk = codes, max(1, model.config.score_chunk_size // max(len(codes[1]["mask"]), 1))
    return torch.cat([model.pair_scores(images["fragments"][rows].to(device), images["mask"][rows].to(device),
                                        texts["fragments"].to(device), texts["mask"].to(device)).value.float().cpu()
                      for rows in batch_slices(len(images["mask"]), chunk)])


# --------------------------------------------------------------------------------------------------------------------
# Zero-shot classification


def zero_shot_classification(
    model,
    items,
    processor,
    labels: Sequence[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
    fragments: Any = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Zero-shot classification by ranking class prompts for each item (the ESC-50 protocol for audio).

    Each label becomes the prompt ``template.format(label=...)`` with underscores replaced by spaces; the prompts
    are ranked for every item by the model's cost (plain distance; one positive: the item's class).

    Args:
        model: an `MLTMAudioTextModel` or `OMITImageTextModel`.
        items (`datasets.Dataset`): items view with the media column (``audio``/``image``) and ``label``
            (human-readable class name) columns.
        processor: the model's processor.
        labels (`Sequence[str]`): the ``C`` class names (e.g. ``"chirping_birds"``); every item's label must be
            one of them (compared after replacing underscores by spaces).
        template (`str`, defaults to ``"This is a sound of {label}."``): prompt with a ``{label}`` field.
        batch_size (`int`, defaults to 32), device, progress, fragments, cache_dir: as in :func:`evaluate_retrieval`.

    Returns:
        `dict`: ``{"distance": {"<item>_to_label": metrics}}`` where metrics are those of
        :func:`hf_mltm.evaluation.retrieval_metrics` (``R@1`` is the accuracy in percent, ``MRR@10`` the reference
        code's "mAP"); ``"accuracy"`` (fraction), ``"labels"`` and ``"prompts"`` (``C``), ``"predictions"`` and
        ``"references"`` (class indices per item, ``N``), ``"predicted_labels"``.

    Raises:
        ValueError: missing columns, a template without ``{label}``, duplicate labels or an item label outside
            ``labels``.
    """
    adapter = get_adapter(model)
    _check_columns(items, (adapter.item_column if fragments is None else "item_id", "label"),
                   "zero-shot classification")
    if "{label}" not in template:
        raise ValueError(f"template {template!r} has no '{{label}}' field to put the class name in.")
    names = [label_text(label) for label in labels]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"labels must be a non-empty list of distinct class names, got {list(labels)}.")
    position = {name: index for index, name in enumerate(names)}
    references = []
    for row, label in enumerate(items["label"]):
        name = label_text(label)
        if name not in position:
            raise ValueError(
                f"Row {row} of the items dataset has label {label!r}, which is not among the {len(names)} labels "
                f"given (e.g. {names[:3]}): pass every class of the dataset."
            )
        references.append(position[name])
    prompts = class_prompts(names, template)
    device = model_device(model, device)
    encode = {"batch_size": batch_size, "device": device, "progress": progress, "cache_dir": cache_dir}
    item_codes = adapter.encode_items(model, items, processor, fragments=fragments, **encode)
    prompt_codes = adapter.encode_texts(model, prompts, processor, **encode)
    cost = adapter.cost_matrix(model, item_codes, prompt_codes)  # (N, C)
    truth = torch.tensor(references, dtype=torch.long)
    metrics = retrieval_metrics(ranks_from_cost(cost, truth, torch.arange(len(names)), mode="distance"))
    predictions = cost.argmin(1)  # (N,), first index on ties
    return {
        "distance": {f"{adapter.item_name}_to_label": metrics},
        "accuracy": metrics["R@1"] / 100,
        "labels": names,
        "prompts": prompts,
        "predictions": predictions.tolist(),
        "predicted_labels": [names[index] for index in predictions.tolist()],
        "references": references,
    }
