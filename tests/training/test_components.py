
import pytest
import torch

from hf_mltm.tensors import pad_and_stack
from hf_mltm.training import (
    EpochShuffleSampler,
    MetricsLog,
    read_metrics_log,
    write_model_card,
)
from hf_mltm.training.config import ExperimentConfig
from hf_mltm.training.hub import HubAccessError, check_hub_access
from hf_mltm.training.trainer import _lr_lambda


def test_pad_and_stack_pads_each_dim_with_zeros_and_false():
    stacked = pad_and_stack([torch.ones(2, 3), torch.full((1, 4), 2.0)])
    assert stacked.shape == (2, 2, 4)
    assert stacked[0].sum() == 6 and stacked[1].sum() == 8 and stacked[0, :, 3].abs().sum() == 0
    masks = pad_and_stack([torch.ones(2, dtype=torch.bool), torch.ones(3, dtype=torch.bool)])
    assert masks.dtype == torch.bool and masks.tolist() == [[True, True, False], [True, True, True]]


def test_epoch_sampler_is_seeded_per_epoch():
    sampler = EpochShuffleSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(10))
    assert list(EpochShuffleSampler(5, seed=3, shuffle=False)) == [0, 1, 2, 3, 4]


def _config(**training) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"output_dir": "x", "model": {}, "data": {}, "training": training})


def test_lr_schedules():
    step = _lr_lambda(_config(lr_scheduler="step", lr_step_epochs=[2, 3], lr_gamma=0.1), 10, 50)
    assert [step(s) for s in (0, 19, 20, 29, 30)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = _lr_lambda(_config(lr_scheduler="cosine", warmup_steps=4), 10, 24)
    assert [cosine(s) for s in (0, 3, 4, 14, 24)] == pytest.approx([0.2, 0.8, 1.0, 0.5, 0.0])
    linear = _lr_lambda(_config(lr_scheduler="linear"), 10, 20)
    assert [linear(s) for s in (0, 10, 20)] == pytest.approx([1.0, 0.5, 0.0])


def test_metrics_log_truncates_records_after_a_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "sub" / "metrics.jsonl")
    for step in range(1, 7):
        # epochs count from 1; an eval record carries the epoch it finished
        log.write({"type": "train", "step": step, "epoch": 1 + (step - 1) // 3, "loss": 1.0 / step, "lr": 0.1})
        if step % 3 == 0:
            log.write({"type": "eval", "epoch": step // 3, "step": step, "metrics": {}})
    log.truncate_after(step=4, epoch=1)  # a checkpoint at step 4, one epoch finished
    records = read_metrics_log(log.path)
    assert [(r["type"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("train", 3), ("eval", 3),
                                                         ("train", 4)]
    log.path.write_text('{"type": "train"}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics_log(log.path)


def test_model_card_lists_data_settings_and_metrics(tmp_path):
    metrics = {"distance": {"text_to_audio": {"R@1": 12.5, "R@5": 50.0, "medR": 5},
                            "audio_to_text": {"R@1": 25.0, "R@5": 62.5, "medR": 3}, "rsum": 150.0}}
    path = write_model_card(tmp_path, model_type="mltm_audio_text", loss="mltm", datasets=["esc50 `esc50` split"],
                            metrics=metrics, training={"batch_size": 64}, eval_data="ESC-10", best_epoch=3)
    text = path.read_text()
    assert text.startswith("---\nlibrary_name: transformers\n")
    assert "- esc50 `esc50` split" in text and "`batch_size`: 64" in text and "epoch 3" in text
    assert "| ranking | direction | R@1 | R@5 | medR |" in text
    assert "| distance | text_to_audio | 12.50 | 50.00 | 5 |" in text and "| distance | rsum | 150.00 |" in text


def test_hub_check_fails_fast_offline_or_without_token(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubAccessError, match="HF_HUB_OFFLINE"):
        check_hub_access("someone/model")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(HubAccessError, match="no Hugging Face token"):
        check_hub_access("someone/model")
    with pytest.raises(HubAccessError, match="<user or org>/<name>"):
        check_hub_access("model")
