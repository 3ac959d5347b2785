"""Tiny random models, a small real gallery and one shared local launch of the Space for the tests of ``space/``.

The models are random (hidden sizes 8-32): the tests check the Space's wiring, limits and numbers against
independent computations, not what a trained model retrieves. The gallery is real: six ESC-50 clips of
``$HF_MLTM_DATA`` (ten classes would be slower for nothing).
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from hf_mltm.models.efficientnet_lite import EfficientNetLiteConfig
from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel, MLTMFeatureExtractor, MLTMProcessor
from hf_mltm.models.omit import OMITImageProcessor, OMITImageTextConfig, OMITImageTextModel
from hf_mltm.models.panns import PannsConfig
from hf_mltm.space import AudioGallery, FragmentExplorer, SpaceService
from hf_mltm.space.loading import default_gallery_clips

REPO = Path(__file__).resolve().parents[2]
GALLERY_SIZE = 6


@pytest.fixture(scope="session")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))


def tiny_bert(tokenizer) -> BertConfig:
    return BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37)


def build_tiny_mltm(tokenizer, seed: int = 0) -> tuple[MLTMAudioTextModel, MLTMProcessor]:
    """A random m-LTM model (PANNs cnn10 with 8-16 channels, 1-layer BERT, full Mahalanobis metric) and its processor
    (16 mel bins, clips cropped to 2 s at 32 kHz)."""
    torch.manual_seed(seed)
    config = MLTMAudioTextConfig(
        audio_config=PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16),
        text_config=tiny_bert(tokenizer), projection_hidden_size=32, projection_dim=16, metric_type="full",
        text_pooling="mean", ot_epsilon=0.05,
    )
    processor = MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=2.0), tokenizer)
    return MLTMAudioTextModel(config).eval(), processor


def build_tiny_omit(tokenizer, seed: int = 0) -> OMITImageTextModel:
    """A random OMIT model on a narrow EfficientNet-Lite tower (7 x 7 grid of 16-d cells at 224 x 224)."""
    torch.manual_seed(seed)
    vision = EfficientNetLiteConfig(stem_channels=8, out_channels=[8, 8, 8, 8, 8, 8, 8],
                                    num_block_repeats=[1, 1, 1, 1, 1, 1, 1], expand_ratios=[1, 1, 1, 1, 1, 1, 1],
                                    head_channels=16)
    config = OMITImageTextConfig(vision_config=vision, text_config=tiny_bert(tokenizer), embed_dim=16,
                                 image_projection_hidden_size=8, ot_tol=1e-4, ot_max_iter=500,
                                 relevance_top_fraction=0.5, partial_ot_mass=0.6)
    return OMITImageTextModel(config).eval()


@pytest.fixture(scope="session")
def tiny_mltm(tokenizer):
    return build_tiny_mltm(tokenizer)


@pytest.fixture(scope="session")
def gallery_clips(shared_data):
    return default_gallery_clips(shared_data, limit=GALLERY_SIZE)


@pytest.fixture(scope="session")
def gallery(tiny_mltm, gallery_clips, tmp_path_factory):
    model, processor = tiny_mltm
    return AudioGallery(model, processor, gallery_clips, cache_dir=tmp_path_factory.mktemp("space_cache"))


@pytest.fixture(scope="session")
def explorer(tokenizer):
    return FragmentExplorer(build_tiny_omit(tokenizer), tokenizer, OMITImageProcessor.for_efficientnet_lite(),
                            untrained=True, description="tiny random OMIT (tests)")


@pytest.fixture(scope="session")
def service(gallery, explorer):
    return SpaceService(gallery, explorer, model_description="tiny random m-LTM (tests)")


def load_app_module():
    """``space/app.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("hf_mltm_space_app", REPO / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def app_module():
    return load_app_module()


@pytest.fixture(scope="session")
def launched(service, app_module, shared_data):
    """One local launch of the Space on tiny models, shared by the client and browser tests: its URL."""
    examples = app_module.default_examples(service, shared_data)
    demo = app_module.build_demo(service, examples)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[str(shared_data)])
    yield f"http://127.0.0.1:{port}/"
    demo.close()
