import pytest

from hf_mltm.training import build_datasets
from hf_mltm.training.data_factory import describe_sources


def test_sources_are_concatenated_with_distinct_item_indices(shared_data):
    section = {
        "root": str(shared_data),
        "train": [{"builder": "esc50", "data_dir": "esc50", "split": "test", "args": {"exclude_esc10": True}},
                  {"builder": "urbansound8k", "data_dir": "urbansound8k", "split": "train", "max_items": 5}],
        "eval": [{"builder": "esc50", "data_dir": "esc50", "split": "test", "args": {"esc10_only": True}}],
    }
    train, evaluation = build_datasets(section)
    # ESC-50 fold 1 holds 398 clips; the 10 ESC-10 classes have 8 clips each.
    assert len(train) == 318 + 5 and len(evaluation) == 80
    assert sorted(set(train["item_index"])) == list(range(323))
    assert train[0]["caption"].startswith("the sound of ") and "label_id" not in train.column_names
    assert train[318]["item_index"] == 318 and train[318]["audio"].endswith(".flac")
    assert {"dog", "rooster"} <= set(evaluation["label"]) and not {"dog"} & set(train["label"][:318])
    assert describe_sources(section)[1] == "urbansound8k `urbansound8k` split `train`, first 5 items"


@pytest.mark.parametrize(
    "section,match",
    [
        ({"train": [{"builder": "esc5O", "data_dir": "x", "split": "train"}]},
         "builder='esc5O' is not supported; did you mean 'esc50'"),
        ({"train": [{"builder": "esc50", "data_dir": "esc50", "split": "test", "args": {"exclude_esc1O": True}}]},
         r"data.train\[0\].args: unknown key 'exclude_esc1O' \(did you mean 'exclude_esc10'\?\)"),
        ({"train": [{"builder": "esc50", "data_dir": "esc50", "split": "train"}]}, r"no split 'train'.*\['test'\]"),
        ({"train": [{"builder": "esc50", "data_dir": "esc50", "splt": "test"}]}, r"data.train\[0\]: unknown key 'splt' \(did you mean 'split'\?\)"),
        ({"train": []}, "at least one source"),
        ({"trian": []}, r"data: unknown key 'trian' \(did you mean 'train'\?\)"),
    ],
)
def test_bad_data_sections_are_clear(shared_data, section, match):
    with pytest.raises(ValueError, match=match):
        build_datasets({"root": str(shared_data), **section})


def test_demo_config_evaluates_unseen_classes_and_falls_back_to_the_packaged_animal_sounds(shared_data, tmp_path):
    from hf_mltm.training import load_config
    from hf_mltm.training.data_factory import build_eval_items

    section = dict(load_config("configs/demo.yaml").data, root=str(shared_data))
    train, evaluation = build_datasets(section)
    assert len(evaluation) == 80 and len(set(evaluation["label"])) == 10  # ESC-10 of fold 1
    assert not set(evaluation["label"]) & set(train["label"])  # zero-shot classes are unseen in training
    # Without the shared data: the 10 CC0 animal sounds, split by a seeded draw into 5 + 5 animals.
    section["root"] = str(tmp_path / "missing")
    train, evaluation = build_datasets(section)
    assert len(train) == len(evaluation) == 5
    assert sorted([*train["label"], *evaluation["label"]]) == ["cat", "cow", "dog", "duck", "frog", "horse", "owl",
                                                              "pig", "rooster", "sheep"]
    assert list(build_eval_items(section)["label"]) == list(evaluation["label"])
    assert all(path.endswith(".mp3") for path in evaluation["audio"])
