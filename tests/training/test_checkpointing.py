"""Crash-safe, pickle-free checkpoints (`hf_mltm.training.checkpointing`) under a real accelerate Accelerator.

A tiny ``Linear`` + AdamW + LambdaLR run is saved, resumed into freshly initialised objects and compared with the
uninterrupted run: parameters, optimizer and scheduler state and the next RNG draws must be identical. Damaged
folders (interrupted saves, truncated files, pickles that would run code) must be skipped by `latest_checkpoint`
or rejected by `load_checkpoint` with a message naming the file.

Run as a script (under ``accelerate launch``) this file is the 2-process worker of
``test_two_processes_save_shared_files_once_and_restore_each_rank_rng``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _checkpointing_module():
    if __name__ == "__main__":
        # The worker processes load the module file alone: importing the hf_mltm.training package (transformers,
        # datasets, ...) would add tens of seconds per process on a busy machine.
        import importlib.util

        spec = importlib.util.spec_from_file_location("checkpointing", REPO / "hf_mltm/training/checkpointing.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from hf_mltm.training import checkpointing

    return checkpointing


ckpt = _checkpointing_module()
CheckpointError, latest_checkpoint = ckpt.CheckpointError, ckpt.latest_checkpoint
load_checkpoint, save_checkpoint = ckpt.load_checkpoint, ckpt.save_checkpoint

TRAINER_STATE = {"global_step": 2, "epoch": 1, "batches_in_epoch": 0, "best_metric": 101.25, "best_epoch": 1,
                 "best_metrics": {"cosine": {"rsum": 101.25, "audio_to_text": {"R@1": 0.1}}, "num_items": 7}}
EXPECTED_FILES = ["checkpoint.json", "model.safetensors", "optimizer.pt", "rng_state_0.pt", "scheduler.pt",
                  "trainer_state.json"]


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def make_run(accelerator, init_seed: int):
    """A prepared (model, optimizer, scheduler): Linear(4, 3), AdamW, LambdaLR halving the LR every step."""
    torch.manual_seed(init_seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    return accelerator.prepare(model, optimizer, scheduler)


def train_step(accelerator, model, optimizer, scheduler, step: int) -> None:
    """One deterministic optimizer step (the batch comes from a private generator, not the global RNG)."""
    inputs = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
    loss = (model(inputs) ** 2).mean()
    accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def draws() -> tuple[list[float], float, list[float]]:
    """The next numbers of the three global RNGs a training step may use."""
    return torch.rand(3).tolist(), random.random(), np.random.rand(2).tolist()


def scramble_rngs(seed: int = 999) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def snapshot(model, optimizer, scheduler) -> dict:
    # state_dict() shares the live tensors (AdamW updates "step" in place): copy them.
    return {"params": [p.detach().clone() for p in model.parameters()],
            "optimizer": copy.deepcopy(optimizer.state_dict()), "scheduler": copy.deepcopy(scheduler.state_dict())}


def assert_same_state(got, want) -> None:
    """Exact equality of nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and torch.equal(got, want)
    elif isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            assert_same_state(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same_state(a, b)
    else:
        assert got == want


def manifest(folder: Path) -> dict:
    return json.loads((folder / "checkpoint.json").read_text())


def rewrite_manifest_entry(folder: Path, name: str) -> None:
    """Make checkpoint.json agree with the current bytes of ``name`` (an attacker who also edits the marker)."""
    data = manifest(folder)
    content = (folder / name).read_bytes()
    data["files"][name] = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    (folder / "checkpoint.json").write_text(json.dumps(data))


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


class CodeRunningPickle:
    """Unpickling this object runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture
def saved(accelerator, tmp_path):
    """A run saved after steps 2 and 4 (no total limit)."""
    run = make_run(accelerator, init_seed=0)
    for step in range(1, 5):
        train_step(accelerator, *run, step)
        if step % 2 == 0:
            save_checkpoint(accelerator, tmp_path, step, model=run[0], optimizer=run[1], scheduler=run[2],
                            trainer_state={**TRAINER_STATE, "global_step": step}, total_limit=None)
    return tmp_path / "checkpoints", run


# ---------------------------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------------------------


def test_resume_equals_the_uninterrupted_run(accelerator, tmp_path):
    scramble_rngs(1)
    model, optimizer, scheduler = make_run(accelerator, init_seed=0)
    for step in (1, 2):
        train_step(accelerator, model, optimizer, scheduler, step)
    accelerator.step = 6  # accelerate's accumulation counter is restored too
    folder = save_checkpoint(accelerator, tmp_path, 2, model=model, optimizer=optimizer, scheduler=scheduler,
                             trainer_state=TRAINER_STATE, total_limit=None)
    at_save = snapshot(model, optimizer, scheduler)
    expected_draws = draws()
    train_step(accelerator, model, optimizer, scheduler, 3)
    expected_next = snapshot(model, optimizer, scheduler)

    resumed = make_run(accelerator, init_seed=123)
    assert not torch.equal(resumed[0].weight, at_save["params"][0])
    scramble_rngs()
    accelerator.step = 0
    state = load_checkpoint(accelerator, folder, model=resumed[0], optimizer=resumed[1], scheduler=resumed[2])

    assert state == TRAINER_STATE
    assert accelerator.step == 6
    assert_same_state(snapshot(*resumed), at_save)
    assert resumed[2].get_last_lr() == [0.1 * 0.5**2]
    assert draws() == expected_draws
    train_step(accelerator, *resumed, 3)
    assert_same_state(snapshot(*resumed), expected_next)


def test_checkpoint_folder_holds_no_pickle_and_a_consistent_marker(accelerator, tmp_path):
    from safetensors.torch import load_file

    model, optimizer, scheduler = make_run(accelerator, init_seed=0)
    train_step(accelerator, model, optimizer, scheduler, 1)
    folder = save_checkpoint(accelerator, tmp_path, 7, model=model, optimizer=optimizer, scheduler=scheduler,
                             trainer_state=TRAINER_STATE, total_limit=3)

    assert folder == tmp_path / "checkpoints" / "checkpoint_7"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_7"]
    assert sorted(p.name for p in folder.iterdir()) == EXPECTED_FILES
    marker = manifest(folder)
    assert (marker["format"], marker["version"], marker["step"], marker["num_processes"]) == (
        "hf_mltm-checkpoint", 1, 7, 1)
    assert sorted(marker["files"]) == [name for name in EXPECTED_FILES if name != "checkpoint.json"]
    for name, entry in marker["files"].items():
        content = (folder / name).read_bytes()
        assert entry == {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert json.loads((folder / "trainer_state.json").read_text()) == TRAINER_STATE
    weights = load_file(folder / "model.safetensors")
    assert_same_state(weights, {"weight": model.weight.detach(), "bias": model.bias.detach()})
    for name in ("optimizer.pt", "scheduler.pt", "rng_state_0.pt"):
        torch.load(folder / name, weights_only=True)  # no extra safe globals needed
    rng = torch.load(folder / "rng_state_0.pt", weights_only=True)
    assert rng["numpy"]["keys"].shape == (624,) and rng["numpy"]["bit_generator"] == "MT19937"
    assert len(rng["python"][1]) == 625


def test_saving_the_same_step_again_replaces_the_checkpoint(accelerator, saved):
    checkpoints, (model, optimizer, scheduler) = saved
    old = manifest(checkpoints / "checkpoint_4")
    with torch.no_grad():
        model.weight.add_(1.0)
    save_checkpoint(accelerator, checkpoints.parent, 4, model=model, optimizer=optimizer, scheduler=scheduler,
                    trainer_state={"resaved": True}, total_limit=None)

    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_2", "checkpoint_4"]
    assert manifest(checkpoints / "checkpoint_4")["files"]["model.safetensors"] != old["files"]["model.safetensors"]
    fresh = make_run(accelerator, init_seed=5)
    assert load_checkpoint(accelerator, checkpoints / "checkpoint_4", model=fresh[0], optimizer=fresh[1],
                           scheduler=fresh[2]) == {"resaved": True}
    assert torch.equal(fresh[0].weight, model.weight)


def test_grad_scaler_state_round_trips_and_is_required_when_the_run_uses_one(accelerator, saved, tmp_path):
    checkpoints, (model, optimizer, scheduler) = saved
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    folder = save_checkpoint(accelerator, tmp_path / "fp16", 3, model=model, optimizer=optimizer,
                             scheduler=scheduler, trainer_state={}, total_limit=None)
    assert "scaler.pt" in manifest(folder)["files"]

    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0, growth_interval=1)
    fresh = make_run(accelerator, init_seed=5)
    load_checkpoint(accelerator, folder, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])
    assert accelerator.scaler.get_scale() == 1024.0 and accelerator.scaler.get_growth_interval() == 7
    with pytest.raises(CheckpointError, match="holds no scaler.pt but this run uses a GradScaler"):
        load_checkpoint(accelerator, checkpoints / "checkpoint_4", model=fresh[0], optimizer=fresh[1],
                        scheduler=fresh[2])


# ---------------------------------------------------------------------------------------------------------------
# Crash safety and latest_checkpoint
# ---------------------------------------------------------------------------------------------------------------


def test_save_interrupted_midway_leaves_latest_on_the_previous_checkpoint(accelerator, saved, monkeypatch):
    checkpoints, (model, optimizer, scheduler) = saved
    real_save = ckpt._torch_save

    def dies_on_scheduler(obj, path):
        if path.name == "scheduler.pt":
            raise KeyboardInterrupt  # what a kill looks like to the code that runs: nothing after this point
        real_save(obj, path)

    monkeypatch.setattr(ckpt, "_torch_save", dies_on_scheduler)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, checkpoints.parent, 6, model=model, optimizer=optimizer,
                        scheduler=scheduler, trainer_state={}, total_limit=None)
    monkeypatch.undo()

    partial = checkpoints / ".tmp-checkpoint_6"
    assert sorted(p.name for p in partial.iterdir()) == ["model.safetensors", "optimizer.pt"]
    assert latest_checkpoint(checkpoints.parent) == checkpoints / "checkpoint_4"
    # The next save cleans the leftover up.
    save_checkpoint(accelerator, checkpoints.parent, 8, model=model, optimizer=optimizer, scheduler=scheduler,
                    trainer_state={}, total_limit=None)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_2", "checkpoint_4", "checkpoint_8"]


def test_save_killed_before_the_rename_is_ignored_even_with_its_marker(accelerator, saved, monkeypatch):
    checkpoints, (model, optimizer, scheduler) = saved
    real_replace = os.replace

    def dies_on_rename(source, target):
        if Path(source).name == ".tmp-checkpoint_6":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(ckpt.os, "replace", dies_on_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, checkpoints.parent, 6, model=model, optimizer=optimizer,
                        scheduler=scheduler, trainer_state={}, total_limit=None)
    monkeypatch.undo()

    assert (checkpoints / ".tmp-checkpoint_6" / "checkpoint.json").is_file()
    assert latest_checkpoint(checkpoints.parent) == checkpoints / "checkpoint_4"


def test_latest_checkpoint_skips_incomplete_and_damaged_folders(saved):
    checkpoints, _ = saved
    output_dir = checkpoints.parent
    assert latest_checkpoint(output_dir) == checkpoints / "checkpoint_4"

    # A newer folder without its marker, one whose marker names another step, and temporary/odd entries.
    (checkpoints / "checkpoint_10").mkdir()
    (checkpoints / "checkpoint_10" / "model.safetensors").write_bytes(b"partial")
    shutil.copytree(checkpoints / "checkpoint_4", checkpoints / "checkpoint_12")
    shutil.copytree(checkpoints / "checkpoint_4", checkpoints / ".tmp-checkpoint_14")
    (checkpoints / "checkpoint_16").write_text("a file, not a folder")
    with pytest.warns(UserWarning) as caught:
        assert latest_checkpoint(output_dir) == checkpoints / "checkpoint_4"
    messages = " | ".join(str(w.message) for w in caught)
    assert "checkpoint_10 has no checkpoint.json" in messages and "records step 4, not 12" in messages

    truncate(checkpoints / "checkpoint_4" / "optimizer.pt")
    with pytest.warns(UserWarning) as caught:
        assert latest_checkpoint(output_dir) == checkpoints / "checkpoint_2"
    assert re.search(r"checkpoint_4/optimizer.pt has \d+ bytes but checkpoint.json records \d+ \(truncated",
                     " | ".join(str(w.message) for w in caught))
    (checkpoints / "checkpoint_2" / "rng_state_0.pt").unlink()
    with pytest.warns(UserWarning) as caught:
        assert latest_checkpoint(output_dir) is None
    assert "checkpoint_2/rng_state_0.pt is missing" in " | ".join(str(w.message) for w in caught)


def test_latest_checkpoint_of_a_run_without_checkpoints_is_none(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "checkpoints").mkdir()
    assert latest_checkpoint(tmp_path) is None


def test_total_limit_keeps_the_newest_complete_checkpoints(accelerator, tmp_path):
    model, optimizer, scheduler = make_run(accelerator, init_seed=0)

    def save(step, limit):
        save_checkpoint(accelerator, tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler,
                        trainer_state={"step": step}, total_limit=limit)
        return sorted(p.name for p in (tmp_path / "checkpoints").iterdir())

    assert save(1, 2) == ["checkpoint_1"]
    assert save(2, 2) == ["checkpoint_1", "checkpoint_2"]
    assert save(3, 2) == ["checkpoint_2", "checkpoint_3"]
    # An incomplete folder neither counts nor gets deleted.
    (tmp_path / "checkpoints" / "checkpoint_9").mkdir()
    assert save(4, 2) == ["checkpoint_3", "checkpoint_4", "checkpoint_9"]
    # A run resumed from an earlier step keeps what it just saved.
    assert save(2, 2) == ["checkpoint_2", "checkpoint_4", "checkpoint_9"]
    assert save(5, 1) == ["checkpoint_5", "checkpoint_9"]
    assert save(6, None) == ["checkpoint_5", "checkpoint_6", "checkpoint_9"]


# ---------------------------------------------------------------------------------------------------------------
# Damaged and tampered checkpoints
# ---------------------------------------------------------------------------------------------------------------


def test_truncated_rng_file_fails_naming_the_file_and_the_previous_checkpoint(accelerator, saved):
    checkpoints, _ = saved
    truncate(checkpoints / "checkpoint_4" / "rng_state_0.pt")
    fresh = make_run(accelerator, init_seed=5)
    before = fresh[0].weight.detach().clone()
    scramble_rngs()
    expected_draws = draws()
    scramble_rngs()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(accelerator, checkpoints / "checkpoint_4", model=fresh[0], optimizer=fresh[1],
                        scheduler=fresh[2])
    message = str(error.value)
    assert "checkpoint_4/rng_state_0.pt has" in message and "truncated" in message
    assert f"training.resume_from_checkpoint={checkpoints / 'checkpoint_2'}" in message
    # Nothing was restored from the damaged checkpoint.
    assert torch.equal(fresh[0].weight, before) and draws() == expected_draws


def test_truncated_file_behind_a_matching_marker_still_fails(accelerator, saved):
    checkpoints, _ = saved
    folder = checkpoints / "checkpoint_2"
    truncate(folder / "rng_state_0.pt")
    rewrite_manifest_entry(folder, "rng_state_0.pt")
    fresh = make_run(accelerator, init_seed=5)
    with pytest.raises(CheckpointError, match=r"checkpoint_2/rng_state_0.pt cannot be read as a weights-only") as error:
        load_checkpoint(accelerator, folder, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])
    assert "no earlier complete checkpoint exists" in str(error.value)


def test_code_running_pickle_runs_when_unpickled_unsafely(tmp_path):
    # Checks the payload of the tamper tests: it does run code when torch.load may unpickle freely.
    marker = tmp_path / "ran"
    torch.save(CodeRunningPickle(marker), tmp_path / "payload.pt")
    torch.load(tmp_path / "payload.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("marker_updated", [False, True], ids=["marker-stale", "marker-forged"])
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pt",
                                  "trainer_state.json"])
def test_tampered_file_is_rejected_without_running_its_code(accelerator, saved, tmp_path, name, marker_updated):
    checkpoints, _ = saved
    folder = checkpoints / "checkpoint_4"
    marker = tmp_path / "code_ran"
    torch.save(CodeRunningPickle(marker), folder / name)
    if marker_updated:
        rewrite_manifest_entry(folder, name)
    fresh = make_run(accelerator, init_seed=5)
    with pytest.raises(CheckpointError, match=f"checkpoint_4/{name}"):
        load_checkpoint(accelerator, folder, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])
    assert not marker.exists()


def test_accelerate_style_checkpoint_without_marker_is_refused(accelerator, tmp_path):
    folder = tmp_path / "checkpoints" / "checkpoint_0"
    folder.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    torch.save(CodeRunningPickle(marker), folder / "custom_checkpoint_0.pkl")
    fresh = make_run(accelerator, init_seed=5)
    with pytest.raises(CheckpointError, match="has no checkpoint.json: it is not a complete hf_mltm checkpoint"):
        load_checkpoint(accelerator, folder, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"step": -1}, "step=-1 must be a non-negative int"),
    ({"step": True}, "step=True must be a non-negative int"),
    ({"step": 2.0}, "step=2.0 must be a non-negative int"),
    ({"total_limit": 0}, "total_limit=0 must be None"),
    ({"total_limit": True}, "total_limit=True must be None"),
    ({"trainer_state": [1]}, "trainer_state must be a dict"),
    ({"trainer_state": {"pair": (1, 2)}}, r"trainer_state\['pair'\] is a tuple.*use a list"),
    ({"trainer_state": {3: "x"}}, "has the key 3 of type int"),
    ({"trainer_state": {"m": {"r": np.float32(1.5)}}}, r"trainer_state\['m'\]\['r'\] is a float32"),
    ({"optimizer": object()}, "optimizer: object has no state_dict"),
])
def test_save_rejects_bad_arguments_before_writing(accelerator, tmp_path, kwargs, match):
    model, optimizer, scheduler = make_run(accelerator, init_seed=0)
    arguments = {"step": 1, "model": model, "optimizer": optimizer, "scheduler": scheduler, "trainer_state": {},
                 "total_limit": None, **kwargs}
    step = arguments.pop("step")
    with pytest.raises(ValueError, match=match):
        save_checkpoint(accelerator, tmp_path, step, **arguments)
    assert not (tmp_path / "checkpoints").exists()


def test_load_rejects_a_missing_folder(accelerator, tmp_path):
    fresh = make_run(accelerator, init_seed=5)
    with pytest.raises(ValueError, match="checkpoint_3 is not a folder"):
        load_checkpoint(accelerator, tmp_path / "checkpoint_3", model=fresh[0], optimizer=fresh[1],
                        scheduler=fresh[2])


def test_load_rejects_another_process_count(accelerator, saved):
    checkpoints, _ = saved
    folder = checkpoints / "checkpoint_4"
    data = manifest(folder)
    data["num_processes"] = 2
    data["files"]["rng_state_1.pt"] = data["files"]["rng_state_0.pt"]
    (folder / "checkpoint.json").write_text(json.dumps(data))
    fresh = make_run(accelerator, init_seed=5)
    with pytest.raises(CheckpointError, match="saved by 2 processes but this run has 1.*--num_processes 2"):
        load_checkpoint(accelerator, folder, model=fresh[0], optimizer=fresh[1], scheduler=fresh[2])


def test_load_rejects_a_checkpoint_of_another_model(accelerator, saved):
    checkpoints, _ = saved
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    with pytest.raises(CheckpointError, match="model.safetensors does not fit the model/optimizer/scheduler"):
        load_checkpoint(accelerator, checkpoints / "checkpoint_4", model=model, optimizer=optimizer,
                        scheduler=scheduler)


# ---------------------------------------------------------------------------------------------------------------
# Two processes
# ---------------------------------------------------------------------------------------------------------------


def _two_process_worker(output_dir: Path) -> None:
    """Each rank: seed its RNGs differently, train one DDP step, save, draw, scramble, load, draw again; then
    load again after damaging rank 1's RNG file."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    model, optimizer, scheduler = make_run(accelerator, init_seed=0)
    torch.manual_seed(10 + rank)
    random.seed(20 + rank)
    np.random.seed(30 + rank)
    train_step(accelerator, model, optimizer, scheduler, step=rank)  # different data per rank, DDP averages
    folder = save_checkpoint(accelerator, output_dir, 1, model=model, optimizer=optimizer, scheduler=scheduler,
                             trainer_state={"global_step": 1}, total_limit=1)
    at_save = draws()
    params = [p.detach().clone() for p in model.parameters()]
    scramble_rngs()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    state = load_checkpoint(accelerator, folder, model=model, optimizer=optimizer, scheduler=scheduler)
    result = {"at_save": at_save, "resumed": draws(), "state": state,
              "params_restored": all(torch.equal(a, b) for a, b in zip(model.parameters(), params, strict=True)),
              "wrapped": type(model).__name__}
    # A damaged file seen by one rank only: every rank must raise (none may hang waiting for the other).
    if accelerator.is_main_process:
        truncate(folder / "rng_state_1.pt")
    accelerator.wait_for_everyone()
    try:
        load_checkpoint(accelerator, folder, model=model, optimizer=optimizer, scheduler=scheduler)
    except CheckpointError as error:
        result["damaged_error"] = str(error)
    (output_dir / f"rank{rank}.json").write_text(json.dumps(result))


@pytest.mark.slow
def test_two_processes_save_shared_files_once_and_restore_each_rank_rng(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", __file__, str(tmp_path)]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["wrapped"] for r in ranks] == ["DistributedDataParallel"] * 2
    for r in ranks:
        assert r["resumed"] == r["at_save"] and r["params_restored"] and r["state"] == {"global_step": 1}
    assert ranks[0]["at_save"] != ranks[1]["at_save"]  # each rank got its own RNG state back
    assert "checkpoint_1/rng_state_1.pt has" in ranks[1]["damaged_error"]
    assert ranks[0]["damaged_error"].startswith(f"loading checkpoint {tmp_path / 'checkpoints' / 'checkpoint_1'} "
                                                "failed on process 1: CheckpointError:")
    folder = tmp_path / "checkpoints" / "checkpoint_1"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_1"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*EXPECTED_FILES, "rng_state_1.pt"])
    assert manifest(folder)["num_processes"] == 2
    from safetensors.torch import load_file

    assert sorted(load_file(folder / "model.safetensors")) == ["bias", "weight"]  # unwrapped: no "module."


if __name__ == "__main__":
    _two_process_worker(Path(sys.argv[1]))


@pytest.mark.parametrize("distributed_type", ["FSDP", "DEEPSPEED", "XLA"])  # FSDP here: version 1
def test_unsupported_distributed_types_are_refused_before_writing(tmp_path, distributed_type):
    from types import SimpleNamespace

    fake = SimpleNamespace(is_main_process=True, process_index=0, num_processes=1, unwrap_model=lambda m, **_: m,
                           distributed_type=distributed_type, is_fsdp2=False)
    with pytest.raises(ValueError, match=f"distributed_type={distributed_type} is not supported"):
        save_checkpoint(fake, tmp_path, 1, model=torch.nn.Linear(2, 2), optimizer=None, scheduler=None,
                        trainer_state={})
    assert not (tmp_path / "checkpoints").exists()


def test_a_checkpoint_resumes_only_under_the_sharding_it_was_saved_with(accelerator, saved):
    checkpoints, run = saved
    manifest_path = checkpoints / "checkpoint_4" / "checkpoint.json"
    manifest = json.loads(manifest_path.read_text())
    assert "sharding" not in manifest  # unsharded runs keep the original manifest
    manifest["sharding"] = "fsdp2"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="saved with fsdp2 but this run has no sharding"):
        load_checkpoint(accelerator, checkpoints / "checkpoint_4", model=run[0], optimizer=run[1], scheduler=run[2])
    manifest["sharding"] = "zero3"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match='"sharding" must be "fsdp2" or absent'):
        load_checkpoint(accelerator, checkpoints / "checkpoint_4", model=run[0], optimizer=run[1], scheduler=run[2])
