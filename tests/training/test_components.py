
import pytest
import torch

from hf_mltm.tensors import pad_and_stack
from hf_mltm.training import (
    EmbeddingCache,
    EpochShuffleSampler,
    MetricsLog,
    read_metrics_log,
    write_model_card,
)
from hf_mltm.training.config import ExperimentConfig
from hf_mltm.training.hub import HubAccessError, check_hub_access
from hf_mltm.training.trainer import _lr_lambda, latest_checkpoint


def test_pad_and_stack_pads_each_dim_with_zeros_and_false():
    stacked = pad_and_stack([torch.ones(2, 3), torch.full((1, 4), 2.0)])
    assert stacked.shape == (2, 2, 4)
    assert stacked[0].sum() == 6 and stacked[1].sum() == 8 and stacked[0, :, 3].abs().sum() == 0
    masks = pad_and_stack([torch.ones(2, dtype=torch.bool), torch.ones(3, dtype=torch.bool)])
    assert masks.dtype == torch.bool and masks.tolist() == [[True, True, False], [True, True, True]]


class _Towers(torch.nn.Module):
    """Stand-in with the tower protocol: pooled outputs are a fixed function of each row."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(2.0))

    def get_tower_outputs(self, values, lengths):
        mask = torch.arange(values.shape[1])[None] < lengths[:, None]
        return {"text_hidden_states": values * self.weight, "attention_mask": mask}


def test_embedding_cache_round_trip_matches_direct_tower_outputs(tmp_path):
    rows = [{"values": [float(i)] * (1 + i % 3), "item_index": i // 2} for i in range(7)]

    def collate(batch):
        width = max(len(row["values"]) for row in batch)
        values = torch.tensor([row["values"] + [0.0] * (width - len(row["values"])) for row in batch])
        return {"values": values, "lengths": torch.tensor([len(row["values"]) for row in batch]),
                "item_ids": torch.tensor([row["item_index"] for row in batch])}

    model = _Towers()
    cache = EmbeddingCache.build(model, rows, collate, batch_size=3, progress=False)
    assert len(cache) == 7 and cache.item_ids.tolist() == [0, 0, 1, 1, 2, 2, 3]
    cache.save(tmp_path / "cache.pt")
    loaded = EmbeddingCache.load(tmp_path / "cache.pt")
    batch = loaded.collate([5, 1, 4])
    direct = model.get_tower_outputs(**{k: v for k, v in collate([rows[5], rows[1], rows[4]]).items()
                                        if k != "item_ids"})
    # Row 5 has 3 values, rows 1 and 4 have 2: padding agrees with a direct batch, values are 2 * i.
    torch.testing.assert_close(batch["text_hidden_states"], direct["text_hidden_states"])
    assert batch["attention_mask"].tolist() == direct["attention_mask"].tolist()
    assert batch["text_hidden_states"][0].tolist() == [10.0, 10.0, 10.0]
    assert batch["item_ids"].tolist() == [2, 0, 2]
    with pytest.raises(ValueError, match="get_tower_outputs"):
        EmbeddingCache.build(torch.nn.Linear(1, 1), rows, collate, progress=False)


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


def test_latest_checkpoint_picks_the_highest_number(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for n in (2, 10, 9):
        (tmp_path / "checkpoints" / f"checkpoint_{n}").mkdir(parents=True)
    assert latest_checkpoint(tmp_path).name == "checkpoint_10"


def test_metrics_log_truncates_records_after_a_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "sub" / "metrics.jsonl")
    for step in range(1, 7):
        log.write({"type": "train", "step": step, "epoch": (step - 1) // 3, "loss": 1.0 / step, "lr": 0.1})
        if step % 3 == 0:
            log.write({"type": "eval", "epoch": (step - 1) // 3, "step": step, "metrics": {}})
    log.truncate_after(step=4, epoch=1)
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
