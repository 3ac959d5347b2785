"""Crash-safe training checkpoints that resume without unpickling arbitrary objects.

Layout of ``output_dir/checkpoints/`` (``n`` = the optimizer step a checkpoint was taken after)::

    checkpoint_<n>/
        model.safetensors      the unwrapped model's state dict (safetensors; shared tensors stored once)
        optimizer.pt           optimizer.state_dict()        torch.save, read back with weights_only=True
        scheduler.pt           scheduler.state_dict()        torch.save, read back with weights_only=True
        scaler.pt              GradScaler state (fp16 only)  torch.save, read back with weights_only=True
        rng_state_<rank>.pt    Python/NumPy/torch CPU/CUDA RNG states of process <rank> (tensors, ints, lists)
        trainer_state.json     the caller's trainer state (JSON)
        checkpoint.json        the completion marker, written last: step, process count, size + SHA-256 per file
    .tmp-checkpoint_<n>/       a save in progress (or one killed midway): ignored, deleted by the next save

A save writes everything into ``.tmp-checkpoint_<n>``, fsyncs it, writes ``checkpoint.json`` last and renames
the folder to ``checkpoint_<n>``; a kill at any point leaves the previous checkpoints untouched plus at most
a temporary folder that `latest_checkpoint` skips. (Saving a step that already has a checkpoint, after resuming
from an earlier one, moves the old folder to ``.tmp-replaced-checkpoint_<n>`` first: a kill between the two
renames loses that superseded folder, never an older one.) Loading verifies the size and SHA-256 of every file it reads
against ``checkpoint.json`` before parsing it, and never calls a pickle loader that can run code: safetensors
for the model, JSON for the trainer state, ``torch.load(weights_only=True)`` for the rest (no extra safe
globals are needed: the NumPy RNG state is stored as a tensor, not as NumPy objects).

Unlike ``accelerator.save_state``/``load_state`` (accelerate 1.15), which unpickle registered objects with
``weights_only=False`` and skip an unreadable RNG file with only a log message, this module replaces both.
It does not store a dataloader state: the trainer's batches follow from its own ``epoch``/``batches_in_epoch``
(`hf_mltm.training.trainer.EpochShuffleSampler` + ``skip_first_batches``).

Multi-process (DDP, multi-CPU): every process calls `save_checkpoint`/`load_checkpoint`. The main process writes
the shared files, each process writes its own RNG file, and all of them meet at barriers (which also share any
error, so a failure on one rank raises on every rank instead of hanging the others) before the marker is
written and again after the rename. ``output_dir`` must be on a filesystem that all processes see.

FSDP2 (sharded parameters and optimizer state): every process takes part in gathering the full model and optimizer
state dicts (``torch.distributed.checkpoint.state_dict``, offloaded to the main process's CPU memory), which the
main process writes in the same files; on load every process reads the full state and keeps its shard. The
optimizer file then holds the parameter-name-keyed form of those functions, so the manifest records
``"sharding": "fsdp2"`` and a checkpoint resumes only under the sharding it was saved with.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINTS_DIR",
    "CHECKPOINT_PATTERN",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MODEL_NAME",
    "OPTIMIZER_NAME",
    "SCALER_NAME",
    "SCHEDULER_NAME",
    "TEMP_PREFIX",
    "TRAINER_STATE_NAME",
    "CheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "rng_state_name",
    "save_checkpoint",
]

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)$")  # anchored: ".tmp-checkpoint_7" must not match
TEMP_PREFIX = ".tmp-"
MANIFEST_NAME = "checkpoint.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
SCALER_NAME = "scaler.pt"
TRAINER_STATE_NAME = "trainer_state.json"
FORMAT_NAME = "hf_mltm-checkpoint"
FORMAT_VERSION = 1

_HASH_CHUNK = 1 << 20
# Never run with this module (DeepSpeed keeps its own sharded state; Megatron-LM, XLA). FSDP1 is refused too.
_UNSUPPORTED_DISTRIBUTED_TYPES = ("DEEPSPEED", "MEGATRON_LM", "XLA")


class CheckpointError(ValueError):
    """A checkpoint cannot be written or resumed from; the message names the file and what to do."""


class _DamagedCheckpoint(CheckpointError):
    """A file of the checkpoint is missing, truncated, modified or unreadable (`load_checkpoint` adds which
    checkpoint to resume from instead)."""


def rng_state_name(rank: int) -> str:
    """File name of process ``rank``'s RNG state (``rng_state_<rank>.pt``)."""
    return f"rng_state_{rank}.pt"


def _checkpoint_name(step: int) -> str:
    return f"checkpoint_{step}"


# --------------------------------------------------------------------------------------------------------------
# Filesystem helpers
# --------------------------------------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk. Folders that cannot be fsynced are skipped."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        descriptor = os.open(path, flags)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(descriptor)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_save(obj: Any, path: Path) -> None:
    with path.open("wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _remove_tree(path: Path) -> None:
    """Delete a folder: rename it to a temporary name first, so that a kill midway leaves no half-deleted
    ``checkpoint_<n>``."""
    doomed = path.with_name(f"{TEMP_PREFIX}deleted-{path.name}")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_stale_temporaries(checkpoints: Path) -> None:
    for entry in checkpoints.iterdir():
        if entry.name.startswith(TEMP_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


def _check_accelerator(accelerator: Any) -> None:
    for attribute in ("is_main_process", "process_index", "num_processes", "unwrap_model"):
        if not hasattr(accelerator, attribute):
            raise ValueError(f"accelerator: expected an accelerate.Accelerator, got {type(accelerator).__name__} "
                             f"(no {attribute!r}).")
    distributed_type = getattr(accelerator, "distributed_type", "NO")
    distributed_type = str(getattr(distributed_type, "value", distributed_type))
    if distributed_type in _UNSUPPORTED_DISTRIBUTED_TYPES or (
            distributed_type == "FSDP" and _sharding(accelerator) is None):
        raise ValueError(f"accelerator: distributed_type={distributed_type} is not supported by "
                         "hf_mltm.training.checkpointing; use DDP (multi-GPU/multi-CPU), FSDP with fsdp_version: 2, "
                         "or a single process.")


def _sharding(accelerator: Any) -> str | None:
    """``"fsdp2"`` when the model and optimizer state are sharded, else `None` (what the manifest records)."""
    return "fsdp2" if getattr(accelerator, "is_fsdp2", False) is True else None


def _full_state_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _inner_optimizer(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def _check_trainer_state(value: Any, where: str = "trainer_state") -> None:
    """Only what JSON round-trips exactly: None, bool, int, float, str, lists and str-keyed dicts."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        return  # NaN/inf are written as JSON extensions that json.loads reads back
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_trainer_state(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r} of type {type(key).__name__}: trainer state keys "
                                 "must be strings (JSON would turn it into a string).")
            _check_trainer_state(item, f"{where}[{key!r}]")
        return
    hint = "use a list" if isinstance(value, tuple) else "convert it to int/float/str/list/dict"
    raise ValueError(f"{where} is a {type(value).__name__}, which trainer_state.json cannot store exactly; {hint}.")


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step={step!r} must be a non-negative int (the optimizer step the checkpoint is taken "
                         "after).")
    return int(step)


def _check_total_limit(total_limit: Any) -> None:
    if total_limit is None:
        return
    if isinstance(total_limit, bool) or not isinstance(total_limit, (int, np.integer)) or total_limit < 1:
        raise ValueError(f"total_limit={total_limit!r} must be None (keep every checkpoint) or an int >= 1 "
                         "(training.checkpoints_total_limit).")


# --------------------------------------------------------------------------------------------------------------
# Barriers that share errors
# --------------------------------------------------------------------------------------------------------------


def _synchronize(accelerator: Any, error: BaseException | None, action: str) -> None:
    """A barrier that also shares errors: every process raises if any process failed ``action``.

    Plain ``wait_for_everyone`` would leave the other processes waiting forever for one that raised.
    """
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        message = None if error is None else f"{type(error).__name__}: {error}"
        messages = gather_object([message])
        if error is None:
            failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
            if failed:
                rank, text = failed[0]
                raise CheckpointError(f"{action} failed on process {rank}: {text}")
    if error is not None:
        raise error


# --------------------------------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------------------------------


def _capture_rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, ints, floats and lists (loadable with ``weights_only=True``)."""
    version, internal, gauss_next = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": [int(version), [int(word) for word in internal], gauss_next],
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # (624,) uint32 words, widened
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: Any, path: Path) -> None:
    """Set the RNGs from `_capture_rng_state`'s structure; any malformed field raises naming ``path``."""

    def bad(what: str) -> CheckpointError:
        return _DamagedCheckpoint(f"{path}: {what}; the RNG state cannot be restored (re-save the checkpoint or "
                               "resume from another one).")

    if not isinstance(state, dict) or not {"python", "numpy", "torch_cpu"} <= state.keys():
        raise bad("expected a dict with 'python', 'numpy' and 'torch_cpu' entries")
    python_state = state["python"]
    if not (isinstance(python_state, (list, tuple)) and len(python_state) == 3
            and isinstance(python_state[1], (list, tuple))):
        raise bad("'python' is not [version, internal_state, gauss_next]")
    numpy_state = state["numpy"]
    keys = numpy_state.get("keys") if isinstance(numpy_state, dict) else None
    if not (isinstance(keys, torch.Tensor) and keys.dtype == torch.int64 and keys.dim() == 1
            and bool(((keys >= 0) & (keys < 2**32)).all())):
        raise bad("'numpy' has no int64 'keys' tensor of uint32 words")
    torch_state = state["torch_cpu"]
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
        raise bad("'torch_cpu' is not a uint8 tensor")
    try:
        random.setstate((int(python_state[0]), tuple(int(word) for word in python_state[1]), python_state[2]))
        np.random.set_state((str(numpy_state["bit_generator"]), keys.numpy().astype(np.uint32),
                             int(numpy_state["position"]), int(numpy_state["has_gauss"]),
                             float(numpy_state["cached_gaussian"])))
        torch.set_rng_state(torch_state)
    except (TypeError, ValueError, KeyError, RuntimeError, OverflowError) as error:
        raise bad(f"invalid RNG state ({type(error).__name__}: {error})") from error
    cuda_states = state.get("torch_cuda")
    if torch.cuda.is_available():
        if cuda_states is None:
            warnings.warn(f"{path} holds no CUDA RNG state (saved without CUDA): the CUDA RNG is not restored.",
                          stacklevel=3)
        elif len(cuda_states) != torch.cuda.device_count():
            warnings.warn(f"{path} holds {len(cuda_states)} CUDA RNG states but {torch.cuda.device_count()} "
                          "devices are visible: the CUDA RNG is not restored.", stacklevel=3)
        else:
            torch.cuda.set_rng_state_all(cuda_states)
    elif cuda_states:
        warnings.warn(f"{path} holds CUDA RNG states but CUDA is not available: only the CPU RNGs are restored.",
                      stacklevel=3)


# --------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------


def _required_files(num_processes: int, with_scaler: bool) -> list[str]:
    names = [MODEL_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME]
    names += [rng_state_name(rank) for rank in range(num_processes)]
    return names + [SCALER_NAME] if with_scaler else names


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The parsed, structurally checked ``checkpoint.json`` of ``folder``.

    Raises:
        CheckpointError: no marker (an unfinished save or not a checkpoint), unreadable JSON, another format,
            or a file list that does not hold the required files with a size and a SHA-256 each.
    """
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise _DamagedCheckpoint(f"{folder} has no {MANIFEST_NAME}: it is not a complete hf_mltm checkpoint (an "
                              "interrupted save, or a folder written by another tool)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _DamagedCheckpoint(f"{path} is not valid JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise _DamagedCheckpoint(f"{path} is not an hf_mltm checkpoint marker (no \"format\": \"{FORMAT_NAME}\")")
    if manifest.get("version") != FORMAT_VERSION:
        raise _DamagedCheckpoint(f"{path} has format version {manifest.get('version')!r}; this hf_mltm reads version "
                              f"{FORMAT_VERSION}")
    step, num_processes, files = manifest.get("step"), manifest.get("num_processes"), manifest.get("files")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _DamagedCheckpoint(f"{path}: \"step\" must be a non-negative int, got {step!r}")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise _DamagedCheckpoint(f"{path}: \"num_processes\" must be a positive int, got {num_processes!r}")
    accelerator_step = manifest.get("accelerator_step", 0)
    if isinstance(accelerator_step, bool) or not isinstance(accelerator_step, int) or accelerator_step < 0:
        raise _DamagedCheckpoint(f"{path}: \"accelerator_step\" must be a non-negative int, got "
                                 f"{accelerator_step!r}")
    if manifest.get("sharding", None) not in (None, "fsdp2"):
        raise _DamagedCheckpoint(f"{path}: \"sharding\" must be \"fsdp2\" or absent, got {manifest['sharding']!r}")
    if not isinstance(files, dict):
        raise _DamagedCheckpoint(f"{path}: \"files\" must map file names to {{\"size\", \"sha256\"}}")
    for name, entry in files.items():
        # Names are looked up, never joined blindly: refuse anything that is not a plain file name.
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise _DamagedCheckpoint(f"{path}: invalid file name {name!r} in \"files\"")
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64):
            raise _DamagedCheckpoint(f"{path}: the entry of {name!r} needs an int \"size\" and a hex \"sha256\"")
    missing = [name for name in _required_files(num_processes, SCALER_NAME in files) if name not in files]
    if missing:
        raise _DamagedCheckpoint(f"{path} does not list {', '.join(missing)}")
    return manifest


def _size_problem(folder: Path, name: str, entry: dict[str, Any]) -> str | None:
    path = folder / name
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != entry["size"]:
        return (f"{path} has {size} bytes but {MANIFEST_NAME} records {entry['size']} (truncated or "
                "overwritten)")
    return None


def _complete_step(folder: Path) -> tuple[int | None, str | None]:
    """``(step, None)`` if ``folder`` is a complete checkpoint (marker valid, named after its step, every listed
    file present with its recorded size), else ``(None, reason)``. Sizes only: hashes are checked on load."""
    match = CHECKPOINT_PATTERN.match(folder.name)
    if match is None or not folder.is_dir():
        return None, f"{folder} is not a checkpoint_<step> folder"
    try:
        manifest = _read_manifest(folder)
    except CheckpointError as error:
        return None, str(error)
    if manifest["step"] != int(match.group(1)):
        return None, f"{folder / MANIFEST_NAME} records step {manifest['step']}, not {match.group(1)}"
    for name, entry in manifest["files"].items():
        problem = _size_problem(folder, name, entry)
        if problem:
            return None, problem
    return manifest["step"], None


def _complete_checkpoints(checkpoints: Path, *, warn: bool) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the complete checkpoints in ``checkpoints``, newest (highest step) first."""
    if not checkpoints.is_dir():
        return []
    candidates = sorted(((int(m.group(1)), entry) for entry in checkpoints.iterdir()
                         if (m := CHECKPOINT_PATTERN.match(entry.name)) and entry.is_dir()), reverse=True)
    complete = []
    for step, folder in candidates:
        found, reason = _complete_step(folder)
        if found is None:
            if warn:
                warnings.warn(f"skipping incomplete checkpoint: {reason}", stacklevel=3)
            continue
        complete.append((step, folder))
    return complete


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run: ``output_dir/checkpoints/checkpoint_<n>`` with the highest ``n``
    whose ``checkpoint.json`` is present and consistent (right step, every file present with its recorded size).

    Temporary folders (``.tmp-*``, saves in progress or killed midway) are ignored; ``checkpoint_<n>`` folders
    that are incomplete or damaged are skipped with a `UserWarning`. File hashes are verified by
    `load_checkpoint`, not here.

    Args:
        output_dir (`str` or `Path`): the run's output folder (the one holding ``checkpoints/``).

    Returns:
        `Path` or `None`: the folder, or ``None`` when the run has no complete checkpoint (or no folder).
    """
    complete = _complete_checkpoints(Path(output_dir) / CHECKPOINTS_DIR, warn=True)
    return complete[0][1] if complete else None


def _previous_checkpoint_advice(folder: Path) -> str:
    """What to resume from instead of the damaged ``folder``: the newest complete checkpoint before it."""
    match = CHECKPOINT_PATTERN.match(folder.name)
    step = int(match.group(1)) if match else None
    earlier = [path for found, path in _complete_checkpoints(folder.parent, warn=False)
               if path != folder and (step is None or found < step)]
    if earlier:
        return (f"resume from the previous complete checkpoint instead: "
                f"training.resume_from_checkpoint={earlier[0]}")
    return (f"no earlier complete checkpoint exists in {folder.parent}; delete {folder} and restart training "
            "(training.resume_from_checkpoint: null)")


# --------------------------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------------------------


def _write_shared_files(temp: Path, model: torch.nn.Module | dict[str, torch.Tensor], optimizer_state: dict[str, Any],
                        scheduler: Any, scaler: Any, trainer_state: dict[str, Any]) -> None:
    """``model``: the unwrapped module, or a gathered full state dict (FSDP2)."""
    from safetensors.torch import save_file, save_model

    if isinstance(model, dict):
        save_file(model, str(temp / MODEL_NAME), metadata={"format": "pt"})
    else:
        save_model(model, str(temp / MODEL_NAME), metadata={"format": "pt"})
    _fsync_path(temp / MODEL_NAME)
    _torch_save(optimizer_state, temp / OPTIMIZER_NAME)
    _torch_save(scheduler.state_dict(), temp / SCHEDULER_NAME)
    if scaler is not None:
        _torch_save(scaler.state_dict(), temp / SCALER_NAME)
    with (temp / TRAINER_STATE_NAME).open("w") as handle:
        json.dump(trainer_state, handle, sort_keys=True, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def _commit(temp: Path, final: Path, *, step: int, num_processes: int, accelerator_step: int,
            sharding: str | None = None) -> None:
    """Write the marker into ``temp`` (last), then atomically move ``temp`` to ``final``."""
    names = _required_files(num_processes, (temp / SCALER_NAME).is_file())
    missing = [name for name in names if not (temp / name).is_file()]
    if missing:
        raise CheckpointError(f"{temp}: {', '.join(missing)} were not written; output_dir must be on a filesystem "
                              "shared by all processes.")
    files = {name: {"size": (temp / name).stat().st_size, "sha256": _sha256(temp / name)} for name in names}
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": step, "num_processes": num_processes,
                "accelerator_step": accelerator_step, "files": files}
    if sharding is not None:
        manifest["sharding"] = sharding
    with (temp / MANIFEST_NAME).open("w") as handle:
        json.dump(manifest, handle, sort_keys=True, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_path(temp)
    replaced = None
    if final.exists() or final.is_symlink():
        # Same step saved again (a run resumed from an earlier checkpoint): the new save supersedes it.
        replaced = final.with_name(f"{TEMP_PREFIX}replaced-{final.name}")
        if replaced.exists():
            shutil.rmtree(replaced)
        os.replace(final, replaced)
    os.replace(temp, final)
    _fsync_path(final.parent)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def _prune(checkpoints: Path, keep: Path, total_limit: int) -> None:
    """Keep ``keep`` and the newest ``total_limit - 1`` other complete checkpoints; delete the other complete ones.

    Incomplete ``checkpoint_<n>`` folders (no valid marker) are never deleted: they are not ours to judge.
    """
    others = [folder for _, folder in _complete_checkpoints(checkpoints, warn=False) if folder != keep]
    for folder in others[total_limit - 1:]:
        _remove_tree(folder)


def save_checkpoint(
    accelerator: Any,
    output_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    trainer_state: dict[str, Any],
    total_limit: int | None = None,
) -> Path:
    """Write ``output_dir/checkpoints/checkpoint_<step>`` crash-safely; call it on every process.

    Steps: the main process deletes stale ``.tmp-*`` folders and creates ``.tmp-checkpoint_<step>``; it writes
    the model (unwrapped, safetensors), optimizer, scheduler, GradScaler (if any) and ``trainer_state.json`` while
    every process writes ``rng_state_<rank>.pt``; all files are fsynced; after a barrier the main process writes
    ``checkpoint.json`` (sizes + SHA-256) last and renames the folder to ``checkpoint_<step>`` (replacing an
    existing one of the same step); then the oldest complete checkpoints beyond ``total_limit`` are deleted and a
    final barrier lets the processes continue. Saving draws no random numbers.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator (single process, DDP, multi-CPU or FSDP2).
        output_dir (`str` or `Path`): the run's output folder; checkpoints go to ``output_dir/checkpoints``.
        step (`int`): the number of optimizer steps taken (names the folder).
        model (`torch.nn.Module`): the prepared model (DDP-wrapped, FSDP2-sharded or neither); its unwrapped (under
            FSDP2: gathered) state dict is saved.
        optimizer: the prepared optimizer (anything with ``state_dict()``).
        scheduler: the prepared LR scheduler (anything with ``state_dict()``).
        trainer_state (`dict`): JSON-exact values only (None, bool, int, float, str, list, str-keyed dict);
            `load_checkpoint` returns it. Only the main process's copy is written.
        total_limit (`int`, *optional*): keep this checkpoint and the newest ``total_limit - 1`` other complete
            ones (by step); ``None`` keeps all. Incomplete ``checkpoint_<n>`` folders are left alone.

    Returns:
        `Path`: the complete checkpoint folder.

    Raises:
        ValueError: a bad argument (negative step, ``total_limit < 1``, a trainer state value JSON cannot store
            exactly, an FSDP1/DeepSpeed/XLA accelerator), raised on every process before anything is written.
        CheckpointError: writing failed on some process (all processes raise; the previous checkpoints and
            `latest_checkpoint` are unaffected).
    """
    _check_accelerator(accelerator)
    step = _check_step(step)
    _check_total_limit(total_limit)
    if not isinstance(trainer_state, dict):
        raise ValueError(f"trainer_state must be a dict (e.g. TrainerState.state_dict()), got "
                         f"{type(trainer_state).__name__}.")
    _check_trainer_state(trainer_state)
    for name, value in (("optimizer", optimizer), ("scheduler", scheduler)):
        if not callable(getattr(value, "state_dict", None)):
            raise ValueError(f"{name}: {type(value).__name__} has no state_dict(); pass the prepared {name}.")
    checkpoints = Path(output_dir) / CHECKPOINTS_DIR
    temp = checkpoints / f"{TEMP_PREFIX}{_checkpoint_name(step)}"
    final = checkpoints / _checkpoint_name(step)
    is_main = accelerator.is_main_process
    action = f"saving checkpoint {final}"

    error = None
    if is_main:
        try:
            checkpoints.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(checkpoints)
            temp.mkdir()
        except Exception as caught:  # any failure must reach the barrier, or the other ranks would hang
            error = caught
    _synchronize(accelerator, error, action)

    error = None
    sharding = _sharding(accelerator)
    try:
        if sharding is not None:  # every process takes part in the gathers; the main process receives them
            from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

            options = _full_state_options(cpu_offload=True)
            model_state: Any = get_model_state_dict(model, options=options)
            optimizer_state = get_optimizer_state_dict(model, _inner_optimizer(optimizer), options=options)
        elif is_main:
            model_state = accelerator.unwrap_model(model, keep_torch_compile=False)
            optimizer_state = optimizer.state_dict()
        if is_main:
            _write_shared_files(temp, model_state, optimizer_state, scheduler, getattr(accelerator, "scaler", None),
                                trainer_state)
        _torch_save(_capture_rng_state(), temp / rng_state_name(accelerator.process_index))
    except Exception as caught:
        error = caught
    _synchronize(accelerator, error, action)

    error = None
    if is_main:
        try:
            _commit(temp, final, step=step, num_processes=accelerator.num_processes,
                    accelerator_step=int(getattr(accelerator, "step", 0)), sharding=sharding)
            if total_limit is not None:
                _prune(checkpoints, final, int(total_limit))
        except Exception as caught:
            error = caught
    _synchronize(accelerator, error, action)
    return final


# --------------------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------------------


def _verified(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    """``folder/name`` after checking it against the manifest (present, recorded size, recorded SHA-256)."""
    entry = manifest["files"].get(name)
    if entry is None:
        raise _DamagedCheckpoint(f"{folder / MANIFEST_NAME} does not list {name}")
    problem = _size_problem(folder, name, entry)
    if problem is None and _sha256(folder / name) != entry["sha256"]:
        problem = (f"{folder / name} does not match the SHA-256 recorded in {MANIFEST_NAME} (corrupted or "
                   "modified after the save)")
    if problem:
        raise _DamagedCheckpoint(problem)
    return folder / name


def _weights_only_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError (a pickle that wants code), EOFError/RuntimeError (damaged)
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise _DamagedCheckpoint(f"{path} cannot be read as a weights-only torch file ({type(error).__name__}: "
                                 f"{first_line}); nothing in it was executed") from error


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as error:  # SafetensorError and friends: not a safetensors file
        raise _DamagedCheckpoint(f"{path} is not a readable safetensors file ({type(error).__name__}: {error})"
                                 ) from error


def _load_local(accelerator: Any, folder: Path, model: torch.nn.Module, optimizer: Any,
                scheduler: Any) -> dict[str, Any]:
    manifest = _read_manifest(folder)
    sharding = _sharding(accelerator)
    if manifest.get("sharding") != sharding:
        saved_with, running = (manifest.get("sharding") or "no sharding"), (sharding or "no sharding")
        raise CheckpointError(f"{folder} was saved with {saved_with} but this run has {running}: the optimizer "
                              "state is stored differently; resume with the accelerate config it was saved with")
    if manifest["num_processes"] != accelerator.num_processes:
        raise CheckpointError(f"{folder} was saved by {manifest['num_processes']} processes but this run has "
                              f"{accelerator.num_processes}: each process resumes its own RNG state, so launch with "
                              f"--num_processes {manifest['num_processes']}")
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and SCALER_NAME not in manifest["files"]:
        raise CheckpointError(f"{folder} holds no {SCALER_NAME} but this run uses a GradScaler (fp16): resume "
                              "with the mixed_precision the checkpoint was saved with")

    # Verify and parse everything before changing any state.
    model_path = _verified(folder, manifest, MODEL_NAME)
    _check_safetensors(model_path)
    state_path = _verified(folder, manifest, TRAINER_STATE_NAME)
    try:
        trainer_state = json.loads(state_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _DamagedCheckpoint(f"{state_path} is not valid JSON ({error})") from error
    if not isinstance(trainer_state, dict):
        raise _DamagedCheckpoint(f"{state_path} must hold a JSON object, got {type(trainer_state).__name__}")
    optimizer_path = _verified(folder, manifest, OPTIMIZER_NAME)
    optimizer_state = _weights_only_load(optimizer_path)
    scheduler_path = _verified(folder, manifest, SCHEDULER_NAME)
    scheduler_state = _weights_only_load(scheduler_path)
    scaler_state = None
    if scaler is not None:
        scaler_path = _verified(folder, manifest, SCALER_NAME)
        scaler_state = _weights_only_load(scaler_path)
    rng_path = _verified(folder, manifest, rng_state_name(accelerator.process_index))
    rng_state = _weights_only_load(rng_path)
    for path, loaded in ((optimizer_path, optimizer_state), (scheduler_path, scheduler_state)):
        if not isinstance(loaded, dict):
            raise _DamagedCheckpoint(f"{path} must hold a state dict, got {type(loaded).__name__}")

    from safetensors.torch import load_file, load_model

    if sharding is not None:  # every process reads the full state and keeps its own shard
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        def load_model_state() -> None:
            set_model_state_dict(model, load_file(str(model_path)), options=_full_state_options())

        def load_optimizer_state() -> None:
            set_optimizer_state_dict(model, _inner_optimizer(optimizer), optimizer_state,
                                     options=_full_state_options())
    else:
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)

        def load_model_state() -> None:
            load_model(unwrapped, str(model_path), strict=True)

        def load_optimizer_state() -> None:
            optimizer.load_state_dict(optimizer_state)
    steps = ((model_path, load_model_state),
             (optimizer_path, load_optimizer_state),
             (scheduler_path, lambda: scheduler.load_state_dict(scheduler_state)))
    if scaler is not None:
        steps += ((folder / SCALER_NAME, lambda: scaler.load_state_dict(scaler_state)),)
    for path, apply in steps:
        try:
            apply()
        except Exception as error:  # key/shape/group mismatches: a checkpoint of another model or optimizer
            raise CheckpointError(f"{path} does not fit the model/optimizer/scheduler of this run "
                                  f"({type(error).__name__}: {error}); resume with the configuration the "
                                  "checkpoint was saved with") from error
    _restore_rng_state(rng_state, rng_path)
    if hasattr(accelerator, "step"):
        # accelerate's gradient-accumulation counter (accelerate's own load_state restores it too).
        accelerator.step = manifest.get("accelerator_step", 0)
    return trainer_state


def load_checkpoint(
    accelerator: Any,
    folder: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
) -> dict[str, Any]:
    """Resume from a checkpoint written by `save_checkpoint`; call it on every process, after ``prepare``.

    Every file read is first checked against ``checkpoint.json`` (present, recorded size, recorded SHA-256) and
    parsed without code execution (safetensors, JSON, ``torch.load(weights_only=True)``). Then the model
    (unwrapped), optimizer, scheduler, GradScaler (if the accelerator has one) and this process's RNG states
    (Python ``random``, NumPy, torch CPU, and CUDA when available) are restored, as is accelerate's
    gradient-accumulation counter. If any process fails, every process raises.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator, with as many processes as at save time.
        folder (`str` or `Path`): a ``checkpoint_<n>`` folder (e.g. from `latest_checkpoint`).
        model (`torch.nn.Module`): the prepared model (DDP-wrapped, FSDP2-sharded or neither).
        optimizer: the prepared optimizer (``load_state_dict``).
        scheduler: the prepared LR scheduler (``load_state_dict``).

    Returns:
        `dict`: the ``trainer_state`` given to `save_checkpoint` (as JSON returns it).

    Raises:
        CheckpointError (a `ValueError`): ``folder`` is not a complete checkpoint; a file is missing,
            truncated, modified or not weights-only loadable (the message names the file and the previous
            complete checkpoint to resume from); the checkpoint does not fit the model/optimizer; or it was
            saved by another number of processes.
    """
    _check_accelerator(accelerator)
    folder = Path(folder).expanduser()
    error: BaseException | None = None
    trainer_state: dict[str, Any] = {}
    try:
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a folder: pass a checkpoints/checkpoint_<step> folder of a "
                                  "run (or resume_from_checkpoint: latest)")
        try:
            trainer_state = _load_local(accelerator, folder, model, optimizer, scheduler)
        except _DamagedCheckpoint as damaged:
            raise CheckpointError(f"{damaged}. {_previous_checkpoint_advice(folder)}.") from damaged
    except Exception as caught:
        error = caught
    _synchronize(accelerator, error, f"loading checkpoint {folder}")
    return trainer_state
