"""The training loop: accelerate, global-batch OT across processes, evaluation, checkpoints and the final model.

One optimizer step on a global batch of ``b`` pairs (``training.batch_size``): the dataloader yields the global
batch and accelerate hands each of the ``P`` processes a contiguous slice of ``b / P`` rows (``split_batches``), so
the batches do not depend on ``P``. The path of one step is::

    outputs = model(**batch)                                  # DDP forward on the local slice
    loss = loss_fn(outputs, item_ids=item_ids, step=global_step)
    accelerator.backward(loss)

``loss_fn`` is the model family's loss module (`MLTMLoss`, `OMITLoss`, from the family's adapter) built with
``gather=True``: it all-gathers the outputs it needs with gradient (`hf_mltm.ot.all_gather_with_grad`) and computes
the loss of the whole global batch. The gather's backward sums the gradients of the ``P`` identical losses and DDP
averages over ``P``: the update equals a one-process step on the same batch (checked by
``tests/scripts/test_train.py``). The trainer calls no other model method during training; after every optimizer
step it calls ``loss_fn.on_optimizer_step()`` (the paper's PSD projection of a ``"projected"`` metric). Under FSDP2
the same holds with FSDP's gradient reduce-scatter in place of DDP's all-reduce; evaluation and saving then run on
an unsharded copy of the gathered weights (`hf_mltm.training.sharding`).

With frozen towers and ``training.embedding_cache``, the towers' outputs for the training rows come from the
content-keyed `hf_mltm.feature_cache.FeatureCache` (``training.feature_cache_dir``, default
``$HF_MLTM_CACHE/features``), and so do those of the evaluation items at every evaluation. Checkpoints are written
and read by `hf_mltm.training.checkpointing` (crash-safe, no unpickling).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from hf_mltm.adapters import get_adapter

from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ExperimentConfig
from .data_factory import build_datasets, check_data_section, describe_sources
from .metrics_log import MetricsLog
from .model_card import write_model_card
from .model_factory import build_model_and_processor, cache_root, check_model_section
from .sharding import check_sharding, full_tensor, is_sharded, main_process_model

__all__ = ["EpochShuffleSampler", "TrainResult", "TrainerState", "latest_checkpoint", "train"]

TOWER_ATTRIBUTES = ("audio_model", "text_model", "vision_model")


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
    """What a checkpoint stores besides model/optimizer/scheduler/RNG (as JSON, `trainer_state.json`)."""

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
    """The precomputed image fragments of ``data.fragments`` (a folder written by `extract_grid_features` (`items.json` + feature cache),
    relative to the working directory), or ``None``."""
    if not data_section.get("fragments"):
        return None
    from hf_mltm.data.grid_features import load_grid_features

    return load_grid_features(data_section["fragments"])


def feature_cache_dir(config: ExperimentConfig) -> Path | None:
    """Where frozen-tower outputs are cached: ``training.feature_cache_dir``, else ``$HF_MLTM_CACHE/features``;
    `None` when the towers train (their outputs change every step)."""
    training = config.training
    if not (training.freeze_towers and training.embedding_cache):
        return None
    return Path(training.feature_cache_dir) if training.feature_cache_dir else cache_root() / "features"


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


def _trackers(names: list[str]) -> list[str]:
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is not None]


def _evaluate(model, items, processor, config: ExperimentConfig, device, fragments=None) -> dict[str, Any]:
    from hf_mltm.evaluation import evaluate_retrieval

    results = evaluate_retrieval(model, items, processor, ranking_modes=tuple(config.evaluation.ranking_modes),
                                 batch_size=config.evaluation.batch_size, device=device,
                                 progress=config.training.progress, fragments=fragments,
                                 cache_dir=feature_cache_dir(config))
    results.pop("cost", None)  # the (items, captions) cost matrix: not a metric
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
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{config.source}: output_dir {output_dir} is an existing file; give a folder.")
    check_data_section(config.data)  # typos in sources or builder arguments fail before any work
    check_model_section(config.model)
    if config.hub.push_to_hub:
        from .hub import check_hub_access

        check_hub_access(config.hub.model_id, config.hub.token)
    trackers = _trackers(training.trackers)
    accelerator = Accelerator(
        mixed_precision=training.mixed_precision,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=str(output_dir)),
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
    check_sharding(accelerator, config, model)
    if eval_items is not None and len(eval_items) < 2:
        # Every ranking of one item is perfect: its scores cannot tell epochs apart.
        accelerator.print(f"the selection split has {len(eval_items)} item(s): no checkpoint selection, the final "
                          "model is kept (give data.validation_fraction a larger share, or more data)")
        eval_items = None
    adapter = get_adapter(model)
    if training.freeze_towers:
        _freeze_towers(model)
    if training.batch_size > len(train_rows) and training.drop_last:
        raise ValueError(f"{config.source}: training.batch_size={training.batch_size} exceeds the "
                         f"{len(train_rows)} training captions; lower it or set training.drop_last false.")
    collator_kwargs = dict(config.data.get("collator") or {})
    if training.embedding_cache:
        # The main process computes what the cache lacks; the others then read every row from it.
        with accelerator.main_process_first():
            dataset, collate_fn = adapter.cached_training_data(
                model, processor, train_rows, cache_dir=feature_cache_dir(config), collator_kwargs=collator_kwargs,
                fragments=fragments, batch_size=config.evaluation.batch_size, progress=training.progress,
                writer=accelerator.process_index)
    else:
        dataset, collate_fn = train_rows, adapter.collator(processor, fragments=fragments, **collator_kwargs)
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
    log = MetricsLog(output_dir / "metrics.jsonl")
    if training.resume_from_checkpoint:
        checkpoint = (latest_checkpoint(output_dir) if training.resume_from_checkpoint == "latest"
                      else Path(training.resume_from_checkpoint))
        if checkpoint is not None:
            if not checkpoint.is_dir():
                raise ValueError(f"training.resume_from_checkpoint={checkpoint} is not a checkpoint folder.")
            state.load_state_dict(load_checkpoint(accelerator, checkpoint, model=model, optimizer=optimizer,
                                                  scheduler=scheduler))
            if accelerator.is_main_process:
                log.truncate_after(state.global_step, state.epoch)
                accelerator.print(f"resumed from {checkpoint} at step {state.global_step}, epoch {state.epoch}")
    if trackers:
        accelerator.init_trackers("hf_mltm", config=_flatten({"training": config.training.__dict__}))
    unwrapped = accelerator.unwrap_model(model)
    loss_fn = adapter.loss(unwrapped, gather=True)
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
                    outputs = model(**batch)
                    loss = loss_fn(outputs, item_ids=item_ids, step=state.global_step)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # Under FSDP every process takes part (gathering sharded gradients is a collective).
                    if training.debug_dump_path and (accelerator.is_main_process or is_sharded(accelerator)):
                        grads = {name: full_tensor(p.grad.detach()).float().cpu().clone()
                                 for name, p in unwrapped.named_parameters() if p.grad is not None}
                        if accelerator.is_main_process:
                            dump.append({"step": state.global_step, "loss": loss.detach().float().cpu(),
                                         "grads": grads})
                    if training.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            loss_fn.on_optimizer_step()
            state.global_step += 1
            progress.update(1)
            record = {"type": "train", "step": state.global_step, "epoch": epoch + 1, "loss": loss.item(),
                      "lr": scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            if accelerator.is_main_process and state.global_step % training.log_every_steps == 0:
                log.write(record)
            if trackers:
                accelerator.log({"train/loss": record["loss"], "train/lr": record["lr"]}, step=state.global_step)
            if training.checkpoint_every_steps and state.global_step % training.checkpoint_every_steps == 0:
                save_checkpoint(accelerator, output_dir, state.global_step, model=model, optimizer=optimizer,
                                scheduler=scheduler, trainer_state=state.state_dict(),
                                total_limit=training.checkpoints_total_limit)
            if training.max_steps is not None and state.global_step >= training.max_steps:
                stop = True
                break
        if stop:
            break
        state.epoch, state.batches_in_epoch = epoch + 1, 0
        if eval_items is not None and config.evaluation.enabled and (epoch + 1) % config.evaluation.every_epochs == 0:
            _evaluate_and_select(accelerator, model, unwrapped, processor, eval_items, config, state, log, epoch,
                                 fragments)
            model.train()
    progress.close()
    if training.debug_dump_path and accelerator.is_main_process:
        Path(training.debug_dump_path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(dump, training.debug_dump_path)
    accelerator.wait_for_everyone()
    result = _finish(accelerator, model, unwrapped, processor, config, state, start_time)
    accelerator.end_training()
    return result


def _evaluate_and_select(accelerator, model, unwrapped, processor, eval_items, config, state, log, epoch,
                         fragments=None) -> None:
    """Evaluate on the main process; keep the model in ``output_dir/best`` when the rsum improves."""
    unwrapped = main_process_model(accelerator, model, unwrapped)  # an unsharded copy under FSDP
    if accelerator.is_main_process:
        unwrapped.eval()
        metrics = _evaluate(unwrapped, eval_items, processor, config, accelerator.device, fragments)
        mode = config.evaluation.ranking_modes[0]
        score = float(metrics[mode][config.evaluation.select_metric])
        log.write({"type": "eval", "epoch": epoch + 1, "step": state.global_step, "metrics": metrics})
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


def _finish(accelerator, model, unwrapped, processor, config: ExperimentConfig, state: TrainerState,
            start_time: float) -> TrainResult:
    output_dir = Path(config.output_dir)
    best = output_dir / "best"
    failure: BaseException | None = None
    from accelerate.utils import broadcast_object_list

    # The main process's view, on every process: they must agree on whether the gather below runs.
    use_best = broadcast_object_list([state.best_epoch is not None and best.is_dir()])[0]
    # The final weights (gathered into an unsharded copy under FSDP, a collective) only when best/ does not replace
    # them.
    final = unwrapped if use_best else main_process_model(accelerator, model, unwrapped)
    if accelerator.is_main_process:
        try:
            _save_final(accelerator, final, processor, config, state, output_dir, best if use_best else None)
        except BaseException as error:  # let the other processes leave the barrier below before raising
            failure = error
    accelerator.wait_for_everyone()
    if failure is not None:
        raise failure
    return TrainResult(output_dir, state.global_step, state.best_epoch, state.best_metrics,
                       time.perf_counter() - start_time)


def _save_final(accelerator, unwrapped, processor, config: ExperimentConfig, state: TrainerState, output_dir: Path,
                best: Path | None) -> None:
    """Main process: save the best model (from ``best``, when given) or ``unwrapped``, the processor and the model
    card; push to the Hub on request."""
    model = unwrapped if best is None else type(unwrapped).from_pretrained(best)
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
