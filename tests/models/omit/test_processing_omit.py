from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor
from hf_mltm.models.omit.processing_omit import OMITProcessor

CAPTIONS = [
    "A black dog and a spotted dog are fighting",
    "A child in a pink dress is climbing up a set of stairs .",
]
FILES = ["1001773457_577c3a7d70.jpg", "1000268201_693b08cb0e.jpg"]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def images(shared_data):
    return [Image.open(shared_data / "flickr8k_1k" / "Images" / name).convert("RGB") for name in FILES]


def test_processor_combines_image_processor_and_tokenizer_outputs(tokenizer, images):
    image_processor = OMITImageProcessor()
    batch = OMITProcessor(image_processor, tokenizer)(images=images, text=CAPTIONS, return_tensors="pt")
    tokens = tokenizer(CAPTIONS, padding=True, truncation=True, return_tensors="pt")
    pixels = image_processor(images, return_tensors="pt")["pixel_values"]
    assert set(batch) == set(tokens) | {"pixel_values"}
    for key in tokens:
        torch.testing.assert_close(batch[key], tokens[key], rtol=0, atol=0)
    torch.testing.assert_close(batch["pixel_values"], pixels, rtol=0, atol=0)
    assert batch["pixel_values"].shape == (2, 3, 224, 224) and batch["pixel_values"].dtype == torch.float32
    # the first caption is shorter: padded to the second one, which ends in [SEP]
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    assert lengths[0] < lengths[1] == batch["input_ids"].shape[1]
    assert batch["input_ids"][0, 0].item() == tokenizer.cls_token_id
    assert batch["input_ids"][1, -1].item() == tokenizer.sep_token_id


def test_processor_images_only_and_text_only(tokenizer, images):
    processor = OMITProcessor(OMITImageProcessor(), tokenizer)
    assert set(processor(images=images[0], return_tensors="pt")) == {"pixel_values"}
    text_only = processor(text=CAPTIONS[0], return_tensors="pt")
    assert {"input_ids", "attention_mask"} <= set(text_only) and "pixel_values" not in text_only


def test_processor_forwards_text_settings(tokenizer):
    processor = OMITProcessor(OMITImageProcessor(), tokenizer)
    batch = processor(text=CAPTIONS, max_length=6, padding="max_length", return_tensors="pt")
    assert batch["input_ids"].shape == (2, 6)
    assert batch["input_ids"][:, -1].tolist() == [tokenizer.sep_token_id] * 2


def test_processor_needs_some_input(tokenizer):
    with pytest.raises(ValueError, match="needs `images`, `text` or both"):
        OMITProcessor(OMITImageProcessor(), tokenizer)()


def test_processor_save_and_load_round_trip(tokenizer, images, tmp_path):
    processor = OMITProcessor(
        OMITImageProcessor.for_efficientnet_lite(resample=Image.Resampling.BILINEAR), tokenizer
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["processor_class"] == "OMITProcessor"
    assert saved["image_processor"]["image_processor_type"] == "OMITImageProcessor"
    assert saved["image_processor"]["resample"] == int(Image.Resampling.BILINEAR)

    loaded = OMITProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, OMITImageProcessor)
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    expected = processor(images=images, text=CAPTIONS, return_tensors="pt")
    actual = loaded(images=images, text=CAPTIONS, return_tensors="pt")
    assert set(actual) == set(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    "text, message",
    [
        ([CAPTIONS[0], None], r"Caption 1 of `text` is 'None' of type NoneType: every caption must be a string"),
        (5, r"`text` must be a string or a list of strings, got '5' of type int"),
        ([3.5], r"Caption 0 of `text` is '3.5' of type float"),
        ([], r"`text` is an empty list"),
    ],
)
def test_bad_captions_raise_naming_index_and_type(tokenizer, images, text, message):
    processor = OMITProcessor(OMITImageProcessor(), tokenizer)
    with pytest.raises(ValueError, match=message):
        processor(images=images, text=text)


def test_processor_forwards_image_errors_by_position(tokenizer, images):
    processor = OMITProcessor(OMITImageProcessor(), tokenizer)
    with pytest.raises(ValueError, match=r"image 1 has size 0 x 0"):
        processor(images=[images[0], Image.new("RGB", (0, 0))], text=CAPTIONS)
