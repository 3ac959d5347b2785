"""Acceptance of the architecture issue: one training step is trainer -> model.forward -> loss module -> backward.

The trainer calls no model method other than ``forward`` (``model(**batch)``) and the module basics (``train``,
``parameters``, ...): the cost, the metric and the towers are reached through the loss module and the family adapter.
"""

import inspect
from pathlib import Path

import pytest
import yaml

from hf_mltm.models.mltm import MLTMAudioTextModel
from hf_mltm.training import load_config, train

REPO = Path(__file__).resolve().parents[2]
TRAINER = str(REPO / "hf_mltm" / "training" / "trainer.py")
MODEL_METHODS = [name for name, _ in inspect.getmembers(MLTMAudioTextModel, inspect.isfunction)
                 if name in vars(MLTMAudioTextModel) and not name.startswith("_") and name != "forward"]


def test_the_trainer_calls_no_model_method_but_forward(tmp_path, shared_data, monkeypatch):
    assert {"pairwise_cost", "get_tower_outputs", "project_audio", "logits_from_cost"} <= set(MODEL_METHODS)
    calls_from_trainer, calls = [], []

    def spy(name, method):
        def wrapper(self, *args, **kwargs):
            caller = inspect.stack()[1].filename
            calls.append(name)
            if caller == TRAINER:
                calls_from_trainer.append(name)
            return method(self, *args, **kwargs)

        return wrapper

    for name in MODEL_METHODS:
        monkeypatch.setattr(MLTMAudioTextModel, name, spy(name, getattr(MLTMAudioTextModel, name)))
    forwards = []
    original_forward = MLTMAudioTextModel.forward

    def forward(self, *args, **kwargs):
        # the first frame outside torch's Module.__call__ machinery is the caller
        callers = [frame.filename for frame in inspect.stack()[1:8] if "torch/nn/modules" not in frame.filename]
        forwards.append(callers[0])
        return original_forward(self, *args, **kwargs)

    monkeypatch.setattr(MLTMAudioTextModel, "forward", forward)
    raw = yaml.safe_load((REPO / "configs" / "tiny_esc50.yaml").read_text())
    raw["data"]["root"] = str(shared_data)
    raw["training"].update(progress=False, trackers=[], feature_cache_dir=str(tmp_path / "features"),
                           checkpoint_every_steps=None)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    result = train(load_config(config_path, ["--output_dir", str(tmp_path / "run"), "--training.max_steps", "2",
                                             "--evaluation.enabled", "false"]))
    assert result.global_step == 2
    assert forwards.count(TRAINER) == 2  # one forward per step, called by the trainer
    assert "pairwise_cost" in calls  # the loss module builds the cost ...
    assert calls_from_trainer == []  # ... and the trainer itself calls no other model method


@pytest.mark.parametrize("name", ["loss_from_inputs", "project_metric_", "matching_loss"])
def test_the_removed_trainer_plumbing_is_gone_from_the_model(name):
    assert name not in vars(MLTMAudioTextModel)
