"""Convert an official PANNs checkpoint (Cnn10, Cnn14, ResNet38) into a `PannsModel` folder.

The checkpoints of qiuqiangkong/audioset_tagging_cnn (e.g. ``ResNet38_mAP=0.434.pth`` on Zenodo) hold
``{"model": state_dict, ...}`` with the names of ``pytorch/models.py``. Every tensor is mapped by an explicit
name table; a key that is neither mapped nor dropped on purpose, or a mapped key that is absent, raises
`ValueError` listing them all. Dropped on purpose, by exact name:

- the front-end (``spectrogram_extractor.stft.conv_{real,imag}.weight``, ``logmel_extractor.melW``): the
  log-mel is computed by `MLTMFeatureExtractor`, saved next to the model with the PANNs settings;
- the AudioSet head ``fc_audioset.{weight,bias}``, unless ``--keep_audioset_head`` (then it is saved to
  ``audioset_head.safetensors``: AudioSet probabilities are ``sigmoid(fc_audioset(pooler_output))`` with
  ``use_fc1=True``);
- ``fc1.{weight,bias}`` with ``--no_fc1`` (the embedding is then the pooled CNN output, as in the audio-text
  retrieval code m-LTM builds on).

BatchNorm ``num_batches_tracked`` counters are copied when present and otherwise left at 0.

Usage::

    python scripts/convert_panns_checkpoint.py --checkpoint ResNet38_mAP=0.434.pth --variant resnet38 \
        --output_dir panns-resnet38
"""

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from hf_mltm.models.mltm.feature_extraction_mltm import MLTMFeatureExtractor
from hf_mltm.models.panns import PannsConfig, PannsModel

FRONT_END_KEYS = (
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
    "logmel_extractor.melW",
)
AUDIOSET_HEAD_KEYS = ("fc_audioset.weight", "fc_audioset.bias")
FC1_KEYS = ("fc1.weight", "fc1.bias")
BATCH_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
OPTIONAL_SUFFIX = ".num_batches_tracked"
AUDIOSET_HEAD_FILE = "audioset_head.safetensors"


def numpy_safe_globals() -> list:
    """The numpy objects that pickled numpy scalars/arrays/dtypes need under ``torch.load(weights_only=True)``.

    Pickles written with numpy 1.x name ``numpy.core.*``, numpy 2 names ``numpy._core.*``: both are listed.
    """
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    objects = [np.ndarray, np.dtype, *(getattr(np.dtypes, name) for name in np.dtypes.__all__)]
    for function in (multiarray.scalar, multiarray._reconstruct):
        objects += [function, (function, f"numpy.core.multiarray.{function.__name__}")]
    return objects


def load_checkpoint(path: str | Path) -> object:
    """``torch.load`` with ``weights_only=True`` (no arbitrary code), numpy scalars and arrays allowed."""
    with torch.serialization.safe_globals(numpy_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def conv_block_key_map(source: str, target: str) -> dict[str, str]:
    """Names of one two-conv block (``conv1``, ``bn1``, ``conv2``, ``bn2``), ``source.*`` -> ``target.*``."""
    names = ["conv1.weight", "conv2.weight"]
    names += [f"{norm}.{tensor}" for norm in ("bn1", "bn2") for tensor in BATCH_NORM_TENSORS]
    return {f"{source}.{name}": f"{target}.{name}" for name in names}


def _batch_norm_key_map(source: str, target: str) -> dict[str, str]:
    return {f"{source}.{tensor}": f"{target}.{tensor}" for tensor in BATCH_NORM_TENSORS}


def _resnet_key_map(config: PannsConfig) -> Iterator[tuple[str, str]]:
    """Official ``conv_block1`` / ``resnet.layerS.B`` / ``conv_block_after1`` names -> ``encoder.*`` names."""
    yield from conv_block_key_map("conv_block1", "encoder.stem").items()
    stem_width, *stage_widths, _ = config.channels
    in_widths = [stem_width, *stage_widths[:-1]]
    for stage, depth in enumerate(config.resnet_layers):
        for block in range(depth):
            source, target = f"resnet.layer{stage + 1}.{block}", f"encoder.stages.{stage}.{block}"
            yield from conv_block_key_map(source, target).items()
            if block == 0 and (stage > 0 or in_widths[stage] != stage_widths[stage]):
                # Official shortcut: Sequential(AvgPool2d, conv1x1, BN) with stride 2, Sequential(conv1x1, BN) else.
                first = 1 if stage > 0 else 0
                yield f"{source}.downsample.{first}.weight", f"{target}.shortcut.conv.weight"
                yield from _batch_norm_key_map(
                    f"{source}.downsample.{first + 1}", f"{target}.shortcut.bn"
                ).items()
    yield from conv_block_key_map("conv_block_after1", "encoder.head").items()


def official_key_map(config: PannsConfig) -> dict[str, str]:
    """Official PANNs state-dict names -> `PannsModel` names, for every tensor of a model built from ``config``."""
    key_map = _batch_norm_key_map("bn0", "bn0")
    if config.variant_spec.architecture == "resnet":
        key_map.update(_resnet_key_map(config))
    else:
        for index in range(len(config.channels)):
            key_map.update(conv_block_key_map(f"conv_block{index + 1}", f"encoder.blocks.{index}"))
    if config.use_fc1:
        key_map.update({name: name for name in FC1_KEYS})
    return key_map


def map_state_dict(
    state_dict: dict[str, torch.Tensor],
    key_map: dict[str, str],
    dropped: set[str],
    model: torch.nn.Module,
    *,
    optional: set[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Rename ``state_dict`` with ``key_map`` and check it against ``model``.

    Args:
        state_dict (`dict[str, torch.Tensor]`): Source tensors.
        key_map (`dict[str, str]`): Source name -> target name; its targets must be exactly ``model``'s keys.
        dropped (`set[str]`): Source names discarded on purpose (allowed to be absent).
        model (`torch.nn.Module`): The target model, for its names and shapes.
        optional (`set[str]`): Mapped source names that may be absent (the model keeps its initial value).

    Returns:
        `dict[str, torch.Tensor]`: A complete state dict for ``model``.

    Raises:
        ValueError: Mapped names are missing, names are neither mapped nor dropped, or shapes differ.
    """
    target = model.state_dict()
    if set(key_map.values()) != set(target):
        raise RuntimeError(
            f"Key table does not cover the model: {sorted(set(target) ^ set(key_map.values()))}"
        )
    missing = sorted(set(key_map) - set(state_dict) - set(optional))
    unexpected = sorted(set(state_dict) - set(key_map) - set(dropped))
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint does not match the model: missing keys {missing}, unexpected keys {unexpected}."
        )
    mismatched = [
        f"{source}: {tuple(state_dict[source].shape)} vs {tuple(target[name].shape)}"
        for source, name in key_map.items()
        if source in state_dict and state_dict[source].shape != target[name].shape
    ]
    if mismatched:
        raise ValueError(f"Checkpoint shapes do not match the config: {mismatched}.")
    mapped = dict(target)
    mapped.update({name: state_dict[source] for source, name in key_map.items() if source in state_dict})
    return mapped


def _model_state_dict(checkpoint: object) -> dict[str, torch.Tensor]:
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise ValueError("Expected a PANNs checkpoint: a dict with a 'model' state dict of tensors.")
    return state_dict


def save_feature_extractor(output_dir: str | Path) -> None:
    """Save an `MLTMFeatureExtractor` with its defaults, the PANNs front-end."""
    MLTMFeatureExtractor().save_pretrained(output_dir)


def convert_panns_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    variant: str,
    drop_head: bool = True,
    config_overrides: dict | None = None,
) -> PannsModel:
    """Load an official PANNs checkpoint into a `PannsModel`, save it and a PANNs `MLTMFeatureExtractor`.

    Args:
        checkpoint_path (`str` or `Path`): The ``.pth`` file (``{"model": state_dict, ...}``).
        output_dir (`str` or `Path`): Folder to ``save_pretrained`` into.
        variant (`str`): ``"cnn10"``, ``"cnn14"`` or ``"resnet38"``.
        drop_head (`bool`, defaults to `True`): Drop ``fc_audioset``; when `False` it must be present and is saved
            to ``audioset_head.safetensors`` (keys ``weight`` and ``bias``).
        config_overrides (`dict`, *optional*): Further `PannsConfig` fields (e.g. ``use_fc1=False``, or channel
            widths of a smaller model).

    Returns:
        `PannsModel`: The converted model, in eval mode.

    Raises:
        ValueError: ``variant`` is not a PANNs variant, or the checkpoint has missing, unexpected or misshapen keys.
    """
    if variant not in ("cnn10", "cnn14", "resnet38"):
        raise ValueError(f"variant must be 'cnn10', 'cnn14' or 'resnet38', got {variant!r}.")
    config = PannsConfig(variant=variant, **(config_overrides or {}))
    model = PannsModel(config).eval()
    state_dict = _model_state_dict(load_checkpoint(checkpoint_path))
    key_map = official_key_map(config)
    dropped = set(FRONT_END_KEYS) | set(AUDIOSET_HEAD_KEYS)  # the head is not part of PannsModel
    if not config.use_fc1:
        dropped |= set(FC1_KEYS)
    if not drop_head:
        missing_head = [key for key in AUDIOSET_HEAD_KEYS if key not in state_dict]
        if missing_head:
            raise ValueError(
                f"Checkpoint does not match the model: missing keys {missing_head} (AudioSet head)."
            )
    optional = {key for key in key_map if key.endswith(OPTIONAL_SUFFIX)}
    model.load_state_dict(map_state_dict(state_dict, key_map, dropped, model, optional=optional))
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    save_feature_extractor(output_dir)
    if not drop_head:
        head = {"weight": state_dict["fc_audioset.weight"], "bias": state_dict["fc_audioset.bias"]}
        save_file(
            {name: tensor.contiguous() for name, tensor in head.items()}, str(output_dir / AUDIOSET_HEAD_FILE)
        )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="official PANNs .pth file")
    parser.add_argument("--variant", required=True, choices=["cnn10", "cnn14", "resnet38"])
    parser.add_argument(
        "--output_dir", required=True, help="folder to save the model and feature extractor in"
    )
    parser.add_argument(
        "--keep_audioset_head", action="store_true", help=f"save fc_audioset to {AUDIOSET_HEAD_FILE}"
    )
    parser.add_argument("--no_fc1", action="store_true", help="embed with the pooled CNN output (drop fc1)")
    args = parser.parse_args()
    convert_panns_checkpoint(
        args.checkpoint,
        args.output_dir,
        args.variant,
        drop_head=not args.keep_audioset_head,
        config_overrides={"use_fc1": False} if args.no_fc1 else None,
    )


if __name__ == "__main__":
    main()
