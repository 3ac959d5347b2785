"""`PannsFeatureExtractor`: the log-mel front-end of the PANNs family, its Auto registration, the `MLTMFeatureExtractor`
name kept for saved m-LTM checkpoints, and the input checks that run before any native call.

The log-mel numbers themselves are checked against an independent float64 reference in
``tests/models/mltm/test_feature_extraction_mltm.py`` (through the subclass, which adds nothing)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import AutoFeatureExtractor

import hf_mltm
from hf_mltm.models.mltm import AISFX_FRONTEND as MLTM_AISFX_FRONTEND
from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMFeatureExtractor
from hf_mltm.models.panns import AISFX_FRONTEND, PannsConfig, PannsFeatureExtractor

ESC50_DOG = "esc50/audio/1-100032-A-0.flac"  # 5 s, 32 kHz

# preprocessor_config.json as the previous release saved it (the class then lived in models/mltm only)
SAVED_MLTM_PREPROCESSOR_CONFIG = {
    "f_max": 14000.0,
    "f_min": 50.0,
    "feature_extractor_type": "MLTMFeatureExtractor",
    "feature_size": 64,
    "hop_length": 320,
    "log_mode": "db",
    "max_length_s": 2.0,
    "mel_norm": "slaney",
    "mel_scale": "slaney",
    "n_fft": 1024,
    "normalize_waveform": None,
    "pad_mode": "reflect",
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "sampling_rate": 32000,
    "win_length": 1024,
}


@pytest.fixture(scope="module")
def dog(shared_data):
    return sf.read(shared_data / ESC50_DOG, dtype="float32")


def test_mltm_extractor_is_a_thin_subclass_with_identical_features(dog):
    waveform, rate = dog
    assert issubclass(MLTMFeatureExtractor, PannsFeatureExtractor)
    # nothing of its own besides the Auto-class registration: no method overrides
    assert {name for name in vars(MLTMFeatureExtractor) if not name.startswith("__")} <= {"_auto_class"}
    assert AISFX_FRONTEND is MLTM_AISFX_FRONTEND and hf_mltm.MLTMFeatureExtractor is MLTMFeatureExtractor
    for settings in ({}, AISFX_FRONTEND):
        panns = PannsFeatureExtractor(**settings)(waveform, sampling_rate=rate)
        mltm = MLTMFeatureExtractor(**settings)(waveform, sampling_rate=rate)
        np.testing.assert_array_equal(panns["input_features"], mltm["input_features"])
        np.testing.assert_array_equal(panns["audio_attention_mask"], mltm["audio_attention_mask"])
    assert type(MLTMFeatureExtractor.aisfx_frontend()) is MLTMFeatureExtractor
    assert type(PannsFeatureExtractor.aisfx_frontend(max_length_s=None)) is PannsFeatureExtractor


def test_auto_feature_extractor_resolves_the_panns_config(tmp_path):
    PannsConfig(variant="cnn10").save_pretrained(tmp_path)
    PannsFeatureExtractor(max_length_s=3.0).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["feature_extractor_type"] == "PannsFeatureExtractor"
    assert saved["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_panns.PannsFeatureExtractor"}
    assert (tmp_path / "feature_extraction_panns.py").is_file()
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded) is PannsFeatureExtractor and loaded.max_length_s == 3.0


def test_previously_saved_mltm_preprocessor_config_still_loads(tmp_path, dog):
    waveform, rate = dog
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(SAVED_MLTM_PREPROCESSOR_CONFIG))
    MLTMAudioTextConfig().save_pretrained(tmp_path)
    for loaded in (
        MLTMFeatureExtractor.from_pretrained(tmp_path),
        AutoFeatureExtractor.from_pretrained(tmp_path),
    ):
        assert type(loaded) is MLTMFeatureExtractor
        features = loaded(waveform, sampling_rate=rate)
        expected = PannsFeatureExtractor(max_length_s=2.0)(waveform, sampling_rate=rate)
        assert features["input_features"].shape == (1, 201, 64)
        np.testing.assert_array_equal(features["input_features"], expected["input_features"])


@pytest.mark.slow
def test_saved_panns_extractor_loads_with_trust_remote_code_in_a_fresh_process(tmp_path):
    PannsFeatureExtractor.aisfx_frontend(max_length_s=1.0).save_pretrained(tmp_path)
    code = (
        "import sys\n"
        "from transformers import AutoFeatureExtractor\n"
        f"fe = AutoFeatureExtractor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)\n"
        "import numpy as np\n"
        "out = fe(np.zeros(44100, dtype=np.float32), sampling_rate=44100)['input_features']\n"
        "print(type(fe).__name__, fe.log_mode, out.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "PannsFeatureExtractor aisfx (1, 44, 96)"


# ----------------------------------------------------------------------------------------------------
# Input checks run before soxr (a NaN rate used to hang inside it, beyond the reach of any Python signal)
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def soxr_forbidden(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("soxr.resample was reached with an invalid sampling rate")

    monkeypatch.setattr(soxr, "resample", forbidden)


@pytest.mark.parametrize(
    "rate, message",
    [
        (float("nan"), r"sampling_rate must be a whole number of Hz in \[1000, 768000\].*got nan"),
        (float("inf"), r"got inf"),
        (-float("inf"), r"got -inf"),
        ("44100", r"got '44100' of type str"),
        (True, r"got True of type bool"),
        (0, r"got 0\."),
        (-16000, r"got -16000"),
        (44100.5, r"got 44100.5"),
        (10**12, r"got 1000000000000"),
        (7999, r">= 8000 Hz, got 7999"),
    ],
)
def test_bad_sampling_rate_raises_before_soxr(soxr_forbidden, rate, message):
    with pytest.raises(ValueError, match=message):
        PannsFeatureExtractor()(np.zeros(16000, dtype=np.float32), sampling_rate=rate)


def test_integral_float_sampling_rate_equals_the_integer_rate(dog):
    waveform, _ = dog
    extractor = PannsFeatureExtractor(max_length_s=1.0)
    np.testing.assert_array_equal(
        extractor(waveform, sampling_rate=44100.0)["input_features"],
        extractor(waveform, sampling_rate=np.int64(44100))["input_features"],
    )


def test_clip_too_short_to_survive_resampling_raises():
    with pytest.raises(
        ValueError, match=r"Audio clip 1 is too short: 1 samples at 768000 Hz give no sample at 32000"
    ):
        PannsFeatureExtractor()([np.zeros(100), np.zeros(1)], sampling_rate=768000)


def test_int_scale_float_samples_raise_instead_of_giving_plus_90_db_features():
    pcm_as_float = np.linspace(-20000.0, 20000.0, 16000)
    with pytest.raises(
        ValueError, match=r"Audio clip 0 has float samples up to \|x\| = 2e\+04.*Divide it by 32768"
    ):
        PannsFeatureExtractor()(pcm_as_float, sampling_rate=16000)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_length_s": float("nan")}, "max_length_s must be a positive, finite number of seconds or None"),
        ({"max_length_s": float("inf")}, "max_length_s must be a positive, finite number"),
        ({"max_length_s": -1.0}, "max_length_s must be a positive"),
        ({"sampling_rate": float("nan")}, "sampling_rate must be a whole number of Hz"),
        ({"sampling_rate": "32000"}, "sampling_rate must be a whole number of Hz"),
        ({"hop_length": 320.5}, "hop_length must be an integer"),
        ({"f_max": float("nan")}, "f_max must be a finite number"),
        ({"padding_value": float("nan")}, "padding_value must be a finite number"),
    ],
)
def test_bad_constructor_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PannsFeatureExtractor(**kwargs)


def test_tensor_clip_on_any_float_dtype_equals_numpy(dog):
    waveform, rate = dog
    extractor = PannsFeatureExtractor(max_length_s=1.0)
    expected = extractor(waveform[:32000].astype(np.float64), sampling_rate=rate)["input_features"]
    got = extractor(torch.from_numpy(waveform[:32000].copy()), sampling_rate=rate)["input_features"]
    np.testing.assert_array_equal(got, expected)


def test_unknown_keyword_arguments_are_refused_naming_them_and_saved_configs_still_load(tmp_path):
    from hf_mltm.models.mltm import MLTMFeatureExtractor

    with pytest.raises(ValueError, match=r"MLTMFeatureExtractor\(\) arguments: unknown key 'num_mel_bins'.*'feature_size'"):
        MLTMFeatureExtractor(num_mel_bins=16)
    with pytest.raises(ValueError, match=r"unknown key 'hop_lenght' \(did you mean 'hop_length'\?\)"):
        PannsFeatureExtractor(hop_lenght=160)
    extractor = MLTMFeatureExtractor(feature_size=16, return_attention_mask=True)
    extractor.save_pretrained(tmp_path)  # writes feature_extractor_type, padding_side, ...
    loaded = MLTMFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.feature_size == 16 and loaded.to_dict() == extractor.to_dict()
