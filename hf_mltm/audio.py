"""Audio decoding and resampling without torchaudio or torchcodec.

Decoding uses ``soundfile`` (libsndfile: WAV, FLAC, OGG, MP3 and more) and resampling uses ``soxr``, the
resampler that ``transformers`` itself uses. Multi-channel waveforms are always laid out channels first,
``(channels, num_samples)``, in this package.
"""

from __future__ import annotations

import io
import os

import numpy as np
import soundfile as sf
import soxr

__all__ = ["load_audio", "resample"]

AudioSource = str | os.PathLike | bytes


def _describe(source: AudioSource) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else repr(os.fspath(source))


def load_audio(
    source: AudioSource, sampling_rate: int | None = None, *, mono: bool = True
) -> tuple[np.ndarray, int]:
    """Decode an audio file into a float32 waveform.

    Args:
        source (`str`, `os.PathLike` or `bytes`): Path to the file, or the encoded file content (e.g. a
            dataset's ``audio["bytes"]``). Any format libsndfile reads works: WAV, FLAC, OGG/Vorbis, MP3, ...
        sampling_rate (`int`, *optional*): Target sampling rate in Hz. When given, the waveform is resampled
            with soxr to this rate; when `None`, the file's own rate is kept.
        mono (`bool`, defaults to `True`): Average all channels into one.

    Returns:
        `tuple[np.ndarray, int]`: The waveform, float32 in [-1, 1] for PCM files, of shape
        ``(num_samples,)`` when ``mono`` is true and ``(channels, num_samples)`` otherwise (a mono file
        gives ``(1, num_samples)``), and its sampling rate in Hz.

    Raises:
        ValueError: The file does not exist, cannot be decoded (the message names the file and carries
            libsndfile's reason), or holds no samples; or ``sampling_rate`` is not positive.
    """
    name = _describe(source)
    if not isinstance(source, bytes) and not os.path.isfile(source):
        raise ValueError(f"Cannot read audio file {name}: no such file.")
    try:
        data, file_rate = sf.read(
            io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32", always_2d=True
        )
    except sf.SoundFileError as error:
        raise ValueError(f"Cannot decode audio file {name}: {error}") from error
    if data.shape[0] == 0:
        raise ValueError(f"Audio file {name} contains no samples.")
    waveform = data.T  # (channels, num_samples)
    if mono:
        waveform = waveform.mean(axis=0)
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    if sampling_rate is not None and sampling_rate != file_rate:
        waveform = resample(waveform, file_rate, sampling_rate)
        file_rate = sampling_rate
    return waveform, int(file_rate)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a waveform with soxr (``"HQ"`` quality, linear phase).

    Args:
        waveform (`np.ndarray` of shape ``(num_samples,)`` or ``(channels, num_samples)``): Float audio.
        orig_sr (`int`): Sampling rate of ``waveform`` in Hz.
        target_sr (`int`): Wanted sampling rate in Hz.

    Returns:
        `np.ndarray`: The resampled waveform in the same layout, float64 for float64 input and float32
        otherwise, with ``round(num_samples * target_sr / orig_sr)`` samples (the input itself when the
        rates are equal).

    Raises:
        ValueError: A sampling rate is not positive, or ``waveform`` is not 1-D or 2-D.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"Sampling rates must be positive, got orig_sr={orig_sr}, target_sr={target_sr}.")
    if waveform.ndim not in (1, 2):
        raise ValueError(
            f"Expected a waveform of shape (num_samples,) or (channels, num_samples), got {waveform.shape}."
        )
    if orig_sr == target_sr:
        return waveform
    dtype = np.float64 if waveform.dtype == np.float64 else np.float32
    # soxr wants (num_samples, channels) for multi-channel input
    resampled = soxr.resample(np.ascontiguousarray(waveform.T, dtype=dtype), orig_sr, target_sr)
    return np.ascontiguousarray(resampled.T)
