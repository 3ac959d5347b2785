"""The one Karpathy-split JSON parser, shared by the Flickr/COCO builders and `find_images`."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hf_mltm.data import KarpathyImage, build_flickr8k, find_images, read_karpathy_json


@pytest.fixture(scope="module")
def flickr_json(shared_data):
    return shared_data / "flickr8k_1k/dataset_flickr8k_1k.json"


def test_reads_the_real_flickr8k_file(flickr_json):
    images = read_karpathy_json(flickr_json)
    assert len(images) == 1000
    assert Counter(image.split for image in images) == {"train": 800, "val": 100, "test": 100}
    first = images[0]
    assert first.filename == "1000268201_693b08cb0e.jpg" and first.filepath == "Images"
    assert first.captions[:2] == (
        "A child in a pink dress is climbing up a set of stairs in an entry way .",
        "A girl going into a wooden building .",
    )
    assert len(first.captions) == 5 and first.source == f"{flickr_json} images[0]"


def test_builder_and_find_images_agree_with_the_parser(flickr_json, shared_data):
    images = read_karpathy_json(flickr_json)
    items = build_flickr8k(shared_data / "flickr8k_1k", view="items")
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        expected = [image for image in images if image.split == name]
        assert items[split]["item_id"] == [image.filename for image in expected]
        assert items[split]["captions"] == [list(image.captions) for image in expected]
    _, item_ids = find_images(shared_data / "flickr8k_1k/Images", flickr_json)
    assert item_ids == [image.filename for image in images]


def test_listing_only_needs_no_split_or_sentences(tmp_path):
    json_path = tmp_path / "list.json"
    json_path.write_text(
        json.dumps({"images": [{"filename": "a.jpg", "filepath": "train2014"}, {"filename": "b.jpg"}]})
    )
    assert read_karpathy_json(json_path, listing_only=True) == [
        KarpathyImage("a.jpg", "train2014", None, (), f"{json_path} images[0]"),
        KarpathyImage("b.jpg", None, None, (), f"{json_path} images[1]"),
    ]
    with pytest.raises(ValueError, match=r"images\[0\] lacks field\(s\) \['split', 'sentences'\]"):
        read_karpathy_json(json_path)


def test_tokens_stand_in_for_a_missing_raw_sentence(tmp_path):
    json_path = tmp_path / "d.json"
    sentences = [{"raw": "  A dog .  "}, {"tokens": ["a", "brown", "dog"]}, {"raw": "", "tokens": ["x"]}]
    json_path.write_text(
        json.dumps({"images": [{"filename": "a.jpg", "split": "restval", "sentences": sentences}]})
    )
    (image,) = read_karpathy_json(json_path)
    assert image.split == "restval" and image.captions == ("A dog .", "a brown dog", "x")


@pytest.mark.parametrize(
    "content,match",
    [
        ({"annotations": []}, "expected a JSON object with an 'images' list"),
        ([1, 2], "expected a JSON object with an 'images' list"),
        ({"images": ["a.jpg"]}, r"images\[0\] has no string field 'filename'"),
        (
            {"images": [{"filename": "a.jpg", "split": "dev", "sentences": [{"raw": "x"}]}]},
            "unknown split 'dev'",
        ),
        ({"images": [{"filename": "a.jpg", "split": "test", "sentences": []}]}, "has no sentences"),
        (
            {"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"tokens": []}]}]},
            r"sentences\[0\]: a sentence",
        ),
    ],
)
def test_malformed_files_name_the_entry(tmp_path, content, match):
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        read_karpathy_json(json_path)
