from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_mltm.audio import resample
from hf_mltm.models.mltm import AISFX_FRONTEND, MLTMFeatureExtractor

ESC50_DOG = "esc50/audio/1-100032-A-0.flac"  # 5 s, 32 kHz
ESC50_RAIN = "esc50/audio/1-17367-A-10.flac"  # 5 s, 32 kHz
URBAN_SIREN = "urbansound8k/audio/101415-3-0-2.flac"  # 4 s, 22.05 kHz
AUDIOCAPS_10S = "audiocaps/audio/0yETgW44MZU_20.flac"  # 10 s, 32 kHz
CLOTHO_LONG = "clotho/evaluation/01 A pug struggles to breathe 1_14_2008.wav"  # 28.8 s, 44.1 kHz

FRONTENDS = {"panns": {}, "aisfx": AISFX_FRONTEND}


def read(shared_data, relative, dtype="float32"):
    waveform, rate = sf.read(shared_data / relative, dtype=dtype)
    return waveform, rate


# ----------------------------------------------------------------------------------------------------
# Independent float64 reference: numpy framing + FFT, triangular mel filters from the Slaney/HTK formulas.
# ----------------------------------------------------------------------------------------------------


def hz_to_mel(hz, scale):
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    # Slaney (Auditory Toolbox): linear below 1 kHz (200/3 Hz per mel), then 27 mels per factor 6.4
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-300) / 1000.0) / log_step, hz * 3.0 / 200.0)


def mel_to_hz(mel, scale):
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * 200.0 / 3.0)


def reference_mel_filters(s):
    fft_hz = np.fft.rfftfreq(s["n_fft"], d=1.0 / s["sampling_rate"])  # (F,)
    mel_edges = np.linspace(
        hz_to_mel(s["f_min"], s["mel_scale"]), hz_to_mel(s["f_max"], s["mel_scale"]), s["n_mels"] + 2
    )
    edges = mel_to_hz(mel_edges, s["mel_scale"])  # (M + 2,)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (fft_hz[:, None] - lower) / (centre - lower)  # (F, M)
    falling = (upper - fft_hz[:, None]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    if s["mel_norm"] == "slaney":
        filters = filters * (2.0 / (upper - lower))
    elif s["mel_norm"] == "l1":
        filters = filters / filters.sum(axis=0)
    return filters


def reference_log_mel(waveform, s):
    """(T, M) float64 log-mel of a float64 waveform already at s['sampling_rate'] and of its final length."""
    n_fft, hop, win = s["n_fft"], s["hop_length"], s["win_length"]
    padded = np.pad(waveform, n_fft // 2, mode="reflect" if s["pad_mode"] == "reflect" else "constant")
    n_frames = 1 + len(waveform) // hop
    frames = padded[np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]]  # (T, n_fft)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)  # periodic Hann
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (T, F)
    mel = power @ reference_mel_filters(s)  # (T, M)
    if s["log_mode"] == "db":
        return 10.0 * np.log10(np.maximum(mel, 1e-10))
    return np.log10(1e4 * mel + 1.0) / 9.457798957824707


def reference_features(waveform, rate, s):
    """Whole front-end in float64: soxr -> peak norm -> crop/zero-pad to max_length_s -> log-mel."""
    x = soxr.resample(waveform, rate, s["sampling_rate"]) if rate != s["sampling_rate"] else waveform
    if s["normalize_waveform"] == "peak" and np.abs(x).max() > 0:
        x = x / np.abs(x).max()
    target = round(s["max_length_s"] * s["sampling_rate"])
    x = np.pad(x[:target], (0, max(0, target - len(x))))
    return reference_log_mel(x, s)


def settings_of(extractor):
    config = extractor.to_dict()
    return {**config, "n_mels": config["feature_size"]}


# ----------------------------------------------------------------------------------------------------
# Parity on real clips
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frontend", sorted(FRONTENDS))
@pytest.mark.parametrize("clip", [ESC50_DOG, URBAN_SIREN])
def test_log_mel_matches_float64_numpy_reference(shared_data, frontend, clip):
    extractor = MLTMFeatureExtractor(**FRONTENDS[frontend])
    waveform32, rate = read(shared_data, clip)
    waveform64, _ = read(shared_data, clip, dtype="float64")
    features = extractor(waveform32, sampling_rate=rate)["input_features"]
    expected = reference_features(waveform64, rate, settings_of(extractor))
    assert features.dtype == np.float32
    assert features.shape == (1, *expected.shape)
    assert expected.std() > (5.0 if frontend == "panns" else 0.05)  # a real, non-constant spectrogram
    tolerance = 1e-3 if frontend == "panns" else 1e-5  # dB for PANNs; aisfx features lie in about [0, 1]
    np.testing.assert_allclose(features[0], expected, rtol=0, atol=tolerance)


def test_reference_filters_differ_between_frontend_choices():
    # Guards the parity test: the settings it exercises must give visibly different filter banks.
    base = settings_of(MLTMFeatureExtractor())
    htk = reference_mel_filters({**base, "mel_scale": "htk"})
    l1 = reference_mel_filters({**base, "mel_norm": "l1"})
    slaney = reference_mel_filters(base)
    assert np.abs(htk - slaney).max() > 1e-4 and np.abs(l1 - slaney).max() > 1e-4


# ----------------------------------------------------------------------------------------------------
# Lengths, masks and crops
# ----------------------------------------------------------------------------------------------------


def test_ten_seconds_at_32khz_give_1001_frames(shared_data):
    waveform, rate = read(shared_data, AUDIOCAPS_10S)
    assert (rate, len(waveform)) == (32000, 320000)
    batch = MLTMFeatureExtractor()(waveform, sampling_rate=rate, return_tensors="pt")
    assert batch["input_features"].shape == (1, 1001, 64)
    assert batch["input_features"].dtype == torch.float32
    assert batch["audio_attention_mask"].dtype == torch.int64
    assert batch["audio_attention_mask"].sum().item() == 1001


def test_short_clip_is_zero_padded_and_masked(shared_data):
    waveform, rate = read(shared_data, ESC50_DOG)
    clip = waveform[: 3 * rate]  # 96000 samples
    batch = MLTMFeatureExtractor()(clip, sampling_rate=rate)
    mask, features = batch["audio_attention_mask"][0], batch["input_features"][0]
    assert mask.shape == (1001,)
    assert mask.sum() == 1 + 96000 // 320 == 301
    assert mask[:301].all() and not mask[301:].any()
    # frames whose whole window lies in the zero padding are exactly the -100 dB floor
    silent_from = (96000 + 512 + 319) // 320
    np.testing.assert_array_equal(features[silent_from:], -100.0)
    assert features[:301].max() > -50.0


@settings(max_examples=12, deadline=None)
@given(num_samples=st.integers(min_value=1, max_value=12 * 32000))
def test_mask_counts_the_frames_of_the_unpadded_clip(num_samples):
    clip = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    mask = MLTMFeatureExtractor()(clip, sampling_rate=32000)["audio_attention_mask"]
    assert mask.shape == (1, 1001)
    assert mask.sum() == min(1 + num_samples // 320, 1001)


def test_evaluation_crop_takes_the_start(shared_data):
    waveform, rate = read(shared_data, CLOTHO_LONG)
    extractor = MLTMFeatureExtractor()
    start_crop = resample(waveform.astype(np.float64), rate, 32000)[:320000]
    features = extractor(waveform, sampling_rate=rate)["input_features"]
    np.testing.assert_array_equal(features, extractor(start_crop, sampling_rate=32000)["input_features"])
    np.testing.assert_array_equal(features, extractor(waveform, sampling_rate=rate)["input_features"])


def test_random_crop_is_reproducible_with_a_seeded_generator(shared_data):
    waveform, rate = read(shared_data, CLOTHO_LONG)
    extractor = MLTMFeatureExtractor()
    resampled = resample(waveform.astype(np.float64), rate, 32000)

    def crop(seed):
        generator = torch.Generator().manual_seed(seed)
        return extractor(waveform, sampling_rate=rate, random_crop=True, generator=generator)[
            "input_features"
        ]

    start = int(torch.randint(len(resampled) - 320000 + 1, (1,), generator=torch.Generator().manual_seed(7)))
    assert start > 0
    expected = extractor(resampled[start : start + 320000], sampling_rate=32000)["input_features"]
    np.testing.assert_array_equal(crop(7), expected)
    np.testing.assert_array_equal(crop(7), crop(7))
    assert np.abs(crop(7) - crop(8)).max() > 1.0


# ----------------------------------------------------------------------------------------------------
# Input formats
# ----------------------------------------------------------------------------------------------------


def test_int16_input_equals_float_input_divided_by_32768(shared_data):
    pcm, rate = read(shared_data, ESC50_DOG, dtype="int16")
    extractor = MLTMFeatureExtractor()
    from_int = extractor(pcm, sampling_rate=rate)["input_features"]
    from_float = extractor(pcm.astype(np.float64) / 32768.0, sampling_rate=rate)["input_features"]
    np.testing.assert_array_equal(from_int, from_float)
    np.testing.assert_array_equal(
        from_int, extractor(torch.from_numpy(pcm), sampling_rate=rate)["input_features"]
    )


def test_stereo_input_equals_its_mono_mix(shared_data):
    left, rate = read(shared_data, ESC50_DOG)
    right, _ = read(shared_data, ESC50_RAIN)
    stereo = np.stack([left, right])  # (channels, num_samples)
    extractor = MLTMFeatureExtractor.aisfx_frontend()
    mixed = extractor(stereo, sampling_rate=rate)["input_features"]
    np.testing.assert_allclose(
        mixed,
        extractor((left.astype(np.float64) + right) / 2, sampling_rate=rate)["input_features"],
        atol=1e-6,
    )
    np.testing.assert_array_equal(
        mixed, extractor(torch.from_numpy(stereo), sampling_rate=rate)["input_features"]
    )
    assert np.abs(mixed - extractor(left, sampling_rate=rate)["input_features"]).max() > 0.01


def test_batch_equals_clips_one_by_one(shared_data):
    dog, rate = read(shared_data, ESC50_DOG)
    rain, _ = read(shared_data, ESC50_RAIN)
    clips = [dog, rain[:50000], np.concatenate([rain, dog, rain])[:400000]]  # 5 s, 1.6 s, 12.5 s
    extractor = MLTMFeatureExtractor()
    batch = extractor(clips, sampling_rate=rate)
    assert batch["input_features"].shape == (3, 1001, 64)
    assert batch["audio_attention_mask"].sum(axis=1).tolist() == [501, 157, 1001]
    for row, clip in enumerate(clips):
        single = extractor(clip, sampling_rate=rate)
        np.testing.assert_array_equal(batch["input_features"][row], single["input_features"][0])
        np.testing.assert_array_equal(batch["audio_attention_mask"][row], single["audio_attention_mask"][0])


def test_batch_without_max_length_is_padded_to_the_longest_clip(shared_data):
    dog, rate = read(shared_data, ESC50_DOG)
    clips = [dog[:40000], dog[:100000]]
    extractor = MLTMFeatureExtractor(max_length_s=None)
    batch = extractor(clips, sampling_rate=rate)
    assert batch["input_features"].shape == (2, 1 + 100000 // 320, 64)
    assert batch["audio_attention_mask"].sum(axis=1).tolist() == [126, 313]
    alone = extractor(clips[0], sampling_rate=rate)["input_features"][
        0
    ]  # (126, 64), reflect-padded at its end
    untouched = (40000 - 512) // 320 + 1  # frames whose window ends inside the real audio
    np.testing.assert_array_equal(batch["input_features"][0, :untouched], alone[:untouched])
    padded_alone = extractor(np.pad(clips[0], (0, 60000)), sampling_rate=rate)["input_features"][0]
    np.testing.assert_array_equal(batch["input_features"][0], padded_alone)


@pytest.mark.parametrize("frontend, floor", [("panns", -100.0), ("aisfx", 0.0)])
def test_silence_gives_the_log_floor_and_no_nan(frontend, floor):
    extractor = MLTMFeatureExtractor(**FRONTENDS[frontend])
    features = extractor([np.zeros(16000), np.zeros(7, dtype=np.int16)], sampling_rate=16000)[
        "input_features"
    ]
    np.testing.assert_array_equal(features, floor)


def test_aisfx_frontend_settings_and_peak_normalisation(shared_data):
    extractor = MLTMFeatureExtractor.aisfx_frontend(max_length_s=None)
    assert (extractor.sampling_rate, extractor.feature_size, extractor.n_fft, extractor.hop_length) == (
        44100,
        96,
        2048,
        1024,
    )
    assert (extractor.mel_scale, extractor.mel_norm, extractor.log_mode) == ("htk", "l1", "aisfx")
    np.testing.assert_allclose(extractor.mel_filters.sum(axis=0), 1.0, rtol=1e-12)
    waveform, rate = read(shared_data, URBAN_SIREN)
    features = extractor(waveform, sampling_rate=rate)["input_features"]
    assert features.shape == (1, 1 + round(len(waveform) * 44100 / rate) // 1024, 96)
    np.testing.assert_allclose(
        features, extractor(0.125 * waveform, sampling_rate=rate)["input_features"], atol=1e-6
    )


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros(0, dtype=np.float32), "is empty"),
        (np.zeros((2, 0), dtype=np.float32), "is empty"),
        (np.array([0.0, np.nan, 0.1]), "NaN or infinite"),
        (torch.tensor([0.0, float("inf")]), "NaN or infinite"),
        (np.float32(0.5), "got 0-D"),
        (np.zeros((1, 2, 16000)), "got 3-D"),
        (np.zeros((16000, 2)), "channels first"),
        (np.zeros(16000, dtype=np.uint8), "dtype uint8"),
        ([], "empty batch"),
        ([np.zeros(16000), np.zeros(0)], "Audio clip 1 is empty"),
    ],
)
def test_bad_audio_raises(audio, message):
    with pytest.raises(ValueError, match=message):
        MLTMFeatureExtractor()(audio, sampling_rate=16000)


def test_missing_sampling_rate_raises():
    with pytest.raises(ValueError, match="requires the `sampling_rate`"):
        MLTMFeatureExtractor()(np.zeros(16000))


def test_sampling_rate_below_8khz_raises():
    with pytest.raises(ValueError, match=">= 8000 Hz, got 7999"):
        MLTMFeatureExtractor()(np.zeros(16000), sampling_rate=7999)


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mel_scale": "kaldi"}, "mel_scale must be one of"),
        ({"mel_norm": "l2"}, "mel_norm must be one of"),
        ({"log_mode": "ln"}, "log_mode must be one of"),
        ({"f_max": 20000.0}, "f_max <= sampling_rate / 2"),
        ({"win_length": 2048}, "win_length must be in"),
        ({"max_length_s": 0.01}, "shorter than half an FFT window"),
        ({"sampling_rate": 4000, "f_max": 2000.0}, "sampling_rate must be >= 8000"),
        ({"feature_size": 256, "n_fft": 256, "win_length": 256}, "contain no FFT bin"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLTMFeatureExtractor(**kwargs)


# ----------------------------------------------------------------------------------------------------
# Serialisation
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frontend", sorted(FRONTENDS))
def test_save_and_load_round_trip(shared_data, tmp_path, frontend):
    # an int padding value, as a hand-written JSON may hold, must still pad a float waveform
    extractor = MLTMFeatureExtractor(**{**FRONTENDS[frontend], "max_length_s": 4.5, "padding_value": 0})
    extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "mel_filters" not in saved and saved["feature_extractor_type"] == "MLTMFeatureExtractor"
    loaded = MLTMFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()
    for key in (
        "sampling_rate",
        "feature_size",
        "mel_scale",
        "mel_norm",
        "log_mode",
        "normalize_waveform",
        "pad_mode",
    ):
        assert getattr(loaded, key) == saved[key] == getattr(extractor, key)
    np.testing.assert_array_equal(loaded.mel_filters, extractor.mel_filters)
    waveform, rate = read(shared_data, URBAN_SIREN)  # 4 s, padded to 4.5 s
    expected = extractor(waveform, sampling_rate=rate)
    actual = loaded(waveform, sampling_rate=rate)
    np.testing.assert_array_equal(actual["input_features"], expected["input_features"])
    np.testing.assert_array_equal(actual["audio_attention_mask"], expected["audio_attention_mask"])
    assert 0 < expected["audio_attention_mask"].mean() < 1
    reference = reference_features(waveform.astype(np.float64), rate, settings_of(extractor))
    np.testing.assert_allclose(actual["input_features"][0], reference, rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------------------------------
# Regressions: the sampling rate is validated before soxr runs
# ----------------------------------------------------------------------------------------------------


def test_nan_sampling_rate_raises_instead_of_hanging_in_soxr(monkeypatch):
    # MLTMFeatureExtractor()(x, sampling_rate=nan) used to spin forever inside soxr, beyond any Python signal
    def forbidden(*args, **kwargs):
        raise AssertionError("soxr.resample reached with a NaN rate")

    monkeypatch.setattr(soxr, "resample", forbidden)
    with pytest.raises(ValueError, match=r"sampling_rate must be a whole number of Hz .*got nan"):
        MLTMFeatureExtractor()(np.zeros(16000, dtype=np.float32), sampling_rate=float("nan"))


@pytest.mark.parametrize("rate", ["16000", b"16000", [16000], None])
def test_non_numeric_sampling_rate_raises_value_error_not_type_error(rate):
    message = "requires the `sampling_rate`" if rate is None else "sampling_rate must be a whole number of Hz"
    with pytest.raises(ValueError, match=message):
        MLTMFeatureExtractor()(np.zeros(16000), sampling_rate=rate)


def test_aisfx_frontend_of_the_subclass_saves_under_the_mltm_name(tmp_path):
    extractor = MLTMFeatureExtractor.aisfx_frontend(max_length_s=2.0)
    assert type(extractor) is MLTMFeatureExtractor
    extractor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["feature_extractor_type"] == "MLTMFeatureExtractor"
    assert saved["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_mltm.MLTMFeatureExtractor"}
    assert {key: saved[key] for key in AISFX_FRONTEND} == AISFX_FRONTEND
