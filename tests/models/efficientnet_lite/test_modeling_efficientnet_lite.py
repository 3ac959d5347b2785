"""EfficientNet-Lite: configuration, forward pass, parity with ``efficientnet_lite_pytorch`` on tiny random networks,
weights (init, save/load, Auto classes, remote code) and gradient checkpointing.

The pretrained Lite0 parity on real images is in ``tests/scripts/test_convert_efficientnet_lite_checkpoint.py``.
"""

import doctest
import math

import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import BlockArgs, GlobalParams
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from hf_mltm.models.efficientnet_lite import (
    EfficientNetLiteConfig,
    EfficientNetLiteModel,
    configuration_efficientnet_lite,
    modeling_efficientnet_lite,
)
from hf_mltm.models.efficientnet_lite.modeling_efficientnet_lite import _drop_connect, tf_same_padding
from hf_mltm.models.omit.configuration_omit import vision_hidden_size
from tests.utils import load_script, randomise_batch_norms

convert = load_script("convert_efficientnet_lite_checkpoint")

pytestmark = pytest.mark.usefixtures("one_thread")


class EfficientNetLiteModelTester:
    """Tiny EfficientNet-Lite: stem 8, a 3x3 stage without expansion (8 -> 16) and a stride-2 5x5 stage of two
    blocks (the second with a shortcut), head 32, on 32 x 32 images: an 8 x 8 grid of 32-d cells."""

    def __init__(self, batch_size: int = 3, image_size: int = 32):
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_channels = 3
        self.grid_size = 8  # ceil(ceil(32 / 2) / 2)
        self.head_channels = 32

    def get_config(self, **overrides) -> EfficientNetLiteConfig:
        settings = {
            "image_size": self.image_size,
            "num_channels": self.num_channels,
            "stem_channels": 8,
            "kernel_sizes": [3, 5],
            "strides": [1, 2],
            "out_channels": [16, 16],
            "num_block_repeats": [1, 2],
            "expand_ratios": [1, 2],
            "head_channels": self.head_channels,
        }
        return EfficientNetLiteConfig(**{**settings, **overrides})

    def prepare_config_and_inputs(self) -> tuple[EfficientNetLiteConfig, torch.Tensor]:
        pixel_values = (
            torch.rand(self.batch_size, self.num_channels, self.image_size, self.image_size) * 2 - 1
        )
        return self.get_config(), pixel_values

    def create_and_check_model(self, config: EfficientNetLiteConfig, pixel_values: torch.Tensor) -> None:
        model = eval_model(config)
        with torch.no_grad():
            output = model(pixel_values, output_hidden_states=True)
        grid = self.grid_size
        assert output.last_hidden_state.shape == (self.batch_size, self.head_channels, grid, grid)
        assert output.pooler_output.shape == (self.batch_size, self.head_channels)
        assert [state.shape[1] for state in output.hidden_states] == config.hidden_sizes == [8, 16, 16, 32]
        assert [state.shape[2] for state in output.hidden_states] == [16, 16, 8, 8]
        assert output.hidden_states[-1] is output.last_hidden_state


def eval_model(config: EfficientNetLiteConfig) -> EfficientNetLiteModel:
    model = EfficientNetLiteModel(config).eval()
    randomise_batch_norms(model)
    return model


@pytest.fixture
def tester() -> EfficientNetLiteModelTester:
    return EfficientNetLiteModelTester()


# --- configuration ---------------------------------------------------------------------------------------------


def test_lite0_defaults_give_a_1280_wide_7x7_map():
    config = EfficientNetLiteConfig()
    assert config.hidden_sizes == [32, 16, 24, 40, 80, 112, 192, 320, 1280]
    assert vision_hidden_size(config) == 1280  # the fragment width OMIT reads
    assert config.stage_repeats == [1, 2, 2, 3, 3, 4, 1] and sum(config.stage_repeats) == 16
    assert config.feature_map_size == 7
    assert (config.batch_norm_eps, config.batch_norm_momentum, config.hidden_act) == (1e-3, 0.01, "relu6")


def test_lite2_scaling_rules_hand_checked():
    """width 1.1, depth 1.2 (Lite2): e.g. 112 * 1.1 = 123.2 -> int(127.2) // 8 * 8 = 120; ceil(1.2 * 4) = 5."""
    config = EfficientNetLiteConfig(width_coefficient=1.1, depth_coefficient=1.2, image_size=260)
    assert config.stage_channels == [16, 24, 48, 88, 120, 208, 352]
    assert config.stage_repeats == [1, 3, 3, 4, 4, 5, 1]  # first and last stage not scaled (fix_head_stem)
    assert config.hidden_sizes[0] == 32 and config.hidden_sizes[-1] == 1280
    assert config.feature_map_size == 9  # 260 -> 130 -> 130 -> 65 -> 33 -> 17 -> 17 -> 9 -> 9
    unfixed = EfficientNetLiteConfig(width_coefficient=1.1, depth_coefficient=1.2, fix_head_stem=False)
    assert unfixed.hidden_sizes[0] == 32 and unfixed.hidden_sizes[-1] == 1408  # 1280 * 1.1 = 1408
    assert unfixed.stage_repeats == [2, 3, 3, 4, 4, 5, 2]


def test_round_channels_adds_a_divisor_when_rounding_loses_more_than_ten_percent():
    config = EfficientNetLiteConfig(width_coefficient=0.5)
    assert config.round_channels(20) == 16  # 10 -> int(14) // 8 * 8 = 8 < 9 -> 16
    assert config.round_channels(4) == 8  # min_depth defaults to depth_divisor
    assert config.round_channels(4, fixed=True) == 4
    assert EfficientNetLiteConfig(depth_divisor=1).round_channels(5) == 5


def test_lite2_layout_equals_the_package():
    """Scaled widths, repeats and kernel shapes against the package's own ``efficientnet-lite2`` network."""
    config = EfficientNetLiteConfig(width_coefficient=1.1, depth_coefficient=1.2, image_size=260)
    with torch.device("meta"):
        model = EfficientNetLiteModel(config)
        theirs = EfficientNet.from_name("efficientnet-lite2").state_dict()
    ours = model.state_dict()
    key_map = convert.package_key_map(model)
    assert set(key_map.values()) == set(ours)
    assert set(key_map) == set(theirs) - set(convert.CLASSIFIER_KEYS)
    assert all(theirs[source].shape == ours[target].shape for source, target in key_map.items())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strides": [1, 2, 2, 2, 1, 2]}, "one length"),
        ({"kernel_sizes": []}, "non-empty"),
        ({"strides": [1, 3, 2, 2, 1, 2, 1]}, "strides must be 1 or 2"),
        ({"kernel_sizes": [3, 4, 5, 3, 5, 5, 3]}, "kernel_sizes must be odd"),
        ({"expand_ratios": [0, 6, 6, 6, 6, 6, 6]}, "expand_ratios must hold positive integers"),
        ({"width_coefficient": 0.0}, "width_coefficient must be a finite number > 0"),
        ({"depth_coefficient": float("nan")}, "depth_coefficient"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"batch_norm_momentum": 1.99}, "TensorFlow's 0.99 is 0.01"),
        ({"batch_norm_eps": 0.0}, "batch_norm_eps"),
        ({"drop_connect_rate": 1.0}, r"drop_connect_rate must be in \[0, 1\)"),
        ({"hidden_act": "relu7"}, "hidden_act='relu7' is unknown"),
        ({"hidden_sizes": [32, 16, 24, 40, 80, 112, 192, 320, 1024]}, "leave hidden_sizes unset"),
    ],
)
def test_config_rejects_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        EfficientNetLiteConfig(**settings)


def test_config_round_trips_through_auto_config(tmp_path, tester):
    config = tester.get_config(drop_connect_rate=0.1)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, EfficientNetLiteConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.hidden_sizes == [8, 16, 16, 32] and loaded.kernel_sizes == [3, 5]


# --- padding and forward --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),  # stem: 112 outputs need 2 * 111 + 3 = 225 pixels, one extra on the right
        (225, 3, 2, (1, 1)),
        (56, 5, 2, (1, 2)),
        (57, 5, 2, (2, 2)),
        (14, 5, 1, (2, 2)),
        (7, 1, 1, (0, 0)),
        (1, 3, 2, (1, 1)),
    ],
)
def test_tf_same_padding_hand_checked(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == math.ceil(size / stride)


def test_forward_shapes(tester):
    tester.create_and_check_model(*tester.prepare_config_and_inputs())


def test_pooler_is_the_spatial_mean_and_return_dict_false_gives_a_tuple(tester):
    config, pixel_values = tester.prepare_config_and_inputs()
    model = eval_model(config)
    with torch.no_grad():
        output = model(pixel_values)
        as_tuple = model(pixel_values, return_dict=False)
    assert output.hidden_states is None
    cells = output.last_hidden_state.flatten(2)  # (B, D, 64): OMIT's row-major fragments, transposed
    torch.testing.assert_close(output.pooler_output, cells.sum(-1) / 64, rtol=1e-6, atol=1e-7)
    assert len(as_tuple) == 2 and torch.equal(as_tuple[0], output.last_hidden_state)
    assert output.last_hidden_state.min() >= 0 and output.last_hidden_state.max() <= 6  # ReLU6


def test_eval_output_of_an_image_does_not_depend_on_its_batch(tester):
    config, pixel_values = tester.prepare_config_and_inputs()
    model = eval_model(config)
    with torch.no_grad():
        batched = model(pixel_values).last_hidden_state
        alone = model(pixel_values[1:2]).last_hidden_state
    torch.testing.assert_close(alone, batched[1:2], rtol=1e-5, atol=1e-6)


def test_shortcuts_and_layers_follow_the_architecture(tester):
    model = EfficientNetLiteModel(tester.get_config())
    blocks = model.encoder.blocks
    assert [block.use_shortcut for block in blocks] == [False, False, True]
    assert blocks[0].expansion is None and blocks[1].expansion.convolution.weight.shape == (32, 16, 1, 1)
    assert blocks[1].depthwise.convolution.weight.shape == (32, 1, 5, 5)
    assert blocks[1].depthwise.pad == (1, 2, 1, 2) and blocks[2].depthwise.convolution.padding == (2, 2)
    assert model.stem.pad == (0, 1, 0, 1)
    assert isinstance(blocks[0].projection.activation, torch.nn.Identity)
    torch.testing.assert_close(
        torch.tensor([block.drop_connect_rate for block in blocks]), torch.tensor([0.0, 0.2 / 3, 0.4 / 3])
    )


@pytest.mark.parametrize("image_size", [32, 33])
def test_matches_the_package_on_a_tiny_random_network(image_size):
    """Same random weights in the package's ``EfficientNet`` and ours: even and odd sizes exercise the asymmetric
    and symmetric "same" paddings. (The package fixes stem 32 and head 1280 and the first stage's input at 32.)"""
    blocks_args = [
        BlockArgs(1, 3, [1], 1, 32, 16, None, True),
        BlockArgs(2, 5, [2], 2, 16, 24, None, True),
    ]
    global_params = GlobalParams(
        width_coefficient=1.0,
        depth_coefficient=1.0,
        image_size=image_size,
        dropout_rate=0.2,
        num_classes=10,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1e-3,
        drop_connect_rate=0.2,
        depth_divisor=8,
        min_depth=None,
        relu_fn="relu6",
        fix_head_stem=True,
        local_pooling=False,
        use_se=False,
    )
    reference = EfficientNet(blocks_args, global_params).eval()
    randomise_batch_norms(reference)
    config = EfficientNetLiteConfig(
        image_size=image_size,
        kernel_sizes=[3, 5],
        strides=[1, 2],
        out_channels=[16, 24],
        num_block_repeats=[1, 2],
        expand_ratios=[1, 2],
    )
    model = EfficientNetLiteModel(config).eval()
    reference_state = reference.state_dict()
    model.load_state_dict(
        {target: reference_state[source] for source, target in convert.package_key_map(model).items()}
    )
    pixel_values = torch.rand(2, 3, image_size, image_size) * 2 - 1
    with torch.no_grad():
        expected = reference.extract_features(pixel_values)
        output = model(pixel_values)
    grid = {32: 8, 33: 9}[image_size]  # 32 -> 16 -> 8, 33 -> 17 -> 9
    assert output.last_hidden_state.shape == expected.shape == (2, 1280, grid, grid)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(output.last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_rejects_wrong_size_channels_and_integer_pixels(tester):
    model = eval_model(tester.get_config())
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 32, 32\).*image_size=32"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="floating-point.*torch.uint8"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


# --- stochastic depth and training ------------------------------------------------------------------------------


def test_drop_connect_keeps_or_drops_whole_samples():
    ones = torch.ones(4000, 2, 1, 1)
    assert _drop_connect(ones, 0.25, training=False) is ones
    assert _drop_connect(ones, 0.0, training=True) is ones
    dropped = _drop_connect(ones, 0.25, training=True)
    values = dropped[:, :, 0, 0]
    assert torch.equal(values[:, 0], values[:, 1])  # one draw per sample
    torch.testing.assert_close(
        values.unique(), torch.tensor([0.0, 1 / 0.75])
    )  # kept samples scaled by 1 / keep
    assert 0.22 < (values[:, 0] == 0).float().mean() < 0.28  # Bernoulli(0.25), 4000 draws: sd 0.007


def test_training_mode_is_stochastic_only_through_drop_connect(tester):
    pixel_values = torch.rand(16, 3, 32, 32)
    # The last block (the only one with a shortcut) drops its branch with probability 0.9 * 2 / 3 = 0.6.
    model = EfficientNetLiteModel(tester.get_config(drop_connect_rate=0.9)).train()
    assert not torch.equal(model(pixel_values).pooler_output, model(pixel_values).pooler_output)
    plain = EfficientNetLiteModel(tester.get_config(drop_connect_rate=0.0)).train()
    torch.testing.assert_close(
        plain(pixel_values).pooler_output, plain(pixel_values).pooler_output, rtol=0, atol=0
    )


def test_gradient_checkpointing_gives_the_same_gradients(tester):
    config, pixel_values = tester.prepare_config_and_inputs()
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = EfficientNetLiteModel(config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(block.gradient_checkpointing for block in model.encoder.blocks)
        torch.manual_seed(1)  # the same drop-connect draws in both runs
        model(pixel_values).pooler_output.square().sum().backward()
        gradients.append({name: parameter.grad for name, parameter in model.named_parameters()})
    assert gradients[0].keys() == gradients[1].keys()
    for name, gradient in gradients[0].items():
        assert gradient is not None and gradient.abs().sum() > 0, name
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-5, rtol=1e-4)


# --- weights: init, save/load, Auto classes, remote code --------------------------------------------------------


def test_init_weights_he_normal_fan_out_and_unit_batch_norms():
    model = EfficientNetLiteModel(EfficientNetLiteConfig())
    head = model.head.convolution.weight  # (1280, 320, 1, 1): fan_out 1280, std sqrt(2 / 1280) = 0.0395
    assert abs(head.std().item() - math.sqrt(2 / 1280)) < 0.002
    expansion = model.encoder.blocks[
        1
    ].expansion.convolution.weight  # (96, 16, 1, 1): std sqrt(2 / 96) = 0.144
    assert abs(expansion.std().item() - math.sqrt(2 / 96)) < 0.015
    norm = model.encoder.blocks[5].depthwise.normalization
    assert torch.equal(norm.weight, torch.ones(240)) and torch.equal(norm.running_var, torch.ones(240))
    assert torch.equal(norm.bias, torch.zeros(240)) and int(norm.num_batches_tracked) == 0


def test_auto_model_from_config_and_exact_save_load_round_trip(tmp_path, tester):
    config, pixel_values = tester.prepare_config_and_inputs()
    model = AutoModel.from_config(config).eval()
    assert isinstance(model, EfficientNetLiteModel)
    randomise_batch_norms(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, EfficientNetLiteModel) and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixel_values).last_hidden_state, model(pixel_values).last_hidden_state, rtol=0, atol=0
        )


def test_missing_parameters_are_initialised_by_init_weights(tmp_path, tester):
    """from_pretrained builds on the meta device: a tensor absent from the file must get _init_weights' value."""
    model = eval_model(tester.get_config())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)  # every saved value differs from its initial value
    model.save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    state = load_file(weights_file)
    dropped = [
        "head.normalization.weight",
        "head.normalization.running_var",
        "encoder.blocks.1.expansion.convolution.weight",
    ]
    save_file(
        {name: tensor for name, tensor in state.items() if name not in dropped},
        weights_file,
        {"format": "pt"},
    )
    loaded = EfficientNetLiteModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.head.normalization.weight, torch.ones(32))
    assert torch.equal(loaded.head.normalization.running_var, torch.ones(32))
    expansion = loaded.encoder.blocks[
        1
    ].expansion.convolution.weight  # (32, 16, 1, 1), std sqrt(2 / 32) = 0.25
    assert torch.isfinite(expansion).all() and abs(expansion.mean().item()) < 0.06
    assert 0.2 < expansion.std().item() < 0.3
    loaded_state = loaded.state_dict()
    for name, tensor in state.items():
        if name not in dropped:
            assert torch.equal(loaded_state[name], tensor), name


def test_omit_takes_the_tower_as_its_vision_model(tmp_path, tester):
    """OMIT reads the fragment width from hidden_sizes and flattens the map row-major: fragment 8 * row + column."""
    from transformers import BertConfig

    from hf_mltm.models.omit import OMITImageTextConfig, OMITImageTextModel

    text_config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    )
    config = OMITImageTextConfig(
        vision_config=tester.get_config(),
        text_config=text_config,
        embed_dim=16,
        image_projection_hidden_size=8,
    )
    assert config.image_fragment_input_dim == 32
    model = OMITImageTextModel(config).eval()
    assert isinstance(model.vision_model, EfficientNetLiteModel)
    pixel_values = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tower_fragments, _ = model._vision_tower_fragments(pixel_values)  # (2, 64, 32)
        feature_map = model.vision_model(pixel_values).last_hidden_state  # (2, 32, 8, 8)
        fragments, _ = model.get_image_fragments(pixel_values=pixel_values)
    assert tower_fragments.shape == (2, 64, 32)
    assert torch.equal(tower_fragments[:, 8 * 3 + 5], feature_map[:, :, 3, 5])
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.vision_model, EfficientNetLiteModel)
    with torch.no_grad():
        assert torch.equal(loaded.get_image_fragments(pixel_values=pixel_values)[0], fragments)


@pytest.mark.slow  # a fresh interpreter importing transformers: about 10 s, more on a busy machine
def test_saved_folder_loads_with_trust_remote_code_in_a_fresh_process(tmp_path, tester):
    import os
    import subprocess
    import sys

    config, pixel_values = tester.prepare_config_and_inputs()
    model = eval_model(config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_efficientnet_lite.py").exists()
    assert (tmp_path / "configuration_efficientnet_lite.py").exists()
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    script = (
        "import torch\n"
        "from transformers import AutoModel\n"
        f"model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        f"pixel_values = torch.load({str(tmp_path / 'pixel_values.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(pixel_values).last_hidden_state, {str(tmp_path / 'out.pt')!r})\n"
    )
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", script], check=True, env=environment, cwd=tmp_path, timeout=300)
    with torch.no_grad():
        expected = model(pixel_values).last_hidden_state
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=0, rtol=0)


def test_docstring_examples_run():
    for module in (configuration_efficientnet_lite, modeling_efficientnet_lite):
        failures, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert attempted > 0 and failures == 0, module.__name__
