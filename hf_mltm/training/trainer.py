"""The training loop: accelerate, global-batch OT across processes, evaluation, checkpoints and the final model.

One optimizer step on a global batch of ``b`` pairs (``training.batch_size``): the dataloader yields the global
batch and accelerate hands each of the ``P`` processes a contiguous slice of ``b / P`` rows (``split_batches``), so
the batches do not depend on ``P``. Each process runs the model (through DDP) on its slice with
``output_loss_inputs=True``, all-gathers the per-sample loss inputs with gradient (`hf_mltm.ot.gather_tensor_dict`)
and computes the loss of the whole global batch with ``loss_from_inputs``. The gather's backward sums the gradients
of the ``P`` identical losses and DDP averages over ``P``: the update equals a one-process step on the same batch
(checked by ``tests/scripts/test_train.py``).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from hf_mltm.ot.distributed import all_gather_with_grad, gather_tensor_dict

from .config import ExperimentConfig
from .data_factory import build_datasets, describe_sources
from .embedding_cache import EmbeddingCache
from .metrics_log import MetricsLog
from .model_card import write_model_card
from .model_factory import build_model_and_processor

__all__ = ["EpochShuffleSampler", "TrainResult", "TrainerState", "train"]

TOWER_ATTRIBUTES = ("audio_model", "text_model", "vision_model")
CHECKPOINT_PATTERN = re.compile(r"checkpoint_(\d+)$")


class EpochShuffleSampler(Sampler[int]):
    """Row order of one epoch: a permutation drawn from ``seed + epoch`` (or ``0..n-1``), independent of the
    number of processes and of the global RNG, so a resumed run sees the same batches."""

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True) -> None:
        self.num_rows, self.seed, self.shuffle, self.epoch = num_rows, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_rows))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_rows, generator=generator).tolist())


@dataclass
class TrainerState:
    """What `save_state` stores besides model/optimizer/scheduler/RNG (registered for checkpointing)."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


@dataclass
class TrainResult:
    """Outcome of `train`: the final folder, step count, best evaluation and wall time (seconds)."""

    output_dir: Path
    global_step: int
    best_epoch: int | None
    best_metrics: dict[str, Any]
    train_seconds: float


def _freeze_towers(model: torch.nn.Module) -> list[torch.nn.Module]:
    towers = [getattr(model, name) for name in TOWER_ATTRIBUTES if isinstance(getattr(model, name, None),
                                                                              torch.nn.Module)]
    for tower in towers:
        tower.requires_grad_(False).eval()
    return towers


def _fragments(data_section: dict[str, Any]):
    """The precomputed image fragments of ``data.fragments`` (a folder of `hf_mltm.data.grid_features` shards,
    relative to the working directory), or ``None``."""
    if not data_section.get("fragments"):
        return None
    from hf_mltm.data.grid_features import load_grid_features

    return load_grid_features(data_section["fragments"])


def _collator(model: torch.nn.Module, processor: Any, data_section: dict[str, Any], fragments=None):
    """The batch collator for the model's modality, with ``data.collator`` keyword arguments."""
    from hf_mltm import data

    kwargs = dict(data_section.get("collator") or {})
    if getattr(model.config, "model_type", "") == "omit_image_text":
        tokenizer = getattr(processor, "tokenizer", processor)
        if fragments is not None:
            kwargs["fragments"] = fragments
        else:
            kwargs["image_processor"] = getattr(processor, "image_processor", None)
        return data.ImageTextCollator(tokenizer, **kwargs)
    return data.AudioTextCollator(processor, **kwargs)


def _lr_lambda(config: ExperimentConfig, steps_per_epoch: int, total_steps: int):
    training = config.training

    def factor(step: int) -> float:
        if training.lr_scheduler == "step":
            epoch = step // max(steps_per_epoch, 1)
            return training.lr_gamma ** sum(epoch >= boundary for boundary in training.lr_step_epochs)
        if step < training.warmup_steps:
            return (step + 1) / (training.warmup_steps + 1)
        if training.lr_scheduler == "constant":
            return 1.0
        progress = (step - training.warmup_steps) / max(total_steps - training.warmup_steps, 1)
        progress = min(progress, 1.0)
        if training.lr_scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoints/checkpoint_<n>`` folder with the highest ``n`` (``None`` when there is none)."""
    folder = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint_*") if (m := CHECKPOINT_PATTERN.search(p.name))]
    return max(found)[1] if found else None


def _trackers(names: list[str]) -> list[str]:
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is not None]


def _evaluate(model, items, processor, config: ExperimentConfig, device, fragments=None) -> dict[str, Any]:
    from hf_mltm.evaluation import evaluate_retrieval

    results = evaluate_retrieval(model, items, processor, ranking_modes=tuple(config.evaluation.ranking_modes),
                                 batch_size=config.evaluation.batch_size, device=device,
                                 progress=config.training.progress, fragments=fragments)
    results.pop("scores", None)  # an image-text model's score matrix: not a metric
    return results


def _flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def train(config: ExperimentConfig) -> TrainResult:
    """Train, evaluate every ``evaluation.every_epochs`` epochs, keep the best checkpoint by rsum, and save the
    final model + processor + model card to ``config.output_dir`` (push it to the Hub on request).

    Runs under ``accelerate launch`` (any number of processes) or as a plain call (one process).

    Raises:
        HubAccessError: ``hub.push_to_hub`` is set but cannot work (checked before anything is trained).
        ValueError: a config problem (``training.batch_size`` not divisible by the number of processes, ...).
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    training, start_time = config.training, time.perf_counter()
    output_dir = Path(config.output_dir)
    if config.hub.push_to_hub:
        from .hub import check_hub_access

        check_hub_access(config.hub.model_id, config.hub.token)
    trackers = _trackers(training.trackers)
    accelerator = Accelerator(
        mixed_precision=training.mixed_precision,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=True,
                                            total_limit=training.checkpoints_total_limit),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=training.ddp_find_unused_parameters)],
        log_with=trackers or None,
    )
    if training.batch_size % accelerator.num_processes:
        raise ValueError(f"{config.source}: training.batch_size={training.batch_size} must be divisible by the "
                         f"number of processes ({accelerator.num_processes}).")
    set_seed(config.seed)
    with accelerator.main_process_first():
        model, processor = build_model_and_processor(config.model)
        train_rows, eval_items = build_datasets(config.data)
        fragments = _fragments(config.data)
    if training.freeze_towers:
        _freeze_towers(model)
    if training.batch_size > len(train_rows) and training.drop_last:
        raise ValueError(f"{config.source}: training.batch_size={training.batch_size} exceeds the "
                         f"{len(train_rows)} training captions; lower it or set training.drop_last false.")
    if training.embedding_cache:
        cache_path = output_dir / "embedding_cache.pt"
        if accelerator.is_main_process and not cache_path.is_file():
            output_dir.mkdir(parents=True, exist_ok=True)
            cache = EmbeddingCache.build(model, train_rows, _collator(model, processor, config.data, fragments),
                                         batch_size=config.evaluation.batch_size, progress=training.progress)
            cache.save(cache_path)
        accelerator.wait_for_everyone()
        cache = EmbeddingCache.load(cache_path)
        if len(cache) != len(train_rows):
            raise ValueError(f"{cache_path} holds {len(cache)} rows but the training set has {len(train_rows)}: "
                             "delete the stale cache file.")
        dataset, collate_fn = list(range(len(cache))), cache.collate
    else:
        dataset, collate_fn = train_rows, _collator(model, processor, config.data, fragments)
    loader = DataLoader(dataset, batch_size=training.batch_size, drop_last=training.drop_last,
                        sampler=EpochShuffleSampler(len(dataset), config.seed, training.shuffle),
                        collate_fn=collate_fn,
                        # A private generator: creating the (skipping) iterator after load_state must not draw
                        # from the restored global RNG, or dropout masks would shift.
                        generator=torch.Generator().manual_seed(config.seed))
    micro_batches_per_epoch = len(loader)
    steps_per_epoch = max(micro_batches_per_epoch // training.gradient_accumulation_steps, 1)
    total_steps = steps_per_epoch * training.num_epochs
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=training.learning_rate, weight_decay=training.weight_decay,
                                  betas=tuple(training.adam_betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, steps_per_epoch, total_steps))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainerState()
    accelerator.register_for_checkpointing(state)
    log = MetricsLog(output_dir / "metrics.jsonl")
    if training.resume_from_checkpoint:
        checkpoint = (latest_checkpoint(output_dir) if training.resume_from_checkpoint == "latest"
                      else Path(training.resume_from_checkpoint))
        if checkpoint is not None:
            if not checkpoint.is_dir():
                raise ValueError(f"training.resume_from_checkpoint={checkpoint} is not a checkpoint folder.")
            accelerator.load_state(str(checkpoint))
            match = CHECKPOINT_PATTERN.search(checkpoint.name)
            # save_state numbers checkpoints itself; continue after the loaded one or the next save collides.
            accelerator.project_configuration.iteration = int(match.group(1)) + 1 if match else 0
            if accelerator.is_main_process:
                log.truncate_after(state.global_step, state.epoch)
                accelerator.print(f"resumed from {checkpoint} at step {state.global_step}, epoch {state.epoch}")
    if trackers:
        accelerator.init_trackers("hf_mltm", config=_flatten({"training": config.training.__dict__}))
    unwrapped = accelerator.unwrap_model(model)
    dump: list[dict[str, Any]] = []
    stop = False
    progress = tqdm(total=total_steps, initial=state.global_step, desc="train",
                    disable=not (training.progress and accelerator.is_local_main_process))
    while state.epoch < training.num_epochs and not stop:
        epoch = state.epoch
        for entry in training.config_schedule:
            if epoch >= int(entry["epoch"]):
                for key, value in entry["set"].items():
                    setattr(unwrapped.config, key, value)
        model.train()
        if training.freeze_towers:
            _freeze_towers(unwrapped)
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
        for batch in batches:
            item_ids = batch.pop("item_ids")
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    outputs = model(**batch, output_loss_inputs=True)
                    gathered = gather_tensor_dict(outputs.loss_inputs)
                    global_item_ids = all_gather_with_grad(item_ids)
                    loss = unwrapped.loss_from_inputs(gathered, global_item_ids)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if training.debug_dump_path and accelerator.is_main_process:
                        dump.append({"step": state.global_step, "loss": loss.detach().float().cpu(),
                                     "grads": {name: p.grad.detach().float().cpu().clone()
                                               for name, p in unwrapped.named_parameters() if p.grad is not None}})
                    if training.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            if hasattr(unwrapped, "project_metric_"):
                unwrapped.project_metric_()
            state.global_step += 1
            progress.update(1)
            record = {"type": "train", "step": state.global_step, "epoch": epoch, "loss": loss.item(),
                      "lr": scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            if accelerator.is_main_process and state.global_step % training.log_every_steps == 0:
                log.write(record)
            if trackers:
                accelerator.log({"train/loss": record["loss"], "train/lr": record["lr"]}, step=state.global_step)
            if training.checkpoint_every_steps and state.global_step % training.checkpoint_every_steps == 0:
                accelerator.save_state()
            if training.max_steps is not None and state.global_step >= training.max_steps:
                stop = True
                break
        if stop:
            break
        state.epoch, state.batches_in_epoch = epoch + 1, 0
        if eval_items is not None and config.evaluation.enabled and (epoch + 1) % config.evaluation.every_epochs == 0:
            _evaluate_and_select(accelerator, unwrapped, processor, eval_items, config, state, log, epoch, fragments)
            model.train()
    progress.close()
    if training.debug_dump_path and accelerator.is_main_process:
        Path(training.debug_dump_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(dump, training.debug_dump_path)
    accelerator.wait_for_everyone()
    result = _finish(accelerator, unwrapped, processor, config, state, start_time)
    accelerator.end_training()
    return result


def _evaluate_and_select(accelerator, unwrapped, processor, eval_items, config, state, log, epoch,
                         fragments=None) -> None:
    """Evaluate on the main process; keep the model in ``output_dir/best`` when the rsum improves."""
    if accelerator.is_main_process:
        unwrapped.eval()
        metrics = _evaluate(unwrapped, eval_items, processor, config, accelerator.device, fragments)
        mode = config.evaluation.ranking_modes[0]
        score = float(metrics[mode][config.evaluation.select_metric])
        log.write({"type": "eval", "epoch": epoch, "step": state.global_step, "metrics": metrics})
        accelerator.print(f"epoch {epoch + 1}: {mode} {config.evaluation.select_metric} = {score:.2f}")
        if state.best_metric is None or score > state.best_metric:
            state.best_metric, state.best_epoch, state.best_metrics = score, epoch + 1, metrics
            best = Path(config.output_dir) / "best"
            unwrapped.save_pretrained(best)
            processor.save_pretrained(best)
        if config.training.trackers:
            accelerator.log({f"eval/{k}": v for k, v in _flatten(metrics).items()}, step=state.global_step)
    accelerator.wait_for_everyone()
    # Every process must hold the same TrainerState (it is checkpointed by each of them).
    from accelerate.utils import broadcast_object_list

    shared = broadcast_object_list([state.state_dict()])
    state.load_state_dict(shared[0])


def _finish(accelerator, unwrapped, processor, config: ExperimentConfig, state: TrainerState,
            start_time: float) -> TrainResult:
    output_dir = Path(config.output_dir)
    best = output_dir / "best"
    if accelerator.is_main_process:
        model = unwrapped
        if state.best_epoch is not None and best.is_dir():
            model = type(unwrapped).from_pretrained(best)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        model_config = config.model.get("config") or {}
        write_model_card(
            output_dir,
            model_type=str(config.model.get("type")),
            loss=str(getattr(unwrapped.config, "loss_type", model_config.get("loss_type", "default"))),
            datasets=describe_sources(config.data, "train"),
            metrics=state.best_metrics or None,
            training={key: value for key, value in config.training.__dict__.items()
                      if key not in ("progress", "debug_dump_path", "trackers")},
            eval_data="; ".join(describe_sources(config.data, "eval")) or None,
            best_epoch=state.best_epoch,
        )
        # best/ stays: a run resumed from a checkpoint after this point must still find the best model.
        if config.hub.push_to_hub:
            from .hub import push_folder

            url = push_folder(output_dir, config.hub.model_id, private=config.hub.private, token=config.hub.token)
            accelerator.print(f"pushed to {url}")
    accelerator.wait_for_everyone()
    return TrainResult(output_dir, state.global_step, state.best_epoch, state.best_metrics,
                       time.perf_counter() - start_time)
