"""Multi-process embedding through the feature cache: shards by rank, resume after an interruption."""

import pytest
import torch

from hf_mltm.index import GalleryIndex, fill_item_cache, fill_text_cache, shard_positions

from .conftest import tiny_model, tiny_processor

pytestmark = pytest.mark.usefixtures("one_thread")


def count_clips(model):
    """Clips through the audio tower, counted by a forward hook; ``fail_after`` makes the next batch raise."""
    state = {"clips": 0, "fail_after": None}

    def hook(module, args, kwargs, output):
        if state["fail_after"] is not None and state["clips"] >= state["fail_after"]:
            raise KeyboardInterrupt("simulated kill")
        state["clips"] += len(output[0])

    model.audio_model.register_forward_hook(hook, with_kwargs=True)
    return state


def test_shard_positions_split_every_position_once():
    assert shard_positions(7, 0, 3) == [0, 3, 6]
    assert shard_positions(7, 2, 3) == [2, 5]
    assert sorted(shard_positions(10, 0, 2) + shard_positions(10, 1, 2)) == list(range(10))
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        shard_positions(5, 2, 2)


def test_interrupted_embedding_resumes_and_recomputes_nothing_finished(tokenizer, esc50_items, tmp_path):
    items = esc50_items.select(range(12))
    model, processor = tiny_model(tokenizer), tiny_processor(tokenizer)
    state = count_clips(model)
    state["fail_after"] = 8  # killed during the third batch of 4
    with pytest.raises(KeyboardInterrupt):
        fill_item_cache(model, processor, items, tmp_path, batch_size=4, progress=False)
    assert state["clips"] == 8
    state["fail_after"] = None
    assert fill_item_cache(model, processor, items, tmp_path, batch_size=4, progress=False) == 4
    assert state["clips"] == 12  # only the 4 clips the first run had not finished
    assert fill_item_cache(model, processor, items, tmp_path, batch_size=4, progress=False) == 0
    assert state["clips"] == 12
    index = GalleryIndex.from_model(model, processor, items, cache_dir=tmp_path, progress=False)
    assert state["clips"] == 12  # the index reads every clip from the cache
    direct = GalleryIndex.from_model(model, processor, items, progress=False)
    torch.testing.assert_close(torch.tensor(index.items["embeddings"]), torch.tensor(direct.items["embeddings"]))


def test_two_ranks_fill_disjoint_halves_under_their_own_writer(tokenizer, esc50_items, tmp_path):
    items = esc50_items.select(range(10))
    model, processor = tiny_model(tokenizer), tiny_processor(tokenizer)
    state = count_clips(model)
    assert fill_item_cache(model, processor, items, tmp_path, rank=1, world_size=2, progress=False) == 5
    assert fill_item_cache(model, processor, items, tmp_path, rank=0, world_size=2, progress=False) == 5
    assert state["clips"] == 10
    writers = sorted(path.name.split("-")[1] for path in tmp_path.glob("audio-*/shard-*.safetensors"))
    assert writers == ["0", "1"]
    assert fill_item_cache(model, processor, items, tmp_path, progress=False) == 0  # one process: all cached
    captions = [caption for row in items["captions"] for caption in row]
    computed = [fill_text_cache(model, processor, captions, tmp_path, rank=rank, world_size=2, progress=False)
                for rank in (0, 1)]
    assert sum(computed) == len(set(captions))
    with pytest.raises(ValueError, match="texts must be a list of strings"):
        fill_text_cache(model, processor, "a dog", tmp_path)
