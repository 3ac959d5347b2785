"""Suite configs: every shipped suite parses, and bad suites fail naming the field."""

import copy
from pathlib import Path

import pytest
import torch

from hf_mltm.experiments.features import PairSet, overlapping_classes
from hf_mltm.experiments.suites import load_suite, parse_suite
from tests.experiments.test_selection import SUITE

CLAIMS = Path(__file__).resolve().parents[2] / "configs" / "claims"


@pytest.mark.parametrize("path", sorted(CLAIMS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_suite_parses_with_an_equal_search_budget(path):
    suite = load_suite(path)
    assert suite.name == path.stem
    sizes = {len(method.candidates(suite.learning_rates)) for method in suite.methods}
    assert len(sizes) == 1
    assert len(suite.seeds) >= 5
    quick = suite.quick()
    assert len(quick.seeds) == 1 and all(len(m.candidates(quick.learning_rates)) == 1 for m in quick.methods)


def _suite_with(**changes):
    raw = copy.deepcopy(SUITE)
    for path, value in changes.items():
        target = raw
        *parents, leaf = path.split(".")
        for key in parents:
            target = target[key]
        target[leaf] = value
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seedz": [0]}, "seedz.*did you mean 'seeds'"),
        ({"task": "audio"}, "task must be one of"),
        ({"methods.mltm.scale": {"ot_epsilon": [0.05]}}, "same number of values"),
        ({"methods.mltm.famly": "mltm"}, "famly.*did you mean 'family'"),
        ({"comparisons": [["mltm", "triplet"]]}, r"comparison must be \[method_a, method_b\]"),
        ({"training.epoch": 3}, "training has an unknown field"),
        ({"training.batch_size": 1}, "batch_size must be >= 2"),
        ({"seeds": [0, 0]}, "distinct integers"),
        ({"methods.mltm.loss_variant": "detached"}, "loss_variant.*(known|allowed|valid)"),
        ({"plots": ["histogram"]}, "unknown plots"),
        ({"data": {"val_fractoin": 0.2}}, "val_fractoin.*did you mean 'val_fraction'"),
        ({"methods.mltm.config": {"loss_type": "mltm", "ot_epsilonn": 0.1}}, "methods.mltm.*ot_epsilonn"),
        ({"model.mltm": {"projection_dimm": 4}}, "projection_dimm"),
    ],
)
def test_bad_suite_raises_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        parse_suite(_suite_with(**changes), "tiny.yaml")


def test_candidates_are_the_learning_rate_times_scale_grid():
    suite = parse_suite(SUITE)
    assert suite.methods[0].candidates(suite.learning_rates) == [
        {"learning_rate": 1e-3, "ot_epsilon": 0.05}, {"learning_rate": 1e-3, "ot_epsilon": 0.2},
        {"learning_rate": 1e-2, "ot_epsilon": 0.05}, {"learning_rate": 1e-2, "ot_epsilon": 0.2}]


def test_overlapping_classes_matches_whole_words_and_plurals():
    found = overlapping_classes(["dog bark", "clock alarm", "fireworks", "sea wave", "siren", "rain forest"],
                                ["dog", "clock tick", "crackling fire", "sea waves", "rain"])
    assert found == {"dog bark": "dog", "clock alarm": "clock tick", "sea wave": "sea waves", "rain forest": "rain"}


def test_caption_positives_group_rows_sharing_an_item_or_a_caption():
    pairs = PairSet([{}] * 5, [{}] * 5, torch.tensor([0, 1, 2, 3, 3]), torch.tensor([0, 1, 0, 2, 1]),
                    ["a", "b", "a", "c", "b"])
    assert pairs.positive_ids("item").tolist() == [0, 1, 2, 3, 3]
    groups = pairs.positive_ids("caption").tolist()
    # rows 0 and 2 share caption a; rows 3 and 4 share an item, and row 4 shares caption b with row 1
    assert groups[0] == groups[2] and groups[1] == groups[3] == groups[4] and groups[0] != groups[1]
    with pytest.raises(ValueError, match="positives must be"):
        pairs.positive_ids("class")


def test_reproduce_names_the_closest_suite_and_needs_outputs_for_report_only(tmp_path):
    from hf_mltm.experiments.runner import reproduce

    common = {"config_dir": CLAIMS, "data_root": tmp_path, "cache_dir": tmp_path, "results_dir": tmp_path,
              "images_dir": tmp_path}
    with pytest.raises(ValueError, match="did you mean 'audio_zero_shot'"):
        reproduce(["audio_zero_shat"], **common)
    with pytest.raises(ValueError, match="--report_only needs .*claims_epsilon_sweep.json"):
        reproduce(["epsilon_sweep"], report_only=True, **common)


def test_split_suites_balances_recorded_costs_and_keeps_the_suite_order(tmp_path):
    import json

    from hf_mltm.experiments.runner import recorded_cost, split_suites

    assert split_suites(list("abcde"), 2, [10, 50, 5, 30, 20]) == [["a", "b"], ["c", "d", "e"]]  # loads 60 / 55
    assert split_suites(["a", "b"], 4, [1, 1]) == [["a"], ["b"]]
    with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
        split_suites(["a"], 0, [1])
    (tmp_path / "claims_x.json").write_text(json.dumps({"cpu_s": 3.0, "conditions": {"default": {"methods": {
        "m": {"training_cpu_s": 40.0, "cpu_s": 1.0}, "n": {"cpu_s": 2.5}}}}}))
    assert recorded_cost(tmp_path, "x") == 42.5 and recorded_cost(tmp_path, "missing") == 1.0


def test_reproduce_jobs_option_is_removed_with_its_value_before_the_children_run():
    from tests.utils import load_script

    reproduce = load_script("reproduce")
    argv = ["--suite", "a", "b", "--quick", "--jobs", "2", "--seeds", "0"]
    assert reproduce._without_option(reproduce._without_option(argv, "--jobs", 1), "--suite", None) == [
        "--quick", "--seeds", "0"]
    assert reproduce._without_option(["--jobs=3", "--fresh"], "--jobs", 1) == ["--fresh"]
