"""Tiny m-LTM and OMIT models with the real MiniLM tokenizer, saved the way the trainer saves them."""

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from hf_mltm.hub import write_model_card
from hf_mltm.models.efficientnet_lite import EfficientNetLiteConfig
from hf_mltm.models.mltm import MLTMAudioTextModel, MLTMFeatureExtractor, MLTMProcessor
from hf_mltm.models.omit import OMITImageProcessor, OMITImageTextConfig, OMITImageTextModel, OMITProcessor
from hf_mltm.models.panns import PannsConfig, PannsModel

MLTM_METRICS = {"distance": {"text_to_audio": {"R@1": 20.0, "R@5": 60.0, "R@10": 100.0, "medR": 3},
                             "audio_to_text": {"R@1": 40.0, "R@5": 80.0, "R@10": 100.0, "medR": 2}, "rsum": 400.0},
                "settings": {"ot_epsilon": 0.05}, "num_items": 5}


def tiny_bert(vocab_size: int) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37)


def tiny_image_processor() -> OMITImageProcessor:
    return OMITImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def saved_mltm(tmp_path_factory, minilm_tokenizer) -> Path:
    """A trainer-like output folder: PANNs cnn10 + tiny BERT loaded from local folders (so their configs record
    those paths), the MiniLM tokenizer, a model card with metrics, and training leftovers."""
    root = tmp_path_factory.mktemp("hub_mltm")
    torch.manual_seed(0)
    PannsModel(PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16)).save_pretrained(root / "panns")
    BertModel(tiny_bert(minilm_tokenizer.vocab_size), add_pooling_layer=False).save_pretrained(root / "bert")
    model = MLTMAudioTextModel.from_audio_text_pretrained(str(root / "panns"), str(root / "bert"),
                                                          projection_hidden_size=32, projection_dim=16,
                                                          metric_type="diagonal")
    assert model.config.text_config._name_or_path == str(root / "bert")  # the path the export must drop
    processor = MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=1.0), minilm_tokenizer)
    saved = root / "output"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    write_model_card(saved, model_type="mltm_audio_text", loss="mltm",
                     datasets=["bigsoundbank `bigsoundbank_cc0` split `train`"], metrics=MLTM_METRICS,
                     training={"batch_size": 4}, eval_data="bigsoundbank `bigsoundbank_cc0` split `test`",
                     best_epoch=1)
    (saved / "checkpoints" / "checkpoint_3").mkdir(parents=True)  # what a training run leaves beside the model
    (saved / "metrics.jsonl").write_text('{"type": "train"}\n')
    return saved


@pytest.fixture(scope="session")
def omit_models(minilm_tokenizer):
    """OMIT on precomputed 12-d fragments, and OMIT with a tiny EfficientNet-Lite vision tower (an hf_mltm tower
    family, so its sub-config must be registered by the exported code)."""
    torch.manual_seed(0)
    text = tiny_bert(minilm_tokenizer.vocab_size)
    fragments = OMITImageTextModel(OMITImageTextConfig(
        image_fragment_dim=12, text_config=text, embed_dim=16, image_projection_hidden_size=8,
        partial_matching="top_fraction")).eval()
    vision = EfficientNetLiteConfig(image_size=32, stem_channels=8, kernel_sizes=[3, 5], strides=[1, 2],
                                    out_channels=[16, 16], num_block_repeats=[1, 2], expand_ratios=[1, 2],
                                    head_channels=32)
    tower = OMITImageTextModel(OMITImageTextConfig(
        vision_config=vision, text_config=text, embed_dim=16, image_projection_hidden_size=8)).eval()
    return {
        "fragments": (fragments, OMITProcessor(tiny_image_processor(), minilm_tokenizer)),
        "efficientnet_lite": (tower, OMITProcessor(tiny_image_processor(), minilm_tokenizer)),
    }
