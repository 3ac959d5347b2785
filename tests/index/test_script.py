"""scripts/index.py end to end: two CPU processes through accelerate on real ESC-50 clips, a rerun that computes
nothing, and the other collection sources (a folder of clips, a saved dataset) in process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_mltm.adapters import get_adapter
from hf_mltm.index import GalleryIndex
from tests.utils import SCRIPTS, load_script

from .conftest import tiny_model, tiny_processor

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_mltm")
    model, processor = tiny_model(tokenizer), tiny_processor(tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def launch(arguments: list[str]) -> subprocess.CompletedProcess:
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPTS / "index.py"), *arguments]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def shards(cache: Path) -> dict[str, list[str]]:
    return {folder.name.split("-")[0]: sorted(path.name for path in folder.glob("shard-*.safetensors"))
            for folder in cache.iterdir()}


def test_two_processes_embed_their_halves_and_a_second_launch_computes_nothing(saved_model, shared_data, tmp_path,
                                                                                esc50_items):
    folder, model, processor = saved_model
    output = tmp_path / "index"
    arguments = ["--model", str(folder), "--dataset", "esc50", "--data_dir", str(shared_data / "esc50"),
                 "--max_items", "12", "--batch_size", "4", "--output_dir", str(output), "--no_progress"]
    launch(arguments)
    manifest = json.loads((output / "index.json").read_text())
    collection = manifest["collection"]
    assert (collection["processes"], collection["num_items"]) == (2, 12)
    assert collection["items_embedded_this_run"] == 12  # 6 per process, none twice
    assert collection["captions_embedded_this_run"] == 8  # the 8 distinct class captions of the 12 clips
    assert manifest["potentials"]["num_queries"] == 8 and manifest["model"]["path"] == str(folder.resolve())
    first = shards(output / "feature_cache")
    assert {name.split("-")[1] for name in first["audio"]} == {"0", "1"}  # each rank wrote its own shard
    # the index equals one built in this process from the same clips, and is exact for the model's cost
    index = GalleryIndex.load(output)
    items = esc50_items.select(range(12))
    expected = get_adapter(model).encode_items(model, items, processor, progress=False).tensors["embeds"]
    torch.testing.assert_close(torch.tensor(index.items["embeddings"]), expected, atol=1e-5, rtol=1e-5)
    texts = ["the sound of dog", "the sound of rooster", "the sound of rain"]
    query = get_adapter(model).encode_texts(model, texts, processor, progress=False).tensors["embeds"]
    with torch.no_grad():
        order = torch.sort(model.pairwise_cost(expected, query).T, dim=1, stable=True).indices[:, :5].numpy()
    np.testing.assert_array_equal(index.search_embeddings(query, 5).rows, order)
    assert [hit.row for hit in index.search(texts[0], k=5, rerank=False)] == order[0].tolist()
    # run again (here in this process, one process instead of two): every clip and caption comes from the cache
    load_script("index").main(arguments)
    again = json.loads((output / "index.json").read_text())["collection"]
    assert (again["items_embedded_this_run"], again["captions_embedded_this_run"]) == (0, 0)
    assert shards(output / "feature_cache") == first


def test_folder_and_saved_dataset_sources_in_process(saved_model, shared_data, tmp_path, esc50_items, capsys):
    folder, _, _ = saved_model
    script = load_script("index")
    script.main(["--model", str(folder), "--dataset", str(shared_data / "bigsoundbank_cc0"), "--potentials", "none",
                 "--index_type", "ivf", "--nlist", "2", "--nprobe", "2", "--output_dir", str(tmp_path / "folder"),
                 "--no_progress"])
    assert "indexed 10 items" in capsys.readouterr().out
    index = GalleryIndex.load(tmp_path / "folder")
    assert index.settings.index_type == "ivf" and index.potentials is None
    assert sorted(index.items["label"])[:2] == ["cat", "cow"]
    saved = tmp_path / "saved"
    esc50_items.select(range(5)).save_to_disk(str(saved))
    queries = tmp_path / "queries.txt"
    queries.write_text("a dog barks\n\na rooster crows\na dog barks\n")
    script.main(["--model", str(folder), "--dataset", str(saved), "--potentials", str(queries),
                 "--output_dir", str(tmp_path / "saved_index"), "--no_progress"])
    manifest = json.loads((tmp_path / "saved_index" / "index.json").read_text())
    assert manifest["num_items"] == 5 and manifest["potentials"]["num_queries"] == 2  # distinct, non-empty lines
    assert manifest["collection"]["potential_queries"] == f"lines of {queries} (2 distinct of 2)"


def test_script_rejects_bad_arguments_with_the_reason(saved_model, tmp_path):
    folder, _, _ = saved_model
    script = load_script("index")
    with pytest.raises(SystemExit, match="did you mean 'esc50'"):
        script.run(script.parse_args(["--model", str(folder), "--dataset", "esc5O", "--output_dir", str(tmp_path)]))
    with pytest.raises(SystemExit):
        script.parse_args(["--model", str(tmp_path / "missing"), "--dataset", "esc50", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.parse_args(["--model", str(folder), "--dataset", "esc50", "--output_dir", str(tmp_path),
                           "--potentials", "no_such_file.txt"])
