"""`hf_mltm.validation` and its use by the builders: choices, known keys, keyword typos, the builder registry."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from hf_mltm.data import (
    BUILDERS,
    build_audio_folder,
    build_audiocaps,
    build_esc50,
    build_flickr8k,
    build_urbansound8k,
    builder_arguments,
    check_builder_arguments,
    get_builder,
)
from hf_mltm.validation import (
    check_bool,
    check_choice,
    check_known_keys,
    closest_match,
    keyword_names,
    strict_keywords,
)

# ------------------------------------------------------------------------------------------ check_choice


def test_check_choice_names_value_closest_choice_and_all_choices():
    with pytest.raises(ValueError) as caught:
        check_choice("loss_type", "mltmm", ("mltm", "mltm_partial", "contrastive"))
    assert str(caught.value) == (
        "loss_type='mltmm' is not supported; did you mean 'mltm'? Choose one of ['mltm', 'mltm_partial', "
        "'contrastive']."
    )
    check_choice("loss_type", "mltm_partial", ("mltm", "mltm_partial"))  # valid: no error


def test_check_choice_without_close_match_or_for_non_strings():
    with pytest.raises(ValueError) as caught:
        check_choice("view", "pairs", ("captions", "items"))
    assert str(caught.value) == "view='pairs' is not supported; choose one of ['captions', 'items']."
    with pytest.raises(ValueError, match=r"^fold=7 is not supported; choose one of \[1, 2\]\.$"):
        check_choice("fold", 7, (1, 2))


def test_check_choice_rejects_bool_for_int_choices():
    with pytest.raises(ValueError, match="fold=True is not supported"):
        check_choice("fold", True, (1, 2))  # True == 1 in Python
    check_choice("fold", 1, (1, 2))


def test_closest_match_handles_case_and_absence():
    assert closest_match("ITEMS", ["captions", "items"]) == "items"
    assert closest_match("exclude_esc1O", ["esc10_only", "exclude_esc10"]) == "exclude_esc10"
    assert closest_match("zzz", ["captions", "items"]) is None
    assert closest_match(3, ["3"]) is None


# -------------------------------------------------------------------------------------- check_known_keys


def test_check_known_keys_names_each_unknown_key_with_its_closest_and_where():
    with pytest.raises(ValueError) as caught:
        check_known_keys(
            {"ot_epsilon": 0.05, "ot_epsilom": 0.1, "zzz": 1}, ["ot_epsilon", "ot_max_iter"], "model.config"
        )
    assert str(caught.value) == (
        "model.config: unknown keys 'ot_epsilom' (did you mean 'ot_epsilon'?), 'zzz'; valid keys: "
        "['ot_epsilon', 'ot_max_iter']."
    )
    check_known_keys(["ot_epsilon"], ["ot_epsilon"], "model.config")  # an iterable of names works too
    with pytest.raises(ValueError, match=r"data\.train\[0\]\.args: unknown key 1;"):
        check_known_keys({1: "x"}, ["a"], "data.train[0].args")  # YAML may give non-string keys


def test_strict_keywords_keeps_the_signature_and_records_names():
    @strict_keywords()
    def build(data_dir, *, view="captions", seed=0):
        return data_dir, view, seed

    assert build("d", seed=3) == ("d", "captions", 3)
    assert str(inspect.signature(build)) == "(data_dir, *, view='captions', seed=0)"
    assert keyword_names(build) == {"data_dir", "view", "seed"}
    with pytest.raises(
        ValueError, match=r"^build\(\) keyword arguments: unknown key 'sed' \(did you mean 'seed'\?\)"
    ):
        build("d", sed=3)


# ------------------------------------------------------------------------------- builder keyword typos


def test_esc50_keyword_typo_is_a_value_error_naming_the_closest_argument(shared_data):
    with pytest.raises(ValueError) as caught:
        build_esc50(shared_data / "esc50", exclude_esc1O=True)
    assert not isinstance(caught.value, TypeError)
    assert str(caught.value).startswith(
        "build_esc50() keyword arguments: unknown key 'exclude_esc1O' (did you mean 'exclude_esc10'?); valid keys: "
    )


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_builder_rejects_unknown_keywords_before_any_work(name, tmp_path):
    builder = BUILDERS[name]
    # the folder does not exist: any work would raise MissingDataFileError instead
    with pytest.raises(ValueError, match=r"unknown key 'on_mising' \(did you mean 'on_missing'\?\)"):
        builder(tmp_path / "nowhere", on_mising="skip")


def test_audiocaps_extra_keywords_only_with_a_hub_repo(shared_data, tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown key 'cache_dir'; valid keys: \['audio_pattern', 'data_dir'"
    ):
        build_audiocaps(shared_data / "audiocaps", cache_dir=str(tmp_path))  # ignored silently before
    with pytest.raises(ValueError, match=r"unknown key 'verify_file' \(did you mean 'verify_files'\?\)"):
        build_audiocaps(hub_repo_id=str(tmp_path / "repo"), verify_file=True)


# ------------------------------------------------------------------------------------------ registry


def test_builder_arguments_are_the_keywords_of_each_builder():
    assert builder_arguments(build_esc50) == {
        "view",
        "splits",
        "on_missing",
        "verify_files",
        "folds",
        "train_folds",
        "test_folds",
        "esc10_only",
        "exclude_esc10",
        "caption_template",
    }
    assert builder_arguments("esc50") == builder_arguments(build_esc50)
    # the thin wrappers accept what they forward to
    assert builder_arguments(build_urbansound8k) == builder_arguments(build_audio_folder)
    assert "split_fractions" in builder_arguments("tau22_scenes")
    assert {"audio_pattern", "hub_repo_id", "cache_dir", "data_files"} <= builder_arguments(build_audiocaps)
    assert builder_arguments("coco_captions") == {
        "annotation_file",
        "split",
        "view",
        "splits",
        "on_missing",
        "verify_files",
    }


def test_check_builder_arguments_for_a_config_source():
    check_builder_arguments(
        "esc50", {"exclude_esc10": True, "caption_template": "{label}"}, "data.train[0].args"
    )
    with pytest.raises(ValueError) as caught:
        check_builder_arguments("esc50", {"exclude_esc1O": True}, "data.train[0].args")
    assert str(caught.value).startswith(
        "data.train[0].args: unknown key 'exclude_esc1O' (did you mean 'exclude_esc10'?); valid keys: ['caption_template',"
    )
    with pytest.raises(ValueError, match=r"data\.eval\[1\]\.args: unknown key 'view'"):
        check_builder_arguments("clotho", {"view": "items"}, "data.eval[1].args", reserved=("view",))
    with pytest.raises(ValueError, match=r"data\.train\[0\]\.args must be a mapping"):
        check_builder_arguments("clotho", ["view"], "data.train[0].args")


def test_get_builder_by_name_with_typo_hint():
    assert get_builder("esc50") is build_esc50 and get_builder("build_esc50") is build_esc50
    with pytest.raises(
        ValueError, match=r"^builder='esc5O' is not supported; did you mean 'esc50'\? Choose one of"
    ):
        get_builder("esc5O")


def test_split_and_view_typos_name_the_closest_valid_value(shared_data):
    with pytest.raises(ValueError, match=r"view='item' is not supported; did you mean 'items'\?"):
        build_esc50(shared_data / "esc50", view="item")
    with pytest.raises(ValueError, match=r"ESC-50 has no split 'tst'; did you mean 'test'\?"):
        build_esc50(shared_data / "esc50", splits="tst")
    with pytest.raises(ValueError, match="splits is empty"):
        build_esc50(shared_data / "esc50", splits=[])
    with pytest.raises(ValueError, match="data_dir must be a folder path"):
        build_esc50(None)


def test_audio_folder_split_fractions_are_validated(shared_data):
    folder = shared_data / "tau22_scenes"
    with pytest.raises(
        ValueError, match=r"split_fractions key='tets' is not supported; did you mean 'test'\?"
    ):
        build_audio_folder(folder, split_fractions={"train": 0.8, "tets": 0.2})
    with pytest.raises(
        ValueError, match=r"split_fractions\['test'\] must be a number in \[0, 1\], got '0.2'"
    ):
        build_audio_folder(folder, split_fractions={"train": 0.8, "test": "0.2"})
    with pytest.raises(ValueError, match="names the split 'validation' twice"):
        build_audio_folder(folder, split_fractions={"val": 0.5, "validation": 0.5})
    with pytest.raises(ValueError, match="split_fractions must be a mapping"):
        build_audio_folder(folder, split_fractions=[0.8, 0.2])


def test_check_bool_rejects_strings_numbers_and_none():
    assert check_bool("flag", True) is True and check_bool("flag", np.bool_(False)) is False
    for value in ("no", "False", 0, 1, None):
        with pytest.raises(ValueError, match=rf"^flag must be True or False, got {value!r}"):
            check_bool("flag", value)


def test_builder_flags_and_folds_are_validated(shared_data):
    with pytest.raises(ValueError, match="esc10_only must be True or False, got 'no'"):
        build_esc50(shared_data / "esc50", esc10_only="no")  # a non-empty string would count as True
    with pytest.raises(ValueError, match="verify_files must be True or False, got 1"):
        build_esc50(shared_data / "esc50", verify_files=1)
    with pytest.raises(ValueError, match="restval_to_train must be True or False"):
        build_flickr8k(shared_data / "flickr8k_1k", restval_to_train="false")
    with pytest.raises(
        ValueError, match="folds must be a fold number or a list of them, e.g. \\[1, 2\\], got '12'"
    ):
        build_esc50(shared_data / "esc50", folds="12")
    with pytest.raises(
        ValueError, match=r"train_folds must be a non-empty subset of \[1, 2, 3, 4, 5\], got \[1.5\]"
    ):
        build_esc50(shared_data / "esc50", train_folds=[1.5])
    assert build_esc50(shared_data / "esc50", folds=1)["test"].num_rows == 398  # one fold as an int
