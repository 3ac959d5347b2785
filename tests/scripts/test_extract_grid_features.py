"""The grid-feature CLI on real Flickr8k images: in process, and once as a subprocess the way the docs call it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_mltm.data.grid_features import load_grid_features
from hf_mltm.feature_cache import FeatureCache, content_key, file_fingerprint
from tests.utils import SCRIPTS, load_script

extract = load_script("extract_grid_features")

pytestmark = pytest.mark.usefixtures("one_thread")


def cache_summary(output_dir):
    """``(shards, rows)`` of the feature-cache folder that ``output_dir/items.json`` names."""
    index = json.loads((output_dir / "items.json").read_text())
    summary = FeatureCache(output_dir, index["cache_folder"], writer="test").describe()
    return summary["shards"], summary["rows"]


def test_main_extracts_the_karpathy_images_in_json_order(shared_data, tmp_path, capsys):
    folder = shared_data / "flickr8k_1k"
    karpathy_json = folder / "dataset_flickr8k_1k.json"
    argv = ["--image_dir", str(folder / "Images"), "--karpathy_json", str(karpathy_json)]
    argv += ["--output_dir", str(tmp_path), "--limit", "3", "--batch_size", "2", "--shard_size", "2"]
    extract.main(argv + ["--no_progress"])
    assert capsys.readouterr().out.strip() == f"3 images, fragments (49, 1280) float16, in {tmp_path}"

    filenames = [entry["filename"] for entry in json.loads(karpathy_json.read_text())["images"][:5]]
    dataset = load_grid_features(tmp_path)
    assert dataset["item_id"][:] == filenames[:3]
    index = json.loads((tmp_path / "items.json").read_text())
    assert index["items"] == {
        name: content_key("file", file_fingerprint(folder / "Images" / name)) for name in filenames[:3]
    }
    assert cache_summary(tmp_path) == (2, 3)  # shards of 2 and 1 rows

    # run again with a larger limit: the first three are read from the cache, two more land in a third shard
    extract.main(argv[:4] + ["--output_dir", str(tmp_path), "--limit", "5", "--no_progress"])
    assert cache_summary(tmp_path) == (3, 5)
    assert load_grid_features(tmp_path)["item_id"][:] == filenames


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and datasets: about 10-25 s on 2 cores
def test_script_runs_from_the_command_line(shared_data, tmp_path):
    image_dir = shared_data / "flickr8k_1k" / "Images"
    command = [sys.executable, str(SCRIPTS / "extract_grid_features.py"), "--image_dir", str(image_dir)]
    command += ["--output_dir", str(tmp_path / "grid"), "--limit", "2", "--dtype", "float32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "Extracting grid fragments: 100%" in result.stderr
    dataset = load_grid_features(tmp_path / "grid")
    assert dataset["item_id"][:] == sorted(path.name for path in image_dir.glob("*.jpg"))[:2]
    assert dataset.features["fragments"].dtype == "float32"


def test_main_rejects_a_missing_image_dir(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        extract.main(["--image_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "grid")])
    assert not (tmp_path / "grid").exists()
