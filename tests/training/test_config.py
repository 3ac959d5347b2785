from pathlib import Path

import pytest
import yaml

from hf_mltm.training import ExperimentConfig, load_config, parse_overrides
from hf_mltm.training.config import apply_overrides

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"output_dir": "runs/x", "model": {"type": "mltm_audio_text"}, "data": {"train": []}}


def write(tmp_path, raw) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_overrides_are_parsed_as_yaml_values():
    overrides = parse_overrides(["--training.learning_rate", "1e-3", "--training.lr_step_epochs=[15, 20]",
                                 "--model.config.loss_type", "triplet", "--hub.model_id", "null",
                                 "--training.freeze_towers", "true", "--seed", "7"])
    assert overrides == {"training.learning_rate": 1e-3, "training.lr_step_epochs": [15, 20],
                         "model.config.loss_type": "triplet", "hub.model_id": None,
                         "training.freeze_towers": True, "seed": 7}
    assert isinstance(overrides["training.learning_rate"], float)


def test_load_config_applies_overrides_over_the_file(tmp_path):
    path = write(tmp_path, {**MINIMAL, "training": {"num_epochs": 3, "batch_size": 16}})
    config = load_config(path, ["--training.num_epochs", "5", "--model.config.ot_epsilon", "0.1"])
    assert config.training.num_epochs == 5 and config.training.batch_size == 16
    assert config.model == {"type": "mltm_audio_text", "config": {"ot_epsilon": 0.1}}
    assert config.training.learning_rate == 1e-4 and config.evaluation.every_epochs == 1
    assert config.source == str(path)
    assert ExperimentConfig.from_dict(config.to_dict()).training.num_epochs == 5


@pytest.mark.parametrize(
    "arguments,match",
    [
        (["--training.learnig_rate", "0.1"], r"unknown key\(s\) \['training.learnig_rate'\].*learning_rate"),
        (["--training.num_epochs", "two"], "training.num_epochs must be an integer"),
        (["--training.batch_size", "1"], "training.batch_size=1 is invalid"),
        (["--training.lr_scheduler", "exp"], r"one of \['constant', 'linear', 'cosine', 'step'\]"),
        (["--training.embedding_cache", "true"], "freeze_towers"),
        (["--training.freeze_towers", "yes please"], "must be true or false"),
        (["--hub.push_to_hub", "true"], "hub.model_id is empty"),
        (["--evaluation.every_epochs", "0"], "every_epochs"),
        (["--training.config_schedule", "[{epoch: 1}]"], "config_schedule entries"),
        (["--training"], "has no value"),
        (["training.num_epochs", "2"], "must look like --section.key value"),
        (["--model.type.x", "1"], "model.type is 'mltm_audio_text', not a mapping"),
    ],
)
def test_bad_overrides_name_the_file_key_and_fix(tmp_path, arguments, match):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ValueError, match=match):
        load_config(path, arguments)


def test_missing_file_and_missing_sections_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist; pass --config"):
        load_config(tmp_path / "nope.yaml")
    path = write(tmp_path, {"output_dir": "x", "model": {}})
    with pytest.raises(ValueError, match=r"exp.yaml: missing required key 'data'"):
        load_config(path)
    (tmp_path / "bad.yaml").write_text("training: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_apply_overrides_does_not_modify_its_input():
    raw = {"model": {"config": {"a": 1}}}
    assert apply_overrides(raw, {"model.config.a": 2})["model"]["config"]["a"] == 2
    assert raw["model"]["config"]["a"] == 1


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    config = load_config(REPO / "configs" / name)
    assert config.model["type"] in ("mltm_audio_text", "omit_image_text")


def test_paper_configs_hold_the_paper_settings():
    for name in ("audiocaps_mltm.yaml", "clotho_mltm.yaml"):
        config = load_config(REPO / "configs" / name)
        assert (config.training.batch_size, config.training.learning_rate, config.training.num_epochs) == \
            (256, 1e-4, 30)
        assert config.model["config"]["ot_epsilon"] == 0.05
    for name in ("flickr30k_omit.yaml", "coco_omit.yaml"):
        training = load_config(REPO / "configs" / name).training
        assert (training.batch_size, training.learning_rate, training.num_epochs) == (128, 5e-4, 25)
        assert training.lr_scheduler == "step" and training.lr_step_epochs == [15] and training.lr_gamma == 0.1
    flickr = load_config(REPO / "configs" / "flickr30k_omit.yaml").model["config"]
    # VSE++: sum over negatives during the first epoch (145,000 captions / 128), then the hardest negative.
    assert (flickr["triplet_margin"], flickr["triplet_warmup_steps"]) == (0.05, 145_000 // 128)
