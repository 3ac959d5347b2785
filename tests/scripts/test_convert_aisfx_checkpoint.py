"""The converted aisfx model against aisfx's own network and inference code on real clips.

Reference path (independent of hf_mltm): the aisfx librosa front-end re-implemented in numpy (librosa and
Essentia are not installed; aisfx's ``spectrogram_librosa.py`` needs librosa) -> aisfx's own
``spectrogram_normalize``, ``blocking`` / ``model_get_embedding`` and ``CrossNet(EmbeddingNet)`` loaded with the
checkpoint -> mean over blocks. Our path: the converted folder's `MLTMFeatureExtractor` and `PannsModel` on a
padded batch of all clips.
"""

import sys
from pathlib import Path

import aisfx.inference as ai
import aisfx.preprocessing as ap
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import AutoModel

from hf_mltm.models.mltm import feature_extraction_mltm as feature_extraction
from tests.utils import load_script

convert = load_script("convert_aisfx_checkpoint")

CLIPS = [
    "esc50/audio/1-100032-A-0.flac",  # 5 s at 32 kHz: 3 blocks
    "esc50/audio/1-100038-A-14.flac",
    "esc50/audio/1-100210-A-36.flac",
    "bigsoundbank_cc0/audio/owl.flac",  # 8.6 s: 6 blocks
    "bigsoundbank_cc0/audio/sheep.flac",  # 0.9 s: shorter than one block, zero-padded
    "clotho/evaluation/Tenerife_bazaar_2.wav",  # 15.7 s at 44.1 kHz (no resampling): 12 blocks
]
SAMPLING_RATE = 44100
N_FFT, HOP, MEL_BINS = 2048, 1024, 96


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def converted(aisfx_model_dir) -> Path:
    return aisfx_model_dir


@pytest.fixture(scope="module")
def aisfx_network() -> torch.nn.Module:
    """aisfx's ``CrossNet(EmbeddingNet("max", 3, 1, 64))`` with the packaged weights, built by aisfx itself."""
    weights, datasets = convert._panns.load_checkpoint(ai.get_path_modelWeights())
    return ai.load_bestModel(weights, datasets, "cpu")


def htk_mel_filters_l1() -> np.ndarray:
    """librosa.filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0, fmax=22050, htk=True, norm=1), ``(96, 1025)``."""
    hz_to_mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)  # noqa: E731
    mel_to_hz = lambda mel: 700.0 * (10.0 ** (mel / 2595.0) - 1.0)  # noqa: E731
    fft_hz = np.linspace(0.0, SAMPLING_RATE / 2, N_FFT // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLING_RATE / 2), MEL_BINS + 2))
    rising = (fft_hz[None, :] - edges_hz[:-2, None]) / np.diff(edges_hz)[:-1, None]
    falling = (edges_hz[2:, None] - fft_hz[None, :]) / np.diff(edges_hz)[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters / filters.sum(axis=1, keepdims=True)


def aisfx_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """aisfx's ``spectrogram_librosa.compute_spectrogram`` after loading, in numpy, laid out ``(frames, mel)``.

    Peak normalisation; ``librosa.stft(center=True, pad_mode="constant")`` with a periodic Hann window; power;
    HTK mel with L1-normalised filters; ``log10(1e4 * mel + 1)``.
    """
    waveform = waveform / np.abs(waveform).max()
    padded = np.pad(waveform, N_FFT // 2)
    num_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = np.stack([padded[index * HOP : index * HOP + N_FFT] for index in range(num_frames)])
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, 1025)
    return np.log10(1e4 * (power @ htk_mel_filters_l1().T) + 1.0)


def aisfx_block_embeddings(waveform: np.ndarray, network: torch.nn.Module) -> torch.Tensor:
    """aisfx's inference: normalise, cut 100-frame blocks every 50 frames, embed each block ``(N, 512)``."""
    spectrogram = ap.spectrogram_normalize(aisfx_spectrogram(waveform), spec_norm="original")
    if spectrogram.shape[0] > ai.EMB_BLOCK_LENGTH // 2:
        return ai.model_get_embedding(spectrogram, 0.5, True, network, "cpu")
    # aisfx's compute_hopSize asserts hop < frames; its blocking itself zero-pads a short clip into one block.
    blocks = ap.blocking(spectrogram, ai.EMB_BLOCK_LENGTH, ai.EMB_BLOCK_LENGTH // 2, True)
    with torch.no_grad():
        return network.get_embedding(torch.Tensor(blocks))


def read_clips(root: Path) -> list[tuple[np.ndarray, int]]:
    return [sf.read(root / name, dtype="float64") for name in CLIPS]


def test_every_tensor_of_the_embedding_net_is_loaded(converted):
    state_dict, _ = convert._panns.load_checkpoint(convert.default_checkpoint_path())
    model = AutoModel.from_pretrained(converted)
    ours = model.state_dict()
    for block in range(4):
        for name in (
            "conv1.weight",
            "bn1.weight",
            "bn1.running_var",
            "conv2.weight",
            "bn2.bias",
            "bn2.running_mean",
        ):
            assert torch.equal(
                ours[f"encoder.blocks.{block}.{name}"],
                state_dict[f"embedding_net.conv_block{block + 1}.{name}"],
            )
    assert len(ours) == sum(key.startswith("embedding_net.") for key in state_dict) == 48
    assert (model.config.variant, model.config.block_frames, model.config.block_hop_frames) == (
        "aisfx9",
        100,
        50,
    )


def test_embeddings_match_aisfx_on_real_clips(shared_data, converted, aisfx_network):
    extractor = feature_extraction.MLTMFeatureExtractor.from_pretrained(converted)
    model = AutoModel.from_pretrained(converted).eval()
    clips = read_clips(shared_data)
    # Our path: native-rate audio in one padded batch (the extractor resamples with soxr HQ, as librosa's default).
    by_rate = {}
    for index, (_, rate) in enumerate(clips):
        by_rate.setdefault(rate, []).append(index)
    pooled, blocks = {}, {}
    for rate, indices in by_rate.items():
        batch = extractor([clips[index][0] for index in indices], sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            output = model(**batch)
        counts = model.get_output_lengths(batch["audio_attention_mask"].sum(-1))
        for row, index in enumerate(indices):
            pooled[index] = output.pooler_output[row]
            blocks[index] = output.last_hidden_state[row, : int(counts[row])]
    errors = []
    for index, (waveform, rate) in enumerate(clips):
        expected_blocks = aisfx_block_embeddings(
            soxr.resample(waveform, rate, SAMPLING_RATE, quality="HQ"), aisfx_network
        )
        assert blocks[index].shape == expected_blocks.shape, CLIPS[index]
        errors.append((blocks[index] - expected_blocks).abs().max().item())
        errors.append((pooled[index] - expected_blocks.mean(dim=0)).abs().max().item())
        assert expected_blocks.abs().max() > 0.5
    assert max(errors) < 1e-4, dict(zip(CLIPS, errors[1::2], strict=True))


def test_model_matches_aisfx_on_the_same_spectrogram(shared_data, converted, aisfx_network):
    """Isolates the network and the blocking: both sides get aisfx's spectrogram of a multi-block clip."""
    model = AutoModel.from_pretrained(converted).eval()
    waveform, rate = sf.read(shared_data / CLIPS[3], dtype="float64")
    spectrogram = ap.spectrogram_normalize(aisfx_spectrogram(soxr.resample(waveform, rate, SAMPLING_RATE)))
    expected = ai.model_get_embedding(spectrogram, 0.5, True, aisfx_network, "cpu")
    with torch.no_grad():
        output = model(torch.tensor(spectrogram[None], dtype=torch.float32))
    torch.testing.assert_close(output.last_hidden_state[0], expected, atol=1e-5, rtol=1e-5)


def test_unexpected_or_missing_keys_are_errors(tmp_path):
    state_dict, datasets = convert._panns.load_checkpoint(convert.default_checkpoint_path())
    broken = dict(state_dict)
    del broken["embedding_net.conv_block3.bn2.running_var"]
    broken["embedding_net.conv_block5.conv1.weight"] = torch.zeros(1)
    torch.save((broken, datasets), tmp_path / "broken.pth")
    with pytest.raises(
        ValueError, match=r"missing keys \['embedding_net.conv_block3.bn2.running_var'\].*conv_block5"
    ):
        convert.convert_aisfx_checkpoint(tmp_path / "out", tmp_path / "broken.pth")
    torch.save(broken, tmp_path / "not_a_pair.pth")
    with pytest.raises(ValueError, match="state_dict, ds_dict"):
        convert.convert_aisfx_checkpoint(tmp_path / "out", tmp_path / "not_a_pair.pth")


def test_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["convert", "--output_dir", str(tmp_path / "cli")])
    convert.main()
    assert (tmp_path / "cli" / "config.json").exists() and (tmp_path / "cli" / "model.safetensors").exists()
