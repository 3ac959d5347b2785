"""Convert the aisfx embedding network (aisfx 0.1.2, CC BY 4.0 weights) into a `PannsModel` (variant ``aisfx9``).

``aisfx/models/checkpoint.pth`` holds ``(state_dict, ds_dict)`` of aisfx's ``CrossNet``: the 9-layer CNN
``embedding_net.conv_block{1..4}.*`` and one classifier ``fc.{i}.{0,2,4}.*`` per training data set ``i`` of
``ds_dict``. The CNN maps to ``encoder.blocks.{0..3}.*`` by an explicit name table; the classifiers are dropped
on purpose, by exact name. Any other difference raises `ValueError`.

How aisfx embeds a clip, and how the converted model does it:

- front-end (``aisfx/spectrogram/spectrogram_librosa.py`` + ``aisfx/inference.py``): 44.1 kHz, peak-normalised
  waveform, STFT with n_fft = win = 2048 and hop 1024, 96 HTK mel bins with L1-normalised filters, power,
  ``log10(1e4 * mel + 1)``, divided by 9.4578 (``spectrogram_normalize(spec_norm="original")``). Saved as
  ``MLTMFeatureExtractor.aisfx_frontend(max_length_s=None)``: whole clips, as aisfx, and batches padded with a
  frame mask. (aisfx's librosa path returns ``(mel, time)`` and blocks along its first axis, which is mel; the
  Essentia path, the one its weights were trained with, returns ``(time, mel)``, the layout used here.)
- aisfx cuts the spectrogram into blocks of 100 frames every 50 frames (``EMB_BLOCK_LENGTH``,
  ``emb_hop_size=0.5``, ``drop_partial_block=True``) and returns one 512-d embedding per block. The converted
  model (``block_frames=100``, ``block_hop_frames=50``) embeds the same blocks and returns their mean as
  ``pooler_output`` and the block embeddings as ``last_hidden_state``.

Usage::

    python scripts/convert_aisfx_checkpoint.py --output_dir aisfx9
"""

import argparse
import importlib.util
from pathlib import Path

from hf_mltm.models.mltm.feature_extraction_mltm import MLTMFeatureExtractor
from hf_mltm.models.panns import PannsConfig, PannsModel


def _sibling(name: str):
    """Import ``scripts/<name>.py`` whether this file runs as a script or is loaded by path."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_panns = _sibling("convert_panns_checkpoint")

AISFX_BLOCKS = 4
BLOCK_FRAMES = 100  # aisfx.inference.EMB_BLOCK_LENGTH
BLOCK_HOP_FRAMES = 50  # EMB_BLOCK_LENGTH * emb_hop_size (0.5, the default of aisfx.inference.main)
# The Linear layers of each CrossNet head, Sequential(Linear, ReLU, Linear, ReLU, Linear):
CLASSIFIER_LAYERS = (0, 2, 4)


def default_checkpoint_path() -> Path:
    """``checkpoint.pth`` inside the installed aisfx package (found without importing aisfx)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or spec.origin is None:
        raise ValueError("The aisfx package is not installed: pass the checkpoint path explicitly.")
    return Path(spec.origin).parent / "models" / "checkpoint.pth"


def aisfx_key_map() -> dict[str, str]:
    """aisfx ``embedding_net.conv_block{i}.*`` names -> `PannsModel` (``aisfx9``) names."""
    key_map = {}
    for index in range(AISFX_BLOCKS):
        key_map.update(
            _panns.conv_block_key_map(f"embedding_net.conv_block{index + 1}", f"encoder.blocks.{index}")
        )
    return key_map


def classifier_keys(num_datasets: int) -> set[str]:
    """Names of CrossNet's per-data-set classifiers ``fc.{i}.{0,2,4}.{weight,bias}``, dropped on purpose."""
    return {
        f"fc.{dataset}.{layer}.{tensor}"
        for dataset in range(num_datasets)
        for layer in CLASSIFIER_LAYERS
        for tensor in ("weight", "bias")
    }


def convert_aisfx_checkpoint(output_dir: str | Path, checkpoint_path: str | Path | None = None) -> PannsModel:
    """Load aisfx's embedding network into an ``aisfx9`` `PannsModel` with aisfx's blocks and save it.

    Args:
        output_dir (`str` or `Path`): Folder to ``save_pretrained`` the model and its feature extractor into.
        checkpoint_path (`str` or `Path`, *optional*): aisfx's ``checkpoint.pth``; defaults to the installed one.

    Returns:
        `PannsModel`: The converted model, in eval mode.

    Raises:
        ValueError: The checkpoint is not ``(state_dict, ds_dict)`` or its keys or shapes do not match.
    """
    checkpoint = _panns.load_checkpoint(checkpoint_path or default_checkpoint_path())
    if not (
        isinstance(checkpoint, (tuple, list)) and len(checkpoint) == 2 and isinstance(checkpoint[1], dict)
    ):
        raise ValueError("Expected an aisfx checkpoint: a (state_dict, ds_dict) pair.")
    state_dict, datasets = checkpoint
    config = PannsConfig(variant="aisfx9", block_frames=BLOCK_FRAMES, block_hop_frames=BLOCK_HOP_FRAMES)
    model = PannsModel(config).eval()
    model.load_state_dict(
        _panns.map_state_dict(state_dict, aisfx_key_map(), classifier_keys(len(datasets)), model)
    )
    model.save_pretrained(output_dir)
    save_feature_extractor(output_dir)
    return model


def save_feature_extractor(output_dir: str | Path) -> None:
    """Save the aisfx front-end, ``MLTMFeatureExtractor.aisfx_frontend(max_length_s=None)``."""
    MLTMFeatureExtractor.aisfx_frontend(max_length_s=None).save_pretrained(output_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output_dir", required=True, help="folder to save the model and feature extractor in"
    )
    parser.add_argument(
        "--checkpoint", default=None, help="aisfx checkpoint.pth (default: the installed one)"
    )
    args = parser.parse_args()
    convert_aisfx_checkpoint(args.output_dir, args.checkpoint)


if __name__ == "__main__":
    main()
