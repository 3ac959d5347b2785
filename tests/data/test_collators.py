from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, List, Value
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, CLIPImageProcessorPil

from hf_mltm.audio import crop_waveform, load_audio
from hf_mltm.data import (
    AudioTextCollator,
    ImageTextCollator,
    UniqueItemBatchSampler,
    build_clotho,
    build_esc50,
    build_flickr8k,
)
from hf_mltm.models.mltm import MLTMFeatureExtractor, MLTMProcessor


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture(scope="module")
def processor(tokenizer):
    return MLTMProcessor(MLTMFeatureExtractor(max_length_s=1.0), tokenizer)


@pytest.fixture(scope="module")
def flickr(shared_data):
    return build_flickr8k(shared_data / "flickr8k_1k", splits=["train", "test"])


def test_audio_collator_batch_with_a_repeated_item(shared_data, processor, one_thread):
    clotho = build_clotho(shared_data / "clotho")["test"]
    rows = [clotho[0], clotho[3], clotho[5]]  # two captions of clip 0, one of clip 1
    batch = AudioTextCollator(processor, max_length_s=1.0)(rows)
    assert set(batch) == {
        "input_features",
        "audio_attention_mask",
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "item_ids",
    }
    assert batch["item_ids"].tolist() == [0, 0, 1] and batch["item_ids"].dtype == torch.long
    assert batch["input_features"].shape == (3, 101, 64) and batch["input_features"].dtype == torch.float32
    assert batch["audio_attention_mask"].sum(dim=1).tolist() == [101, 101, 101]
    torch.testing.assert_close(batch["input_features"][0], batch["input_features"][1], rtol=0, atol=0)
    tokens = processor.tokenizer([row["caption"] for row in rows], padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], tokens["input_ids"])
    # the collator decodes at the extractor's 32 kHz and keeps the first second of the clip
    waveform, _ = load_audio(rows[2]["audio"], 32000)
    expected = processor.feature_extractor(waveform[:32000], sampling_rate=32000, return_tensors="pt")
    torch.testing.assert_close(batch["input_features"][2], expected["input_features"][0])


def test_audio_collator_random_crop_is_seeded_and_bytes_match_paths(shared_data, processor, one_thread):
    esc = build_esc50(shared_data / "esc50", esc10_only=True)["test"]
    rows = [esc[0], esc[8]]

    def features(collator, batch_rows):
        return collator(batch_rows)["input_features"]

    seeded = features(AudioTextCollator(processor, max_length_s=1.0, random_crop=True, seed=3), rows)
    again = features(AudioTextCollator(processor, max_length_s=1.0, random_crop=True, seed=3), rows)
    start = features(AudioTextCollator(processor, max_length_s=1.0), rows)
    torch.testing.assert_close(seeded, again, rtol=0, atol=0)
    assert (seeded - start).abs().max() > 1.0
    with open(rows[0]["audio"], "rb") as handle:
        data = handle.read()
    as_bytes = [{**rows[0], "audio": {"bytes": data, "path": None}}]
    torch.testing.assert_close(features(AudioTextCollator(processor), as_bytes), start[:1], rtol=0, atol=0)
    audio_only = AudioTextCollator(processor)([{"audio": rows[0]["audio"], "item_index": 4}])
    assert set(audio_only) == {"input_features", "audio_attention_mask", "item_ids"}
    assert audio_only["item_ids"].tolist() == [4]


def test_image_collator_pixel_values(flickr, tokenizer):
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    collator = ImageTextCollator(tokenizer, image_processor=image_processor, text_max_length=8)
    train = flickr["train"]
    batch = collator([train[0], train[1], train[5]])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][1], rtol=0, atol=0)
    assert batch["input_ids"].shape == (3, 8) and batch["item_ids"].tolist() == [0, 0, 1]


def test_image_collator_fragments_padding_and_missing_item(flickr, tokenizer):
    train = flickr["train"]
    ids = [train[0]["item_id"], train[5]["item_id"]]
    rng = np.random.default_rng(0)
    grids = [rng.standard_normal((4, 6)).astype(np.float16), rng.standard_normal((3, 6)).astype(np.float16)]
    fragments = Dataset.from_dict(
        {"item_id": ids, "fragments": [grid.tolist() for grid in grids]},
        features=None,
    ).cast_column("fragments", List(List(Value("float16"))))
    collator = ImageTextCollator(tokenizer, fragments=fragments)
    batch = collator([train[0], train[5], train[1]])
    assert set(batch) == {
        "image_fragments",
        "image_fragment_mask",
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "item_ids",
    }
    assert batch["image_fragments"].shape == (3, 4, 6) and batch["image_fragments"].dtype == torch.float32
    assert batch["image_fragment_mask"].tolist() == [[True] * 4, [True, True, True, False], [True] * 4]
    assert torch.equal(batch["image_fragments"][1, :3], torch.from_numpy(grids[1].astype(np.float32)))
    assert batch["image_fragments"][1, 3].abs().sum() == 0 and batch["item_ids"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match=r"No grid fragments for item_id '.*' \(batch row 1\) among the 2"):
        collator([train[0], flickr["test"][0]])
    with pytest.raises(ValueError, match="exactly one of image_processor and fragments"):
        ImageTextCollator(tokenizer)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['fragments'\]"):
        ImageTextCollator(tokenizer, fragments=fragments.remove_columns("fragments"))


def test_unique_item_batch_sampler_on_flickr(flickr):
    item_ids = flickr["train"]["item_index"]  # 800 images x 5 captions
    sampler = UniqueItemBatchSampler(item_ids, batch_size=32, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 125 and {len(b) for b in batches} == {32}
    assert sorted(row for batch in batches for row in batch) == list(range(4000))
    assert all(len({item_ids[row] for row in batch}) == 32 for batch in batches)
    assert list(sampler) == batches  # same epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    loader = DataLoader(flickr["train"], batch_sampler=sampler, collate_fn=list)
    first = next(iter(loader))
    assert [row["item_index"] for row in first] == [item_ids[row] for row in batches[0]]


def test_unique_item_batch_sampler_partial_batches_and_impossible_cases():
    item_ids = [0, 0, 0, 1, 1, 2, 3, 4, 5, 6]
    sampler = UniqueItemBatchSampler(item_ids, batch_size=4, seed=1)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 2] and sorted(sum(batches, [])) == list(range(10))
    assert all(len({item_ids[row] for row in batch}) == len(batch) for batch in batches)
    dropped = list(UniqueItemBatchSampler(item_ids, batch_size=4, seed=1, drop_last=True))
    assert [len(b) for b in dropped] == [4, 4] and len(set(sum(dropped, []))) == 8
    crowded = list(UniqueItemBatchSampler([0] * 6 + [1, 2], batch_size=4, seed=0))  # repeats are unavoidable
    assert sorted(sum(crowded, [])) == list(range(8))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        UniqueItemBatchSampler(item_ids, batch_size=0)


# ----------------------------------------------------------------------------------------------------
# One input path: the collators decode and crop through hf_mltm.audio / hf_mltm.image
# ----------------------------------------------------------------------------------------------------


def test_audio_collator_random_crop_is_crop_waveform_with_the_seeded_generator(shared_data, processor, one_thread):
    row = build_esc50(shared_data / "esc50", esc10_only=True)["test"][0]
    batch = AudioTextCollator(processor, max_length_s=0.5, random_crop=True, seed=11)([row, row])
    generator = torch.Generator().manual_seed(11)
    waveform, _ = load_audio(row["audio"], 32000)
    crops = [crop_waveform(waveform, 16000, random=True, generator=generator) for _ in range(2)]
    assert not np.array_equal(crops[0], crops[1])
    expected = processor.feature_extractor(crops, sampling_rate=32000, return_tensors="pt")["input_features"]
    torch.testing.assert_close(batch["input_features"], expected, rtol=0, atol=0)


def test_audio_collator_errors_name_the_batch_row(tmp_path, processor):
    rows = [
        {"audio": {"array": np.zeros(800, dtype=np.float32), "sampling_rate": 8000}, "item_id": "a", "item_index": 0},
        {"audio": str(tmp_path / "gone.flac"), "item_id": "b", "item_index": 1},
    ]
    with pytest.raises(ValueError, match=r"Cannot read audio file '.*gone\.flac' \(batch row 1 \(item_id 'b'\)\)"):
        AudioTextCollator(processor)(rows)
    rows[1]["audio"] = {"array": np.zeros(800), "sampling_rate": float("nan")}
    with pytest.raises(ValueError, match=r"'sampling_rate' of the audio value \(batch row 1 \(item_id 'b'\)\)"):
        AudioTextCollator(processor)(rows)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampling_rate": float("nan")}, "sampling_rate must be a whole number of Hz"),
        ({"sampling_rate": "16000"}, "sampling_rate must be a whole number of Hz"),
        ({"sampling_rate": 0}, "sampling_rate must be a whole number of Hz"),
        ({"max_length_s": float("nan")}, "max_length_s must be a positive, finite number of seconds"),
        ({"max_length_s": float("inf")}, "max_length_s must be a positive, finite number of seconds"),
        ({"max_length_s": 1e-9}, r"max_length_s=1e-09 s is shorter than one sample at 32000 Hz"),
    ],
)
def test_audio_collator_rejects_bad_settings(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        AudioTextCollator(processor, **kwargs)


@pytest.mark.parametrize("caption", [None, 5, ["a", "list"]])
def test_caption_that_is_not_a_string_raises_naming_the_row(flickr, tokenizer, processor, caption):
    rows = [dict(flickr["train"][0]), dict(flickr["train"][5])]
    rows[1]["caption"] = caption
    item_id = rows[1]["item_id"]
    message = rf"The caption of batch row 1 \(item_id '{item_id}'\) is .* of type {type(caption).__name__}"
    image_collator = ImageTextCollator(tokenizer, fragments={row["item_id"]: np.zeros((2, 4)) for row in rows})
    with pytest.raises(ValueError, match=message):
        image_collator(rows)
    text_rows = [{"caption": row["caption"], "item_id": row["item_id"], "item_index": 0} for row in rows]
    with pytest.raises(ValueError, match=message):
        AudioTextCollator(processor)(text_rows)


def test_image_collator_reads_bytes_dicts_and_names_unreadable_rows(flickr, tokenizer, tmp_path):
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    collator = ImageTextCollator(tokenizer, image_processor=image_processor)
    row = dict(flickr["train"][0])
    with open(row["image"], "rb") as handle:
        data = handle.read()
    from_path = collator([row])["pixel_values"]
    # the bytes of an undecoded datasets.Image value used to be ignored in favour of its (here missing) path
    from_bytes = collator([{**row, "image": {"bytes": data, "path": "not/on/this/machine.jpg"}}])["pixel_values"]
    torch.testing.assert_close(from_bytes, from_path, rtol=0, atol=0)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(data[:100])
    with pytest.raises(ValueError, match=r"image '.*broken\.jpg' \(batch row 1 \(item_id '.*'\)\)"):
        collator([row, {**row, "image": str(broken)}])
