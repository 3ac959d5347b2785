from __future__ import annotations

import logging
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from hf_mltm.data import (
    CorruptDataFileError,
    MissingDataFileError,
    build_audio_folder,
    build_audiocaps,
    build_bigsoundbank,
    build_clotho,
    build_esc50,
    build_tau22_scenes,
    build_urbansound8k,
    class_prompts,
    get_skipped_files,
)

ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take\n"


def write_tone(path, seconds=0.5, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.1 * np.sin(2 * np.pi * 440 * t), rate)


# ------------------------------------------------------------------------------------------------- ESC-50


def test_esc50_real_fold1_counts_labels_and_captions(shared_data):
    esc50 = build_esc50(shared_data / "esc50")
    assert list(esc50) == ["test"]
    test = esc50["test"]
    assert test.num_rows == 398 and test["item_index"] == list(range(398))
    assert set(test["fold"]) == {1} and set(test["caption_index"]) == {0}
    per_label = Counter(test["label"])
    assert len(per_label) == 50 and per_label["pig"] == 6 and per_label["chirping birds"] == 8
    row = test[1]
    assert row["item_id"] == "1-100038-A-14" and row["label"] == "chirping birds" and row["label_id"] == 14
    assert row["caption"] == "the sound of chirping birds"
    assert row["audio"] == str((shared_data / "esc50/audio/1-100038-A-14.flac").resolve())
    assert get_skipped_files(esc50) == ()


def test_esc50_esc10_and_fold_selection(shared_data):
    esc10 = build_esc50(
        shared_data / "esc50", esc10_only=True, view="items", caption_template="{label} noise"
    )
    assert esc10["test"].num_rows == 80 and len(set(esc10["test"]["label"])) == 10
    assert esc10["test"][0]["captions"] == ["dog noise"]
    others = build_esc50(shared_data / "esc50", exclude_esc10=True)["test"]
    assert others.num_rows == 318 and not set(others["label"]) & set(esc10["test"]["label"])
    cv = build_esc50(shared_data / "esc50", train_folds=[1, 2, 3])
    assert cv["train"].num_rows == 398 and cv["test"].num_rows == 0
    cv = build_esc50(shared_data / "esc50", test_folds=[1], splits="test")
    assert list(cv) == ["test"] and cv["test"].num_rows == 398
    assert build_esc50(shared_data / "esc50", folds=[2, 3])["test"].num_rows == 0
    with pytest.raises(ValueError, match="overlap on folds \\[2\\]"):
        build_esc50(shared_data / "esc50", train_folds=[1, 2], test_folds=[2])
    with pytest.raises(ValueError, match="subset of \\[1, 2, 3, 4, 5\\]"):
        build_esc50(shared_data / "esc50", folds=[6])
    with pytest.raises(ValueError, match="no split 'train'"):
        build_esc50(shared_data / "esc50", splits="train")


def test_class_prompts():
    assert class_prompts(["dog", "chirping_birds"]) == [
        "This is a sound of dog.",
        "This is a sound of chirping birds.",
    ]
    assert class_prompts(["vacuum_cleaner"], template="{label}") == ["vacuum cleaner"]


@pytest.fixture
def small_esc50(tmp_path, shared_data):
    """Three ESC-50 rows in the official layout: two real clips and one corrupt file."""
    root = tmp_path / "esc50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    for name in ("1-100032-A-0.flac", "1-100038-A-14.flac"):
        shutil.copy(shared_data / "esc50/audio" / name, root / "audio" / name)
    (root / "audio/1-9999-A-1.flac").write_bytes(b"this is not a flac file" * 10)
    (root / "meta/esc50.csv").write_text(
        ESC50_HEADER
        + "1-100032-A-0.flac,1,0,dog,True,100032,A\n"
        + "1-100038-A-14.flac,1,14,chirping_birds,False,100038,A\n"
        + "1-9999-A-1.flac,1,1,rooster,True,9999,A\n"
    )
    return root


def test_corrupt_file_raises_only_when_verified(small_esc50, caplog):
    assert build_esc50(small_esc50)["test"].num_rows == 3  # headers are not read by default
    with pytest.raises(CorruptDataFileError, match=r"1-9999-A-1\.flac.*esc50\.csv line 4"):
        build_esc50(small_esc50, verify_files=True)
    with caplog.at_level(logging.WARNING, logger="hf_mltm.data"):
        esc50 = build_esc50(small_esc50, verify_files=True, on_missing="skip", view="items")
    assert esc50["test"]["item_id"] == ["1-100032-A-0", "1-100038-A-14"]
    assert esc50["test"]["item_index"] == [0, 1]
    (skipped,) = get_skipped_files(esc50)
    assert skipped.split == "test" and skipped.path.endswith("1-9999-A-1.flac")
    assert skipped.source.endswith("esc50.csv line 4") and skipped.reason.startswith("corrupt")
    assert "skipped 1 item(s)" in caplog.text


def test_missing_file_error_and_skip(small_esc50):
    (small_esc50 / "audio/1-100032-A-0.flac").unlink()
    with pytest.raises(MissingDataFileError, match=r"1-100032-A-0\.flac.*line 2 does not exist"):
        build_esc50(small_esc50)
    with pytest.raises(FileNotFoundError):  # the error is also a FileNotFoundError
        build_esc50(small_esc50)
    esc50 = build_esc50(small_esc50, on_missing="skip", verify_files=True)
    assert esc50["test"]["item_id"] == ["1-100038-A-14"]
    assert [s.reason[:7] for s in get_skipped_files(esc50)] == ["missing", "corrupt"]


def test_missing_column_and_malformed_csv(small_esc50):
    csv_path = small_esc50 / "meta/esc50.csv"
    csv_path.write_text("filename,fold,target,esc10\n1-100032-A-0.flac,1,0,True\n")
    with pytest.raises(ValueError, match=r"esc50\.csv' lacks column\(s\) \['category'\]"):
        build_esc50(small_esc50)
    csv_path.write_text(ESC50_HEADER + "1-100032-A-0.flac,1,0,dog,True,100032,A,extra\n")
    with pytest.raises(ValueError, match="line 2 has more fields than its header"):
        build_esc50(small_esc50)
    csv_path.write_text(ESC50_HEADER + "1-100032-A-0.flac,one,0,dog,True,100032,A\n")
    with pytest.raises(ValueError, match="line 2: 'fold' and 'target' must be integers"):
        build_esc50(small_esc50)
    csv_path.unlink()
    with pytest.raises(MissingDataFileError, match="esc50.csv' does not exist"):
        build_esc50(small_esc50)
    with pytest.raises(ValueError, match=r"view='pairs' is not supported; choose one of \['captions', 'items'\]"):
        build_esc50(small_esc50, view="pairs")


# ------------------------------------------------------------------------------------------------- Clotho


def test_clotho_real_evaluation_split(shared_data):
    clotho = build_clotho(shared_data / "clotho")
    assert list(clotho) == ["test"]
    test = clotho["test"]
    assert test.num_rows == 35 and test["caption_index"] == [0, 1, 2, 3, 4] * 7
    assert test["item_index"] == [i for i in range(7) for _ in range(5)]
    assert test[0]["item_id"] == "01 A pug struggles to breathe 1_14_2008"
    assert test[0]["caption"] == "A man walking who is blowing his nose hard and about to sneeze."
    assert test[9]["caption"] == "Five different sounding bells are ringing between short pauses."
    items = build_clotho(shared_data / "clotho", view="items", splits="evaluation")["test"]
    assert items.num_rows == 7 and all(len(captions) == 5 for captions in items["captions"])
    with pytest.raises(MissingDataFileError, match="clotho_captions_development.csv"):
        build_clotho(shared_data / "clotho", splits="train")


def test_clotho_development_layout_stand_in(tmp_path):
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    (tmp_path / "clotho_captions_development.csv").write_text(
        header + 'a.wav,a1,a2,a3,a4,"a5, with comma"\n' + "b.wav,b1,b2,b3,b4,b5\n"
    )
    (tmp_path / "clotho_captions_validation.csv").write_text(header + "c.wav,c1,c2,c3,c4,c5\n")
    for name, split in (("a.wav", "development"), ("b.wav", "development"), ("c.wav", "validation")):
        write_tone(tmp_path / f"clotho_audio_{split}" / name)
    clotho = build_clotho(tmp_path, view="items", verify_files=True)
    assert list(clotho) == ["train", "validation"]
    assert clotho["train"]["item_id"] == ["a", "b"] and clotho["train"][0]["captions"][4] == "a5, with comma"
    assert clotho["validation"][0]["audio"].endswith("clotho_audio_validation/c.wav")
    (tmp_path / "clotho_captions_validation.csv").write_text(header + "c.wav,c1,,c3,c4,c5\n")
    with pytest.raises(ValueError, match=r"line 2: empty field\(s\) \['caption_2'\]"):
        build_clotho(tmp_path, splits="val")


# ---------------------------------------------------------------------------------------------- AudioCaps


def test_audiocaps_real_test_split_groups_captions(shared_data):
    audiocaps = build_audiocaps(shared_data / "audiocaps")
    assert list(audiocaps) == ["test"]
    test = audiocaps["test"]
    assert test.num_rows == 30
    assert Counter(test["item_id"]) == {
        "0yETgW44MZU_20": 6,
        "31WGUPOYS5g_22": 5,
        "5K1mISHwggI_30": 5,
        "6BJ455B1aAs_0": 5,
        "6TO9PEGpZcQ_30": 5,
        "CeRoaEcqUgM_30": 4,
    }
    assert test[5]["caption"] == "A sudden horn blares as a train passes" and test[5]["caption_index"] == 5
    assert test[6]["item_index"] == 1 and test[6]["audio"].endswith("audio/31WGUPOYS5g_22.flac")
    items = build_audiocaps(shared_data / "audiocaps", view="items")["test"]
    assert items.num_rows == 6 and items[5]["captions"][0] == "A motor is revving and changing gears."


def test_audiocaps_missing_column_and_arguments(tmp_path):
    (tmp_path / "val.csv").write_text("audiocap_id,youtube_id,caption\n1,abc,a dog\n")
    with pytest.raises(ValueError, match=r"val\.csv' lacks column\(s\) \['start_time'\]"):
        build_audiocaps(tmp_path)
    with pytest.raises(ValueError, match="exactly one of data_dir"):
        build_audiocaps()


def write_audiocaps_parquet(root, shared_data, *, drop_bytes_of=None):
    """A parquet repo with AudioCaps' columns plus an audio {bytes, path} struct (one row per caption)."""
    rows = [
        ("0yETgW44MZU", 20, "a train horn"),
        ("31WGUPOYS5g", 22, "a siren"),
        ("0yETgW44MZU", 20, "horn blares"),
    ]
    audio = []
    for youtube_id, start, _ in rows:
        name = f"{youtube_id}_{start}.flac"
        data = None if youtube_id == drop_bytes_of else (shared_data / "audiocaps/audio" / name).read_bytes()
        audio.append({"bytes": data, "path": name})
    table = pa.table(
        {
            "audiocap_id": [1, 2, 3],
            "youtube_id": [r[0] for r in rows],
            "start_time": [r[1] for r in rows],
            "caption": [r[2] for r in rows],
            "audio": pa.array(audio, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        }
    )
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "test-00000-of-00001.parquet")
    return root


def test_audiocaps_from_parquet_repo(tmp_path, shared_data):
    repo = write_audiocaps_parquet(tmp_path / "repo", shared_data)
    audiocaps = build_audiocaps(hub_repo_id=str(repo), verify_files=True, cache_dir=str(tmp_path / "cache"))
    test = audiocaps["test"]
    assert test.column_names == ["item_id", "item_index", "audio", "caption", "caption_index"]
    assert test["item_id"] == ["0yETgW44MZU_20", "0yETgW44MZU_20", "31WGUPOYS5g_22"]
    assert test["caption"] == ["a train horn", "horn blares", "a siren"] and test["item_index"] == [0, 0, 1]
    audio = test[2]["audio"]
    assert audio["bytes"] == (shared_data / "audiocaps/audio/31WGUPOYS5g_22.flac").read_bytes()
    assert audio["path"] == "31WGUPOYS5g_22.flac"


def test_audiocaps_parquet_missing_bytes_skip(tmp_path, shared_data):
    repo = write_audiocaps_parquet(tmp_path / "repo", shared_data, drop_bytes_of="31WGUPOYS5g")
    kwargs = {"hub_repo_id": str(repo), "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(MissingDataFileError, match="split 'test' row 1 has no audio bytes"):
        build_audiocaps(**kwargs)
    audiocaps = build_audiocaps(on_missing="skip", view="items", **kwargs)
    assert audiocaps["test"]["item_id"] == ["0yETgW44MZU_20"]
    assert [s.source for s in get_skipped_files(audiocaps)] == [f"AudioCaps repo {repo} split 'test' row 1"]


# -------------------------------------------------------------------------------------- labelled folders


def test_urbansound8k_and_tau_counts(shared_data):
    urban = build_urbansound8k(shared_data / "urbansound8k")["train"]
    assert urban.num_rows == 104 and len(set(urban["label"])) == 9
    assert Counter(urban["label"])["street music"] == 9
    assert dict(zip(urban["label"], urban["label_id"], strict=True))["car horn"] == 0  # sorted label order
    assert urban[0]["caption"] == "the sound of dog bark" and urban[0]["item_id"] == "101415-3-0-2"
    tau = build_tau22_scenes(
        shared_data / "tau22_scenes", split_fractions={"train": 0.8, "test": 0.2}, seed=1
    )
    assert tau["train"].num_rows == 160 and tau["test"].num_rows == 40
    assert len(set(tau["train"]["label"]) | set(tau["test"]["label"])) == 10
    assert not set(tau["train"]["item_id"]) & set(tau["test"]["item_id"])
    again = build_tau22_scenes(
        shared_data / "tau22_scenes", split_fractions={"train": 0.8, "test": 0.2}, seed=1
    )
    other = build_tau22_scenes(
        shared_data / "tau22_scenes", split_fractions={"train": 0.8, "test": 0.2}, seed=2
    )
    assert again["test"]["item_id"] == tau["test"]["item_id"] != other["test"]["item_id"]
    with pytest.raises(ValueError, match="must sum to 1"):
        build_tau22_scenes(shared_data / "tau22_scenes", split_fractions={"train": 0.5, "test": 0.2})


def test_bigsoundbank_titles_as_captions(shared_data):
    sounds = build_bigsoundbank(shared_data / "bigsoundbank_cc0", caption_column="title", splits="train")
    assert sounds["train"].num_rows == 10 and sounds["train"][0]["caption"] == "Meow cat 1"
    assert sounds["train"]["label_id"] == list(range(10))


def test_audio_folder_split_column(tmp_path):
    for name in ("x.wav", "y.wav", "z.wav"):
        write_tone(tmp_path / "audio" / name)
    (tmp_path / "metadata.csv").write_text(
        "file_name,label,split\nx.wav,dog_bark,train\ny.wav,rain,val\nz.wav,dog_bark,test\n"
    )
    folder = build_audio_folder(tmp_path, split_column="split", caption_template="a {label} sound")
    assert list(folder) == ["train", "validation", "test"]
    assert folder["validation"][0]["caption"] == "a rain sound" and folder["validation"][0]["label_id"] == 1
    assert folder["test"][0]["item_index"] == 0
    (tmp_path / "metadata.csv").write_text("file_name,label,split\nx.wav,dog_bark,holdout\n")
    with pytest.raises(ValueError, match="line 2: split column 'split' has 'holdout'"):
        build_audio_folder(tmp_path, split_column="split")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['category'\]"):
        build_audio_folder(tmp_path, label_column="category")
