"""The model card: model-index from the metrics, licences and attribution, usage snippet, citations, limits."""

import json

import pytest
import torch
from huggingface_hub import ModelCard

from hf_mltm.hub.model_card import (
    CITATIONS,
    REPO_ID_PLACEHOLDER,
    build_model_card,
    detect_components,
    eval_results_from_metrics,
    metrics_table,
    usage_code,
    usage_snippet,
    write_model_card,
)

RETRIEVAL = {
    "distance": {"text_to_audio": {"R@1": 12.5, "R@5": 50.0, "medR": 5},
                 "audio_to_text": {"R@1": 25.0, "mAP@10": 0.375}, "rsum": 150.0},
    "ot": {"text_to_audio": {"R@1": 37.5}, "audio_to_text": {"R@1": 50.0}, "rsum": 87.5},
    # what evaluate_retrieval returns besides the metrics: none of it is a metric
    "settings": {"ot_epsilon": 0.05, "ot_max_iter": 100}, "num_items": 8, "modality_gap": 0.31,
    "cost": torch.zeros(2, 2),
}
ZERO_SHOT = {"distance": {"audio_to_label": {"R@1": 62.5, "R@5": 100.0}}}
AISFX_MINILM = {
    "model_type": "mltm_audio_text", "loss_type": "mltm", "projection_dim": 256,
    "audio_config": {"model_type": "panns", "variant": "aisfx9", "hidden_size": 512},
    "text_config": {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "vocab_size": 30522},
}


def _triples(results):
    return [(r.task_type, r.metric_type, r.metric_value, r.metric_config) for r in results]


def test_eval_results_cover_every_metric_of_every_ranking_mode_and_nothing_else():
    results = eval_results_from_metrics(RETRIEVAL, item="audio", dataset_type="esc50", dataset_name="ESC-50",
                                        dataset_split="test")
    assert _triples(results) == [
        ("text-to-audio-retrieval", "recall_at_1", 12.5, "distance"),
        ("text-to-audio-retrieval", "recall_at_5", 50.0, "distance"),
        ("text-to-audio-retrieval", "median_rank", 5.0, "distance"),
        ("audio-to-text-retrieval", "recall_at_1", 25.0, "distance"),
        ("audio-to-text-retrieval", "map_at_10", 0.375, "distance"),
        ("text-to-audio-retrieval", "rsum", 150.0, "distance"),
        ("text-to-audio-retrieval", "recall_at_1", 37.5, "ot"),
        ("audio-to-text-retrieval", "recall_at_1", 50.0, "ot"),
        ("text-to-audio-retrieval", "rsum", 87.5, "ot"),
    ]
    assert {(r.dataset_type, r.dataset_name, r.dataset_split) for r in results} == {("esc50", "ESC-50", "test")}
    assert results[0].metric_name == "R@1 (text_to_audio, distance ranking)"


def test_zero_shot_metrics_become_zero_shot_classification_results():
    results = eval_results_from_metrics(ZERO_SHOT, item="audio", dataset_type="esc50", dataset_name="ESC-10")
    assert _triples(results) == [("zero-shot-audio-classification", "recall_at_1", 62.5, "distance"),
                                 ("zero-shot-audio-classification", "recall_at_5", 100.0, "distance")]
    with pytest.raises(ValueError, match="item='video' must be 'audio' or 'image'"):
        eval_results_from_metrics(ZERO_SHOT, item="video", dataset_type="x", dataset_name="x")


def test_metrics_table_rows():
    table = metrics_table(RETRIEVAL).splitlines()
    assert table[0] == "| ranking | direction | R@1 | R@5 | medR | mAP@10 |"
    assert table[2] == "| distance | text_to_audio | 12.50 | 50.00 | 5 |  |"
    assert table[4] == "| distance | rsum | 150.00 | | | |"
    assert table[5] == "| ot | text_to_audio | 37.50 |  |  |  |"
    assert metrics_table(None) == "(no evaluation was run)"


def test_components_are_detected_from_the_saved_config():
    assert detect_components(AISFX_MINILM) == ["aisfx", "minilm"]
    tiny = {"audio_config": {"model_type": "panns", "variant": "cnn10"},
            "text_config": {"model_type": "bert", "hidden_size": 32, "_name_or_path": "/x/all-MiniLM-L6-v2"},
            "vision_config": {"model_type": "efficientnet_lite", "head_channels": 32}}
    assert detect_components(tiny) == ["minilm"]  # named MiniLM; a 32-channel EfficientNet-Lite is no Lite0
    assert detect_components({"vision_config": {"model_type": "efficientnet_lite"}}) == ["efficientnet_lite0"]


def test_card_of_aisfx_weights_is_cc_by_with_attribution_metrics_and_citations():
    card = build_model_card(AISFX_MINILM, metrics=RETRIEVAL,
                            datasets=["esc50 `esc50` split `test`, args {'exclude_esc10': True}",
                                      "tau22_scenes `tau22_scenes` split `train`"],
                            eval_data="esc50 `esc50` split `test`, args {'esc10_only': True}",
                            training={"batch_size": 64}, best_epoch=3)
    text = card.content
    assert text.startswith("---\nlibrary_name: transformers\nlicense: cc-by-4.0\n")
    loaded = ModelCard(text)  # the YAML round-trips through huggingface_hub, model-index included
    assert loaded.data.pipeline_tag == "zero-shot-audio-classification"
    assert loaded.data.base_model == ["sentence-transformers/all-MiniLM-L6-v2"]
    # (the model-index groups the results by task and dataset, so the order changes)
    assert sorted(_triples(loaded.data.eval_results)) == sorted(_triples(eval_results_from_metrics(
        RETRIEVAL, item="audio", dataset_type="esc50", dataset_name="x")))
    assert loaded.data.eval_results[0].dataset_name == "ESC-50 (Piczak, 2015), test split"
    assert loaded.data.eval_results[0].dataset_split == "test"
    assert "Alison Bernice Ma and Alexander Lerch" in text and "https://creativecommons.org/licenses/by/4.0/" in text
    assert "CC BY 4.0 requires this attribution" in text
    assert "The model code (the `.py` files of this repository, vendored from hf_mltm) is Apache-2.0." in text
    assert "all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), Apache-2.0" in text
    assert "| ESC-50 (Piczak, 2015) | CC BY-NC 3.0; the ESC-10 subset CC BY 3.0 |" in text
    assert "| TAU Urban Acoustic Scenes 2022 Mobile | academic, non-commercial use |" in text
    assert "- esc50 `esc50` split `test`, args {'exclude_esc10': True}" in text and "`batch_size`: 64" in text
    assert "Selected checkpoint: epoch 3 (best rsum)." in text
    assert "| distance | text_to_audio | 12.50 | 50.00 | 5 |  |" in text
    assert "templates such as \"the sound of {label}\"" in text and "zero-shot protocol" in text
    assert CITATIONS["mltm_audio_text"] in text and CITATIONS["omit_image_text"] in text
    assert "Revisiting Deep Audio-Text Retrieval Through the Lens of Transportation" in text
    assert "Learning Image-Text Matching with Optimal Partial Transport" in text


def test_card_without_pretrained_weights_is_apache_and_omit_cards_follow_the_vision_tower():
    fragments = build_model_card({"model_type": "omit_image_text", "image_fragment_dim": 1280}).content
    assert "license: apache-2.0" in fragments and "pipeline_tag" not in fragments
    assert "model(image_fragments=image_fragments, **text)" in fragments
    assert "Faster R-CNN" in fragments and "model-index" not in fragments
    with_tower = build_model_card({"model_type": "omit_image_text", "vision_config": {"model_type": "vit"}})
    assert ModelCard(with_tower.content).data.pipeline_tag == "zero-shot-image-classification"
    assert 'pipeline("zero-shot-image-classification", model=repo_id, trust_remote_code=True)' in with_tower.content
    with pytest.raises(ValueError, match=r"model_type='bert': the model card knows \['mltm_audio_text'"):
        build_model_card({"model_type": "bert"})
    with pytest.raises(ValueError, match=r"components=\['clip'\] are unknown"):
        build_model_card(AISFX_MINILM, components=["clip"])


def test_usage_code_points_the_card_snippet_at_a_folder():
    card = build_model_card(AISFX_MINILM).content
    code = usage_code(card, "/models/exported")
    assert code == usage_snippet(AISFX_MINILM, "/models/exported") + "\n"
    assert json.dumps(REPO_ID_PLACEHOLDER) not in code and 'repo_id = "/models/exported"' in code
    compile(code, "usage", "exec")  # valid Python; it is run against real folders in test_export.py
    assert usage_code("# no usage section\n", "x") is None


def test_write_model_card_keeps_the_trainer_call_and_reads_the_saved_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(AISFX_MINILM))
    path = write_model_card(tmp_path, model_type="mltm_audio_text", loss="mltm", datasets=["esc50 `esc50` split"],
                            metrics=ZERO_SHOT, training={"batch_size": 64}, eval_data="esc50 `esc50` split `test`",
                            best_epoch=None)
    loaded = ModelCard.load(path)
    assert loaded.data.license == "cc-by-4.0"  # aisfx found in config.json
    assert _triples(loaded.data.eval_results) == _triples(eval_results_from_metrics(
        ZERO_SHOT, item="audio", dataset_type="esc50", dataset_name="x"))
    assert "training loss: `mltm`" in loaded.text
