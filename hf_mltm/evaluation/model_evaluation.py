"""Evaluate a model on a dataset in the *items view*: cross-modal retrieval and zero-shot classification.

Letters: ``N`` items (audio clips or images), ``T`` captions in all, ``C`` classes, ``d`` the embedding dimension.
The items view has one row per item: ``audio`` (absolute path, or ``{"bytes", "path"}``) or ``image``, ``captions``
(``list[str]``) and, for labelled sets, ``label``/``label_id``. Rankings come from
:func:`hf_mltm.evaluation.retrieval_ranks` and numbers from :func:`hf_mltm.evaluation.retrieval_metrics`.

Ranking modes are reported separately and never mixed: ``"distance"`` ranks by the model's ground cost,
``"ot"`` by the transductive entropic OT plan over the whole test set (a hubness correction, METHOD.md 1.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..audio import load_audio
from ..data import class_prompts
from ..data._common import label_text
from .ranking import ranks_from_cost, retrieval_ranks
from .retrieval import retrieval_metrics

__all__ = ["evaluate_retrieval", "modality_gap", "zero_shot_classification"]

RANKING_MODES = ("distance", "ot")
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


def _audio_source(value: Any, row: int) -> str | bytes:
    """The path or encoded bytes of the ``audio`` value of row ``row``."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return value["path"]
    elif isinstance(value, (str, bytes)) and value:
        return value
    raise ValueError(
        f"Row {row} of the items dataset has an unusable 'audio' value {str(value)[:80]!r}: expected an absolute "
        f"file path or a dict with 'bytes' or 'path' (keep the column undecoded, Audio(decode=False))."
    )


def _batches(count: int, batch_size: int, desc: str, progress: bool) -> Iterable[range]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    with tqdm(total=count, desc=desc, unit="ex", disable=not progress) as bar:
        for start in range(0, count, batch_size):
            rows = range(start, min(start + batch_size, count))
            yield rows
            bar.update(len(rows))


def _to_device(batch: Any, keys: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: batch[key].to(device) for key in keys if key in batch}


@torch.no_grad()
def _embed_audio(model, items, processor, batch_size: int, device: torch.device, progress: bool) -> torch.Tensor:
    """``(N, d)`` audio embeddings of the items, decoded at the feature extractor's sampling rate."""
    sampling_rate = int(processor.feature_extractor.sampling_rate)
    column = items["audio"]
    chunks = []
    for rows in _batches(len(column), batch_size, "audio", progress):
        waveforms = [load_audio(_audio_source(column[row], row), sampling_rate)[0] for row in rows]
        batch = processor(audio=waveforms, sampling_rate=sampling_rate, return_tensors="pt")
        inputs = _to_device(batch, ("input_features", "audio_attention_mask"), device)
        chunks.append(model.embed_audio(**inputs).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def _embed_text(model, texts: Sequence[str], processor, batch_size: int, device: torch.device,
                progress: bool) -> torch.Tensor:
    """``(T, d)`` text embeddings."""
    chunks = []
    for rows in _batches(len(texts), batch_size, "text", progress):
        batch = processor(text=[texts[row] for row in rows], return_tensors="pt")
        inputs = _to_device(batch, ("input_ids", "attention_mask", "token_type_ids"), device)
        chunks.append(model.embed_text(**inputs).float().cpu())
    return torch.cat(chunks)


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


def _model_device(model, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _is_pair_scoring(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) == "omit_image_text" or hasattr(model, "score_retrieval")


# --------------------------------------------------------------------------------------------------------------------
# Retrieval


def _direction_metrics(
    cost_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    query_embeds: torch.Tensor,
    item_embeds: torch.Tensor,
    query_ids: torch.Tensor,
    item_ids: torch.Tensor,
    mode: str,
    epsilon: float,
    normalization: str,
) -> dict[str, float]:
    ranks = retrieval_ranks(query_embeds, item_embeds, query_ids, item_ids, cost_fn=cost_fn, mode=mode,
                            epsilon=epsilon, normalization=normalization)
    return retrieval_metrics(ranks)


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
) -> dict[str, Any]:
    """Text-to-item and item-to-text retrieval metrics of a model on a `datasets.Dataset` in the items view.

    For audio-text dual encoders (`MLTMAudioTextModel`): every clip and caption is embedded once
    (``model.embed_audio``, ``model.embed_text``; audio decoded with :func:`hf_mltm.audio.load_audio` at the feature
    extractor's sampling rate) and ranked by ``model.pairwise_cost``. ``text_to_audio`` ranks the clips for each
    caption (one positive: its clip); ``audio_to_text`` ranks all captions for each clip (positives: its captions;
    ``R@k`` uses the best of them). Image-text pair-scoring models (`OMITImageTextModel`) score the whole
    ``(N, T)`` matrix with ``model.score_retrieval`` (directions ``text_to_image`` and ``image_to_text``; the result
    also holds ``"scores"``); their images come from the ``image`` column through ``processor.image_processor``, or
    from precomputed ``fragments`` looked up by ``item_id``.

    Args:
        model: an `MLTMAudioTextModel` (or any model with ``embed_audio``, ``embed_text``, ``pairwise_cost``).
        items (`datasets.Dataset`): items view: ``audio`` and ``captions`` columns, one row per clip.
        processor: an `MLTMProcessor` (``processor(audio=..., sampling_rate=...)``, ``processor(text=...)``).
        ranking_modes (`Sequence[str]`, defaults to ``("distance",)``): any of ``"distance"`` (plain cost) and
            ``"ot"`` (transductive OT re-ranking over the whole test set), each reported under its own key.
        batch_size (`int`, defaults to 32): clips or captions per forward pass.
        ot_epsilon (`float`, *optional*): entropic regularisation of ``"ot"`` ranking, relative to the cost divided
            by its maximum when ``model.config.cost_normalization == "batch_max"``; defaults to
            ``model.config.ot_epsilon``.
        device (`str` or `torch.device`, *optional*): where to run the model; defaults to the model's device.
        progress (`bool`, defaults to `True`): show tqdm progress bars.
        return_embeddings (`bool`, defaults to `False`): also return the embeddings (CPU float32).
        fragments (`datasets.Dataset` or `Mapping`, *optional*): precomputed image fragments (``item_id``,
            ``fragments`` columns; `hf_mltm.data.grid_features`) for an image-text model without a vision tower.

    Returns:
        `dict`: for each ranking mode, ``{"text_to_audio": metrics, "audio_to_text": metrics, "rsum": float}`` with
        the metrics of :func:`hf_mltm.evaluation.retrieval_metrics` and ``rsum`` the sum of R@1, R@5 and R@10 of both
        directions; ``"modality_gap"`` (:func:`modality_gap`), ``"num_items"``, ``"num_captions"``, ``"settings"``
        (the OT settings used); with ``return_embeddings``, ``"embeddings"``: ``{"audio_embeds" (N, d),
        "text_embeds" (T, d), "text_item_index" (T,)}``.

    Raises:
        ValueError: an unknown ranking mode, missing columns or an unusable ``audio``/``captions`` value.
    """
    modes = tuple(dict.fromkeys(ranking_modes))
    unknown = [mode for mode in modes if mode not in RANKING_MODES]
    if unknown or not modes:
        raise ValueError(f"Unknown ranking mode(s) {unknown or list(ranking_modes)}; use any of {RANKING_MODES}.")
    if _is_pair_scoring(model):
        return _evaluate_pair_scoring(model, items, processor, modes=modes, batch_size=batch_size, device=device,
                                      progress=progress, fragments=fragments, ot_epsilon=ot_epsilon)
    _check_columns(items, ("audio", "captions"), "audio-text retrieval")
    device = _model_device(model, device)
    model.eval()
    texts, text_item = _flatten_captions(items)
    audio_embeds = _embed_audio(model, items, processor, batch_size, device, progress)  # (N, d)
    text_embeds = _embed_text(model, texts, processor, batch_size, device, progress)  # (T, d)
    audio_ids = torch.arange(len(audio_embeds))
    config = getattr(model, "config", None)
    epsilon = float(ot_epsilon if ot_epsilon is not None else getattr(config, "ot_epsilon", 0.05))
    normalization = getattr(config, "cost_normalization", "batch_max")

    def audio_to_text_cost(audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return model.pairwise_cost(audio.to(device), text.to(device)).float().cpu()  # (a, T)

    def text_to_audio_cost(text: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return model.pairwise_cost(audio.to(device), text.to(device)).T.float().cpu()  # (t, N)

    results: dict[str, Any] = {}
    with torch.no_grad():
        for mode in modes:
            text_to_audio = _direction_metrics(text_to_audio_cost, text_embeds, audio_embeds, text_item, audio_ids,
                                               mode, epsilon, normalization)
            audio_to_text = _direction_metrics(audio_to_text_cost, audio_embeds, text_embeds, audio_ids, text_item,
                                               mode, epsilon, normalization)
            rsum = sum(metrics[f"R@{k}"] for metrics in (text_to_audio, audio_to_text) for k in (1, 5, 10))
            results[mode] = {"text_to_audio": text_to_audio, "audio_to_text": audio_to_text, "rsum": rsum}
    results["modality_gap"] = modality_gap(audio_embeds, text_embeds)
    results["num_items"], results["num_captions"] = len(audio_embeds), len(text_embeds)
    results["settings"] = {"ot_epsilon": epsilon, "cost_normalization": normalization} if "ot" in modes else {}
    if return_embeddings:
        results["embeddings"] = {"audio_embeds": audio_embeds, "text_embeds": text_embeds,
                                 "text_item_index": text_item}
    return results


# ---- Image-text pair-scoring models --------------------------------------------------------------------------------
def _evaluate_pair_scoring(model, items, processor, *, modes, batch_size, device, progress, fragments,
                           ot_epsilon) -> dict[str, Any]:
    """Image-text retrieval for models that score (image, caption) pairs jointly (`OMITImageTextModel`).

    Such models cannot rank from independent embeddings: the fragment OT needs every pair, so the model scores the
    whole ``(N images, T captions)`` matrix once (``model.score_retrieval``, each image and caption encoded once,
    pairs in memory-bounded chunks) and both directions rank from ``1 - score``.
    """
    from hf_mltm.data.collators import ImageTextCollator

    _check_columns(items, ("item_id", "captions") if fragments is not None else ("image", "captions"),
                   "image-text retrieval")
    device = _model_device(model, device)
    model.eval()
    texts, text_item = _flatten_captions(items)
    image_processor = None if fragments is not None else processor.image_processor
    collator = ImageTextCollator(processor.tokenizer, image_processor=image_processor, fragments=fragments)
    columns = [c for c in ("item_id", "image") if c in items.column_names]
    image_batches = ({key: value for key, value in collator(items.select(rows).select_columns(columns).to_list())
                      .items() if key != "item_ids"} for rows in _batches(len(items), batch_size, "images", False))
    caption_batches = (dict(processor.tokenizer(texts[rows.start:rows.stop], padding=True, truncation=True,
                                                return_tensors="pt"))
                       for rows in _batches(len(texts), batch_size, "captions", False))
    with torch.no_grad():
        scores = model.score_retrieval(image_batches, caption_batches, progress=progress).float().cpu()  # (N, T)
    cost = 1 - scores
    image_ids = torch.arange(len(items))
    epsilon = float(ot_epsilon if ot_epsilon is not None else getattr(model.config, "ot_epsilon", 0.05))
    results: dict[str, Any] = {}
    for mode in modes:
        settings = {"mode": mode, "epsilon": epsilon, "normalization": "none"}
        text_to_image = retrieval_metrics(ranks_from_cost(cost.T, text_item, image_ids, **settings))
        image_to_text = retrieval_metrics(ranks_from_cost(cost, image_ids, text_item, **settings))
        rsum = sum(metrics[f"R@{k}"] for metrics in (text_to_image, image_to_text) for k in (1, 5, 10))
        results[mode] = {"text_to_image": text_to_image, "image_to_text": image_to_text, "rsum": rsum}
    results["num_items"], results["num_captions"] = len(items), len(texts)
    results["settings"] = {"ot_epsilon": epsilon, "cost_normalization": "none"} if "ot" in modes else {}
    results["scores"] = scores
    return results


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
) -> dict[str, Any]:
    """Zero-shot audio classification by ranking class prompts for each clip (the ESC-50 protocol).

    Each label becomes the prompt ``template.format(label=...)`` with underscores replaced by spaces; the prompts
    are ranked for every clip by ``model.pairwise_cost`` (plain distance; one positive: the clip's class).

    Args:
        model: an `MLTMAudioTextModel`.
        items (`datasets.Dataset`): items view with ``audio`` and ``label`` (human-readable class name) columns.
        processor: an `MLTMProcessor`.
        labels (`Sequence[str]`): the ``C`` class names (e.g. ``"chirping_birds"``); every item's label must be
            one of them (compared after replacing underscores by spaces).
        template (`str`, defaults to ``"This is a sound of {label}."``): prompt with a ``{label}`` field.
        batch_size (`int`, defaults to 32), device, progress: as in :func:`evaluate_retrieval`.

    Returns:
        `dict`: ``{"distance": {"audio_to_label": metrics}}`` where metrics are those of
        :func:`hf_mltm.evaluation.retrieval_metrics` (``R@1`` is the accuracy in percent, ``MRR@10`` the reference
        code's "mAP"); ``"accuracy"`` (fraction), ``"labels"`` and ``"prompts"`` (``C``), ``"predictions"`` and
        ``"references"`` (class indices per clip, ``N``), ``"predicted_labels"``.

    Raises:
        ValueError: missing columns, a template without ``{label}``, duplicate labels or an item label outside
            ``labels``.
    """
    _check_columns(items, ("audio", "label"), "zero-shot classification")
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
    device = _model_device(model, device)
    model.eval()
    audio_embeds = _embed_audio(model, items, processor, batch_size, device, progress)  # (N, d)
    prompt_embeds = _embed_text(model, prompts, processor, batch_size, device, progress)  # (C, d)

    def audio_to_prompt_cost(audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return model.pairwise_cost(audio.to(device), text.to(device)).float().cpu()  # (a, C)

    truth = torch.tensor(references, dtype=torch.long)
    with torch.no_grad():
        ranks = retrieval_ranks(audio_embeds, prompt_embeds, truth, torch.arange(len(names)),
                                cost_fn=audio_to_prompt_cost)
        predictions = audio_to_prompt_cost(audio_embeds, prompt_embeds).argmin(1)  # (N,), first index on ties
    metrics = retrieval_metrics(ranks)
    return {
        "distance": {"audio_to_label": metrics},
        "accuracy": metrics["R@1"] / 100,
        "labels": names,
        "prompts": prompts,
        "predictions": predictions.tolist(),
        "predicted_labels": [names[index] for index in predictions.tolist()],
        "references": references,
    }
