from __future__ import annotations

import pytest
from datasets import Dataset

from hf_mltm.data import (
    build_clotho,
    build_esc50,
    build_flickr8k,
    captions_to_items,
    inject_noisy_correspondence,
    items_to_captions,
)


@pytest.fixture(scope="module")
def flickr_train(shared_data):
    return build_flickr8k(shared_data / "flickr8k_1k", splits="train")["train"]


def test_view_round_trips(shared_data):
    items = build_clotho(shared_data / "clotho", view="items")["test"]
    captions = items_to_captions(items)
    assert (
        captions.num_rows == 35
        and captions.to_dict() == build_clotho(shared_data / "clotho")["test"].to_dict()
    )
    back = captions_to_items(captions)
    assert back.column_names == items.column_names and back.to_dict() == items.to_dict()
    esc = build_esc50(shared_data / "esc50", esc10_only=True)["test"]
    assert items_to_captions(captions_to_items(esc)).to_dict() == esc.to_dict()


def test_captions_to_items_orders_by_caption_index():
    shuffled = Dataset.from_dict(
        {
            "item_id": ["b", "a", "b", "a", "a"],
            "item_index": [1, 0, 1, 0, 0],
            "caption": ["b1", "a2", "b0", "a0", "a1"],
            "caption_index": [1, 2, 0, 0, 1],
        }
    )
    items = captions_to_items(shuffled)
    assert items.to_dict() == {
        "item_id": ["b", "a"],
        "item_index": [1, 0],
        "captions": [["b0", "b1"], ["a0", "a1", "a2"]],
    }
    with pytest.raises(ValueError, match="needs the captions view"):
        captions_to_items(items)
    with pytest.raises(ValueError, match="needs the items view"):
        items_to_captions(shuffled)


def test_noise_rate_is_exact_and_swaps_to_other_items(flickr_train):
    noisy = inject_noisy_correspondence(flickr_train, noise_rate=0.2, seed=0)
    assert noisy.num_rows == 4000 and sum(noisy["is_noisy"]) == 800
    assert noisy.column_names == [*flickr_train.column_names, "is_noisy", "original_caption"]
    assert noisy["original_caption"] == flickr_train["caption"]
    own = {}
    for item, caption in zip(flickr_train["item_id"], flickr_train["caption"], strict=True):
        own.setdefault(item, set()).add(caption)
    all_captions = set(flickr_train["caption"])
    for row in noisy:
        if row["is_noisy"]:
            assert row["caption"] not in own[row["item_id"]] and row["caption"] in all_captions
        else:
            assert row["caption"] == row["original_caption"]
    assert noisy["item_id"] == flickr_train["item_id"]  # images and their order are untouched


def test_noise_is_seeded(flickr_train):
    subset = flickr_train.select(range(500))
    first = inject_noisy_correspondence(subset, 0.3, seed=7)
    again = inject_noisy_correspondence(subset, 0.3, seed=7)
    other = inject_noisy_correspondence(subset, 0.3, seed=8)
    assert first["is_noisy"] == again["is_noisy"] and first["caption"] == again["caption"]
    assert first["is_noisy"] != other["is_noisy"]
    assert sum(first["is_noisy"]) == sum(other["is_noisy"]) == 150
    assert sum(inject_noisy_correspondence(subset, 0.0, seed=1)["is_noisy"]) == 0
    assert sum(inject_noisy_correspondence(subset.select(range(35)), 0.3, seed=1)["is_noisy"]) == round(
        0.3 * 35
    )


def test_noise_with_template_captions_changes_the_class(shared_data):
    esc = build_esc50(shared_data / "esc50")["test"]
    noisy = inject_noisy_correspondence(esc, 0.5, seed=0)
    flipped = [row for row in noisy if row["is_noisy"]]
    assert len(flipped) == 199
    assert all(row["caption"] != f"the sound of {row['label']}" for row in flipped)


def test_noise_errors(flickr_train):
    for rate in (-0.1, 1.0, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="noise_rate must be a number in \\[0, 1\\)"):
            inject_noisy_correspondence(flickr_train, rate, seed=0)
    for seed in (-1, 1.5, None):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            inject_noisy_correspondence(flickr_train, 0.1, seed=seed)
    with pytest.raises(ValueError, match="needs the captions view"):
        inject_noisy_correspondence(captions_to_items(flickr_train.select(range(10))), 0.1, seed=0)
    noisy = inject_noisy_correspondence(flickr_train.select(range(10)), 0.1, seed=0)
    with pytest.raises(ValueError, match="noise was injected before"):
        inject_noisy_correspondence(noisy, 0.1, seed=0)
    one_item = Dataset.from_dict({"item_id": ["a", "a"], "caption": ["x", "y"]})
    with pytest.raises(ValueError, match="Row \\d cannot be made noisy"):
        inject_noisy_correspondence(one_item, 0.5, seed=0)
