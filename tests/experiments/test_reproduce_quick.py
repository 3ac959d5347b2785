"""End to end: ``scripts/reproduce.py --suite all --quick`` on the real data writes every suite's report, with finite
numbers (their values are not checked: one seed of a few epochs on a data subset decides nothing).

The slowest test of the package (several minutes on 2 busy cores, a cold feature cache included): it is the one
check that every suite config, the feature cache, the head-training loop, the statistics and the plots fit together.
"""

import json
import math

import pytest

from tests.utils import load_script


def _numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow
def test_reproduce_quick_writes_every_suite_with_finite_numbers(shared_data, tmp_path, capsys):
    reproduce = load_script("reproduce")
    suites = ["audio_zero_shot", "epsilon_sweep", "image_text", "noisy_correspondence", "explain_audio",
              "explain_prompt", "explain_validation", "explain_temperature", "explain_triplet", "explain_noise",
              "omit_fragments"]
    code = reproduce.main(["--suite", "all", "--quick", "--data_root", str(shared_data),
                           "--cache_dir", str(tmp_path / "cache"), "--results_dir", str(tmp_path / "results"),
                           "--images_dir", str(tmp_path / "images"), "--artifacts_dir", str(tmp_path / "artifacts")])
    assert code == 0
    printed = capsys.readouterr().out
    for name in suites:
        result = json.loads((tmp_path / "results" / f"claims_{name}_quick.json").read_text())
        assert result["quick"] is True and result["suite"] == name
        assert f"suite={name} methods=" in printed
        numbers = list(_numbers(result["conditions"]))
        assert numbers and all(math.isfinite(number) for number in numbers)
        for condition in result["conditions"].values():
            for method in condition["methods"].values():
                assert method["per_seed"] and all(len(values) == 1 for values in method["per_seed"].values())
                assert method["best_epoch"][0] >= 1
        for image in result["images"]:
            assert (tmp_path / "images").as_posix() in image
    assert sorted(suites) == sorted(path.stem.removeprefix("claims_").removesuffix("_quick")
                                    for path in (tmp_path / "results").glob("*.json"))
