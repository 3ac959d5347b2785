"""`hf_mltm.training.sharding`: what the trainer refuses under FSDP and the others, with the setting to change.

The FSDP2 training runs themselves (2 processes against 1, stop and resume) are in tests/scripts/test_train.py.
"""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from hf_mltm.training.sharding import check_sharding, full_tensor, is_sharded

CONFIG = SimpleNamespace(source="run.yaml")


def fake_accelerator(distributed_type, fsdp_version=2):
    plugin = SimpleNamespace(fsdp_version=fsdp_version)
    return SimpleNamespace(distributed_type=distributed_type, state=SimpleNamespace(fsdp_plugin=plugin))


class TinyModel(torch.nn.Module):
    def __init__(self, metric_type="full", scalar_names=()):
        super().__init__()
        self.config = SimpleNamespace(metric_type=metric_type)
        self.linear = torch.nn.Linear(2, 2)
        for name in scalar_names:
            setattr(self, name, torch.nn.Parameter(torch.tensor(1.0)))


@pytest.mark.parametrize("distributed_type", [DistributedType.NO, DistributedType.MULTI_CPU,
                                              DistributedType.MULTI_GPU])
def test_unsharded_setups_pass_with_any_model(distributed_type):
    accelerator = fake_accelerator(distributed_type)
    check_sharding(accelerator, CONFIG, TinyModel("projected", ["logit_scale"]))
    assert not is_sharded(accelerator)


def test_fsdp2_with_a_shardable_model_passes():
    accelerator = fake_accelerator(DistributedType.FSDP)
    check_sharding(accelerator, CONFIG, TinyModel("lowrank"))
    assert is_sharded(accelerator)


@pytest.mark.parametrize(("accelerator", "model", "message"), [
    (fake_accelerator(DistributedType.FSDP, fsdp_version=1), TinyModel(), "set fsdp_version: 2"),
    (fake_accelerator(DistributedType.FSDP), TinyModel(scalar_names=["logit_scale"]),
     "0-dim parameter(s) ['logit_scale']; set model.config.learnable_temperature false"),
    (fake_accelerator(DistributedType.FSDP), TinyModel(scalar_names=["scale", "bias"]),
     "0-dim parameter(s) ['scale', 'bias']; make them buffers or 1-element tensors"),
    (fake_accelerator(DistributedType.FSDP), TinyModel("projected"),
     "metric_type='projected' cannot be trained under FSDP"),
    (fake_accelerator(DistributedType.DEEPSPEED), TinyModel(), "distributed_type=DEEPSPEED is not supported"),
    (fake_accelerator(DistributedType.XLA), TinyModel(), "distributed_type=XLA is not supported"),
])
def test_refusals_name_the_file_and_the_setting(accelerator, model, message):
    with pytest.raises(ValueError, match="run.yaml") as error:
        check_sharding(accelerator, CONFIG, model)
    assert message in str(error.value)


def test_full_tensor_of_a_plain_tensor_is_itself():
    tensor = torch.arange(3.0)
    assert full_tensor(tensor) is tensor
