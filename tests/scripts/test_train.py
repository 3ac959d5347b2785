"""End-to-end runs of scripts/train.py: 2 CPU processes vs 1, kill and resume, fail-fast errors.

Tiny random towers (frozen), the MiniLM tokenizer and a few real ESC-50 clips keep each run to seconds.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from hf_mltm.training import read_metrics_log

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def tiny_config(tmp_path: Path, shared_data: Path, **training) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "tiny_esc50.yaml").read_text())
    raw["data"]["root"] = str(shared_data)
    raw["training"].update({"progress": False, "trackers": [], "feature_cache_dir": str(tmp_path / "features"),
                            **training})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO)}


def run_train(args: list[str], processes: int = 1, timeout: int = 240, fsdp2: bool = False,
              check: bool = True) -> subprocess.CompletedProcess:
    """``scripts/train.py`` in one process, or under ``accelerate launch`` (DDP over gloo, or accelerate's FSDP2
    path through ``fsdp2_on_cpu.py`` with ``fsdp2=True``)."""
    if processes == 1:
        command = [sys.executable, str(REPO / "scripts" / "train.py"), *args]
        environment = env()
    else:
        wrapper = [str(Path(__file__).with_name("fsdp2_on_cpu.py"))] if fsdp2 else []
        command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   *wrapper, str(REPO / "scripts" / "train.py"), *args]
        environment = {**env(), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path, shared_data):
    config = tiny_config(tmp_path, shared_data)
    common = ["--config", str(config), "--training.max_steps", "3", "--evaluation.enabled", "false",
              "--training.max_grad_norm", "null"]
    dumps = {}
    for processes in (1, 2):
        out = tmp_path / f"run{processes}"
        run_train([*common, "--output_dir", str(out),
                   "--training.debug_dump_path", str(out / "dump.pt")], processes=processes)
        dumps[processes] = torch.load(out / "dump.pt", weights_only=True)
    one, two = dumps[1], dumps[2]
    assert [entry["step"] for entry in one] == [entry["step"] for entry in two] == [0, 1, 2]
    for step, (a, b) in enumerate(zip(one, two, strict=True)):
        # Step 0 starts from the same weights: equal up to float32 summation order. Later steps start from
        # weights that went through Adam, which amplifies those ~1e-7 differences a little.
        tolerance = 1e-5 if step == 0 else 1e-3
        torch.testing.assert_close(b["loss"], a["loss"], atol=1e-6, rtol=1e-6)
        assert sorted(a["grads"]) == sorted(b["grads"])
        assert "metric.weight" in a["grads"] and "audio_projection.linear1.weight" in a["grads"]
        for name in a["grads"]:
            assert a["grads"][name].abs().max() > 0, name
            relative_error = ((b["grads"][name] - a["grads"][name]).norm() / a["grads"][name].norm()).item()
            assert relative_error < tolerance, (step, name, relative_error)
    # The frozen towers get no gradient at all.
    assert not any(name.startswith(("audio_model.", "text_model.")) for name in one[0]["grads"])


def test_fsdp2_two_processes_equal_one_process(tmp_path, shared_data):
    # accelerate's FSDP2 path (fully_shard over gloo): 8 steps with gradient clipping, evaluation and checkpoint
    # selection every epoch, and the final save, against one process on the same global batches.
    config = tiny_config(tmp_path, shared_data, checkpoint_every_steps=None)
    common = ["--config", str(config), "--training.max_grad_norm", "1.0"]
    runs = {}
    for name, processes, fsdp2 in (("one", 1, False), ("fsdp2", 2, True)):
        out = tmp_path / name
        result = run_train([*common, "--output_dir", str(out), "--training.debug_dump_path", str(out / "dump.pt")],
                           processes=processes, fsdp2=fsdp2)
        runs[name] = (out, result)
    assert "prepared FSDPMLTMAudioTextModel" in runs["fsdp2"][1].stdout  # the model really was sharded
    one, two = (torch.load(runs[name][0] / "dump.pt", weights_only=True) for name in ("one", "fsdp2"))
    assert [entry["step"] for entry in two] == list(range(8))
    for step, (a, b) in enumerate(zip(one, two, strict=True)):
        torch.testing.assert_close(b["loss"], a["loss"], atol=1e-6, rtol=1e-6)
        assert sorted(a["grads"]) == sorted(b["grads"]) and "metric.weight" in a["grads"]
        tolerance = 1e-5 if step == 0 else 1e-3  # later steps: Adam amplifies float32 summation-order differences
        for name, grad in a["grads"].items():
            relative_error = ((b["grads"][name] - grad).norm() / grad.norm()).item()
            assert relative_error < tolerance, (step, name, relative_error)
    evals = {name: [r["metrics"]["distance"] for r in read_metrics_log(runs[name][0] / "metrics.jsonl")
                    if r["type"] == "eval"] for name in runs}
    assert len(evals["fsdp2"]) == 2 and evals["fsdp2"] == evals["one"]
    # The final model (the best epoch's, gathered from the shards) loads on its own and equals one process's.
    from safetensors.torch import load_file

    for folder in ("", "best"):
        want = load_file(runs["one"][0] / folder / "model.safetensors")
        got = load_file(runs["fsdp2"][0] / folder / "model.safetensors")
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, atol=1e-3 * float(value.abs().max()) + 1e-7, rtol=0)


def test_fsdp2_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path, shared_data):
    # Checkpoints under FSDP2 gather the sharded model and optimizer state; resuming scatters them back.
    config = tiny_config(tmp_path, shared_data, checkpoint_every_steps=2)
    common = ["--config", str(config), "--evaluation.enabled", "false"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run_train([*common, "--output_dir", str(whole)], processes=2, fsdp2=True)
    run_train([*common, "--output_dir", str(stopped), "--training.max_steps", "4"], processes=2, fsdp2=True)
    manifest = json.loads((stopped / "checkpoints" / "checkpoint_4" / "checkpoint.json").read_text())
    assert manifest["sharding"] == "fsdp2" and manifest["num_processes"] == 2
    # A sharded checkpoint cannot resume without sharding: the optimizer state is stored by parameter name.
    refused = run_train([*common, "--output_dir", str(stopped), "--training.resume_from_checkpoint", "latest"],
                        check=False)
    assert refused.returncode == 2 and "saved with fsdp2 but this run has no sharding" in refused.stderr
    result = run_train([*common, "--output_dir", str(stopped), "--training.resume_from_checkpoint", "latest"],
                       processes=2, fsdp2=True)
    assert "resumed from" in result.stdout + result.stderr
    expected = [r for r in read_metrics_log(whole / "metrics.jsonl") if r["type"] == "train"]
    resumed = [r for r in read_metrics_log(stopped / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in resumed] == [r["step"] for r in expected] == list(range(1, 9))
    for got, want in zip(resumed, expected, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-7)
        assert got["lr"] == want["lr"]
    from safetensors.torch import load_file

    want, got = load_file(whole / "model.safetensors"), load_file(stopped / "model.safetensors")
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-5)


def test_fsdp2_refuses_what_it_cannot_run_before_any_work(tmp_path, shared_data):
    config = tiny_config(tmp_path, shared_data)
    out = tmp_path / "fsdp2"
    result = run_train(["--config", str(config), "--output_dir", str(out), "--model.config.learnable_temperature",
                        "true"], processes=2, fsdp2=True, check=False)
    assert result.returncode != 0
    assert "cannot shard the 0-dim parameter(s) ['logit_scale']" in result.stderr
    assert not (out / "metrics.jsonl").exists() and not (tmp_path / "features").exists()


def test_killed_run_resumes_with_the_same_losses(tmp_path, shared_data):
    # Dropout on the text head makes the losses depend on the restored RNG state.
    config = tiny_config(tmp_path, shared_data, num_epochs=6, checkpoint_every_steps=3)
    raw = yaml.safe_load(config.read_text())
    raw["model"]["config"]["text_dropout_prob"] = 0.2
    config.write_text(yaml.safe_dump(raw))
    reference = tmp_path / "reference"
    run_train(["--config", str(config), "--output_dir", str(reference)])
    expected = [r for r in read_metrics_log(reference / "metrics.jsonl") if r["type"] == "train"]
    assert len(expected) == 6 * 4  # 32 clips / batch 8 = 4 steps per epoch

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config),
                                "--output_dir", str(killed)], cwd=REPO, env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (killed / "checkpoints" / "checkpoint_6").is_dir() and time.time() < deadline:
        time.sleep(0.02)  # the second checkpoint (steps 3 and 6) is complete once its folder has its final name
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "model.safetensors").exists()
    logged_before = [r for r in read_metrics_log(killed / "metrics.jsonl") if r["type"] == "train"]
    assert 6 <= len(logged_before) < len(expected)

    result = run_train(["--config", str(config), "--output_dir", str(killed),
                        "--training.resume_from_checkpoint", "latest"])
    assert "resumed from" in result.stdout + result.stderr
    resumed = [r for r in read_metrics_log(killed / "metrics.jsonl") if r["type"] == "train"]
    assert [r["step"] for r in resumed] == list(range(1, 25))
    for got, want in zip(resumed, expected, strict=True):
        assert got["epoch"] == want["epoch"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-7)
        assert got["lr"] == want["lr"]
    evals = [r for r in read_metrics_log(killed / "metrics.jsonl") if r["type"] == "eval"]
    assert [r["epoch"] for r in evals] == list(range(1, 7))  # counted from 1, as the console prints them
    assert [r["epoch"] for r in resumed] == [1 + (step - 1) // 4 for step in range(1, 25)]
    # Checkpoints are named by step; the newest two complete ones are kept.
    assert sorted(path.name for path in (killed / "checkpoints").iterdir()) == ["checkpoint_21", "checkpoint_24"]
    assert (killed / "model.safetensors").is_file() and "## Evaluation" in (killed / "README.md").read_text()


def test_push_to_hub_offline_fails_before_training(tmp_path, shared_data):
    config = tiny_config(tmp_path, shared_data)
    out = tmp_path / "hub"
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config), "--output_dir",
               str(out), "--hub.push_to_hub", "true", "--hub.model_id", "someone/tiny"]
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "HF_HUB_OFFLINE" in result.stderr and "push_to_hub" in result.stderr
    assert not out.exists()  # nothing was built, cached or trained


def test_bad_override_is_a_clear_error(tmp_path, shared_data):
    config = tiny_config(tmp_path, shared_data)
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config),
               "--training.learnig_rate", "0.1"]
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "training.learnig_rate" in result.stderr and "learning_rate" in result.stderr
    assert str(config) in result.stderr


def test_model_config_typo_fails_before_any_work_naming_the_key(tmp_path, shared_data):
    config = tiny_config(tmp_path, shared_data)
    out = tmp_path / "typo"
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config), "--output_dir", str(out),
               "--model.config.ot_epsilonn", "5.0"]
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "model.config: unknown key 'ot_epsilonn' (did you mean 'ot_epsilon'?)" in result.stderr
    assert not out.exists()  # nothing was built, cached or trained


def test_builder_argument_typo_fails_before_any_work_naming_the_key(tmp_path, shared_data):
    config = tiny_config(tmp_path, shared_data)
    raw = yaml.safe_load(config.read_text())
    raw["data"]["eval"][0]["args"] = {"esc10_onyl": True}
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "typo"
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config), "--output_dir", str(out)]
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "data.eval[0].args" in result.stderr and "'esc10_onyl'" in result.stderr and "'esc10_only'" in result.stderr
    assert not out.exists()


def test_output_dir_that_is_a_file_fails_before_any_work(tmp_path, shared_data):
    config = tiny_config(tmp_path, shared_data)
    (tmp_path / "a_file").write_text("not a folder")
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "--config", str(config), "--output_dir",
               str(tmp_path / "a_file")]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is an existing file; give a folder" in result.stderr
    assert not (tmp_path / "features").exists()  # no tower was run, nothing was cached
    assert time.perf_counter() - started < 60


def test_same_output_dir_with_other_clips_of_the_same_count_trains_on_the_new_clips(tmp_path, shared_data):
    # Regression: the old per-run embedding_cache.pt was reused whenever its row count matched, so a second run in
    # the same folder with other clips trained on the first clips' embeddings (same step-1 loss).
    def first_loss(config_path, output_dir):
        run_train(["--config", str(config_path), "--output_dir", str(output_dir), "--training.max_steps", "1",
                   "--evaluation.enabled", "false"])
        return next(r["loss"] for r in read_metrics_log(output_dir / "metrics.jsonl") if r["type"] == "train")

    config = tiny_config(tmp_path, shared_data)
    raw = yaml.safe_load(config.read_text())
    other = dict(raw, data={**raw["data"], "train": [{**raw["data"]["train"][0], "split": "test",
                                                       "args": {"esc10_only": True}, "max_items": 32}]})
    other_config = tmp_path / "other.yaml"
    other_config.write_text(yaml.safe_dump(other))
    shared_dir = tmp_path / "same_folder"
    first = first_loss(config, shared_dir)
    shutil.rmtree(shared_dir / "checkpoints", ignore_errors=True)
    (shared_dir / "metrics.jsonl").unlink()
    second = first_loss(other_config, shared_dir)  # same folder and cache, other clips, same count (32)
    fresh = first_loss(other_config, tmp_path / "fresh")
    assert second != pytest.approx(first, abs=1e-6)
    assert second == pytest.approx(fresh, abs=1e-6)


def omit_flickr8k_config(tmp_path: Path, shared_data: Path, **training) -> Path:
    """OMIT on 16 training and 8 validation Flickr8k images (80 / 40 captions), EfficientNet-Lite0 grid fragments."""
    from hf_mltm.data import build_flickr8k, extract_grid_features

    splits = build_flickr8k(shared_data / "flickr8k_1k", view="items")
    train_items, eval_items = splits["train"].select(range(16)), splits["validation"].select(range(8))
    images = [*train_items["image"], *eval_items["image"]]
    item_ids = [*train_items["item_id"], *eval_items["item_id"]]
    extract_grid_features(images, item_ids, tmp_path / "grid", batch_size=8, progress=False)
    raw = yaml.safe_load((REPO / "configs" / "flickr8k_omit_small.yaml").read_text())
    raw["data"]["root"] = str(shared_data)
    raw["data"]["train"][0]["max_items"] = 16
    raw["data"]["eval"][0]["max_items"] = 8
    raw["data"]["fragments"] = str(tmp_path / "grid")
    raw["model"]["config"].update(embed_dim=32, image_projection_hidden_size=32, triplet_warmup_steps=5)
    raw["training"].update({"num_epochs": 3, "batch_size": 16, "progress": False, "trackers": [],
                            "checkpoint_every_steps": 100, **training})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def test_omit_fsdp2_two_processes_equal_one_process(tmp_path, shared_data):
    # The OMIT loss gathers fragments of different token counts (padded) across processes. With every image
    # fragment kept (the training-time random selection off: each process would draw its own), two FSDP2 processes
    # give the updates of one process on the global batch.
    config = omit_flickr8k_config(tmp_path, shared_data, num_epochs=1, checkpoint_every_steps=None)
    common = ["--config", str(config), "--model.config.fragment_keep_ratio", "1.0"]
    dumps = {}
    for name, processes in (("one", 1), ("fsdp2", 2)):
        out = tmp_path / name
        result = run_train([*common, "--output_dir", str(out), "--training.debug_dump_path", str(out / "dump.pt")],
                           processes=processes, fsdp2=processes > 1)
        dumps[name] = torch.load(out / "dump.pt", weights_only=True)
    assert "prepared FSDPOMITImageTextModel" in result.stdout
    assert [entry["step"] for entry in dumps["fsdp2"]] == list(range(5))
    for step, (a, b) in enumerate(zip(dumps["one"], dumps["fsdp2"], strict=True)):
        torch.testing.assert_close(b["loss"], a["loss"], atol=1e-6, rtol=1e-6)
        assert sorted(a["grads"]) == sorted(b["grads"])
        for name, grad in a["grads"].items():
            relative_error = ((b["grads"][name] - grad).norm() / grad.norm()).item()
            assert relative_error < 1e-5, (step, name, relative_error)


def test_omit_trains_on_real_flickr8k_grid_fragments_and_reloads(tmp_path, shared_data):
    from transformers import AutoModel

    from hf_mltm.models.omit import OMITImageTextModel

    config = omit_flickr8k_config(tmp_path, shared_data)
    run_train(["--config", str(config), "--output_dir", str(tmp_path / "run")])
    log = read_metrics_log(tmp_path / "run" / "metrics.jsonl")
    steps = [entry for entry in log if entry.get("type") == "train"]
    evaluations = [entry for entry in log if entry.get("type") == "eval"]
    assert len(steps) == 15  # 3 epochs x 80 captions / 16
    assert len(evaluations) == 3 and set(evaluations[0]["metrics"]["distance"]) == {"text_to_image", "image_to_text",
                                                                                     "rsum"}
    model = AutoModel.from_pretrained(tmp_path / "run")
    assert isinstance(model, OMITImageTextModel)
    # The final folder holds the best epoch's model: its weights are those saved to best/ at that epoch.
    best_model = AutoModel.from_pretrained(tmp_path / "run" / "best")
    for (name, value), (_, expected) in zip(model.state_dict().items(), best_model.state_dict().items(), strict=True):
        assert torch.equal(value, expected), name
    assert (tmp_path / "run" / "README.md").read_text().count("text_to_image") >= 1
    # train -> save -> from_pretrained -> evaluate: the saved (best) model reproduces its in-training evaluation.
    from tests.utils import load_script

    load_script("evaluate").main(["--model", str(tmp_path / "run"), "--config", str(config), "--batch_size", "16",
                                  "--output_dir", str(tmp_path / "eval"), "--no_progress"])
    best = max(evaluations, key=lambda entry: entry["metrics"]["distance"]["rsum"])
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["num_items"] == 8 and evaluated["num_captions"] == 40
    for direction in ("text_to_image", "image_to_text"):
        for metric in ("R@1", "R@5", "R@10", "medR"):
            assert evaluated["distance"][direction][metric] == pytest.approx(best["metrics"]["distance"][direction][metric])


def test_bf16_mixed_precision_with_gradient_accumulation_trains_without_the_cache(tmp_path, shared_data):
    config = tiny_config(tmp_path, shared_data, mixed_precision="bf16", gradient_accumulation_steps=2,
                         embedding_cache=False, num_epochs=1)
    run_train(["--config", str(config), "--output_dir", str(tmp_path / "run"), "--training.max_steps", "2",
               "--evaluation.enabled", "false"])
    steps = [entry for entry in read_metrics_log(tmp_path / "run" / "metrics.jsonl") if entry.get("type") == "train"]
    assert [entry["step"] for entry in steps] == [1, 2]  # two optimizer steps of two micro-batches each
    assert all(math.isfinite(entry["loss"]) for entry in steps)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tmp_path / "run")
    assert model.metric.weight.dtype == torch.float32  # the OT metric stays float32 under bf16


def test_a_held_out_validation_split_is_what_selects_and_one_item_cannot_select(tmp_path, shared_data):
    raw = yaml.safe_load(tiny_config(tmp_path, shared_data, batch_size=4).read_text())
    raw["data"]["validation_fraction"] = 0.25
    config = tmp_path / "validation.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_train(["--config", str(config), "--output_dir", str(tmp_path / "run")])
    evals = [r for r in read_metrics_log(tmp_path / "run" / "metrics.jsonl") if r.get("type") == "eval"]
    # The selection split is the few held-out training clips (R@10 over at most 10 clips is always 100 %), not the
    # 16 ESC-10 eval clips.
    from hf_mltm.training import build_datasets

    _, selection = build_datasets(raw["data"])
    assert len(selection) <= 10 and not set(selection["label"]) & {"dog", "rooster", "rain", "sea_waves"}
    assert len(evals) == 2 and all(r["metrics"]["distance"]["text_to_audio"]["R@10"] == 100.0 for r in evals)

    raw["data"]["train"][0]["max_items"] = 3  # three clips of three classes: one is held out
    raw["training"]["batch_size"] = 2
    config.write_text(yaml.safe_dump(raw))
    result = run_train(["--config", str(config), "--output_dir", str(tmp_path / "one")])
    assert "the selection split has 1 item(s): no checkpoint selection" in result.stdout + result.stderr
    assert not [r for r in read_metrics_log(tmp_path / "one" / "metrics.jsonl") if r.get("type") == "eval"]
    assert not (tmp_path / "one" / "best").exists()
