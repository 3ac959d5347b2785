"""Log-mel feature extractor of the PANNs family: the PANNs front-end by default, aisfx's on request.

`PannsModel` (and m-LTM's audio tower, whose extractor `MLTMFeatureExtractor` is a thin subclass of this one)
takes these features as ``input_features``. Waveform input goes through :mod:`hf_mltm.audio` (`to_mono_float`,
`resample`, `crop_waveform`), the one audio input path of the package.

Letters: ``B`` clips in a batch, ``T`` frames, ``F = n_fft // 2 + 1`` frequency bins, ``M = feature_size``
mel bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import TensorType

# absolute: trust_remote_code copies only this family's files
from hf_mltm.audio import AudioArray, check_sampling_rate, crop_waveform, resample, to_mono_float

__all__ = ["AISFX_FRONTEND", "PannsFeatureExtractor"]

MIN_SAMPLING_RATE = 8000  # Hz; lowest input and feature rate the front-end accepts
DB_AMIN = 1e-10  # floor of the power mel spectrogram before 10*log10: silence gives -100 dB
AISFX_LOG_SCALE = 1e4  # aisfx "shift_scale_log": log10(1e4 * mel + 1)
# aisfx.preprocessing.spectrogram_normalize(spec_norm="original") divides the compressed mel by this maximum
AISFX_LOG_MAX = 9.457798957824707
_CHOICES = {
    "mel_scale": ("slaney", "htk"),
    "mel_norm": ("slaney", "l1", None),
    "log_mode": ("db", "aisfx"),
    "normalize_waveform": (None, "peak"),
    "pad_mode": ("reflect", "constant"),
}

AISFX_FRONTEND = {
    "sampling_rate": 44100,
    "feature_size": 96,
    "n_fft": 2048,
    "win_length": 2048,
    "hop_length": 1024,
    "f_min": 0.0,
    "f_max": 22050.0,
    "mel_scale": "htk",
    "mel_norm": "l1",
    "log_mode": "aisfx",
    "normalize_waveform": "peak",
    "pad_mode": "constant",
}
"""Constructor settings of the aisfx front-end: ``PannsFeatureExtractor(**AISFX_FRONTEND)``."""


# Keyword arguments the transformers base classes accept or write into saved feature-extractor configs.
_BASE_CONFIG_KEYS = frozenset({"return_attention_mask", "padding_side", "feature_extractor_type", "processor_class",
                               "auto_map", "_processor_class"})


class PannsFeatureExtractor(SequenceFeatureExtractor):
    r"""Turns waveforms into log-mel spectrograms ``(B, T, M)`` and a frame mask ``(B, T)``.

    Pipeline, per clip: int16/int32 scaled to [-1, 1) and channels averaged to mono (`hf_mltm.audio.to_mono_float`)
    -> resampled with soxr from the caller's ``sampling_rate`` to ``self.sampling_rate``
    (`hf_mltm.audio.resample`) -> optional peak normalisation -> cropped (`hf_mltm.audio.crop_waveform`)
    or padded to ``max_length_s`` -> ``torch.stft`` power spectrum (periodic Hann window of ``win_length``
    samples centred in ``n_fft``, ``center=True``, ``pad_mode`` padding) -> mel filter bank
    (`transformers.audio_utils.mel_filter_bank`) -> log. A clip of ``N`` samples gives
    ``T = 1 + N // hop_length`` frames.

    Defaults are the PANNs front-end of m-LTM (ResNet38/Cnn14 with torchlibrosa): 32 kHz, ``n_fft =
    win_length = 1024``, hop 320, 64 Slaney-scale mel bins with Slaney area normalisation from 50 Hz to
    14 kHz, reflect padding, ``10 * log10(max(mel, 1e-10))`` and 10 s clips: 10 s of audio gives exactly
    1001 frames.

    The aisfx front-end (``PannsFeatureExtractor.aisfx_frontend()``, settings in `AISFX_FRONTEND`) follows
    ``aisfx/spectrogram/spectrogram_librosa.py`` of aisfx 0.1.2 (which pins librosa 0.9.2) with the
    constants of ``aisfx/inference.py`` and ``aisfx/preprocessing.py``:

    - 44.1 kHz, ``n_fft = win_length = 2048``, hop 1024, periodic Hann window, ``center=True`` with *zero*
      padding (librosa >= 0.9 defaults to ``pad_mode="constant"``), hence ``pad_mode="constant"``;
    - power spectrum (``power=2.0``), 96 HTK-scale mel bins from 0 Hz to 22050 Hz (Nyquist), triangles
      linear in Hz, each filter divided by its sum (librosa ``norm=1``), i.e. ``mel_norm="l1"``;
    - waveform divided by its peak ``max|x|`` when that is non-zero (``normalize_waveform="peak"``);
    - ``log10(1e4 * mel + 1) / 9.457798957824707``: the "shift_scale_log" compression followed by
      ``spectrogram_normalize(spec_norm="original")`` (min 0, max 9.4578), i.e. ``log_mode="aisfx"``.

    Remaining differences: aisfx resamples with librosa's default resampler (resampy), this class with soxr.
    aisfx's librosa path returns ``(M, T)`` and then blocks it along its first axis; the output here is
    ``(T, M)``, the layout of aisfx's Essentia path. That Essentia path (``spectrogram_essentia.py``, the
    one used for the ISMIR 2022 weights) differs further: a symmetric Hann window, triangles linear on the
    mel axis (``weighting="warping"``), filter bin ranges rounded to whole bins, and EasyLoader's ReplayGain
    loudness normalisation instead of peak normalisation.

    Cropping and padding act on the waveform. A clip longer than ``max_length_s`` is cropped: from its start
    by default, at a uniformly random offset with ``random_crop=True`` (training). Shorter clips are
    right-padded with ``padding_value`` samples; with ``max_length_s=None`` the batch is padded to its
    longest clip. Frame ``t`` of a clip with ``N`` real samples is valid in ``audio_attention_mask`` when its
    centre ``t * hop_length <= N``: exactly the ``1 + N // hop_length`` frames the clip yields on its own.

    Numerics: everything up to the log (resampling, STFT, mel, log) runs in float64 and the features are
    returned as float32, so float32 rounding is the only error against an exact implementation (below
    1e-5 dB); float32 STFTs err by up to about 6e-3 dB in quiet bins. Clips are processed one at a time:
    memory is O(T * F) per clip. No output is NaN: silence gives -100 dB (``"db"``) or 0 (``"aisfx"``).

    Args:
        feature_size (`int`, defaults to 64): Number of mel bins ``M``.
        sampling_rate (`int`, defaults to 32000): Sampling rate in Hz the features are computed at.
        n_fft (`int`, defaults to 1024): FFT size in samples.
        win_length (`int`, defaults to 1024): Hann window length in samples (``<= n_fft``).
        hop_length (`int`, defaults to 320): Hop between frames in samples.
        f_min (`float`, defaults to 50.0): Lowest mel filter edge in Hz.
        f_max (`float`, defaults to 14000.0): Highest mel filter edge in Hz (``<= sampling_rate / 2``).
        mel_scale (`str`, defaults to `"slaney"`): ``"slaney"`` or ``"htk"`` mel formula.
        mel_norm (`str`, *optional*, defaults to `"slaney"`): ``"slaney"`` (each filter scaled by 2 / its
            width in Hz), ``"l1"`` (each filter divided by its sum) or `None` (triangles of height 1).
        log_mode (`str`, defaults to `"db"`): ``"db"``: ``10 * log10(max(mel, 1e-10))``; ``"aisfx"``:
            ``log10(1e4 * mel + 1) / 9.457798957824707``.
        normalize_waveform (`str`, *optional*): `None`, or ``"peak"`` to divide the resampled clip by
            ``max|x|`` when that is non-zero (before cropping).
        max_length_s (`float`, *optional*, defaults to 10.0): Length in seconds every clip is cropped or
            padded to; `None` keeps whole clips and pads the batch to the longest.
        padding_value (`float`, defaults to 0.0): Waveform sample value used for padding.
        pad_mode (`str`, defaults to `"reflect"`): How ``torch.stft`` pads ``n_fft // 2`` samples at both
            ends: ``"reflect"`` (PANNs) or ``"constant"`` (zeros, as aisfx with librosa >= 0.9).

    Example:

    ```python
    >>> import numpy as np
    >>> from hf_mltm.models.panns import PannsFeatureExtractor
    >>> extractor = PannsFeatureExtractor()
    >>> clips = [np.zeros(44100 * 3, dtype=np.float32), np.zeros(44100 * 12, dtype=np.float32)]
    >>> batch = extractor(clips, sampling_rate=44100, return_tensors="pt")
    >>> batch["input_features"].shape, batch["audio_attention_mask"].sum(-1).tolist()
    (torch.Size([2, 1001, 64]), [301, 1001])

    ```
    """

    model_input_names = ["input_features", "audio_attention_mask"]

    def __init__(
        self,
        feature_size: int = 64,
        sampling_rate: int = 32000,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 320,
        f_min: float = 50.0,
        f_max: float = 14000.0,
        mel_scale: str = "slaney",
        mel_norm: str | None = "slaney",
        log_mode: str = "db",
        normalize_waveform: str | None = None,
        max_length_s: float | None = 10.0,
        padding_value: float = 0.0,
        pad_mode: str = "reflect",
        **kwargs,
    ):
        from hf_mltm.validation import check_known_keys, keyword_names

        # The base class stores any keyword as an attribute: a misspelt setting (num_mel_bins for feature_size) would
        # be kept and ignored. Only the entries transformers itself writes into saved configs pass through.
        unknown = set(kwargs) - _BASE_CONFIG_KEYS
        if unknown:
            check_known_keys(sorted(unknown), (keyword_names(PannsFeatureExtractor.__init__) - {"self", "kwargs"})
                             | _BASE_CONFIG_KEYS, f"{type(self).__name__}() arguments")
        super().__init__(
            feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs
        )
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.f_min = f_min
        self.f_max = f_max
        self.mel_scale = mel_scale
        self.mel_norm = mel_norm
        self.log_mode = log_mode
        self.normalize_waveform = normalize_waveform
        self.max_length_s = max_length_s
        self.pad_mode = pad_mode
        self._check_settings()
        self.mel_filters = self._build_mel_filters()  # (F, M) float64; to_dict() leaves it out

    @classmethod
    def aisfx_frontend(cls, **overrides) -> PannsFeatureExtractor:
        """The aisfx front-end (`AISFX_FRONTEND`): 44.1 kHz, 96 HTK mel bins, L1 filters, peak-normalised.

        Args:
            **overrides: Constructor arguments replacing those settings, e.g. ``max_length_s=None``.

        Returns:
            `PannsFeatureExtractor` (or the subclass it is called on): A new extractor.
        """
        return cls(**{**AISFX_FRONTEND, **overrides})

    def _check_settings(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        self.sampling_rate = check_sampling_rate(self.sampling_rate)
        if self.sampling_rate < MIN_SAMPLING_RATE:
            raise ValueError(f"sampling_rate must be >= {MIN_SAMPLING_RATE} Hz, got {self.sampling_rate}.")
        for name in ("feature_size", "hop_length", "n_fft", "win_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}.")
        for name in ("f_min", "f_max", "padding_value"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if self.max_length_s is not None and (
            isinstance(self.max_length_s, bool)
            or not isinstance(self.max_length_s, Real)
            or not 0 < self.max_length_s < math.inf
        ):
            raise ValueError(
                f"max_length_s must be a positive, finite number of seconds or None, got {self.max_length_s!r}."
            )
        if self.feature_size < 1 or self.hop_length < 1 or self.n_fft < 2:
            raise ValueError(
                f"Need feature_size >= 1, hop_length >= 1 and n_fft >= 2, got {self.feature_size}, "
                f"{self.hop_length} and {self.n_fft}."
            )
        if not 1 <= self.win_length <= self.n_fft:
            raise ValueError(f"win_length must be in [1, n_fft={self.n_fft}], got {self.win_length}.")
        if not 0 <= self.f_min < self.f_max <= self.sampling_rate / 2:
            raise ValueError(
                f"Need 0 <= f_min < f_max <= sampling_rate / 2 = {self.sampling_rate / 2} Hz, "
                f"got f_min={self.f_min}, f_max={self.f_max}."
            )
        if self.max_length_s is not None and self._max_samples() <= self.n_fft // 2:
            raise ValueError(
                f"max_length_s={self.max_length_s} s is shorter than half an FFT window "
                f"({self.n_fft // 2} samples)."
            )

    def _build_mel_filters(self) -> np.ndarray:
        filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.feature_size,
            min_frequency=self.f_min,
            max_frequency=self.f_max,
            sampling_rate=self.sampling_rate,
            norm="slaney" if self.mel_norm == "slaney" else None,
            mel_scale=self.mel_scale,
        )  # (F, M)
        empty = np.flatnonzero(filters.max(axis=0) == 0)
        if empty.size:
            raise ValueError(
                f"Mel filters {empty.tolist()} contain no FFT bin: use fewer mel bins, a larger n_fft or a "
                f"wider [f_min, f_max] (feature_size={self.feature_size}, n_fft={self.n_fft})."
            )
        if self.mel_norm == "l1":
            filters = filters / filters.sum(axis=0, keepdims=True)
        return filters

    def _max_samples(self) -> int | None:
        return None if self.max_length_s is None else round(self.max_length_s * self.sampling_rate)

    def __call__(
        self,
        raw_audio: AudioArray | Sequence[AudioArray],
        sampling_rate: int | None = None,
        *,
        random_crop: bool = False,
        generator: torch.Generator | None = None,
        return_tensors: str | TensorType | None = None,
    ) -> BatchFeature:
        """Compute log-mel features for one clip or a batch of clips.

        Args:
            raw_audio (`np.ndarray`, `torch.Tensor` or a list/tuple of them): One clip, or a list of clips of
                any lengths for a batch. A clip is 1-D ``(num_samples,)`` or 2-D channels-first
                ``(channels, num_samples)`` (transpose soundfile's ``(num_samples, channels)``); float in
                [-1, 1], or int16/int32 PCM (divided by 2**15 / 2**31). A 2-D array is always one
                multi-channel clip, never a batch.
            sampling_rate (`int`): Sampling rate of ``raw_audio`` in Hz, a whole number in [8000, 768000]
                (``44100.0`` is fine). Required: the audio is resampled from it to ``self.sampling_rate``. It is
                checked before any native call (soxr never returns for a NaN rate).
            random_crop (`bool`, defaults to `False`): Crop clips longer than ``max_length_s`` at a random
                offset (training) instead of from their start (evaluation).
            generator (`torch.Generator`, *optional*): Source of the random crop offsets (reproducible crops).
            return_tensors (`str` or `TensorType`, *optional*): ``"pt"`` for torch tensors, else numpy arrays.

        Returns:
            `BatchFeature` with ``input_features`` (float32, shape ``(B, T, M)``, ``B = 1`` for a single
            clip) and ``audio_attention_mask`` (int64, shape ``(B, T)``, 1 for frames of real audio, 0 for
            padding).

        Raises:
            ValueError: ``sampling_rate`` is missing, not a whole number of Hz (a string, bool, NaN, inf, ...) or
                outside [8000, 768000] Hz; the batch is empty; or a clip is empty, not 1-D/2-D, laid out
                ``(num_samples, channels)``, of an unsupported dtype, holds NaN/inf or float samples beyond
                ``hf_mltm.audio.MAX_ABS_FLOAT_SAMPLE`` (1000) in magnitude, or is so short that it has no sample
                left at ``self.sampling_rate``.
        """
        if sampling_rate is None:
            raise ValueError(
                f"{type(self).__name__} requires the `sampling_rate` of the input audio (in Hz); it "
                f"resamples from it to {self.sampling_rate} Hz."
            )
        # before any native call: soxr never returns for a NaN rate
        rate = check_sampling_rate(sampling_rate)
        if rate < MIN_SAMPLING_RATE:
            raise ValueError(f"sampling_rate must be >= {MIN_SAMPLING_RATE} Hz, got {sampling_rate}.")
        clips = list(raw_audio) if isinstance(raw_audio, (list, tuple)) else [raw_audio]
        if not clips:
            raise ValueError("Got an empty batch: pass at least one audio clip.")
        max_samples = self._max_samples()
        waveforms = []
        for index, clip in enumerate(clips):
            label = f"Audio clip {index}"
            samples = to_mono_float(clip, dtype=np.float64, label=label)  # (num_samples,)
            waveform = resample(samples, rate, self.sampling_rate)
            if waveform.size == 0:
                raise ValueError(
                    f"{label} is too short: {len(samples)} samples at {rate} Hz give no sample at "
                    f"{self.sampling_rate} Hz."
                )
            if self.normalize_waveform == "peak":
                peak = np.abs(waveform).max()
                waveform = waveform / peak if peak > 0 else waveform
            waveforms.append(crop_waveform(waveform, max_samples, random=random_crop, generator=generator))
        lengths = [len(waveform) for waveform in waveforms]
        num_samples = max_samples
        if num_samples is None:
            # reflect padding needs more than n_fft // 2 samples
            num_samples = max(*lengths, self.n_fft // 2 + 1)
        padded = np.full((len(waveforms), num_samples), self.padding_value, dtype=np.float64)  # (B, samples)
        for row, waveform in zip(padded, waveforms, strict=True):
            row[: len(waveform)] = waveform
        features = np.stack([self._log_mel(row) for row in padded]).astype(np.float32)  # (B, T, M)
        num_frames = features.shape[1]
        valid_frames = np.minimum(1 + np.asarray(lengths) // self.hop_length, num_frames)  # (B,)
        mask = (np.arange(num_frames)[None, :] < valid_frames[:, None]).astype(np.int64)  # (B, T)
        return BatchFeature(
            {"input_features": features, "audio_attention_mask": mask}, tensor_type=return_tensors
        )

    def _log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """Log-mel spectrogram ``(T, M)`` of one padded float64 waveform ``(num_samples,)``."""
        spectrum = torch.stft(
            torch.from_numpy(waveform),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=torch.hann_window(self.win_length, periodic=True, dtype=torch.float64),
            center=True,
            pad_mode=self.pad_mode,
            return_complex=True,
        )  # (F, T)
        power = spectrum.real.square() + spectrum.imag.square()  # (F, T)
        mel = power.T @ torch.from_numpy(self.mel_filters)  # (T, M)
        if self.log_mode == "db":
            log_mel = 10.0 * torch.log10(mel.clamp_min(DB_AMIN))
        else:
            log_mel = torch.log1p(AISFX_LOG_SCALE * mel) / (math.log(10.0) * AISFX_LOG_MAX)
        return log_mel.numpy()
