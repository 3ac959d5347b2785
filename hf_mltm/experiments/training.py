"""The in-process run of the evidence suite: train a model's heads on cached tower outputs, select the epoch on
validation, and evaluate.

One run is a plain seeded loop, the same for every method::

    torch.manual_seed(seed); model = build(config)            # heads, metric, temperature initialised by the seed
    loss_fn = get_adapter(model).loss(model)                   # the family's loss module (MLTMLoss / OMITLoss)
    for epoch in range(epochs):
        for batch in batches(pairs, generator(seed)):          # shuffled by the seed, last partial batch dropped
            loss = loss_fn(model(**batch), item_ids=batch_ids, step=step)
            AdamW step (gradient clipping, warm-up + cosine schedule); loss_fn.on_optimizer_step()
        score = validate(model)                                # validation split only
    keep the parameters of the epoch with the best validation score (the first on ties)

Nothing here sees the reported (test) split: `train_heads` only calls ``validate``; the suite evaluates the test
split afterwards on the kept parameters (`hf_mltm.experiments.suites`).

Evaluation (`zero_shot_metrics`, `retrieval_metrics_of`) uses the family adapter: cached tower rows through the
model's heads (``project_items`` / ``project_texts``), the cost (``cost_matrix``), `ranks_from_cost` and
`retrieval_metrics`, exactly as `hf_mltm.evaluation.evaluate_retrieval` does from raw media.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .features import PairSet, RetrievalSplit, ZeroShotSplit
from .models import head_parameters

__all__ = [
    "TrainResult",
    "TrainSettings",
    "pair_batch",
    "retrieval_metrics_of",
    "train_heads",
    "zero_shot_metrics",
]

SCHEDULES = ("cosine", "constant")


@dataclass
class TrainSettings:
    """The training budget of one run (identical for every method of a suite).

    Attributes:
        epochs (`int`): passes over the training pairs.
        batch_size (`int`): pairs per step; the last partial batch of an epoch is dropped.
        learning_rate (`float`): AdamW peak learning rate.
        weight_decay (`float`): AdamW weight decay.
        warmup_steps (`int`): linear warm-up steps before the schedule.
        schedule (`str`): ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
        max_grad_norm (`float` or `None`): gradient-norm clipping (`None`: off).
        positives (`str`): ``"item"`` (rows of one clip or image are positives of each other in the loss, as the
            trainer does) or ``"caption"`` (rows sharing a caption text are positives too: the duplicate-aware
            target for template captions).
        patience (`int` or `None`): stop when validation has not improved for this many epochs (`None`: never).
    """

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 10
    schedule: str = "cosine"
    max_grad_norm: float | None = 1.0
    positives: str = "item"
    patience: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"training.{name} must be an integer >= 1, got {value!r}.")
        if self.batch_size < 2:
            raise ValueError(f"training.batch_size must be >= 2 (a batch needs negatives), got {self.batch_size}.")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"training.learning_rate must be > 0, got {self.learning_rate!r}.")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"training.weight_decay must be >= 0, got {self.weight_decay!r}.")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"training.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"training.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"training.max_grad_norm must be > 0 or null, got {self.max_grad_norm!r}.")
        if self.positives not in ("item", "caption"):
            raise ValueError(f"training.positives must be 'item' or 'caption', got {self.positives!r}.")
        if self.patience is not None and (isinstance(self.patience, bool) or self.patience < 1):
            raise ValueError(f"training.patience must be an integer >= 1 or null, got {self.patience!r}.")

    def replace(self, **changes: Any) -> TrainSettings:
        """A copy with some fields changed (checked again)."""
        return TrainSettings(**{**asdict(self), **changes})


@dataclass
class TrainResult:
    """The outcome of `train_heads`.

    Attributes:
        best_epoch (`int`): the epoch (1-based) whose parameters were kept; 0 when no epoch gave a finite score.
        best_validation (`float`): its validation score (``-inf`` when none was finite).
        history (`list[dict]`): per epoch: ``epoch``, ``validation``, ``loss`` (mean training loss), ``steps``.
        state (`dict`): the kept parameters (``state_dict``; the model is left holding them too).
        steps (`int`): optimizer steps done; wall_s (`float`): seconds the run took; cpu_s (`float`): CPU seconds
            of this process during the run (on a busy machine far below ``wall_s``).
        diverged (`bool`): a non-finite loss stopped the run early (the kept epoch precedes it).
    """

    best_epoch: int
    best_validation: float
    history: list[dict[str, float]]
    state: dict[str, torch.Tensor] = field(repr=False)
    steps: int
    wall_s: float
    diverged: bool = False
    cpu_s: float = 0.0


def pair_batch(pairs: PairSet, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs of the pairs ``indices``: the cached item and text rows stacked (padded at the end of
    every dim; fragment masks padded with `False`), then cut to the longest valid fragment set of the batch."""
    from hf_mltm.adapters.base import stack_rows

    rows = indices.tolist()
    batch = stack_rows([pairs.item_rows[i] for i in rows])
    batch.update(stack_rows([pairs.text_rows[i] for i in rows]))
    for values, mask in (("image_fragments", "image_fragment_mask"), ("text_hidden_states", "attention_mask")):
        if mask in batch:
            length = int(batch[mask].sum(-1).max())
            batch[values], batch[mask] = batch[values][:, :length], batch[mask][:, :length]
    return batch


def _lr_lambda(settings: TrainSettings, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / (settings.warmup_steps + 1)
        if settings.schedule == "constant":
            return 1.0
        progress = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train_heads(
    model: nn.Module,
    pairs: PairSet,
    settings: TrainSettings,
    *,
    seed: int,
    validate: Callable[[nn.Module], float],
    loss_fn: nn.Module | None = None,
) -> TrainResult:
    """Train ``model``'s heads (and metric / temperature) on cached tower outputs; keep the best validation epoch.

    Args:
        model (`nn.Module`): an `MLTMAudioTextModel` or `OMITImageTextModel` on cached-feature towers
            (`hf_mltm.experiments.models`), freshly initialised under ``torch.manual_seed(seed)``.
        pairs (`PairSet`): the training pairs.
        settings (`TrainSettings`): the budget.
        seed (`int`): seed of the batch order (and of the in-model randomness: dropout, fragment dropping).
        validate (`Callable`): ``model -> float``, higher is better, computed on the validation split only; it
            may put the model in eval mode (training mode is restored for the next epoch).
        loss_fn (`nn.Module`, *optional*): the loss module; default the family's
            (``get_adapter(model).loss(model)``).

    Returns:
        `TrainResult`; the model holds the kept (best-validation) parameters on return.

    Raises:
        ValueError: fewer training pairs than one batch.
    """
    from hf_mltm.adapters import get_adapter

    if len(pairs) < settings.batch_size:
        raise ValueError(f"{len(pairs)} training pairs cannot fill one batch of {settings.batch_size}; lower "
                         "training.batch_size.")
    start, cpu_start = time.perf_counter(), time.process_time()
    loss_fn = loss_fn if loss_fn is not None else get_adapter(model).loss(model)
    parameters = head_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                  foreach=True)
    steps_per_epoch = len(pairs) // settings.batch_size
    total_steps = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(settings, total_steps))
    positive_ids = pairs.positive_ids(settings.positives)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    best_state, best_score, best_epoch = None, -math.inf, 0
    history: list[dict[str, float]] = []
    step, stale, diverged = 0, 0, False
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(pairs), generator=generator)
        losses = []
        for batch_index in range(steps_per_epoch):
            indices = order[batch_index * settings.batch_size:(batch_index + 1) * settings.batch_size]
            outputs = model(**pair_batch(pairs, indices))
            loss = loss_fn(outputs, item_ids=positive_ids[indices], step=step)
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            loss_fn.on_optimizer_step()
            step += 1
            losses.append(float(loss.detach()))
        if diverged:
            break
        with torch.no_grad():
            score = float(validate(model))
        history.append({"epoch": epoch, "validation": score, "loss": sum(losses) / max(1, len(losses)),
                        "steps": step})
        if math.isfinite(score) and score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if settings.patience is not None and stale >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_epoch, best_score, history, best_state or copy.deepcopy(model.state_dict()), step,
                       time.perf_counter() - start, diverged, time.process_time() - cpu_start)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation on cached rows


def _encode(model: nn.Module, item_rows: Sequence[Mapping[str, torch.Tensor]],
            text_rows: Sequence[Mapping[str, torch.Tensor]], batch_size: int):
    from hf_mltm.adapters import get_adapter

    adapter = get_adapter(model)
    model.eval()
    with torch.no_grad():
        items = adapter.project_items(model, list(item_rows), batch_size, None)
        texts = adapter.project_texts(model, list(text_rows), batch_size, None)
        cost = adapter.cost_matrix(model, items, texts)  # (N, T)
    return adapter, items, texts, cost


def zero_shot_metrics(model: nn.Module, split: ZeroShotSplit, *, batch_size: int = 256,
                      return_embeddings: bool = False) -> dict[str, Any]:
    """Zero-shot classification of ``split``'s items by ranking its class prompts by the model's cost.

    Returns:
        `dict`: ``accuracy`` (percent, R@1), ``MRR@10`` (the reference code's "mAP", in [0, 1]), ``R@5``,
        ``modality_gap`` (between the items' embeddings and the embeddings of their own class prompts); with
        ``return_embeddings``, ``embeddings``: ``{"items" (N, d), "prompts" (C, d), "item_label" (N,)}`` and
        ``cost`` ``(N, C)``.
    """
    from hf_mltm.evaluation import modality_gap, ranks_from_cost, retrieval_metrics

    _, items, prompts, cost = _encode(model, split.item_rows, split.prompt_rows, batch_size)
    metrics = retrieval_metrics(ranks_from_cost(cost, split.item_label, torch.arange(len(split.labels))))
    result: dict[str, Any] = {
        "accuracy": metrics["R@1"],
        "MRR@10": metrics["MRR@10"],
        "R@5": metrics["R@5"],
        "modality_gap": modality_gap(items.pooled, prompts.pooled[split.item_label]),
    }
    if return_embeddings:
        result["embeddings"] = {"items": items.pooled, "prompts": prompts.pooled, "item_label": split.item_label}
        result["cost"] = cost
    return result


def retrieval_metrics_of(model: nn.Module, split: RetrievalSplit, *, modes: Sequence[str] = ("distance",),
                         batch_size: int = 256) -> dict[str, Any]:
    """Retrieval in both directions on ``split`` for each ranking mode (``"distance"``, ``"ot"``), reported
    separately.

    Returns:
        `dict`: for each mode, ``{"text_to_item": {"R@1", "R@5", "R@10"}, "item_to_text": {...}, "rsum"}``
        (recalls in percent); ``modality_gap`` between the items' and the captions' pooled embeddings.
    """
    from hf_mltm.evaluation import modality_gap, ranks_from_cost, retrieval_metrics

    adapter, items, texts, cost = _encode(model, split.item_rows, split.text_rows, batch_size)
    settings = adapter.ranking_settings(model)
    item_ids = torch.arange(len(split.item_rows))
    result: dict[str, Any] = {}
    for mode in modes:
        to_item = retrieval_metrics(ranks_from_cost(cost.T, split.text_item, item_ids, mode=mode, **settings))
        to_text = retrieval_metrics(ranks_from_cost(cost, item_ids, split.text_item, mode=mode, **settings))
        keep = ("R@1", "R@5", "R@10")
        result[mode] = {"text_to_item": {k: to_item[k] for k in keep}, "item_to_text": {k: to_text[k] for k in keep},
                        "rsum": sum(to_item[k] + to_text[k] for k in keep)}
    result["modality_gap"] = modality_gap(items.pooled, texts.pooled)
    return result
