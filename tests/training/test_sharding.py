"""`hf_mltm.training.sharding`: what the trainer refuses under FSDP and the others, with the setting to change.

The FSDP2 training run itself (2 processes against 1) is in tests/scripts/test_train.py.
"""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from hf_mltm.training.sharding import check_sharding, full_tensor, is_sharded


def fake_accelerator(distributed_type, fsdp_version=2):
    plugin = SimpleNamespace(fsdp_version=fsdp_version)
    return SimpleNamespace(distributed_type=distributed_type, state=SimpleNamespace(fsdp_plugin=plugin))


def fake_config(**model_config):
    return SimpleNamespace(source="run.yaml", model={"config": model_config})


@pytest.mark.parametrize("distributed_type", [DistributedType.NO, DistributedType.MULTI_CPU,
                                              DistributedType.MULTI_GPU])
def test_unsharded_setups_pass_with_any_settings(distributed_type):
    accelerator = fake_accelerator(distributed_type)
    check_sharding(accelerator, fake_config(learnable_temperature=True, metric_type="projected"))
    assert not is_sharded(accelerator)


def test_fsdp2_with_supported_settings_passes():
    accelerator = fake_accelerator(DistributedType.FSDP)
    check_sharding(accelerator, fake_config(metric_type="lowrank", learnable_temperature=False))
    assert is_sharded(accelerator)


@pytest.mark.parametrize(("accelerator", "config", "message"), [
    (fake_accelerator(DistributedType.FSDP, fsdp_version=1), fake_config(), "set fsdp_version: 2"),
    (fake_accelerator(DistributedType.FSDP), fake_config(learnable_temperature=True),
     "learnable_temperature=true cannot be trained under FSDP"),
    (fake_accelerator(DistributedType.FSDP), fake_config(metric_type="projected"),
     "metric_type='projected' cannot be trained under FSDP"),
    (fake_accelerator(DistributedType.DEEPSPEED), fake_config(), "distributed_type=DEEPSPEED is not supported"),
    (fake_accelerator(DistributedType.XLA), fake_config(), "distributed_type=XLA is not supported"),
])
def test_refusals_name_the_file_and_the_setting(accelerator, config, message):
    with pytest.raises(ValueError, match="run.yaml") as error:
        check_sharding(accelerator, config)
    assert message in str(error.value)


def test_full_tensor_of_a_plain_tensor_is_itself():
    tensor = torch.arange(3.0)
    assert full_tensor(tensor) is tensor
