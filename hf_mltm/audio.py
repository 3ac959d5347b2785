"""The one audio input path: decoding, down-mixing, resampling and cropping, without torchaudio or torchcodec.

Every audio consumer of the package (the collators, `PannsFeatureExtractor` / `MLTMFeatureExtractor`, retrieval
evaluation, the Space) goes through these functions, so a clip is turned into samples the same way everywhere:

- `load_audio`: any audio value a dataset row can hold (a path, encoded bytes, an undecoded ``{"bytes", "path"}``
  `datasets.Audio` dict or a decoded ``{"array", "sampling_rate"}`` dict) -> float32 waveform at a target rate;
- `to_mono_float`: a raw array or tensor (float, int16/int32 PCM, mono or channels first) -> checked float mono;
- `resample`: soxr resampling (the resampler ``transformers`` itself uses) with validated rates;
- `crop_waveform`: a start or seeded random crop to a maximum number of samples;
- `check_sampling_rate`: the rate check all of them run *before* any native call.

Decoding uses ``soundfile`` (libsndfile: WAV, FLAC, OGG, MP3 and more). Multi-channel waveforms are always laid
out channels first, ``(channels, num_samples)``, in this package.

Sampling rates are validated in Python before soxr or libsndfile see them: soxr never returns for a NaN rate (and
no Python signal can interrupt it), an infinite target rate makes it allocate without bound, and a string rate
fails with a bare `TypeError` deep inside it.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch

__all__ = [
    "AudioArray",
    "AudioSource",
    "MAX_ABS_FLOAT_SAMPLE",
    "MAX_SAMPLING_RATE",
    "MIN_SAMPLING_RATE",
    "check_sampling_rate",
    "crop_waveform",
    "load_audio",
    "resample",
    "to_mono_float",
]

MIN_SAMPLING_RATE = 1_000
"""Lowest sampling rate in Hz that `check_sampling_rate` accepts."""
MAX_SAMPLING_RATE = 768_000
"""Highest sampling rate in Hz that `check_sampling_rate` accepts (the highest rate audio interfaces offer)."""

MAX_ABS_FLOAT_SAMPLE = 1_000.0
"""Largest magnitude `to_mono_float` accepts for float samples (60 dB above full scale). Float audio lies in [-1, 1];
far larger values are integer PCM cast to float without scaling, and would overflow the power spectrum."""

AudioArray = np.ndarray | torch.Tensor
"""A raw clip: 1-D ``(num_samples,)`` or channels-first ``(channels, num_samples)`` samples."""
AudioSource = str | os.PathLike | bytes | Mapping[str, Any]
"""An audio value of a dataset row: a path, encoded bytes, ``{"bytes", "path"}`` or ``{"array", "sampling_rate"}``."""

_INT_SCALES = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def check_sampling_rate(value: Any, name: str = "sampling_rate") -> int:
    """Validate a sampling rate and return it as an `int` number of Hz.

    Args:
        value: The rate to check: an integer, or an integral float such as ``44100.0`` (numpy scalars too).
        name (`str`, defaults to ``"sampling_rate"``): How the error message names the argument.

    Returns:
        `int`: The rate in Hz, in ``[MIN_SAMPLING_RATE, MAX_SAMPLING_RATE]`` = ``[1000, 768000]``.

    Raises:
        ValueError: ``value`` is a bool, a string or another non-number, NaN or infinite, not a whole number of Hz,
            or outside ``[1000, 768000]``. The message names ``name``.

    Example:

    ```python
    >>> from hf_mltm.audio import check_sampling_rate
    >>> check_sampling_rate(44100.0)
    44100

    ```
    """
    allowed = f"a whole number of Hz in [{MIN_SAMPLING_RATE}, {MAX_SAMPLING_RATE}] (e.g. 16000)"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be {allowed}, got {_short_repr(value)} of type {type(value).__name__}."
        )
    if isinstance(value, numbers.Integral):
        rate = int(value)
    else:
        number = float(value)
        if not math.isfinite(number) or not number.is_integer():
            raise ValueError(f"{name} must be {allowed}, got {value!r}.")
        rate = int(number)
    if not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
    return rate


def to_mono_float(
    array: AudioArray, *, dtype: type[np.floating] = np.float64, mono: bool = True, label: str = "audio"
) -> np.ndarray:
    """Check a raw clip and turn it into float samples in [-1, 1], mixed down to mono.

    Args:
        array (`np.ndarray` or `torch.Tensor`): 1-D ``(num_samples,)`` or 2-D channels-first
            ``(channels, num_samples)`` samples (transpose soundfile's ``(num_samples, channels)``): float in
            [-1, 1], or int16/int32 PCM, divided by 2**15 / 2**31. A 2-D array is always one multi-channel clip.
        dtype (`np.float32` or `np.float64`, defaults to `np.float64`): Output dtype. Integer PCM is scaled in
            float64 and then cast; float input is cast directly.
        mono (`bool`, defaults to `True`): Average the channels (in ``dtype``) into one.
        label (`str`, defaults to ``"audio"``): How error messages name the clip (e.g. ``"Audio clip 3"``).

    Returns:
        `np.ndarray` of dtype ``dtype``: ``(num_samples,)`` when ``mono``, else ``(channels, num_samples)`` (a 1-D
        input gives ``(1, num_samples)``).

    Raises:
        ValueError: The clip cannot be read as an array, is not 1-D/2-D, is empty, is laid out
            ``(num_samples, channels)`` (more rows than columns), has a dtype other than float/int16/int32,
            holds NaN or infinite samples, or float samples beyond `MAX_ABS_FLOAT_SAMPLE` in magnitude.
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        # bfloat16 has no numpy dtype
        array = (array.double() if array.is_floating_point() else array).numpy()
    try:
        array = np.asarray(array)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{label} cannot be read as an array of samples: {error}") from error
    if array.ndim not in (1, 2):
        raise ValueError(
            f"{label} must be 1-D (num_samples,) or 2-D (channels, num_samples), got {array.ndim}-D "
            f"input of shape {array.shape}."
        )
    if array.size == 0:
        raise ValueError(f"{label} is empty (shape {array.shape}).")
    if array.ndim == 2 and array.shape[0] > array.shape[1]:
        raise ValueError(
            f"{label} has shape {array.shape}: 2-D audio must be channels first (channels, num_samples); "
            f"transpose (num_samples, channels) arrays such as soundfile's."
        )
    if array.dtype in _INT_SCALES:
        array = (array.astype(np.float64) / _INT_SCALES[array.dtype]).astype(dtype, copy=False)
    elif array.dtype.kind == "f":
        array = array.astype(dtype)
    else:
        raise ValueError(f"{label} has dtype {array.dtype}: expected float, int16 or int32 samples.")
    if not np.isfinite(array).all():
        raise ValueError(f"{label} contains NaN or infinite samples.")
    peak = float(np.abs(array).max())
    if peak > MAX_ABS_FLOAT_SAMPLE:
        raise ValueError(
            f"{label} has float samples up to |x| = {peak:.4g}, but float audio must lie in [-1, 1] (at most "
            f"{MAX_ABS_FLOAT_SAMPLE:g} is accepted): integer PCM cast to float? Divide it by 32768 (int16) or "
            f"2**31 (int32), or pass the integer array itself."
        )
    return _mix(array, mono)


def _mix(waveform: np.ndarray, mono: bool) -> np.ndarray:
    """``(num_samples,)`` channel mean when ``mono``, else ``(channels, num_samples)``."""
    if mono:
        return waveform.mean(axis=0) if waveform.ndim == 2 else waveform
    return waveform if waveform.ndim == 2 else waveform[None, :]


def _describe(source: str | os.PathLike | bytes) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else repr(os.fspath(source))


def _encoded_source(source: Any, label: str | None) -> str | os.PathLike | bytes:
    """The path or encoded bytes of an undecoded audio value (a path, bytes or a ``{"bytes", "path"}`` dict)."""
    where = f" ({label})" if label else ""
    if isinstance(source, Mapping):
        data, path = source.get("bytes"), source.get("path")
        if isinstance(data, bytes | bytearray | memoryview) and len(data) > 0:
            return bytes(data)
        if isinstance(path, str | os.PathLike) and os.fspath(path):
            return path
        raise ValueError(
            f"Audio value{where} has no usable 'array', 'bytes' or 'path' (keys {sorted(map(str, source))}): give a "
            f"file path, keep the column undecoded (datasets.Audio(decode=False)) or pass "
            f"{{'array': samples, 'sampling_rate': rate}}."
        )
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        return source
    hint = (
        " (pass {'array': samples, 'sampling_rate': rate})"
        if isinstance(source, np.ndarray | torch.Tensor)
        else ""
    )
    raise ValueError(
        f"Unsupported audio value{where} of type {type(source).__name__}: expected a file path, encoded bytes, a "
        f"{{'bytes', 'path'}} dict or a decoded {{'array', 'sampling_rate'}} dict{hint}."
    )


def load_audio(
    source: AudioSource, sampling_rate: int | None = None, *, mono: bool = True, label: str | None = None
) -> tuple[np.ndarray, int]:
    """Turn any audio value of a dataset row into a float32 waveform, optionally resampled.

    Args:
        source: One of
            - a path (`str` or `os.PathLike`) or the encoded file content (`bytes`) in any format libsndfile reads:
              WAV, FLAC, OGG/Vorbis, MP3, ...;
            - an undecoded `datasets.Audio` value ``{"bytes": ..., "path": ...}`` (non-empty bytes win over the
              path);
            - a decoded value ``{"array": samples, "sampling_rate": rate}``, with samples as `to_mono_float` takes
              them (float or int16/int32 PCM, 1-D or channels first).
        sampling_rate (`int`, *optional*): Target sampling rate in Hz. When given, the waveform is resampled
            with soxr to this rate; when `None`, the source's own rate is kept.
        mono (`bool`, defaults to `True`): Average all channels into one.
        label (`str`, *optional*): Where the value comes from (e.g. ``"row 3 of the items dataset"``), added to
            error messages next to the file name.

    Returns:
        `tuple[np.ndarray, int]`: The float32 waveform (in [-1, 1] for PCM files) of shape ``(num_samples,)``
        when ``mono`` is true and ``(channels, num_samples)`` otherwise (a mono source gives
        ``(1, num_samples)``), and its sampling rate in Hz.

    Raises:
        ValueError: ``sampling_rate`` (or a decoded dict's ``"sampling_rate"``) is not a valid rate (see
            `check_sampling_rate`; checked before decoding); the value is of an unsupported type or a dict
            without usable keys; the file does not exist or cannot be decoded (the message names the file and
            carries libsndfile's reason); it holds no samples or NaN/infinite samples.

    Example:

    ```python
    >>> import numpy as np
    >>> from hf_mltm.audio import load_audio
    >>> waveform, rate = load_audio({"array": np.zeros((2, 44100)), "sampling_rate": 44100}, 32000)
    >>> waveform.shape, waveform.dtype, rate
    ((32000,), dtype('float32'), 32000)

    ```
    """
    if sampling_rate is not None:
        sampling_rate = check_sampling_rate(sampling_rate)
    where = f" ({label})" if label else ""
    if isinstance(source, Mapping) and source.get("array") is not None:
        if "sampling_rate" not in source:
            raise ValueError(f"Decoded audio value{where} has an 'array' but no 'sampling_rate'.")
        file_rate = check_sampling_rate(
            source["sampling_rate"], f"the 'sampling_rate' of the audio value{where}"
        )
        waveform = to_mono_float(source["array"], dtype=np.float32, mono=mono, label=f"Audio array{where}")
    else:
        encoded = _encoded_source(source, label)
        name = _describe(encoded) + where
        if not isinstance(encoded, bytes) and not os.path.isfile(encoded):
            raise ValueError(f"Cannot read audio file {name}: no such file.")
        try:
            data, file_rate = sf.read(
                io.BytesIO(encoded) if isinstance(encoded, bytes) else encoded,
                dtype="float32",
                always_2d=True,
            )
        except (sf.SoundFileError, RuntimeError) as error:
            raise ValueError(f"Cannot decode audio file {name}: {error}") from error
        if data.shape[0] == 0:
            raise ValueError(f"Audio file {name} contains no samples.")
        if not np.isfinite(data).all():
            raise ValueError(f"Audio file {name} contains NaN or infinite samples.")
        file_rate = check_sampling_rate(file_rate, f"the sampling rate of audio file {name}")
        waveform = _mix(data.T, mono)  # data.T: (channels, num_samples)
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    if sampling_rate is not None and sampling_rate != file_rate:
        waveform = resample(waveform, file_rate, sampling_rate)
        file_rate = sampling_rate
    return waveform, int(file_rate)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a waveform with soxr (``"HQ"`` quality, linear phase).

    Args:
        waveform (`np.ndarray` of shape ``(num_samples,)`` or ``(channels, num_samples)``): Real audio samples.
        orig_sr (`int`): Sampling rate of ``waveform`` in Hz.
        target_sr (`int`): Wanted sampling rate in Hz.

    Returns:
        `np.ndarray`: The resampled waveform in the same layout, float64 for float64 input and float32
        otherwise, with ``floor(num_samples * target_sr / orig_sr + 1/2)`` samples (halves round up), or the
        input itself when the rates are equal.

    Raises:
        ValueError: A sampling rate is invalid (see `check_sampling_rate`; checked before soxr runs),
            ``waveform`` is not a 1-D or 2-D real array, it holds NaN or infinite samples, or its values are so
            large that the resampled ones overflow.
    """
    orig_sr = check_sampling_rate(orig_sr, "orig_sr")
    target_sr = check_sampling_rate(target_sr, "target_sr")
    if not isinstance(waveform, np.ndarray):
        raise ValueError(f"waveform must be a numpy array, got {type(waveform).__name__}.")
    if waveform.ndim not in (1, 2):
        raise ValueError(
            f"Expected a waveform of shape (num_samples,) or (channels, num_samples), got {waveform.shape}."
        )
    if waveform.dtype.kind not in "fiu":
        raise ValueError(f"waveform has dtype {waveform.dtype}: expected real (float or integer) samples.")
    if orig_sr == target_sr:
        return waveform
    if not np.isfinite(waveform).all():
        raise ValueError("waveform contains NaN or infinite samples; soxr would spread them over the output.")
    dtype = np.float64 if waveform.dtype == np.float64 else np.float32
    # soxr wants (num_samples, channels) for multi-channel input
    resampled = soxr.resample(np.ascontiguousarray(waveform.T, dtype=dtype), orig_sr, target_sr)
    if not np.isfinite(resampled).all():
        raise ValueError(
            f"Resampling overflowed {dtype.__name__}: the samples are too large (up to "
            f"{float(np.abs(waveform).max()):.4g}); float audio should lie in [-1, 1]."
        )
    return np.ascontiguousarray(resampled.T)


def crop_waveform(
    waveform: np.ndarray,
    max_samples: int | None,
    *,
    random: bool = False,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Crop a waveform to at most ``max_samples`` samples along its last axis.

    Args:
        waveform (`np.ndarray` of shape ``(num_samples,)`` or ``(channels, num_samples)``): The clip.
        max_samples (`int` or `None`): Most samples to keep; `None` keeps the whole clip.
        random (`bool`, defaults to `False`): Crop at an offset drawn uniformly from ``[0, num_samples -
            max_samples]`` (training) instead of from the start (evaluation).
        generator (`torch.Generator`, *optional*): Source of the random offset (reproducible crops); `None`
            uses torch's global RNG. One ``torch.randint`` draw per cropped clip, none for a short clip.

    Returns:
        `np.ndarray`: A view of ``waveform`` with ``min(num_samples, max_samples)`` samples on its last axis
        (``waveform`` itself when it is not longer than ``max_samples``).

    Raises:
        ValueError: ``max_samples`` is not a positive integer.
    """
    if max_samples is None:
        return waveform
    if (
        isinstance(max_samples, bool | np.bool_)
        or not isinstance(max_samples, numbers.Integral)
        or max_samples < 1
    ):
        raise ValueError(f"max_samples must be a positive integer number of samples, got {max_samples!r}.")
    num_samples = waveform.shape[-1]
    if num_samples <= max_samples:
        return waveform
    start = 0
    if random:
        start = int(torch.randint(num_samples - max_samples + 1, (1,), generator=generator))
    return waveform[..., start : start + max_samples]
