"""Grid-fragment extraction on real Flickr8k photographs: values, on-disk layout, resume, and bad input."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hf_mltm.data.grid_features import (
    EfficientNetLite0GridEncoder,
    extract_grid_features,
    find_images,
    grid_features_features,
    load_grid_features,
)
from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_ITEMS = 8
# Flickr8k images among the first 12 of the Karpathy JSON whose captions are about a dog
DOG_IMAGES = [
    "1001773457_577c3a7d70.jpg",
    "1003163366_44323f5815.jpg",
    "1009434119_febe49276a.jpg",
    "1012212859_01547e3f17.jpg",
    "1015584366_dfcec3c85a.jpg",
    "101654506_8eb26cfb60.jpg",
]
IMAGENET_DOGS = range(151, 269)  # ImageNet-1k classes 151 (Chihuahua) .. 268 (Mexican hairless)


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder, counts calls and images, and raises on call number ``fail_on_call``."""

    def __init__(self, encoder, fail_on_call: int | None = None):
        super().__init__()
        self.encoder, self.fail_on_call = encoder, fail_on_call
        self.calls, self.images = 0, 0

    def forward(self, pixel_values):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("injected interruption")
        self.images += pixel_values.shape[0]
        return self.encoder(pixel_values)


@pytest.fixture(scope="module")
def flickr(shared_data):
    folder = shared_data / "flickr8k_1k"
    return folder / "Images", folder / "dataset_flickr8k_1k.json"


@pytest.fixture(scope="module")
def items(flickr):
    return find_images(*flickr, limit=NUM_ITEMS)


@pytest.fixture(scope="module")
def encoder():
    return EfficientNetLite0GridEncoder()


@pytest.fixture(scope="module")
def reference(items, encoder, tmp_path_factory):
    """An uninterrupted run: 8 images, batches of 2, shards of 4 (one thread, as the tests: float32 convolutions
    round differently with another thread count)."""
    output_dir = tmp_path_factory.mktemp("grid_reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset = extract_grid_features(
            *items, output_dir, encoder=encoder, batch_size=2, shard_size=4, progress=False
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
    with pytest.raises(ValueError, match="expected a JSON object with an 'images' list"):
        find_images(image_dir, listing)
    listing.write_text(json.dumps({"images": [{"file": "x.jpg"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] has no string field 'filename'"):
        find_images(image_dir, listing)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        find_images(image_dir, limit=0)


def test_encoder_gives_row_major_grid_of_extract_features(items, encoder):
    paths, _ = items
    pixel_values = OMITImageProcessor.for_efficientnet_lite()(
        [Image.open(path) for path in paths[:2]], return_tensors="pt"
    )["pixel_values"]
    with torch.inference_mode():
        fragments = encoder(pixel_values)
        feature_map = encoder.backbone.extract_features(pixel_values)
    assert fragments.shape == (2, 49, 1280) and feature_map.shape == (2, 1280, 7, 7)
    for row, column in [(0, 0), (0, 6), (3, 2), (6, 6)]:
        torch.testing.assert_close(
            fragments[:, 7 * row + column], feature_map[:, :, row, column], rtol=0, atol=0
        )
    assert fragments.min() >= 0 and fragments.max() <= 6  # ReLU6 head
    assert not encoder.training
    with pytest.raises(
        ValueError, match=r"expects pixel_values of shape \(B, 3, 224, 224\), got \(1, 3, 200, 200\)"
    ):
        encoder(torch.zeros(1, 3, 200, 200))


def test_encoder_with_the_preset_recognises_dogs(flickr, encoder):
    """The packaged weights and the (x*255-127)/128 preset together: real dog photos get ImageNet dog classes."""
    image_dir, _ = flickr
    pixel_values = OMITImageProcessor.for_efficientnet_lite()(
        [Image.open(image_dir / name) for name in DOG_IMAGES], return_tensors="pt"
    )["pixel_values"]
    with torch.inference_mode():
        logits = encoder.backbone(pixel_values)  # (6, 1000): the classifier head on the same features
    assert all(label in IMAGENET_DOGS for label in logits.argmax(dim=1).tolist())


def test_fragments_equal_the_encoder_run_directly(items, encoder, reference):
    paths, item_ids = items
    _, dataset = reference
    assert dataset.features == grid_features_features(49, 1280, "float16")
    assert dataset["item_id"][:] == item_ids
    pixel_values = OMITImageProcessor.for_efficientnet_lite()(
        [Image.open(path) for path in paths], return_tensors="pt"
    )["pixel_values"]
    with torch.inference_mode():  # the batches of the reference run, for bitwise-equal float32 results
        direct = torch.cat([encoder(pixel_values[start : start + 2]) for start in range(0, NUM_ITEMS, 2)])
    stored = torch.from_numpy(np.stack(dataset.with_format("numpy")["fragments"][:]))
    assert stored.shape == (NUM_ITEMS, 49, 1280)
    # float16 storage: relative rounding error <= 2**-11 (2**-24 absolute in the subnormal range)
    torch.testing.assert_close(stored, direct, rtol=2**-11, atol=2**-24)
    torch.testing.assert_close(stored, direct.half().float(), rtol=0, atol=0)


def test_shards_on_disk(items, reference):
    _, item_ids = items
    output_dir, _ = reference
    assert sorted(path.name for path in output_dir.iterdir()) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]
    for number in range(2):
        table = pq.read_table(output_dir / f"shard-0000{number}.parquet")
        assert table.column_names == ["item_id", "fragments"]
        assert table.column("item_id").to_pylist() == item_ids[4 * number : 4 * number + 4]
        storage = table.schema.field("fragments").type.storage_type  # Array2D: list of 49 lists of 1280
        assert storage.value_type.value_type == pa.float16()
    loaded = load_grid_features(output_dir)
    assert len(loaded) == NUM_ITEMS and loaded["item_id"][:] == item_ids


def test_resume_recomputes_only_the_missing_shard(items, encoder, reference, tmp_path, capsys):
    _, item_ids = items
    _, expected = reference
    interrupted = CountingEncoder(encoder, fail_on_call=3)  # the first shard (2 batches of 2) is written
    with pytest.raises(RuntimeError, match="injected interruption"):
        extract_grid_features(
            *items, tmp_path, encoder=interrupted, batch_size=2, shard_size=4, progress=False
        )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shard-00000.parquet"]
    assert load_grid_features(tmp_path)["item_id"][:] == item_ids[:4]
    (tmp_path / ".shard-00001.parquet.tmp").write_bytes(b"half a shard from a killed process")

    resumed = CountingEncoder(encoder)
    dataset = extract_grid_features(*items, tmp_path, encoder=resumed, batch_size=2, shard_size=4)
    assert (resumed.calls, resumed.images) == (2, 4)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert pq.read_table(tmp_path / "shard-00001.parquet").column("item_id").to_pylist() == item_ids[4:]
    progress = capsys.readouterr().err  # the bar starts at the 4 finished items
    assert "Extracting grid fragments:  50%" in progress and "8/8" in progress
    assert dataset["item_id"][:] == expected["item_id"][:]
    assert dataset.features == expected.features
    np.testing.assert_array_equal(
        np.stack(dataset.with_format("numpy")["fragments"][:]),
        np.stack(expected.with_format("numpy")["fragments"][:]),
    )

    again = CountingEncoder(encoder)
    extract_grid_features(*items, tmp_path, encoder=again, batch_size=2, shard_size=4, progress=False)
    assert again.calls == 0


def test_more_items_reuse_the_finished_ones_and_keep_the_requested_order(
    flickr, encoder, reference, tmp_path
):
    output_dir, expected = reference
    work_dir = tmp_path / "grid"
    shutil.copytree(output_dir, work_dir)
    paths, item_ids = find_images(*flickr, limit=NUM_ITEMS + 2)
    counting = CountingEncoder(encoder)
    order = [9, 0, 8, 1, 2, 3, 4, 5, 6, 7]
    dataset = extract_grid_features(
        [paths[index] for index in order],
        [item_ids[index] for index in order],
        work_dir,
        encoder=counting,
        batch_size=4,
        progress=False,
    )
    assert (counting.calls, counting.images) == (1, 2)
    assert dataset["item_id"][:] == [item_ids[index] for index in order]
    assert pq.read_table(work_dir / "shard-00002.parquet").column("item_id").to_pylist() == [
        item_ids[9],
        item_ids[8],
    ]
    np.testing.assert_array_equal(
        dataset.with_format("numpy")[1]["fragments"], expected.with_format("numpy")[0]["fragments"]
    )
    subset = extract_grid_features(paths[2:4], item_ids[2:4], work_dir, encoder=counting, progress=False)
    assert subset["item_id"][:] == item_ids[2:4] and counting.calls == 1
    assert len(load_grid_features(work_dir)) == NUM_ITEMS + 2


def test_extraction_input_errors(items, encoder, tmp_path):
    paths, item_ids = items
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image file .*broken\.jpg"):
        extract_grid_features(
            [paths[0], broken], ["a", "b"], tmp_path / "out", encoder=encoder, progress=False
        )
    with pytest.raises(ValueError, match=r"1 image file\(s\) do not exist, e\.g\. \['.*missing\.jpg'\]"):
        extract_grid_features(
            [paths[0], tmp_path / "missing.jpg"], ["a", "b"], tmp_path / "out", encoder=encoder
        )
    with pytest.raises(ValueError, match=r"item_ids\[0\] and item_ids\[2\] are both 'a'"):
        extract_grid_features(paths[:3], ["a", "b", "a"], tmp_path / "out", encoder=encoder)
    with pytest.raises(ValueError, match="got 3 image_paths but 2 item_ids"):
        extract_grid_features(paths[:3], item_ids[:2], tmp_path / "out", encoder=encoder)
    with pytest.raises(ValueError, match="dtype must be one of"):
        extract_grid_features(paths[:1], item_ids[:1], tmp_path / "out", encoder=encoder, dtype="bfloat16")
    with pytest.raises(ValueError, match="shard_size must be a positive integer"):
        extract_grid_features(paths[:1], item_ids[:1], tmp_path / "out", encoder=encoder, shard_size=0)
    with pytest.raises(
        ValueError, match=r"the encoder must return fragments of shape \(B=1, R, D\), got \(1, 1280\)"
    ):
        extract_grid_features(
            paths[:1], item_ids[:1], tmp_path / "out", encoder=lambda x: encoder(x).mean(1), progress=False
        )


def test_resume_refuses_another_dtype_or_shape(items, reference, tmp_path):
    output_dir, _ = reference
    paths, item_ids = find_images(items[0][0].parent, limit=NUM_ITEMS + 1)  # sorted names: one item is new
    work_dir = tmp_path / "grid"
    shutil.copytree(output_dir, work_dir)
    with pytest.raises(ValueError, match=r"stores fragments as float16, not dtype='float32'"):
        extract_grid_features(paths, item_ids, work_dir, dtype="float32", encoder=lambda x: None)
    with pytest.raises(ValueError, match=r"holds fragments \(49, 1280\), the encoder gives \(4, 8\)"):
        extract_grid_features(
            paths, item_ids, work_dir, encoder=lambda x: torch.ones(x.shape[0], 4, 8), progress=False
        )


def _write(path, item_ids, fragments, dtype="float16"):
    features = grid_features_features(fragments.shape[1], fragments.shape[2], dtype)
    datasets.Dataset.from_dict({"item_id": item_ids, "fragments": fragments}, features=features).to_parquet(
        str(path)
    )


def test_load_errors(reference, tmp_path):
    output_dir, _ = reference
    with pytest.raises(ValueError, match="does not exist"):
        load_grid_features(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"holds no shard-\*\.parquet file"):
        load_grid_features(tmp_path)

    duplicated = tmp_path / "duplicated"
    shutil.copytree(output_dir, duplicated)
    shutil.copy(duplicated / "shard-00000.parquet", duplicated / "shard-00002.parquet")
    with pytest.raises(
        ValueError,
        match=r"item_id '1000268201_693b08cb0e.jpg' is in both .*shard-00000.parquet and .*shard-00002.parquet",
    ):
        load_grid_features(duplicated)

    wrong_columns = tmp_path / "wrong_columns"
    wrong_columns.mkdir()
    pq.write_table(
        pa.table({"item_id": ["a"], "embedding": [[0.5, 0.25]]}), wrong_columns / "shard-00000.parquet"
    )
    with pytest.raises(
        ValueError,
        match=r"shard-00000.parquet has columns .*expected exactly item_id \(string\) and fragments",
    ):
        load_grid_features(wrong_columns)

    wrong_shape = tmp_path / "wrong_shape"
    shutil.copytree(output_dir, wrong_shape)
    _write(wrong_shape / "shard-00002.parquet", ["x"], np.zeros((1, 4, 8), np.float16))
    with pytest.raises(
        ValueError,
        match=r"shard-00002.parquet has fragments \(4, 8\) float16, but .*shard-00000.parquet has \(49, 1280\)",
    ):
        load_grid_features(wrong_shape)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "shard-00000.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(ValueError, match=r"cannot read grid-feature shard .*shard-00000.parquet"):
        load_grid_features(corrupt)
