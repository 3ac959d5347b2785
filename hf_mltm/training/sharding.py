"""What the trainer does differently when accelerate shards the model (FSDP2), and what it refuses.

Under FSDP2 (``distributed_type: FSDP`` with ``fsdp_version: 2`` in the accelerate config) every process holds a
shard of each parameter; the forward all-gathers them per wrapped module. The global-batch loss is unchanged
(the embeddings are gathered exactly as under DDP, and FSDP's gradient reduce-scatter averages like DDP's
all-reduce). Two things need the full weights on one process: evaluation with checkpoint selection and saving
the final model. Both go through `main_process_model`, which gathers a full state dict (a collective: every
process calls it) and builds an unsharded copy on the main process.

Training checkpoints gather and scatter the full model and optimizer state (`hf_mltm.training.checkpointing`).

Refused before any training work, each with the setting to change: FSDP1 (``fsdp_version: 1``), 0-dim parameters
such as a learnable temperature (FSDP2 cannot shard ``logit_scale``), the ``"projected"`` metric (its PSD
projection needs the whole matrix after every step), and DeepSpeed, Megatron-LM and XLA (never run here).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_sharding", "full_tensor", "is_sharded", "main_process_model"]

_NEVER_RUN = ("DEEPSPEED", "MEGATRON_LM", "XLA")


def _distributed_type(accelerator: Any) -> str:
    value = getattr(accelerator, "distributed_type", "NO")
    return str(getattr(value, "value", value))


def is_sharded(accelerator: Any) -> bool:
    """Whether accelerate shards the model's parameters across processes (FSDP)."""
    return _distributed_type(accelerator) == "FSDP"


def check_sharding(accelerator: Any, config: Any, model: torch.nn.Module) -> None:
    """Raise ``ValueError`` (naming the setting to change) for a distributed setup the trainer cannot run exactly.

    Call it after building the model and before any training work.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator.
        config (`ExperimentConfig`): the run's config (``config.source`` names the file in messages).
        model (`torch.nn.Module`): the model to train (its parameters and config are read; a model loaded from a
            folder may carry settings the YAML does not show).
    """
    distributed_type = _distributed_type(accelerator)
    if distributed_type in _NEVER_RUN:
        raise ValueError(f"{config.source}: accelerate distributed_type={distributed_type} is not supported by "
                         "hf_mltm's trainer (never run); use DDP (multi-GPU / multi-CPU) or FSDP with "
                         "fsdp_version: 2 (docs/distributed.md).")
    if distributed_type != "FSDP":
        return
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    version = getattr(plugin, "fsdp_version", 1)
    if version != 2:
        raise ValueError(f"{config.source}: FSDP version {version} is not supported; set fsdp_version: 2 in the "
                         "accelerate config (FSDP2, fully_shard).")
    scalars = [name for name, parameter in model.named_parameters() if parameter.dim() == 0]
    if scalars:
        fix = ("set model.config.learnable_temperature false" if scalars == ["logit_scale"]
               else "make them buffers or 1-element tensors")
        raise ValueError(f"{config.source}: FSDP2 cannot shard the 0-dim parameter(s) {scalars}; {fix}, or train "
                         "with DDP.")
    if getattr(getattr(model, "config", None), "metric_type", None) == "projected":
        raise ValueError(f"{config.source}: model.config.metric_type='projected' cannot be trained under FSDP "
                         "(the PSD projection needs the whole matrix after every step); use metric_type "
                         "'full', 'lowrank' or 'diagonal', or train with DDP.")


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: ``tensor`` itself, or a sharded DTensor's gathered value (a collective under FSDP)."""
    gather = getattr(tensor, "full_tensor", None)
    return gather() if callable(gather) else tensor


def main_process_model(accelerator: Any, model: torch.nn.Module, unwrapped: torch.nn.Module) -> Any:
    """The model as one process can evaluate and save it; call it on every process.

    Returns ``unwrapped`` on the main process when the model is not sharded; under FSDP, an unsharded copy built
    from ``unwrapped.config`` and the gathered full state dict, on the accelerator's device. `None` on the other
    processes.
    """
    if not is_sharded(accelerator):
        return unwrapped if accelerator.is_main_process else None
    state_dict = accelerator.get_state_dict(model)  # every process takes part in the gather
    if not accelerator.is_main_process:
        return None
    # Building the copy initialises weights at random: keep those draws out of the training RNG (dropout masks
    # would otherwise differ between the main and the other processes from here on).
    with torch.random.fork_rng(devices=[]):
        copy = type(unwrapped)(unwrapped.config)
    copy.load_state_dict(state_dict)
    return copy.to(accelerator.device)
