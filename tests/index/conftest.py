"""Shared fixtures of the gallery-index tests: tiny m-LTM models and a real gallery (the 398 ESC-50 clips)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig

from hf_mltm.data import build_esc50
from hf_mltm.index import GalleryIndex
from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel, MLTMFeatureExtractor, MLTMProcessor
from hf_mltm.models.panns import PannsConfig

# Templates of the query sample the OT potentials are estimated from, distinct from the test queries' template.
SAMPLE_TEMPLATES = ("This is a sound of {}.", "a recording of {}", "{}", "the noise of {}", "you can hear {}")
TEST_TEMPLATE = "the sound of {}"


def tiny_model(tokenizer, *, seed: int = 0, text_model=None, **config) -> MLTMAudioTextModel:
    """A random m-LTM model with a tiny PANNs tower (16 mel bins) and a tiny BERT, or the given text tower."""
    torch.manual_seed(seed)
    text_config = text_model.config if text_model is not None else BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37)
    settings = {"projection_hidden_size": 32, "projection_dim": 16, "metric_type": "full", "text_pooling": "mean",
                **config}
    config = MLTMAudioTextConfig(audio_config=PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16),
                                 text_config=text_config, **settings)
    return MLTMAudioTextModel(config, text_model=text_model).eval()


def tiny_processor(tokenizer) -> MLTMProcessor:
    return MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=1.0), tokenizer)


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="session")
def esc50_items(shared_data):
    """The 398 real ESC-50 clips (fold 1, 50 classes), items view."""
    return build_esc50(shared_data / "esc50", view="items")["test"]


@pytest.fixture(scope="session")
def real_gallery(tokenizer, minilm_dir, esc50_items, tmp_path_factory):
    """An exact index of the 398 ESC-50 clips, embedded by a model with a random tiny audio tower, the real
    all-MiniLM-L6-v2 text tower (so that captions of one class are close) and random heads; plus the label-level
    test queries ("the sound of <label>", one per class, positives: the clips of that class)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model(tokenizer, text_model=AutoModel.from_pretrained(str(minilm_dir)))
        processor = tiny_processor(tokenizer)
        cache = tmp_path_factory.mktemp("gallery_cache")
        index = GalleryIndex.from_model(model, processor, esc50_items, cache_dir=cache, batch_size=64,
                                        progress=False)
        labels = sorted(set(esc50_items["label"]))
        label_of = {label: position for position, label in enumerate(labels)}
        texts = [TEST_TEMPLATE.format(label) for label in labels]
        query_embeds = index._encode_texts(texts)
    finally:
        torch.set_num_threads(threads)
    return {"index": index, "model": model, "processor": processor, "labels": labels, "texts": texts,
            "query_embeds": query_embeds, "query_ids": np.arange(len(labels)),
            "item_ids": np.array([label_of[label] for label in esc50_items["label"]]), "cache": Path(cache)}
