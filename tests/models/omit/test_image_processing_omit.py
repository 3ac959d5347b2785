"""`OMITImageProcessor` against a hand computation with PIL and numpy on real Flickr8k photographs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# (file, (width, height) on disk, resized (width, height) for shortest edge 224, crop offset (top, left))
PORTRAIT = ("1000268201_693b08cb0e.jpg", (150, 200), (224, 298), (37, 0))  # 200 * 224 / 150 = 298.67
LANDSCAPE = ("1001773457_577c3a7d70.jpg", (200, 150), (298, 224), (0, 37))


@pytest.fixture(scope="module")
def images(shared_data) -> dict[str, Image.Image]:
    folder = shared_data / "flickr8k_1k" / "Images"
    return {name: Image.open(folder / name).convert("RGB") for name in (PORTRAIT[0], LANDSCAPE[0])}


def hand_crop(image: Image.Image, case, resample=Image.Resampling.BICUBIC) -> np.ndarray:
    """Resize to the hand-computed size, crop 224 x 224 at the hand-computed offset: uint8 ``(224, 224, 3)``."""
    name, disk_size, resized_size, (top, left) = case
    assert image.size == disk_size
    resized = np.asarray(image.resize(resized_size, resample=resample))
    return resized[top : top + 224, left : left + 224]


@pytest.mark.parametrize("case", [PORTRAIT, LANDSCAPE], ids=["portrait", "landscape"])
def test_default_pipeline_equals_hand_computation(images, case):
    crop = hand_crop(images[case[0]], case)
    expected = ((crop.astype(np.float64) / 255.0).astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    pixel_values = OMITImageProcessor()(images[case[0]], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224) and pixel_values.dtype == torch.float32
    np.testing.assert_allclose(pixel_values[0].numpy(), expected.transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_efficientnet_lite_preset_is_x255_minus_127_over_128(images):
    processor = OMITImageProcessor.for_efficientnet_lite()
    batch = processor([images[PORTRAIT[0]], images[LANDSCAPE[0]]], return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.float32
    for row, case in enumerate((PORTRAIT, LANDSCAPE)):
        x = hand_crop(images[case[0]], case).astype(np.float64) / 255.0  # in [0, 1]
        expected = (x * 255.0 - 127.0) / 128.0
        np.testing.assert_allclose(batch[row].numpy(), expected.transpose(2, 0, 1), rtol=0, atol=1e-6)
    # uint8 0 -> -127/128, 255 -> 1: the whole range of the preset
    extremes = Image.fromarray(np.array([[[0, 255, 127]] * 224] * 224, dtype=np.uint8))
    values = processor(extremes, return_tensors="pt")["pixel_values"][0, :, 100, 100].tolist()
    np.testing.assert_allclose(values, [-127 / 128, 1.0, 0.0], rtol=0, atol=1e-6)


def test_resample_is_configurable(images):
    image = images[LANDSCAPE[0]]
    nearest = OMITImageProcessor(resample=Image.Resampling.NEAREST, do_normalize=False)
    bicubic = OMITImageProcessor(do_normalize=False)
    expected = hand_crop(image, LANDSCAPE, Image.Resampling.NEAREST).astype(np.float64) / 255.0
    got = nearest(image, return_tensors="pt")["pixel_values"][0].numpy()
    np.testing.assert_allclose(got, expected.transpose(2, 0, 1).astype(np.float32), rtol=0, atol=1e-7)
    assert np.abs(got - bicubic(image, return_tensors="pt")["pixel_values"][0].numpy()).max() > 0.05


def test_grey_and_rgba_images_become_rgb(images):
    processor = OMITImageProcessor.for_efficientnet_lite()
    grey = images[LANDSCAPE[0]].convert("L")
    pixel_values = processor(grey, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pixel_values[0, 0], pixel_values[0, 1], rtol=0, atol=0)
    torch.testing.assert_close(pixel_values[0, 0], pixel_values[0, 2], rtol=0, atol=0)
    rgba = images[LANDSCAPE[0]].convert("RGBA")
    torch.testing.assert_close(
        processor(rgba, return_tensors="pt")["pixel_values"],
        processor(images[LANDSCAPE[0]], return_tensors="pt")["pixel_values"],
        rtol=0,
        atol=0,
    )


def test_size_and_crop_settings(images):
    image = images[LANDSCAPE[0]]  # 200 x 150
    no_crop = OMITImageProcessor(size={"shortest_edge": 112}, do_center_crop=False)
    assert no_crop(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 112, 149)  # 200 * 112 / 150
    fixed = OMITImageProcessor(size={"height": 64, "width": 96}, crop_size={"height": 64, "width": 64})
    assert fixed(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 64, 64)
    # per-call overrides
    small = OMITImageProcessor()(image, size={"shortest_edge": 48}, crop_size={"height": 32, "width": 40})
    assert np.asarray(small["pixel_values"][0]).shape == (3, 32, 40)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": {"shortest_edge": 0}}, r"size\['shortest_edge'\] must be a positive integer"),
        ({"size": -3}, r"size\['shortest_edge'\] must be a positive integer"),
        ({"crop_size": {"height": 224, "width": -1}}, r"crop_size\['width'\] must be a positive integer"),
        (
            {"crop_size": {"height": 256, "width": 256}},
            r"crop_size 256x256 is larger than size\['shortest_edge'\]=224",
        ),
        ({"image_mean": [0.5, 0.5]}, r"image_mean must be one number or 3 numbers"),
        ({"image_std": [0.2, 0.2, 0.2, 0.2]}, r"image_std must be one number or 3 numbers"),
        ({"image_std": [0.2, 0.0, 0.2]}, r"every entry of image_std must be > 0"),
        ({"image_mean": [0.5, float("nan"), 0.5]}, r"image_mean must be one number or 3 numbers"),
        ({"rescale_factor": -1 / 255}, r"rescale_factor must be a positive number"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OMITImageProcessor(**kwargs)


def test_bad_call_settings_raise_value_error(images):
    processor = OMITImageProcessor()
    with pytest.raises(ValueError, match=r"image_mean must be one number or 3 numbers"):
        processor(images[PORTRAIT[0]], image_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"crop_size 300x300 is larger"):
        processor(images[PORTRAIT[0]], crop_size={"height": 300, "width": 300})


def test_bad_settings_are_ignored_when_their_step_is_off():
    processor = OMITImageProcessor(do_normalize=False, image_std=[0.0, 0.0, 0.0])
    assert processor.do_normalize is False


def test_save_and_load_round_trip(images, tmp_path):
    processor = OMITImageProcessor.for_efficientnet_lite(
        resample=Image.Resampling.NEAREST, crop_size={"height": 200, "width": 208}
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "OMITImageProcessor"
    assert saved["resample"] == int(Image.Resampling.NEAREST)
    np.testing.assert_allclose(saved["image_mean"], [127 / 255] * 3)
    np.testing.assert_allclose(saved["image_std"], [128 / 255] * 3)
    assert saved["crop_size"] == {"height": 200, "width": 208}

    loaded = OMITImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    inputs = [images[PORTRAIT[0]], images[LANDSCAPE[0]]]
    expected = processor(inputs, return_tensors="pt")["pixel_values"]
    assert expected.shape == (2, 3, 200, 208)
    torch.testing.assert_close(loaded(inputs, return_tensors="pt")["pixel_values"], expected, rtol=0, atol=0)
