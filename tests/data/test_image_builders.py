from __future__ import annotations

import json

import pytest
from PIL import Image

from hf_mltm.data import (
    CorruptDataFileError,
    MissingDataFileError,
    build_coco,
    build_flickr8k,
    build_flickr30k,
    get_skipped_files,
)


def write_image(path, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)


def karpathy_entry(filename, split, captions, **extra):
    return {
        "filename": filename,
        "split": split,
        "sentences": [{"raw": caption, "tokens": caption.lower().split()} for caption in captions],
        **extra,
    }


def test_flickr8k_real_karpathy_splits(shared_data):
    flickr = build_flickr8k(shared_data / "flickr8k_1k")
    assert list(flickr) == ["train", "validation", "test"]
    assert [flickr[s].num_rows for s in flickr] == [4000, 500, 500]
    train = flickr["train"]
    assert (
        train[0]["item_id"] == "1000268201_693b08cb0e.jpg"
        and train[1]["caption"] == "A girl going into a wooden building ."
    )
    assert train[0]["image"] == str((shared_data / "flickr8k_1k/Images/1000268201_693b08cb0e.jpg").resolve())
    assert train["caption_index"][:10] == [0, 1, 2, 3, 4] * 2 and train["item_index"][-1] == 799
    items = build_flickr8k(shared_data / "flickr8k_1k", view="items", splits=["val", "test"])
    assert list(items) == ["validation", "test"] and items["test"].num_rows == 100
    assert {len(captions) for captions in items["validation"]["captions"]} == {5}
    assert not set(items["validation"]["item_id"]) & set(items["test"]["item_id"])


def test_flickr8k_real_images_verify(shared_data):
    flickr = build_flickr8k(shared_data / "flickr8k_1k", splits="test", view="items", verify_files=True)
    assert flickr["test"].num_rows == 100 and get_skipped_files(flickr) == ()


@pytest.fixture
def flickr30k_stand_in(tmp_path):
    """Karpathy dataset_flickr30k.json (no filepath, as released) with 3 images in flickr30k-images/."""
    images = [
        karpathy_entry("1.jpg", "train", ["a red square", "red"]),
        karpathy_entry("2.jpg", "restval", ["a green square"]),
        karpathy_entry("3.jpg", "test", ["a blue square", "blue", "a small blue image"]),
    ]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    for name, color in (("1.jpg", (255, 0, 0)), ("2.jpg", (0, 255, 0)), ("3.jpg", (0, 0, 255))):
        write_image(tmp_path / "flickr30k-images" / name, color)
    return tmp_path


def test_flickr30k_stand_in_layout(flickr30k_stand_in):
    flickr = build_flickr30k(flickr30k_stand_in, verify_files=True)
    assert [flickr[s].num_rows for s in flickr] == [3, 0, 3]
    assert flickr["train"]["item_id"] == ["1.jpg", "1.jpg", "2.jpg"]
    assert flickr["train"]["item_index"] == [0, 0, 1]
    assert flickr["test"]["caption"] == ["a blue square", "blue", "a small blue image"]
    assert flickr["train"][2]["image"] == str(flickr30k_stand_in / "flickr30k-images/2.jpg")
    no_restval = build_flickr30k(flickr30k_stand_in, restval_to_train=False, view="items")
    assert no_restval["train"]["item_id"] == ["1.jpg"]


def test_flickr30k_missing_and_corrupt_images(flickr30k_stand_in):
    (flickr30k_stand_in / "flickr30k-images/2.jpg").unlink()
    (flickr30k_stand_in / "flickr30k-images/3.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(
        MissingDataFileError, match=r"2\.jpg' listed in .*dataset_flickr30k\.json images\[1\]"
    ):
        build_flickr30k(flickr30k_stand_in)
    flickr = build_flickr30k(flickr30k_stand_in, on_missing="skip")
    assert flickr["train"].num_rows == 2 and flickr["test"].num_rows == 3  # not verified: 3.jpg is kept
    with pytest.raises(CorruptDataFileError, match=r"3\.jpg' listed in .*images\[2\] cannot be read"):
        build_flickr30k(flickr30k_stand_in, splits="test", verify_files=True)
    flickr = build_flickr30k(flickr30k_stand_in, on_missing="skip", verify_files=True, view="items")
    assert flickr["train"]["item_id"] == ["1.jpg"] and flickr["test"].num_rows == 0
    assert [(s.split, s.reason[:7]) for s in get_skipped_files(flickr)] == [
        ("train", "missing"),
        ("test", "corrupt"),
    ]


def test_karpathy_json_errors(tmp_path):
    json_path = tmp_path / "dataset_flickr30k.json"
    json_path.write_text(json.dumps({"images": [{"filename": "1.jpg", "split": "train"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] lacks field\(s\) \['sentences'\]"):
        build_flickr30k(tmp_path)
    json_path.write_text('{"images": [')
    with pytest.raises(ValueError, match="dataset_flickr30k.json' is malformed"):
        build_flickr30k(tmp_path)
    json_path.write_text(json.dumps({"images": [karpathy_entry("1.jpg", "holdout", ["x"])]}))
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        build_flickr30k(tmp_path)
    json_path.unlink()
    with pytest.raises(MissingDataFileError, match="No Flickr30K Karpathy JSON"):
        build_flickr30k(tmp_path)


def test_coco_official_annotations(tmp_path):
    annotations = {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg"},  # no caption: not an item
        ],
        "annotations": [
            {"id": 12, "image_id": 42, "caption": "second caption of 42"},
            {"id": 3, "image_id": 7, "caption": "only caption of 7 "},
            {"id": 11, "image_id": 42, "caption": "first caption of 42"},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/captions_val2014.json").write_text(json.dumps(annotations))
    for image in annotations["images"]:
        write_image(tmp_path / "val2014" / image["file_name"])
    coco = build_coco(tmp_path, view="items")
    assert list(coco) == ["validation"]
    val = coco["validation"]
    assert val["item_id"] == ["COCO_val2014_000000000042.jpg", "COCO_val2014_000000000007.jpg"]
    assert val["captions"] == [["first caption of 42", "second caption of 42"], ["only caption of 7"]]
    assert val[1]["image"] == str(tmp_path / "val2014/COCO_val2014_000000000007.jpg")
    with pytest.raises(MissingDataFileError, match="captions_train2014.json"):
        build_coco(tmp_path, splits="train")
    annotations["annotations"].append({"id": 99, "image_id": 5, "caption": "orphan"})
    (tmp_path / "annotations/captions_val2014.json").write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match=r"annotations\[3\]: image_id 5 is not in 'images'"):
        build_coco(tmp_path)


def test_coco_karpathy_json(tmp_path):
    images = [
        karpathy_entry("COCO_train2014_000000000001.jpg", "train", ["t1", "t2"], filepath="train2014"),
        karpathy_entry("COCO_val2014_000000000002.jpg", "restval", ["r1"], filepath="val2014"),
        karpathy_entry("COCO_val2014_000000000003.jpg", "val", ["v1"], filepath="val2014"),
        karpathy_entry("COCO_val2014_000000000004.jpg", "test", ["x1", "x2", "x3"], filepath="val2014"),
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}))
    for entry in images:
        write_image(tmp_path / entry["filepath"] / entry["filename"])
    coco = build_coco(tmp_path)
    assert [coco[s].num_rows for s in coco] == [3, 1, 3]
    assert coco["train"]["item_index"] == [0, 0, 1]
    assert coco["train"][2]["image"] == str(tmp_path / "val2014/COCO_val2014_000000000002.jpg")
    assert coco["test"]["caption"] == ["x1", "x2", "x3"]
    with pytest.raises(ValueError, match="annotation_format='yaml' is not supported"):
        build_coco(tmp_path, annotation_format="yaml")
