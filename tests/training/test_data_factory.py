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
    train, validation = build_datasets(section)
    evaluation = build_eval_items(section)
    assert len(evaluation) == 80 and len(set(evaluation["label"])) == 10  # ESC-10 of fold 1
    assert not set(evaluation["label"]) & set(train["label"])  # zero-shot classes are unseen in training
    # The checkpoint is selected on held-out clips of the training classes, never on the reported ESC-10 clips.
    assert not set(validation["audio"]) & set(evaluation["audio"]) and not set(validation["audio"]) & set(train["audio"])
    assert set(validation["label"]) <= set(train["label"]) and len(train) + len(validation) == 318 + 200 + 104
    # Without the shared data: the 10 CC0 animal sounds, split by a seeded draw into 5 + 5 animals; one of the 5
    # training animals (one clip each) is held out for selection.
    section["root"] = str(tmp_path / "missing")
    train, validation = build_datasets(section)
    evaluation = build_eval_items(section)
    assert len(train) == 4 and len(validation) == 1 and len(evaluation) == 5
    assert sorted([*train["label"], *validation["label"], *evaluation["label"]]) == [
        "cat", "cow", "dog", "duck", "frog", "horse", "owl", "pig", "rooster", "sheep"]
    assert all(path.endswith(".mp3") for path in evaluation["audio"])


def test_validation_fraction_holds_out_whole_items_per_label_by_a_seeded_draw(shared_data):
    from hf_mltm.training.data_factory import split_validation

    section = {"root": str(shared_data),
               "train": [{"builder": "esc50", "data_dir": "esc50", "split": "test", "args": {"exclude_esc10": True}}]}
    full, _ = build_datasets(section)  # 40 classes x 8 clips minus ... = 318 clips, one caption each
    train, validation = build_datasets({**section, "validation_fraction": 0.25, "validation_seed": 3})
    counts = {}
    for label in validation["label"]:
        counts[label] = counts.get(label, 0) + 1
    per_class = {label: full["label"].count(label) for label in set(full["label"])}
    # round(0.25 * n) clips of every class, at least one, never all of them
    assert counts == {label: min(max(1, round(0.25 * n)), n - 1) for label, n in per_class.items() if n > 1}
    assert sorted([*train["item_index"], *validation["item_index"]]) == sorted(full["item_index"])
    assert validation.column_names[-1] == "captions" and all(len(c) == 1 for c in validation["captions"])
    again, _ = split_validation(full.shuffle(seed=1), 0.25, seed=3)
    assert sorted(again["item_index"]) == sorted(train["item_index"])  # independent of row order
    other, _ = split_validation(full, 0.25, seed=4)
    assert sorted(other["item_index"]) != sorted(train["item_index"])


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.2", True, None])
def test_bad_validation_fraction_is_named(shared_data, fraction):
    from hf_mltm.training.data_factory import split_validation

    full, _ = build_datasets({"root": str(shared_data), "train": [
        {"builder": "esc50", "data_dir": "esc50", "split": "test", "args": {"esc10_only": True}}]})
    with pytest.raises(ValueError, match=r"data.validation_fraction must be a number in \(0, 1\)"):
        split_validation(full, fraction)
