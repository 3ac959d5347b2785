"""Fuzz the two input paths: the audio front-end (`hf_mltm.audio`, `PannsFeatureExtractor`) and the image processor
(`hf_mltm.image`, `OMITImageProcessor`).

Contract under test: every call either raises `ValueError` or returns finite output of the documented shape, and
does so quickly. A hang inside native code cannot be interrupted (soxr never returns for a NaN rate), so the
native entry points are wrapped by `native_guards`: they fail the test, instead of hanging it, when they are
reached with arguments that validation should have rejected. Hypothesis' ``deadline`` bounds the time per example.
Examples are derandomized so that the run is reproducible; ``--hypothesis-show-statistics`` shows how often each
outcome (output, or which ValueError) occurred.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import pytest
import soxr
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from hf_mltm.audio import MAX_SAMPLING_RATE, MIN_SAMPLING_RATE, load_audio
from hf_mltm.image import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS
from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor
from hf_mltm.models.panns import AISFX_FRONTEND, PannsFeatureExtractor

FUZZ = settings(
    max_examples=120,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ----------------------------------------------------------------------------------------------------
# Guards on the native calls
# ----------------------------------------------------------------------------------------------------

CROP = 224
MAX_RESIZED_PIXELS = int(MAX_ASPECT_RATIO * CROP * CROP)  # shortest edge 224 and at most 20:1


@contextmanager
def native_guards():
    """soxr.resample only sees valid int rates and finite samples; PIL resizes stay within the size limits."""
    real_resample, real_resize = soxr.resample, Image.Image.resize

    def guarded_resample(samples, in_rate, out_rate, *args, **kwargs):
        for rate in (in_rate, out_rate):
            assert type(rate) is int and MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE, (
                f"soxr got rate {rate!r}"
            )
        assert np.isfinite(samples).all(), "soxr got NaN/inf samples"
        return real_resample(samples, in_rate, out_rate, *args, **kwargs)

    def guarded_resize(self, size, *args, **kwargs):
        assert self.width * self.height <= MAX_IMAGE_PIXELS, f"PIL resized a {self.size} image"
        assert size[0] * size[1] <= MAX_RESIZED_PIXELS, f"PIL resized to {size}"
        return real_resize(self, size, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(soxr, "resample", guarded_resample)
        patch.setattr(Image.Image, "resize", guarded_resize)
        yield


def test_native_guards_stop_unvalidated_arguments_before_the_native_call():
    with native_guards():
        with pytest.raises(AssertionError, match="soxr got rate nan"):
            soxr.resample(np.zeros(8, dtype=np.float32), 44100, float("nan"))  # would never return
        with pytest.raises(AssertionError, match=r"PIL resized to \(896000, 224\)"):
            Image.new("RGB", (4000, 1)).resize((896000, 224))


# ----------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------


def weighted(common: st.SearchStrategy, rare: st.SearchStrategy, rare_percent: int) -> st.SearchStrategy:
    """``rare`` in about ``rare_percent`` % of the draws, else ``common``: valid inputs are drawn more often than
    invalid ones, so that both outcomes (output and ValueError) are exercised."""
    # hypothesis favours small integers, so the common branch sits at the low end
    return st.integers(0, 99).flatmap(lambda roll: rare if roll >= 100 - rare_percent else common)


AUDIO_DTYPES = weighted(
    st.sampled_from([np.float32, np.float64, np.int16, np.int32]),
    st.sampled_from([np.float16, np.int8, np.int64, np.uint8, np.bool_, np.complex64]),
    rare_percent=25,
)
RATES = weighted(
    st.one_of(
        st.sampled_from([8000, 16000, 22050, 32000, 44100, 48000, 96000, 768000, 44100.0, np.int64(16000)]),
        st.integers(8000, 768000),
    ),
    st.one_of(
        st.sampled_from([7999, 1000, 999, 0, -44100, 44100.5, float("nan"), float("inf"), -float("inf")]),
        st.sampled_from(["44100", b"16000", None, True, [16000], 10**40, 1e300]),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
    rare_percent=30,
)
EXTRACTORS = {
    (frontend, max_length_s): PannsFeatureExtractor(**settings_, max_length_s=max_length_s)
    for frontend, settings_ in (("panns", {}), ("aisfx", AISFX_FRONTEND))
    for max_length_s in (None, 0.25, 1.0)
}


@st.composite
def audio_clips(draw):
    """Raw clips: any dtype, 0-D to 3-D, lengths 0, 1, 2 or up to 4000, loud or quiet, maybe NaN/inf, maybe a tensor."""
    dtype = np.dtype(draw(AUDIO_DTYPES))
    length = draw(weighted(st.integers(3, 4000), st.integers(0, 2), rare_percent=20))
    shape = draw(
        weighted(
            st.sampled_from([(length,), (1, length), (2, length)]),
            st.sampled_from([(), (3, length), (length, 2), (1, 2, length)]),
            rare_percent=20,
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    elif dtype.kind == "b":
        array = rng.integers(0, 2, shape).astype(bool)
    else:
        scale = draw(st.sampled_from([0.0, 1e-4, 1.0, 1.0, 1.5, 999.0, 3e4, 1e30]))
        with np.errstate(over="ignore"):
            array = np.asarray(rng.uniform(-1.0, 1.0, shape) * scale).astype(dtype)
        if array.size and draw(st.integers(0, 9)) == 0:
            array.flat[draw(st.integers(0, array.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf])
            )
    return torch.from_numpy(array.copy()) if draw(st.booleans()) else array


def _length(clip) -> int:
    return int(clip.shape[-1])


def _resampled_length(num_samples: int, orig_sr: int, target_sr: int) -> int:
    """soxr's output length, ``floor(num_samples * target_sr / orig_sr + 1/2)``, in exact integer arithmetic."""
    return (2 * num_samples * target_sr + orig_sr) // (2 * orig_sr)


@FUZZ
@given(
    clip=audio_clips(),
    rate=RATES,
    frontend=st.sampled_from(["panns", "aisfx"]),
    max_length_s=st.sampled_from([None, 0.25, 1.0]),
)
def test_audio_front_end_gives_finite_features_of_the_documented_shape_or_value_error(
    clip, rate, frontend, max_length_s
):
    extractor = EXTRACTORS[frontend, max_length_s]
    with native_guards():
        try:
            batch = extractor([clip], sampling_rate=rate)
        except ValueError as error:
            event(f"ValueError: {str(error)[:40]}")
            return
    event("output")
    features, mask = batch["input_features"], batch["audio_attention_mask"]
    # documented: T = 1 + N // hop for N samples after resampling, padded to max_length_s (or the longest clip)
    resampled = _resampled_length(_length(clip), int(float(rate)), extractor.sampling_rate)
    padded = (
        round(max_length_s * extractor.sampling_rate)
        if max_length_s
        else max(resampled, extractor.n_fft // 2 + 1)
    )
    frames = 1 + padded // extractor.hop_length
    assert features.shape == (1, frames, extractor.feature_size) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert mask.shape == (1, frames) and mask.dtype == np.int64
    assert mask.sum() == min(1 + min(resampled, padded) // extractor.hop_length, frames)


@FUZZ
@given(clip=audio_clips(), rate=RATES, target=st.one_of(st.none(), RATES), mono=st.booleans())
def test_load_audio_of_decoded_rows_gives_finite_float32_or_value_error(clip, rate, target, mono):
    with native_guards():
        try:
            waveform, out_rate = load_audio({"array": clip, "sampling_rate": rate}, target, mono=mono)
        except ValueError as error:
            event(f"ValueError: {str(error)[:40]}")
            return
    event("output")
    assert waveform.dtype == np.float32 and np.isfinite(waveform).all()
    in_rate = int(float(rate))
    assert out_rate == (in_rate if target is None else int(float(target)))
    channels = 1 if clip.ndim == 1 else clip.shape[0]
    expected_length = _resampled_length(_length(clip), in_rate, out_rate)
    assert waveform.shape == ((expected_length,) if mono else (channels, expected_length))


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------

PROCESSORS = {
    "default": OMITImageProcessor(),
    "efficientnet_lite": OMITImageProcessor.for_efficientnet_lite(),
    "crop_only": OMITImageProcessor(do_resize=False),
    "no_rescale": OMITImageProcessor(do_rescale=False),
}
PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "I", "F", "I;16", "CMYK", "YCbCr", "LAB", "HSV"]
IMAGE_DTYPES = weighted(
    st.sampled_from([np.uint8, np.uint8, np.float32, np.float64, np.int64]),
    st.sampled_from([np.uint16, np.int32, np.float16, np.bool_, np.complex64]),
    rare_percent=30,
)
SIZES = weighted(
    st.tuples(st.integers(1, 300), st.integers(1, 300)),
    st.one_of(
        st.tuples(st.integers(0, 3), st.integers(0, 3)),
        st.sampled_from(
            [(1, 4000), (4000, 1), (15, 300), (300, 15), (14, 300), (6000, 300), (2, 41), (1, 20)]
        ),
    ),
    rare_percent=30,
)


@st.composite
def images(draw):
    """PIL images of many modes, or arrays/tensors of any layout, dtype and value range; sizes from 0 x 0 to 20:1+."""
    height, width = draw(SIZES)
    kind = draw(st.sampled_from(["pil", "numpy", "numpy", "tensor"]))
    if kind == "pil":
        return Image.new(draw(st.sampled_from(PIL_MODES)), (width, height))
    dtype = np.dtype(draw(IMAGE_DTYPES))
    channels = draw(weighted(st.sampled_from([None, 1, 3, 3, 4]), st.sampled_from([2, 5]), rare_percent=15))
    shape = (
        (height, width)
        if channels is None
        else draw(st.sampled_from([(height, width, channels), (channels, height, width)]))
    )
    low, high = draw(
        weighted(st.sampled_from([(0, 1), (0, 255)]), st.sampled_from([(-5, 5), (0, 65535), (0, 1e300)]), 25)
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.uniform(low, high, shape)
    if draw(st.booleans()):
        values = np.round(values)
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(dtype)
    if dtype.kind == "f" and array.size and draw(st.integers(0, 9)) == 0:
        array.flat[draw(st.integers(0, array.size - 1))] = np.nan
    return torch.from_numpy(array.copy()) if kind == "tensor" and dtype != np.uint16 else array


@pytest.mark.filterwarnings("ignore:.*looks already rescaled:UserWarning")
@FUZZ
@given(image=images(), name=st.sampled_from(sorted(PROCESSORS)))
def test_image_processor_gives_finite_pixels_of_the_documented_shape_or_value_error(image, name):
    with native_guards():
        try:
            pixel_values = PROCESSORS[name](image, return_tensors="np")["pixel_values"]
        except ValueError as error:
            event(f"ValueError: {str(error)[:40]}")
            return
    event("output")
    assert pixel_values.shape == (1, 3, CROP, CROP) and pixel_values.dtype == np.float32
    assert np.isfinite(pixel_values).all()
    if name != "no_rescale":  # rescaled and normalised 8-bit values stay within the normalised range
        assert np.abs(pixel_values).max() <= 3.0


@pytest.mark.filterwarnings("ignore:.*looks already rescaled:UserWarning")
@FUZZ
@given(images=st.lists(images(), min_size=1, max_size=3))
def test_image_batches_fail_as_a_whole_with_value_error_or_give_one_row_per_image(images):
    with native_guards():
        try:
            pixel_values = PROCESSORS["default"](images, return_tensors="np")["pixel_values"]
        except ValueError as error:
            event(f"ValueError: {str(error)[:40]}")
            return
    event("output")
    assert pixel_values.shape == (len(images), 3, CROP, CROP) and np.isfinite(pixel_values).all()
