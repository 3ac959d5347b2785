"""Run a script under accelerate's FSDP2 code path on CPU processes (test stand-in for GPUs).

accelerate enables FSDP only for accelerator devices: with ``ACCELERATE_USE_CPU=true`` it chooses MULTI_CPU (DDP
over gloo). torch's FSDP2 (``fully_shard``) itself runs on CPU with gloo, so this wrapper switches the
accelerator's distributed type to FSDP (``fsdp_version=2``) right after it is created; ``prepare``, ``backward``,
``clip_grad_norm_`` and ``get_state_dict`` then take accelerate's real FSDP2 paths. Usage (the script's own
arguments follow it)::

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/scripts/fsdp2_on_cpu.py \
        scripts/train.py --config ...
"""

import runpy
import sys

import accelerate
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin


class FSDP2OnCPUAccelerator(accelerate.Accelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True)

    def prepare(self, *args, **kwargs):
        prepared = super().prepare(*args, **kwargs)
        if self.is_main_process:  # fully_shard swaps the model's class for FSDP<class name>
            print("prepared " + " ".join(type(item).__name__ for item in prepared), flush=True)
        return prepared


accelerate.Accelerator = FSDP2OnCPUAccelerator
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
