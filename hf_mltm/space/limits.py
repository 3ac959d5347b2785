"""Input limits of the Space, checked before any model work, with messages meant for the person using it.

Every user input of the Space (`space/app.py`) passes through one function of this module, which either returns a
clean value or raises `SpaceInputError`, a `ValueError` whose message says what was wrong and how to fix it. The UI
shows that message instead of a traceback.

- `prepare_audio`: an uploaded or recorded clip (a file path, a ``{"path": ...}`` file dict, or Gradio's
  ``(sampling_rate, int16 samples)`` tuple) -> a mono float32 waveform at the model's rate, through the one audio
  input path `hf_mltm.audio.load_audio`. Files are checked for size and format first; clips longer than
  ``max_clip_s`` are trimmed to their first ``max_clip_s`` seconds, with a notice (only those seconds are decoded).
- `prepare_image`: an uploaded picture -> an RGB `PIL.Image.Image` through `hf_mltm.image.load_image`, within the
  Space's size limits.
- `parse_lines`, `check_query`, `check_template`: captions, labels, the search query and the prompt template.

Units: durations in seconds, sizes in bytes, sampling rates in Hz.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AUDIO_SUFFIXES",
    "DEFAULT_LIMITS",
    "IMAGE_SUFFIXES",
    "InputLimits",
    "PreparedAudio",
    "SpaceInputError",
    "check_query",
    "check_template",
    "parse_lines",
    "prepare_audio",
    "prepare_image",
]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")
"""File types the Space decodes (libsndfile through ``soundfile``; no ffmpeg is needed)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
"""Image file types the Space opens (Pillow)."""


class SpaceInputError(ValueError):
    """A user input the Space cannot use; the message is shown in the UI as is."""


@dataclass(frozen=True)
class InputLimits:
    """Limits on what one request may bring.

    Attributes:
        max_clip_s (`float`): longer clips are trimmed to their first ``max_clip_s`` seconds (with a notice).
        min_clip_s (`float`): shorter clips are refused (the audio tower needs a few frames).
        max_audio_bytes (`int`): largest audio file accepted.
        max_image_bytes (`int`): largest image file accepted.
        max_image_pixels (`int`): most pixels (width x height) of an image.
        max_text_chars (`int`): longest query, caption or label, in characters.
        max_lines (`int`): most captions or labels in one request.
        max_plan_clips (`int`): most clips in the transport-plan explorer.
        max_uploads (`int`): most clips one visitor may add to the gallery.
    """

    max_clip_s: float = 30.0
    min_clip_s: float = 0.5
    max_audio_bytes: int = 20 * 2**20
    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 200
    max_lines: int = 16
    max_plan_clips: int = 8
    max_uploads: int = 20


DEFAULT_LIMITS = InputLimits()


@dataclass(frozen=True)
class PreparedAudio:
    """A clip ready for the audio tower.

    Attributes:
        waveform (`np.ndarray` of shape `(num_samples,)`, float32): mono samples in [-1, 1].
        sampling_rate (`int`): rate of ``waveform`` in Hz.
        duration_s (`float`): duration of the original clip in seconds (before trimming).
        notice (`str` or `None`): what was changed (trimming), to show to the user.
        name (`str`): file name of the clip (``"recording"`` for an array).
        path (`str` or `None`): the uploaded file (for playback), `None` for an array.
    """

    waveform: np.ndarray
    sampling_rate: int
    duration_s: float
    notice: str | None
    name: str
    path: str | None = None

    def as_audio_value(self) -> dict[str, Any]:
        """The clip as a decoded audio value ``{"array", "sampling_rate"}`` (what the collators and adapters take)."""
        return {"array": self.waveform, "sampling_rate": self.sampling_rate}


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _file_path(value: Any, what: str) -> Path:
    if isinstance(value, Mapping):
        value = value.get("path")
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise SpaceInputError(f"No {what}: upload a file first.")
    path = Path(value)
    if not path.is_file():
        raise SpaceInputError(f"The uploaded {what} {path.name!r} could not be found on the server; upload it again.")
    return path


def _check_file(path: Path, suffixes: tuple[str, ...], max_bytes: int, what: str) -> None:
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        kinds = ", ".join(s.lstrip(".").upper() for s in suffixes)
        raise SpaceInputError(
            f"{path.name!r} is a {suffix.lstrip('.').upper() or 'file without extension'}: the Space reads {what}s "
            f"in these formats only: {kinds}. Convert it first."
        )
    size = path.stat().st_size
    if size == 0:
        raise SpaceInputError(f"{path.name!r} is empty (0 bytes); upload another {what}.")
    if size > max_bytes:
        raise SpaceInputError(
            f"{path.name!r} is {_megabytes(size)}, over the limit of {_megabytes(max_bytes)} per {what} here; "
            f"upload a shorter or smaller file."
        )


def _read_head(path: Path, max_s: float) -> tuple[np.ndarray, int, float]:
    """The first ``max_s`` seconds of an audio file ``(channels, num_samples)``, its rate in Hz and its full duration
    in seconds (from the header; only the kept frames are decoded)."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as handle:
            rate, frames = int(handle.samplerate), int(handle.frames)
            data = handle.read(frames=max(1, round(max_s * rate)), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as error:
        raise SpaceInputError(
            f"{path.name!r} could not be decoded as audio ({error}). Upload a WAV, FLAC, OGG or MP3 file."
        ) from error
    return data.T, rate, (frames if frames > 0 else data.shape[0]) / rate


def prepare_audio(value: Any, sampling_rate: int, *, limits: InputLimits = DEFAULT_LIMITS) -> PreparedAudio:
    """Check, decode, trim and resample an uploaded or recorded clip.

    Args:
        value: A file path (`str` / `os.PathLike`), a file dict ``{"path": ...}``, or Gradio's numpy audio
            ``(sampling_rate, samples)``: int16 PCM (or int32 / float) of shape ``(num_samples,)`` or
            ``(num_samples, channels)``; integer samples are divided by ``2**15`` (int16) or ``2**31`` (int32).
        sampling_rate (`int`): the rate in Hz the model wants (``processor.feature_extractor.sampling_rate``).
        limits (`InputLimits`): the limits to apply.

    Returns:
        `PreparedAudio`: the mono float32 waveform at ``sampling_rate`` (at most ``limits.max_clip_s`` seconds),
        the original duration and a notice when the clip was trimmed.

    Raises:
        SpaceInputError: no clip, a file of another type or larger than ``limits.max_audio_bytes``, a file that
            cannot be decoded, a clip shorter than ``limits.min_clip_s``, silent, or holding NaN/inf samples.
    """
    from hf_mltm.audio import check_sampling_rate, crop_waveform, load_audio

    sampling_rate = check_sampling_rate(sampling_rate)
    if value is None or (isinstance(value, (str, tuple, list)) and len(value) == 0):
        raise SpaceInputError("No audio: upload or record a clip first.")
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or isinstance(value[0], (str, os.PathLike, Mapping)):
            raise SpaceInputError("One clip at a time: pass a file, or a recording as (sampling_rate, samples).")
        rate, samples = value
        name = "recording"
        try:
            rate = check_sampling_rate(rate, "the recording's sampling rate")
        except ValueError as error:
            raise SpaceInputError(str(error)) from error
        samples = np.asarray(samples)
        if samples.ndim == 2:
            samples = samples.T  # Gradio's (num_samples, channels) -> channels first
        duration = samples.shape[-1] / rate if samples.ndim in (1, 2) else 0.0
        max_samples = max(1, round(limits.max_clip_s * rate))
        if samples.ndim in (1, 2) and samples.shape[-1] > max_samples:
            samples = samples[..., :max_samples]
        source: Any = {"array": samples, "sampling_rate": rate}
        path = None
    else:
        path = _file_path(value, "audio file")
        name = path.name
        _check_file(path, AUDIO_SUFFIXES, limits.max_audio_bytes, "audio file")
        samples, rate, duration = _read_head(path, limits.max_clip_s)
        if samples.shape[-1] == 0:
            raise SpaceInputError(f"{name!r} holds no audio samples; upload another clip.")
        source = {"array": samples, "sampling_rate": rate}
    try:
        waveform, rate = load_audio(source, sampling_rate, label=name)
    except ValueError as error:
        raise SpaceInputError(f"{name!r} cannot be used: {error}") from error
    waveform = np.ascontiguousarray(crop_waveform(waveform, max(1, round(limits.max_clip_s * rate))))
    if duration < limits.min_clip_s:
        raise SpaceInputError(
            f"{name!r} lasts {duration:.2f} s; clips must last at least {limits.min_clip_s:g} s. Record a longer one."
        )
    if not np.any(waveform):
        raise SpaceInputError(f"{name!r} is silent (every sample is 0); record or upload a clip with sound.")
    notice = None
    if duration > limits.max_clip_s + 1e-6:
        notice = (f"{name!r} lasts {duration:.1f} s; only its first {limits.max_clip_s:g} s were used "
                  f"(the Space's limit).")
    return PreparedAudio(waveform.astype(np.float32, copy=False), rate, float(duration), notice, name,
                         None if path is None else str(path))


def prepare_image(value: Any, *, limits: InputLimits = DEFAULT_LIMITS):
    """Check and open an uploaded picture.

    Args:
        value: A file path, a file dict ``{"path": ...}``, or a `PIL.Image.Image`.
        limits (`InputLimits`): the limits to apply.

    Returns:
        `PIL.Image.Image`: the picture in RGB.

    Raises:
        SpaceInputError: no picture, a file of another type or larger than ``limits.max_image_bytes``, more than
            ``limits.max_image_pixels`` pixels (checked on the header, before decoding), an aspect ratio above
            20:1, or a file Pillow cannot read.
    """
    from PIL import Image

    from hf_mltm.image import load_image

    if value is None:
        raise SpaceInputError("No picture: upload an image first.")
    if isinstance(value, Image.Image):
        source, name = value, "the picture"
        width, height = value.size
    else:
        path = _file_path(value, "image")
        _check_file(path, IMAGE_SUFFIXES, limits.max_image_bytes, "image")
        source, name = str(path), repr(path.name)
        try:
            with Image.open(path) as header:
                width, height = header.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise SpaceInputError(f"{name} could not be read as an image ({error}); upload a JPEG or PNG.") from error
    if width * height > limits.max_image_pixels:
        raise SpaceInputError(
            f"{name} has {width} x {height} pixels, more than the {limits.max_image_pixels:,} allowed here; "
            f"downscale it (the model sees 224 x 224 pixels anyway)."
        )
    try:
        return load_image(source)
    except ValueError as error:
        raise SpaceInputError(f"{name} cannot be used: {error}") from error


def _check_text(text: str, what: str, limits: InputLimits) -> str:
    if len(text) > limits.max_text_chars:
        raise SpaceInputError(
            f"{what} {text[:40]!r}... has {len(text)} characters; keep it under {limits.max_text_chars}."
        )
    return text


def check_query(query: Any, *, limits: InputLimits = DEFAULT_LIMITS) -> str:
    """The search query, stripped.

    Raises:
        SpaceInputError: the query is not text, empty, or longer than ``limits.max_text_chars``.
    """
    if not isinstance(query, str) or not query.strip():
        raise SpaceInputError("Type what you want to hear first, e.g. 'a dog barking'.")
    return _check_text(" ".join(query.split()), "The query", limits)


def parse_lines(text: Any, what: str = "caption", *, limits: InputLimits = DEFAULT_LIMITS,
                min_count: int = 1) -> list[str]:
    """Captions or labels typed one per line (commas also separate labels), stripped, without blanks or repeats.

    Args:
        text (`str`): what the user typed.
        what (`str`, defaults to ``"caption"``): ``"caption"`` (one per line; commas are kept) or ``"label"`` (one per
            line or comma-separated).
        limits (`InputLimits`): ``max_lines`` and ``max_text_chars``.
        min_count (`int`, defaults to 1): fewest distinct entries needed.

    Returns:
        `list[str]`: the distinct entries in the order typed, each with single spaces.

    Raises:
        SpaceInputError: fewer than ``min_count`` entries, more than ``limits.max_lines``, or one too long.
    """
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise SpaceInputError(f"The {what}s must be text, one per line.")
    pieces = text.replace(",", "\n").splitlines() if what == "label" else text.splitlines()
    entries = list(dict.fromkeys(" ".join(piece.split()) for piece in pieces if piece.strip()))
    if len(entries) < min_count:
        need = "one" if min_count == 1 else str(min_count)
        raise SpaceInputError(f"Type at least {need} {what}{'s' if min_count > 1 else ''}, one per line.")
    if len(entries) > limits.max_lines:
        raise SpaceInputError(f"{len(entries)} {what}s given; at most {limits.max_lines} are allowed here.")
    return [_check_text(entry, f"The {what}", limits) for entry in entries]


def check_template(template: Any, *, limits: InputLimits = DEFAULT_LIMITS) -> str:
    """A class-prompt template with exactly the ``{label}`` field, e.g. ``"the sound of {label}"``.

    Raises:
        SpaceInputError: not text, without ``{label}``, with another field or a stray brace, or too long.
    """
    if not isinstance(template, str) or not template.strip():
        raise SpaceInputError("The prompt template is empty; use e.g. 'the sound of {label}'.")
    template = _check_text(" ".join(template.split()), "The prompt template", limits)
    if "{label}" not in template:
        raise SpaceInputError(f"The prompt template {template!r} has no {{label}}; e.g. 'the sound of {{label}}'.")
    try:
        template.format(label="x")
    except (KeyError, IndexError, ValueError) as error:
        raise SpaceInputError(
            f"The prompt template {template!r} may only contain the field {{label}} (problem: {error!s}); write "
            f"literal braces as {{{{ and }}}}."
        ) from error
    return template
