import json
import os
import subprocess
import sys

import datasets
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, BertConfig

from hf_mltm.data import build_clotho, build_esc50
from hf_mltm.evaluation import evaluate_retrieval, zero_shot_classification
from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel, MLTMFeatureExtractor, MLTMProcessor
from hf_mltm.models.panns import PannsConfig
from tests.utils import SCRIPTS, load_script

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, minilm_dir):
    """A tiny random `MLTMAudioTextModel` and its processor (MiniLM tokenizer, 16 mel bins, 1 s clips)."""
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    processor = MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=1.0), tokenizer)
    torch.manual_seed(0)
    config = MLTMAudioTextConfig(
        audio_config=PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16),
        text_config=BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=37),
        projection_hidden_size=32, projection_dim=16, metric_type="diagonal",
    )
    folder = tmp_path_factory.mktemp("tiny_mltm")
    model = MLTMAudioTextModel(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_clotho_retrieval_end_to_end_in_a_subprocess(saved_model, shared_data, tmp_path):
    folder, model, processor = saved_model
    output_dir = tmp_path / "report"
    command = [sys.executable, str(SCRIPTS / "evaluate.py"), "--model", str(folder), "--dataset", "clotho",
               "--data_dir", str(shared_data / "clotho"), "--split", "test", "--ranking", "distance", "ot",
               "--batch_size", "4", "--output_dir", str(output_dir), "--no_progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in output_dir.iterdir()) == ["metrics.json", "metrics.md", "plot.png"]
    written = json.loads((output_dir / "metrics.json").read_text())
    assert (written["num_items"], written["num_captions"]) == (7, 35)  # 7 real Clotho clips x 5 captions
    assert written["run"]["ranking"] == ["distance", "ot"] and written["run"]["split"] == "test"
    # the script's numbers are those of evaluate_retrieval on the same items
    items = build_clotho(shared_data / "clotho", view="items", splits="test")["test"]
    expected = evaluate_retrieval(model, items, processor, ranking_modes=("distance", "ot"), progress=False)
    for mode in ("distance", "ot"):
        for direction in ("text_to_audio", "audio_to_text"):
            assert written[mode][direction] == pytest.approx(expected[mode][direction], abs=1e-9)
    assert written["modality_gap"] == pytest.approx(expected["modality_gap"], rel=1e-5)
    # the printed table is the markdown file, one row per mode and direction
    table = (output_dir / "metrics.md").read_text()
    assert table.split("\n\n", 1)[1].strip() in done.stdout
    rows = [line for line in table.splitlines() if line.startswith("| distance") or line.startswith("| ot")]
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| distance", "text_to_audio"], ["| distance", "audio_to_text"], ["| ot", "text_to_audio"],
        ["| ot", "audio_to_text"],
    ]
    assert f"{expected['ot']['text_to_audio']['R@1']:.2f}" == rows[2].split(" | ")[2]
    with Image.open(output_dir / "plot.png") as image:
        assert image.size == (1200, 500)


def test_esc50_zero_shot_in_process(saved_model, shared_data, tmp_path, capsys):
    folder, model, processor = saved_model
    script = load_script("evaluate")
    script.main(["--model", str(folder), "--dataset", "esc50", "--data_dir", str(shared_data / "esc50"),
                 "--zero_shot", "--max_items", "10", "--output_dir", str(tmp_path), "--no_progress"])
    written = json.loads((tmp_path / "metrics.json").read_text())
    items = build_esc50(shared_data / "esc50", view="items")["test"].select(range(10))
    assert written["references"] == [written["labels"].index(label) for label in items["label"]]
    assert len(written["labels"]) == len(set(items["label_id"])) and written["labels"][0] == "dog"
    assert written["prompts"][0] == "This is a sound of dog."
    expected = zero_shot_classification(model, items, processor, written["labels"], progress=False)
    assert written["predictions"] == expected["predictions"]
    assert written["distance"]["audio_to_label"]["R@1"] == pytest.approx(100 * expected["accuracy"])
    assert "| distance | audio_to_label |" in capsys.readouterr().out


def hand_ranked_metrics(scores: torch.Tensor, owner: list[int]) -> dict[str, dict[str, float]]:
    """R@1/R@5 and meanR of both directions from an (items, captions) score matrix, counted by hand: a positive's
    0-based rank is the number of candidates that score strictly higher (or equal with a lower index)."""

    def rank(row: torch.Tensor, positive: int) -> int:
        return int((row > row[positive]).sum() + (row[:positive] == row[positive]).sum())

    to_item = [rank(scores[:, j], owner[j]) for j in range(scores.shape[1])]
    to_text = [min(rank(scores[i], j) for j in range(scores.shape[1]) if owner[j] == i) for i in range(len(scores))]
    return {direction: {"R@1": 100 * sum(r < 1 for r in ranks) / len(ranks),
                        "R@5": 100 * sum(r < 5 for r in ranks) / len(ranks),
                        "meanR": sum(ranks) / len(ranks) + 1}
            for direction, ranks in (("text_to_item", to_item), ("item_to_text", to_text))}


def test_dataset_path_and_bad_arguments(saved_model, shared_data, tmp_path):
    import soundfile as sf

    folder, model, processor = saved_model
    script = load_script("evaluate")
    items = datasets.Dataset.from_dict({
        "item_id": ["a", "b"], "item_index": [0, 1],
        "audio": [str(shared_data / "esc50/audio/1-100032-A-0.flac"), str(shared_data / "esc50/audio/1-100038-A-14.flac")],
        "captions": [["a dog barks"], ["birds chirp", "a bird sings"]],
    })
    datasets.DatasetDict({"test": items}).save_to_disk(str(tmp_path / "saved"))
    results = script.run(script.parse_args(["--model", str(folder), "--dataset_path", str(tmp_path / "saved"),
                                            "--output_dir", str(tmp_path / "out"), "--no_progress"]))
    assert (results["num_items"], results["num_captions"]) == (2, 3) and "ot" not in results
    # The same numbers from one plain forward over the two clips and three captions, ranked by hand.
    clips = [sf.read(path, dtype="float32") for path in items["audio"]]
    rate = processor.feature_extractor.sampling_rate
    from hf_mltm.audio import resample

    batch = processor(audio=[resample(wave, sr, rate) for wave, sr in clips], sampling_rate=rate,
                      text=["a dog barks", "birds chirp", "a bird sings"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits_per_audio  # (2 clips, 3 captions), higher is better
    expected = hand_ranked_metrics(logits, [0, 1, 1])
    for ours, theirs in (("text_to_audio", "text_to_item"), ("audio_to_text", "item_to_text")):
        for metric in ("R@1", "R@5", "meanR"):
            assert results["distance"][ours][metric] == pytest.approx(expected[theirs][metric]), (ours, metric)
    with pytest.raises(SystemExit, match="needs a labelled dataset"):
        script.run(script.parse_args(["--model", str(folder), "--dataset_path", str(tmp_path / "saved"),
                                      "--zero_shot", "--output_dir", str(tmp_path / "zs"), "--no_progress"]))
    with pytest.raises(SystemExit, match="has splits \\['test'\\], not 'validation'"):
        script.run(script.parse_args(["--model", str(folder), "--dataset_path", str(tmp_path / "saved"),
                                      "--split", "validation", "--output_dir", str(tmp_path / "v")]))
    with pytest.raises(SystemExit):  # argparse: unknown ranking mode
        script.parse_args(["--model", "m", "--dataset", "esc50", "--ranking", "plan", "--output_dir", "o"])


def test_omit_model_on_flickr8k_with_precomputed_grid_fragments(shared_data, minilm_dir, tmp_path, capsys):
    import json

    from transformers import AutoTokenizer, BertConfig

    from hf_mltm.data import build_flickr8k, extract_grid_features
    from hf_mltm.models.omit import OMITImageProcessor, OMITImageTextConfig, OMITImageTextModel, OMITProcessor

    items = build_flickr8k(shared_data / "flickr8k_1k", view="items", splits=["test"])["test"].select(range(4))
    extract_grid_features(items["image"], items["item_id"], tmp_path / "grid", batch_size=4, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = OMITImageTextConfig(image_fragment_dim=1280, embed_dim=16, image_projection_hidden_size=8,
                                 text_config=BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                        num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=37), ot_tol=1e-6, ot_max_iter=3000)
    model = OMITImageTextModel(config).eval()
    model.save_pretrained(tmp_path / "model")
    OMITProcessor(OMITImageProcessor.for_efficientnet_lite(), tokenizer).save_pretrained(tmp_path / "model")
    load_script("evaluate").main([
        "--model", str(tmp_path / "model"), "--dataset", "flickr8k", "--data_dir", str(shared_data / "flickr8k_1k"),
        "--max_items", "4", "--fragments_dir", str(tmp_path / "grid"), "--ranking", "distance", "ot",
        "--output_dir", str(tmp_path / "eval"), "--no_progress",
    ])
    results = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert results["num_items"] == 4 and results["num_captions"] == 20
    for mode in ("distance", "ot"):
        assert set(results[mode]) == {"text_to_image", "image_to_text", "rsum"}
    # The distance numbers from one plain forward of the 4 images against the 20 captions, ranked by hand.
    from hf_mltm.data import load_grid_features

    grid = load_grid_features(tmp_path / "grid").with_format("torch")
    captions = [caption for row in items["captions"] for caption in row]
    with torch.no_grad():
        scores = model(image_fragments=torch.stack(list(grid["fragments"])).float(),
                       **tokenizer(captions, padding=True, return_tensors="pt")).scores  # (4, 20)
    expected = hand_ranked_metrics(scores, [i for i, row in enumerate(items["captions"]) for _ in row])
    assert expected["text_to_item"]["R@1"] not in (0.0, 100.0)  # a case where the ranking matters
    for ours, theirs in (("text_to_image", "text_to_item"), ("image_to_text", "item_to_text")):
        for metric in ("R@1", "R@5", "meanR"):
            assert results["distance"][ours][metric] == pytest.approx(expected[theirs][metric]), (ours, metric)
    assert "text_to_image" in capsys.readouterr().out
    assert (tmp_path / "eval" / "plot.png").stat().st_size > 0


def test_bad_command_lines_fail_at_once_with_a_clear_message(saved_model, tmp_path, capsys):
    folder, _, _ = saved_model
    script = load_script("evaluate")
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["--model", str(tmp_path / "missing_model"), "--dataset", "esc50", "--output_dir", str(tmp_path / "o")],
         "no such folder"),
        (["--model", str(folder), "--dataset", "esc50", "--max_items", "0", "--output_dir", str(tmp_path / "o")],
         "--max_items must be >= 1"),
        (["--model", str(folder), "--dataset", "esc50", "--output_dir", str(tmp_path / "a_file")],
         "is an existing file"),
        (["--model", str(folder), "--dataset", "esc50", "--model_config", "ot_epsilon", "--output_dir",
          str(tmp_path / "o")], "KEY=VALUE"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            script.parse_args(argv)
        assert message in capsys.readouterr().err, message


def test_model_config_overrides_change_the_scoring_for_one_evaluation(shared_data, minilm_dir, tmp_path):
    from transformers import AutoTokenizer, BertConfig

    from hf_mltm.data import build_flickr8k, extract_grid_features
    from hf_mltm.models.omit import OMITImageProcessor, OMITImageTextConfig, OMITImageTextModel, OMITProcessor

    items = build_flickr8k(shared_data / "flickr8k_1k", view="items", splits=["test"])["test"].select(range(4))
    extract_grid_features(items["image"], items["item_id"], tmp_path / "grid", batch_size=4, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = OMITImageTextConfig(image_fragment_dim=1280, embed_dim=16, image_projection_hidden_size=8,
                                 text_config=BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                        num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=37))
    OMITImageTextModel(config).save_pretrained(tmp_path / "model")
    OMITProcessor(OMITImageProcessor.for_efficientnet_lite(), tokenizer).save_pretrained(tmp_path / "model")
    script = load_script("evaluate")
    common = ["--model", str(tmp_path / "model"), "--dataset", "flickr8k", "--data_dir",
              str(shared_data / "flickr8k_1k"), "--max_items", "4", "--fragments_dir", str(tmp_path / "grid"),
              "--no_progress"]
    balanced = script.run(script.parse_args([*common, "--output_dir", str(tmp_path / "a")]))
    partial = script.run(script.parse_args([*common, "--output_dir", str(tmp_path / "b"), "--model_config",
                                            "partial_matching=mass", "partial_ot_mass=0.5"]))
    assert partial["model_config_overrides"] == {"partial_matching": "mass", "partial_ot_mass": 0.5}
    assert "model_config_overrides" not in balanced
    written = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert written["model_config_overrides"] == {"partial_matching": "mass", "partial_ot_mass": 0.5}
    # The override changes the scores (the 4-image ranks above may or may not move): compare them directly.
    model = OMITImageTextModel.from_pretrained(tmp_path / "model").eval()
    images = torch.randn(2, 49, 1280)
    captions = tokenizer(["a dog runs", "two people talk"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(image_fragments=images, **captions).scores
        script.apply_model_config(model, {"partial_matching": "mass", "partial_ot_mass": 0.5})
        after = model(image_fragments=images, **captions).scores
    assert model.config.partial_matching == "mass" and not torch.allclose(before, after)
    with pytest.raises(ValueError, match="did you mean 'partial_matching'"):
        script.apply_model_config(model, {"partial_matchin": "mass"})
    with pytest.raises(ValueError, match="partial_matching='soft' is not supported"):
        script.apply_model_config(model, {"partial_matching": "soft"})


def test_coco_format_captions_evaluate_like_the_karpathy_build(saved_model, shared_data, tmp_path):
    # A COCO-format caption file ({images, annotations}) for an image folder evaluates without rewriting it as a
    # Karpathy JSON: here the same 100 Flickr8k test images as --dataset flickr8k, so the item lists are equal.
    from hf_mltm.data import build_flickr8k

    items = build_flickr8k(shared_data / "flickr8k_1k", view="items", splits=["test"])["test"]
    coco = {"images": [{"id": i, "file_name": name} for i, name in enumerate(items["item_id"])],
            "annotations": [{"id": 100 * i + j, "image_id": i, "caption": caption}
                            for i, captions in enumerate(items["captions"]) for j, caption in enumerate(captions)]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    script = load_script("evaluate")
    args = script.parse_args(["--model", str(saved_model[0]), "--dataset", "coco_captions", "--data_dir",
                              str(shared_data / "flickr8k_1k" / "Images"), "--annotation_file",
                              str(tmp_path / "captions.json"), "--output_dir", str(tmp_path / "o")])
    assert script.load_items(args).to_dict() == items.to_dict()
    with pytest.raises(SystemExit, match="needs --annotation_file"):
        script.load_items(script.parse_args(["--model", str(saved_model[0]), "--dataset", "coco_captions",
                                             "--data_dir", str(shared_data), "--output_dir", str(tmp_path / "p")]))
