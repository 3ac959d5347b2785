"""Selection of hyper-parameters and epochs uses the validation split only; the reported split is evaluated after
every choice is fixed, and changing it changes no choice."""

import math

import torch

from hf_mltm.experiments.features import AudioZeroShotData, PairSet, ZeroShotSplit
from hf_mltm.experiments.suites import TrainedRun, parse_suite, run_suite, select_and_test
from hf_mltm.experiments.training import TrainResult, TrainSettings, train_heads


def _fake_run(hparams, seed, validation):
    return TrainedRun(dict(hparams), seed, TrainResult(3, validation, [], {}, 10, 0.0))


def test_select_and_test_calls_the_test_split_only_after_every_choice_and_only_for_the_winner():
    events = []
    validation = {0.1: 0.5, 0.2: 0.9, 0.3: 0.7}
    # The test split would prefer 0.3: a selection that looked at it would pick 0.3.
    test_scores = {0.1: 0.2, 0.2: 0.1, 0.3: 0.99}

    def train(hparams, seed):
        events.append(("train", hparams["scale"], seed))
        return _fake_run(hparams, seed, validation[hparams["scale"]] + 0.001 * seed)

    def test(run):
        events.append(("test", run.hparams["scale"], run.seed))
        return {"score": test_scores[run.hparams["scale"]]}

    candidates = [{"learning_rate": 1e-3, "scale": scale} for scale in (0.1, 0.2, 0.3)]
    outcome = select_and_test(candidates, [0, 1, 2], 0, train, test)
    assert outcome["selected"] == {"learning_rate": 1e-3, "scale": 0.2}
    first_test = next(i for i, event in enumerate(events) if event[0] == "test")
    assert all(event[0] == "train" for event in events[:first_test])
    assert all(event[0] == "test" for event in events[first_test:])
    assert [event for event in events if event[0] == "test"] == [("test", 0.2, 0), ("test", 0.2, 1), ("test", 0.2, 2)]
    # 3 search runs at seed 0 (reused for the winner's seed 0), then seeds 1 and 2 of the winner
    assert [event for event in events if event[0] == "train"] == [
        ("train", 0.1, 0), ("train", 0.2, 0), ("train", 0.3, 0), ("train", 0.2, 1), ("train", 0.2, 2)]
    assert [run["test"]["score"] for run in outcome["runs"]] == [0.1, 0.1, 0.1]
    assert [entry["validation"] for entry in outcome["search"]] == [0.5, 0.9, 0.7]


def test_select_and_test_ties_go_to_the_first_candidate_and_nan_never_wins():
    scores = iter([math.nan, 0.4, 0.4])
    outcome = select_and_test([{"learning_rate": lr} for lr in (1.0, 2.0, 3.0)], [5], 5,
                              lambda h, s: _fake_run(h, s, next(scores)), lambda run: {})
    assert outcome["selected"] == {"learning_rate": 2.0}


def test_select_and_test_with_preselected_hyperparameters_runs_no_search():
    calls = []
    outcome = select_and_test([], [0, 1], 0, lambda h, s: calls.append(s) or _fake_run(h, s, 0.1),
                              lambda run: {}, selected={"learning_rate": 0.5})
    assert calls == [0, 1] and outcome["search"] == [] and outcome["selected"] == {"learning_rate": 0.5}


def test_train_heads_keeps_the_parameters_of_the_best_validation_epoch():
    from hf_mltm.experiments.models import build_mltm_model

    torch.manual_seed(0)
    pairs = _pairs(torch.Generator().manual_seed(1), 24)
    model = build_mltm_model({"projection_hidden_size": 8, "projection_dim": 4, "loss_type": "infonce"}, 6, 5)
    scores = iter([0.3, 0.8, 0.5, 0.8])
    snapshots = []

    def validate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    result = train_heads(model, pairs, TrainSettings(epochs=4, batch_size=8, warmup_steps=0), seed=0,
                         validate=validate)
    assert result.best_epoch == 2 and result.best_validation == 0.8  # the first of two equal scores
    assert [entry["validation"] for entry in result.history] == [0.3, 0.8, 0.5, 0.8]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][key])
    assert result.steps == 4 * 3


def _pairs(generator, n, item_dim=6, text_dim=5, classes=4):
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, item_dim, generator=generator)
    items = centres[labels] + 0.3 * torch.randn(n, item_dim, generator=generator)
    texts = torch.randn(classes, text_dim, generator=generator)[labels]
    return PairSet([{"audio_tower_embeds": row} for row in items], [{"text_tower_embeds": row} for row in texts],
                   torch.arange(n), labels, [f"class {int(c)}" for c in labels])


def _synthetic_audio_data(test_seed: int) -> AudioZeroShotData:
    """A tiny zero-shot problem: 4 training classes, 3 test classes. ``test_seed`` only changes the test split."""
    generator = torch.Generator().manual_seed(0)
    train = _pairs(generator, 32)
    prompts = [{"text_tower_embeds": row} for row in torch.randn(4, 5, generator=generator)]
    val_items = [{"audio_tower_embeds": row} for row in torch.randn(12, 6, generator=generator)]
    validation = ZeroShotSplit(val_items, prompts, ["a", "b", "c", "d"], ["pa", "pb", "pc", "pd"],
                               torch.arange(12) % 4, [f"v{i}" for i in range(12)])
    other = torch.Generator().manual_seed(test_seed)
    test = ZeroShotSplit([{"audio_tower_embeds": row} for row in torch.randn(9, 6, generator=other)],
                         [{"text_tower_embeds": row} for row in torch.randn(3, 5, generator=other)],
                         ["x", "y", "z"], ["px", "py", "pz"], torch.randperm(9, generator=other) % 3,
                         [f"t{i}" for i in range(9)])
    return AudioZeroShotData(train, validation, test, 6, 5, {"synthetic": True})


SUITE = {
    "suite": "tiny", "task": "audio_zero_shot", "seeds": [0, 1],
    "model": {"mltm": {"projection_hidden_size": 8, "projection_dim": 4, "ot_tol": 1e-4}},
    "training": {"epochs": 3, "batch_size": 8, "warmup_steps": 0},
    "selection": {"learning_rates": [1e-3, 1e-2]},
    "methods": {
        "mltm": {"config": {"loss_type": "mltm", "metric_type": "diagonal"}, "scale": {"ot_epsilon": [0.05, 0.2]}},
        "infonce": {"config": {"loss_type": "infonce"}, "scale": {"temperature": [0.07, 0.2]}},
    },
    "comparisons": [["mltm", "infonce"]],
}


def test_changing_the_test_split_changes_no_selection(monkeypatch, tmp_path, one_thread):
    import hf_mltm.experiments.features as features

    outcomes = []
    for test_seed in (10, 11):
        monkeypatch.setattr(features, "audio_zero_shot_data",
                            lambda *args, test_seed=test_seed, **kwargs: _synthetic_audio_data(test_seed))
        result = run_suite(parse_suite(SUITE), data_root=tmp_path, cache_dir=tmp_path, log=lambda line: None,
                           keep_artifacts=False).json
        outcomes.append(result["conditions"]["default"]["methods"])
    first, second = outcomes
    for name in ("mltm", "infonce"):
        for key in ("selected", "validation", "best_epoch"):
            assert first[name][key] == second[name][key], (name, key)
        timeless = [[{k: v for k, v in entry.items() if k != "cpu_s"} for entry in run[name]["search"]]
                    for run in outcomes]
        assert timeless[0] == timeless[1] and len(timeless[0]) == 4
    # ... while the reported numbers did change: the test split was really swapped
    assert any(first[name]["per_seed"] != second[name]["per_seed"] for name in ("mltm", "infonce"))
