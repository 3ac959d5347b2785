"""An interrupted suite resumes from its stored runs: finished runs are read, not trained again, and give the same
report; a run whose save was cut short is trained again; a damaged stored run fails naming its files."""

import json

import pytest

import hf_mltm.experiments.suites as suites
from hf_mltm.experiments.run_store import RunStore, run_key
from hf_mltm.experiments.suites import parse_suite, run_suite
from tests.experiments.test_selection import SUITE, _synthetic_audio_data

REAL_TRAIN_HEADS = suites.train_heads


class Interrupted(Exception):
    """Stands for the process being killed in the middle of a suite."""


@pytest.fixture
def synthetic_data(monkeypatch):
    import hf_mltm.experiments.features as features

    monkeypatch.setattr(features, "audio_zero_shot_data", lambda *args, **kwargs: _synthetic_audio_data(10))


def _counting_train_heads(monkeypatch, fail_after=None):
    calls = []

    def train_heads(*args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise Interrupted("simulated interruption")
        calls.append(kwargs["seed"])
        return REAL_TRAIN_HEADS(*args, **kwargs)

    monkeypatch.setattr(suites, "train_heads", train_heads)
    return calls


def _methods(result):
    return {name: {key: value for key, value in method.items() if key not in ("wall_s", "cpu_s", "training_cpu_s", "stored_runs", "search")}
            for name, method in result.json["conditions"]["default"]["methods"].items()}


def test_an_interrupted_suite_resumes_without_training_finished_runs_again(
        synthetic_data, monkeypatch, tmp_path, one_thread):
    common = {"data_root": tmp_path, "cache_dir": tmp_path, "log": lambda line: None, "keep_artifacts": False}
    fresh = run_suite(parse_suite(SUITE), **common)  # no store: 2 methods x (4 search + 1 more seed) = 10 runs

    calls = _counting_train_heads(monkeypatch, fail_after=3)
    with pytest.raises(Interrupted):
        run_suite(parse_suite(SUITE), runs_dir=tmp_path / "runs", **common)
    assert len(calls) == 3 and len(list((tmp_path / "runs").glob("*.json"))) == 3

    calls = _counting_train_heads(monkeypatch)
    resumed = run_suite(parse_suite(SUITE), runs_dir=tmp_path / "runs", **common)
    assert len(calls) == 10 - 3
    assert _methods(resumed) == _methods(fresh)

    calls = _counting_train_heads(monkeypatch)
    again = run_suite(parse_suite(SUITE), runs_dir=tmp_path / "runs", **common)
    assert calls == [] and _methods(again) == _methods(fresh)
    methods = again.json["conditions"]["default"]["methods"]
    assert [methods[name]["stored_runs"] for name in ("mltm", "infonce")] == [5, 5]
    fresh_methods = fresh.json["conditions"]["default"]["methods"]
    for name in ("mltm", "infonce"):  # the stored runs' CPU time is still counted
        assert methods[name]["training_cpu_s"] > 0 and fresh_methods[name]["stored_runs"] == 0

    # another budget is another run
    changed = {**SUITE, "training": {**SUITE["training"], "epochs": 2}}
    calls = _counting_train_heads(monkeypatch)
    run_suite(parse_suite(changed), runs_dir=tmp_path / "runs", **common)
    assert len(calls) == 10


def test_a_run_without_its_json_marker_is_trained_again_and_a_damaged_one_is_named(
        synthetic_data, monkeypatch, tmp_path, one_thread):
    common = {"data_root": tmp_path, "cache_dir": tmp_path, "log": lambda line: None, "keep_artifacts": False,
              "runs_dir": tmp_path / "runs"}
    run_suite(parse_suite(SUITE), **common)
    markers = sorted((tmp_path / "runs").glob("*.json"))
    assert len(markers) == 10
    markers[0].unlink()  # as if killed between writing the parameters and the marker
    calls = _counting_train_heads(monkeypatch)
    run_suite(parse_suite(SUITE), **common)
    assert len(calls) == 1

    state = markers[1].with_suffix(".safetensors")
    state.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=rf"stored run .*{markers[1].name}.*delete both files"):
        run_suite(parse_suite(SUITE), **common)


def test_run_key_is_order_independent_and_sensitive_to_every_value():
    payload = {"config": {"ot_epsilon": 0.05, "loss_type": "mltm"}, "seed": 0}
    assert run_key(payload) == run_key({"seed": 0, "config": {"loss_type": "mltm", "ot_epsilon": 0.05}})
    assert run_key(payload) != run_key({**payload, "seed": 1})
    assert run_key(payload) != run_key({**payload, "config": {"ot_epsilon": 0.050001, "loss_type": "mltm"}})
    assert RunStore(None).load(payload) is None
    meta = json.dumps(payload)  # keys are JSON-serialisable payloads
    assert len(run_key(json.loads(meta))) == 64
