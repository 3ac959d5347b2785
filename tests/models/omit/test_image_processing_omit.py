"""`OMITImageProcessor` against a hand computation with PIL and numpy on real Flickr8k photographs."""

from __future__ import annotations

import io
import json
import time
import warnings

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


# ----------------------------------------------------------------------------------------------------
# Input robustness
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def resize_sizes(monkeypatch):
    """Records the (width, height) of every PIL resize the processor runs."""
    sizes = []
    original = Image.Image.resize

    def recording_resize(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    return sizes


def test_pipeline_equals_resize_then_crop_on_flickr_photos_of_every_shape(shared_data):
    # Parity with the hand computation on 24 real photographs of the sizes the 1k subset holds (landscape,
    # portrait, 200 x 133, 500 x 375, ...): the robustness checks must not change a single output value.
    folder = shared_data / "flickr8k_1k" / "Images"
    names = sorted(path.name for path in folder.iterdir())[::42]
    processor = OMITImageProcessor.for_efficientnet_lite()
    batch = processor([Image.open(folder / name) for name in names], return_tensors="np")["pixel_values"]
    sizes = set()
    for row, name in enumerate(names):
        image = Image.open(folder / name).convert("RGB")
        width, height = image.size
        sizes.add(image.size)
        short, long = min(width, height), max(width, height)
        resized_long = int(224 * long / short)  # transformers rounds the longer side down
        resized = (224, resized_long) if width < height else (resized_long, 224)
        top, left = (resized[1] - 224) // 2, (resized[0] - 224) // 2
        crop = np.asarray(image.resize(resized, resample=Image.Resampling.BICUBIC))[top : top + 224, left : left + 224]
        expected = ((crop.astype(np.float64) / 255.0) * 255.0 - 127.0) / 128.0
        np.testing.assert_allclose(batch[row], expected.transpose(2, 0, 1), rtol=0, atol=1e-6)
    assert len(names) == 24 and len(sizes) >= 8


def test_extreme_aspect_ratio_is_rejected_before_any_resize(resize_sizes):
    # a 4000 x 1 strip used to be resized to 896000 x 224 (1.9 GB, 4.6 s) before the centre crop
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"image 0 has size 4000 x 1 \(width x height\), an aspect ratio above 20:1"):
        OMITImageProcessor()(Image.new("RGB", (4000, 1)))
    with pytest.raises(ValueError, match=r"image 1 has size 1 x 300 .*aspect ratio above 20:1"):
        OMITImageProcessor()([np.zeros((8, 8, 3), np.uint8), np.zeros((300, 1, 3), np.uint8)])
    assert time.perf_counter() - started < 0.5 and resize_sizes == []


def test_resize_work_is_bounded_by_twenty_times_the_crop(resize_sizes):
    # the most elongated image allowed: its resized intermediate is at most 20 x 224 x 224 pixels
    pixel_values = OMITImageProcessor()(Image.new("RGB", (2000, 100), (10, 200, 30)), return_tensors="np")
    assert pixel_values["pixel_values"].shape == (1, 3, 224, 224)
    assert resize_sizes == [(4480, 224)] and 4480 * 224 <= 20 * 224 * 224


def test_pixel_count_and_decompression_bombs_are_rejected_before_decoding(tmp_path, resize_sizes):
    from tests.test_image import png_header_only

    lazy = Image.open(io.BytesIO(png_header_only(8_000, 7_000)))  # 56 MP, never decoded
    with pytest.raises(ValueError, match=r"image 0 has 8000 x 7000 = 56000000 pixels, more than the limit"):
        OMITImageProcessor()(lazy)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ValueError, match=r"Cannot read image '.*bomb\.png' \(image 0\).*decompression bomb"):
        OMITImageProcessor()(str(bomb))
    assert resize_sizes == []


@pytest.mark.parametrize("shape", [(0, 0), (0, 0, 3), (0, 5, 3), (3, 0, 7)])
def test_empty_image_raises_value_error_not_zero_division(shape):
    with pytest.raises(ValueError, match=r"image 0 has size \d+ x \d+ \(width x height\): an image needs at least 1 x 1"):
        OMITImageProcessor()(np.zeros(shape, dtype=np.uint8))


def test_greyscale_numpy_image_is_processed_like_its_pil_version(images):
    grey = np.asarray(images[LANDSCAPE[0]].convert("L"))  # (150, 200) uint8
    processor = OMITImageProcessor()
    from_array = processor(grey, return_tensors="np")["pixel_values"]
    from_pil = processor(Image.fromarray(grey), return_tensors="np")["pixel_values"]
    assert from_array.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(from_array, from_pil)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.arange(300 * 200 * 2).reshape(300, 200, 2) % 256, r"shape \(300, 200, 2\): expected \(height, width\)"),
        (np.zeros((2, 3, 40, 50)).astype(np.uint8)[None], r"ndarray of shape \(1, 2, 3, 40, 50\) and dtype uint8"),
        (np.zeros(500, dtype=np.uint8), r"ndarray of shape \(500,\) and dtype uint8\) is not an image"),
        (np.full((40, 50), 7, dtype=np.int64) * 1000, r"values in \[7000, 7000\]: expected 8-bit values"),
        (np.zeros((40, 50, 3), dtype=bool), r"dtype bool\) has an unsupported dtype"),
        (np.full((40, 50, 3), np.nan, dtype=np.float32), "contains NaN or infinite pixel values"),
        (np.full((40, 50, 3), 300.5), r"float values in \[300.5, 300.5\], but with do_rescale .* \[0, 255\]"),
        ("no/such/file.png", r"Cannot read image 'no/such/file.png' \(image 0\): no such file"),
        (12, r"image 0 is of type int; expected a PIL image"),
        ([], "empty list of images"),
        ([[np.zeros((4, 4, 3), np.uint8)]], r"image 0 is a list \(1 entries\): pass a flat list"),
    ],
)
def test_bad_images_raise_naming_shape_and_dtype_never_the_pixels(image, message):
    with pytest.raises(ValueError, match=message) as caught:
        OMITImageProcessor()(image)
    assert "[[" not in str(caught.value) and len(str(caught.value)) < 300


def test_float_image_in_unit_range_is_not_rescaled_twice(images):
    # documented choice: with do_rescale, a float [0, 1] image is taken as already rescaled (x 255, with a warning)
    uint8 = np.asarray(images[PORTRAIT[0]])
    unit = uint8.astype(np.float32) / 255.0
    processor = OMITImageProcessor()
    expected = processor(uint8, return_tensors="np")["pixel_values"]
    with pytest.warns(UserWarning, match=r"image 0 is a float image with all values in \[0, 1\].*already rescaled"):
        got = processor(unit, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got.min() < -2.0 and got.max() > 2.0  # the full normalised range, not the old (x / 255) / 255 sliver
    # [0, 255] floats are not touched; without do_rescale nothing is guessed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            processor(uint8.astype(np.float64), return_tensors="np")["pixel_values"], expected
        )
        raw = processor(unit, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(raw, processor(uint8, do_normalize=False, return_tensors="np")["pixel_values"], atol=1e-6)


def test_float_values_beyond_255_raise_with_rescale_and_pass_without(images):
    sixteen_bit_scale = np.asarray(images[PORTRAIT[0]]).astype(np.float32) * 257.0
    with pytest.raises(ValueError, match=r"float values in \[0, 65535\], but with do_rescale"):
        OMITImageProcessor(do_resize=False)(sixteen_bit_scale)
    with pytest.raises(ValueError, match=r"float values in \[0, 65535\], which cannot be resized as an 8-bit"):
        OMITImageProcessor(do_rescale=False)(sixteen_bit_scale)
    raw = OMITImageProcessor(do_resize=False, do_rescale=False, do_normalize=False)(
        sixteen_bit_scale, return_tensors="np"
    )["pixel_values"]
    # the 150 x 200 image zero-padded to the 224 x 224 crop (transformers puts the odd padding row/column first)
    assert raw.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(raw[0, :, 12:212, 37:187], sixteen_bit_scale.transpose(2, 0, 1))
    assert raw[0, :, :12].max() == 0 and raw[0, :, :, :37].max() == 0


def test_tensors_paths_bytes_and_batches_match_pil_input(images, shared_data):
    image = images[LANDSCAPE[0]]
    processor = OMITImageProcessor()
    expected = processor(image, return_tensors="np")["pixel_values"]
    hwc = np.asarray(image)
    path = shared_data / "flickr8k_1k" / "Images" / LANDSCAPE[0]
    for form in (
        hwc,
        torch.tensor(hwc).permute(2, 0, 1),  # (3, H, W)
        str(path),
        {"bytes": path.read_bytes(), "path": None},
    ):
        np.testing.assert_array_equal(processor(form, return_tensors="np")["pixel_values"], expected)
    batch = processor(np.stack([hwc, hwc]), return_tensors="np")["pixel_values"]
    assert batch.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(batch[1], expected[0])
    # a tiny 1 x 1 RGB array is channels last, not a (1, 1, 3) one-channel strip
    dot = processor(np.array([[[255, 0, 0]]], dtype=np.uint8), do_normalize=False, return_tensors="np")
    np.testing.assert_allclose(dot["pixel_values"][0, :, 100, 100], [1.0, 0.0, 0.0], atol=1e-6)
