"""Regression tests for metadata problems: encodings, ESC-50 targets, paths leaving the data folder, COCO-format files.

Stand-ins are small temporary copies of the real data under ``$HF_MLTM_DATA``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from hf_mltm.data import (
    MissingDataFileError,
    build_audio_folder,
    build_audiocaps,
    build_clotho,
    build_coco,
    build_coco_captions,
    build_esc50,
    build_flickr8k,
    find_images,
)

ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take\n"
CLOTHO_HEADER = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"


@pytest.fixture
def esc50_copy(tmp_path, shared_data):
    """Two real ESC-50 clips in the official layout; the test writes meta/esc50.csv."""
    root = tmp_path / "esc50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    for name in ("1-100032-A-0.flac", "1-100038-A-14.flac"):
        shutil.copy(shared_data / "esc50/audio" / name, root / "audio" / name)
    return root


@pytest.fixture
def clotho_copy(tmp_path, shared_data):
    """The first two real Clotho evaluation clips and their CSV rows (UTF-8, as distributed)."""
    root = tmp_path / "clotho"
    (root / "evaluation").mkdir(parents=True)
    lines = (shared_data / "clotho/clotho_captions_evaluation.csv").read_text(encoding="utf-8").splitlines()
    for line in lines[1:3]:
        name = line.split(",")[0].strip('"')
        shutil.copy(shared_data / "clotho/evaluation" / name, root / "evaluation" / name)
    (root / "clotho_captions_evaluation.csv").write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------- encodings


def test_latin1_csv_raises_value_error_with_file_offset_and_fix(clotho_copy):
    csv_path = clotho_copy / "clotho_captions_evaluation.csv"
    text = csv_path.read_text(encoding="utf-8").replace("A man walking", "A man in a café walking", 1)
    csv_path.write_bytes(text.encode("latin-1"))  # é is the single byte 0xe9 in Latin-1
    data = csv_path.read_bytes()
    offset = data.index(b"\xe9")
    assert data[:offset].count(b"\n") == 1  # on line 2, the first data row
    with pytest.raises(ValueError) as caught:
        build_clotho(clotho_copy)
    message = str(caught.value)
    assert not isinstance(caught.value, UnicodeDecodeError)
    assert (
        f"CSV file {str(csv_path)!r} is not valid UTF-8: byte 0xe9 at byte offset {offset} (line 2)"
        in message
    )
    assert "Re-save the file as UTF-8" in message


def test_utf8_csv_with_byte_order_mark_still_reads(clotho_copy):
    csv_path = clotho_copy / "clotho_captions_evaluation.csv"
    plain = build_clotho(clotho_copy, view="items")["test"].to_dict()
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    assert build_clotho(clotho_copy, view="items")["test"].to_dict() == plain
    assert plain["captions"][0][0] == "A man walking who is blowing his nose hard and about to sneeze."


def test_latin1_json_raises_value_error_with_file_and_offset(tmp_path):
    json_path = tmp_path / "dataset_flickr8k.json"
    json_path.write_bytes('{"images": [{"filename": "caf\u00e9.jpg"}]}'.encode("latin-1"))
    with pytest.raises(
        ValueError,
        match=r"JSON file .*dataset_flickr8k\.json' is not valid UTF-8: byte 0xe9 at "
        r"byte offset 29 \(line 1\)",
    ):
        build_flickr8k(tmp_path)


# ----------------------------------------------------------------------------------------------- ESC-50


def test_esc50_rejects_target_outside_the_50_classes(esc50_copy):
    (esc50_copy / "meta/esc50.csv").write_text(
        ESC50_HEADER
        + "1-100032-A-0.flac,1,0,dog,True,100032,A\n"
        + "1-100038-A-14.flac,1,999,chirping_birds,False,100038,A\n"
    )
    with pytest.raises(
        ValueError, match=r"esc50\.csv line 3: 'target' must be an ESC-50 class index in 0\.\.49, got 999"
    ):
        build_esc50(esc50_copy)
    (esc50_copy / "meta/esc50.csv").write_text(ESC50_HEADER + "1-100032-A-0.flac,1,-1,dog,True,100032,A\n")
    with pytest.raises(ValueError, match="line 2: 'target' must be an ESC-50 class index in 0..49, got -1"):
        build_esc50(esc50_copy)


def test_esc50_rejects_target_inconsistent_with_category(esc50_copy):
    (esc50_copy / "meta/esc50.csv").write_text(
        ESC50_HEADER + "1-100038-A-14.flac,1,1,chirping_birds,False,100038,A\n"
    )
    with pytest.raises(
        ValueError, match=r"line 2: 'target' 1 is the class 'rooster', but 'category' is 'chirping_birds'"
    ):
        build_esc50(esc50_copy)


def test_esc50_consistent_rows_keep_their_official_targets(esc50_copy):
    (esc50_copy / "meta/esc50.csv").write_text(
        ESC50_HEADER
        + "1-100032-A-0.flac,1,0,dog,True,100032,A\n"
        + "1-100038-A-14.flac,1,14,chirping_birds,False,100038,A\n"
    )
    test = build_esc50(esc50_copy, view="items")["test"]
    assert test["label_id"] == [0, 14] and test["label"] == ["dog", "chirping birds"]


# ------------------------------------------------------------------------------------- paths outside data


@pytest.mark.parametrize(
    "filename", ["../audio/1-100032-A-0.flac", "audio/../../x.flac", "/etc/hostname", "C:x.flac"]
)
def test_esc50_rejects_filename_outside_the_data_folder(esc50_copy, filename):
    # "../audio/1-100032-A-0.flac" exists from audio/: before the check, it was silently read from outside audio/
    (esc50_copy / "meta/esc50.csv").write_text(ESC50_HEADER + f"{filename},1,0,dog,True,100032,A\n")
    with pytest.raises(ValueError) as caught:
        build_esc50(esc50_copy)
    assert f"esc50.csv line 2: field 'filename' = {filename!r} points outside the data folder" in str(
        caught.value
    )


def test_clotho_rejects_file_name_outside_the_data_folder(clotho_copy):
    csv_path = clotho_copy / "clotho_captions_evaluation.csv"
    csv_path.write_text(CLOTHO_HEADER + "../clotho_captions_evaluation.csv,a,b,c,d,e\n")
    with pytest.raises(
        ValueError,
        match=r"line 2: field 'file_name' = '\.\./clotho_captions_evaluation\.csv' points "
        "outside the data folder",
    ):
        build_clotho(clotho_copy)


def test_audio_folder_rejects_file_outside_but_keeps_sub_paths(tmp_path, shared_data):
    source = sorted((shared_data / "urbansound8k/audio").iterdir())[0]
    (tmp_path / "audio/fold1").mkdir(parents=True)
    shutil.copy(source, tmp_path / "audio/fold1" / source.name)
    (tmp_path / "metadata.csv").write_text(f"file_name,label\nfold1/{source.name},dog_bark\n")
    assert build_audio_folder(tmp_path)["train"][0]["audio"] == str(tmp_path / "audio/fold1" / source.name)
    (tmp_path / "metadata.csv").write_text(
        f"file_name,label\n{tmp_path / 'audio/fold1' / source.name},dog_bark\n"
    )
    with pytest.raises(ValueError, match=r"metadata\.csv line 2: field 'file_name' = '/.*' points outside"):
        build_audio_folder(tmp_path)


def test_audiocaps_rejects_clip_path_outside_the_data_folder(tmp_path):
    (tmp_path / "test.csv").write_text(
        "audiocap_id,youtube_id,start_time,caption\n1,../../etc/x,0,a dog barks\n"
    )
    with pytest.raises(
        ValueError,
        match=r"test\.csv line 2: field 'audio_pattern' = 'audio/\.\./\.\./etc/x_0\.flac' points outside",
    ):
        build_audiocaps(tmp_path)


@pytest.mark.parametrize(
    "entry,field",
    [
        ({"filename": "../Images/1000268201_693b08cb0e.jpg"}, "filename"),
        ({"filename": "1000268201_693b08cb0e.jpg", "filepath": "/work"}, "filepath"),
    ],
)
def test_karpathy_json_rejects_paths_outside_the_data_folder(tmp_path, shared_data, entry, field):
    sentences = [{"raw": "a caption"}]
    json_path = tmp_path / "dataset_flickr8k.json"
    json_path.write_text(json.dumps({"images": [{**entry, "split": "test", "sentences": sentences}]}))
    pattern = rf"dataset_flickr8k\.json images\[0\]: field '{field}' = .* points outside the data folder"
    with pytest.raises(ValueError, match=pattern):
        build_flickr8k(tmp_path)
    with pytest.raises(ValueError, match=pattern):  # the same parser serves find_images
        find_images(shared_data / "flickr8k_1k/Images", json_path)


def test_coco_rejects_file_name_outside_the_image_folder(tmp_path):
    annotations = {"images": [{"id": 1, "file_name": "..\\secret.jpg"}], "annotations": []}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/captions_val2014.json").write_text(json.dumps(annotations))
    with pytest.raises(
        ValueError, match=r"captions_val2014\.json images\[0\]: field 'file_name' = .* points outside"
    ):
        build_coco(tmp_path)


# ------------------------------------------------------------------------------- COCO-format caption files


def coco_file_from_karpathy(karpathy_json, path, split):
    """Rewrite the Karpathy entries of one split as a COCO caption file; annotations listed in reverse order."""
    entries = [e for e in json.loads(karpathy_json.read_text())["images"] if e["split"] == split]
    images = [{"id": 100 + k, "file_name": e["filename"]} for k, e in enumerate(entries)]
    annotations = [
        {"id": 10 * k + s, "image_id": 100 + k, "caption": sentence["raw"]}
        for k, e in enumerate(entries)
        for s, sentence in enumerate(e["sentences"])
    ]
    path.write_text(json.dumps({"images": images, "annotations": annotations[::-1]}))
    return entries


def test_coco_captions_on_flickr8k_images_equals_the_karpathy_build(tmp_path, shared_data):
    folder = shared_data / "flickr8k_1k"
    entries = coco_file_from_karpathy(folder / "dataset_flickr8k_1k.json", tmp_path / "captions.json", "test")
    coco = build_coco_captions(folder / "Images", annotation_file=tmp_path / "captions.json", view="items")
    assert list(coco) == ["test"]
    test = coco["test"]
    assert test.num_rows == 100 and test["item_id"] == [e["filename"] for e in entries]
    assert test["item_index"] == list(range(100))
    assert test[0]["image"] == str((folder / "Images" / entries[0]["filename"]).resolve())
    assert test[0]["captions"] == [sentence["raw"].strip() for sentence in entries[0]["sentences"]]
    assert test.to_dict() == build_flickr8k(folder, splits="test", view="items")["test"].to_dict()


def test_coco_captions_split_choice_order_and_errors(tmp_path, shared_data):
    images_dir = shared_data / "flickr8k_1k/Images"
    names = sorted(path.name for path in images_dir.iterdir())[:3]
    captions = {
        "images": [
            {"id": 7, "file_name": names[0]},
            {"id": 3, "file_name": names[1]},
            {"id": 9, "file_name": names[2]},
        ],
        "annotations": [
            {"id": 5, "image_id": 3, "caption": "second of 3"},
            {"id": 2, "image_id": 7, "caption": " only of 7 "},
            {"id": 1, "image_id": 3, "caption": "first of 3"},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    val = build_coco_captions(images_dir, annotation_file=tmp_path / "captions.json", split="val")
    assert list(val) == ["validation"]  # names[2] has no caption: no item
    assert val["validation"]["item_id"] == [names[0], names[1], names[1]]
    assert val["validation"]["caption"] == ["only of 7", "first of 3", "second of 3"]
    assert val["validation"]["caption_index"] == [0, 0, 1] and val["validation"]["item_index"] == [0, 1, 1]
    with pytest.raises(ValueError, match="COCO-format captions \\(split='val'\\) has no split 'train'"):
        build_coco_captions(
            images_dir, annotation_file=tmp_path / "captions.json", split="val", splits="train"
        )
    with pytest.raises(ValueError, match="COCO-format captions has no split 'holdout'"):
        build_coco_captions(images_dir, annotation_file=tmp_path / "captions.json", split="holdout")
    with pytest.raises(MissingDataFileError, match="nowhere.json' does not exist"):
        build_coco_captions(images_dir, annotation_file=tmp_path / "nowhere.json")
    captions["images"].append({"id": 3, "file_name": "x.jpg"})
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    with pytest.raises(ValueError, match=r"images\[3\]: id 3 is already used by .*images\[1\]"):
        build_coco_captions(images_dir, annotation_file=tmp_path / "captions.json")


def test_coco_captions_relative_annotation_file_and_missing_image(tmp_path, shared_data):
    name = sorted(path.name for path in (shared_data / "flickr8k_1k/Images").iterdir())[0]
    (tmp_path / "images").mkdir()
    shutil.copy(shared_data / "flickr8k_1k/Images" / name, tmp_path / "images" / name)
    captions = {
        "images": [{"id": 1, "file_name": name}, {"id": 2, "file_name": "gone.jpg"}],
        "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}],
    }
    (tmp_path / "images/coco.json").write_text(json.dumps(captions))
    with pytest.raises(
        MissingDataFileError, match=r"gone\.jpg' listed in .*coco\.json images\[1\] does not exist"
    ):
        build_coco_captions(tmp_path / "images", annotation_file="coco.json")
    kept = build_coco_captions(
        tmp_path / "images", annotation_file="coco.json", on_missing="skip", verify_files=True
    )
    assert kept["test"]["item_id"] == [name] and kept["test"]["caption"] == ["a"]
