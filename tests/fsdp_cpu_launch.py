"""Test launcher: `srft` with FSDP2 on CPU processes (gloo).

accelerate (1.15) turns FSDP on only for GPU-like devices: a run of CPU processes is
always MULTI_CPU, whatever FSDP settings it is given. torch's own FSDP2
(`fully_shard`) does run on gloo, so this launcher, used by tests/test_multiprocess.py
only, sets accelerate's state to FSDP with an FSDP2 plugin after accelerate has made
it. Everything after that is accelerate's and srft's real code: the model is wrapped
with fully_shard, checkpoints are sharded (save_state / load_state), final/ is
assembled from the shards, and generation runs in lockstep across ranks.

    torchrun --nproc_per_node 2 tests/fsdp_cpu_launch.py train ...   (ACCELERATE_USE_CPU=1)
"""

import sys

import accelerate.state as state
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = state.AcceleratorState.__init__


def _init_with_fsdp2(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = getattr(self, "fsdp_plugin", None) or FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["Qwen2DecoderLayer"], state_dict_type="SHARDED_STATE_DICT",
            reshard_after_forward=True)


state.AcceleratorState.__init__ = _init_with_fsdp2

if __name__ == "__main__":
    from srft.cli import main

    sys.exit(main(sys.argv[1:]))
