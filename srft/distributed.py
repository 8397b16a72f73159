"""Rank-awareness in one place: who this process is, how work is split between
processes, and the few collectives the trainer needs.

`srft` never implements its own distributed layer: processes are started by
`torchrun` / `accelerate launch`, the process group, DDP / FSDP2 / DeepSpeed wrapping,
gradient reduction and sharded state are accelerate's. This module only answers,
for the trainer and the evaluation:

- which share of a step's groups (or an evaluation set's problems) this rank owns:
  `shard` (global index i goes to rank i % world);
- global sums, maxima and gathered lists (`sum`, `max`, `gather`);
- whether this process writes files and prints (`is_main`) and where the others wait
  (`barrier`, `main_first`);
- whether generation must keep every rank in step (`lockstep_generation`: FSDP and
  ZeRO-3 all-gather parameters in each forward, so a rank that has finished its
  responses keeps running forwards until every rank has finished).

A `Dist` made without an accelerator is the single-process case (world size 1),
used by evaluation outside training.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch


def launched_rank() -> int:
    """This process's rank as the launcher (torchrun, accelerate launch) set it, before any
    process group exists; 0 when run alone."""
    import os

    return int(os.environ.get("RANK", "0"))


class Dist:
    def __init__(self, accelerator=None):
        self.accelerator = accelerator
        self.world = int(accelerator.num_processes) if accelerator is not None else 1
        self.rank = int(accelerator.process_index) if accelerator is not None else 0
        self.is_main = self.rank == 0

    # ------------------------------------------------------------ identity
    @property
    def kind(self) -> str:
        """accelerate's distributed type, e.g. NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED."""
        if self.accelerator is None:
            return "NO"
        return str(self.accelerator.distributed_type).split(".")[-1]

    def describe(self) -> str:
        return f"world size {self.world} (rank {self.rank}, {self.kind})"

    @property
    def lockstep_generation(self) -> bool:
        """Sharded parameters (FSDP, DeepSpeed ZeRO-3): every forward is a collective, so all
        ranks must run the same number of forwards while generating."""
        if self.world == 1 or self.accelerator is None:
            return False
        if self.kind == "FSDP":
            return True
        if self.kind == "DEEPSPEED":
            plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
            return getattr(plugin, "zero_stage", 0) == 3
        return False

    # ------------------------------------------------------------ sharding
    def shard(self, n: int) -> list[int]:
        """The global indices 0..n-1 this rank owns: i % world == rank."""
        return list(range(self.rank, n, self.world))

    def padded_shard(self, n: int) -> tuple[list[int], int]:
        """`shard(n)` padded (by repeating its last index, or index 0) to ceil(n / world) entries, so
        every rank runs the same number of batches; returns (indices, number of real ones)."""
        own = self.shard(n)
        size = -(-n // self.world) if n else 0
        filler = own[-1] if own else 0
        return own + [filler] * (size - len(own)), len(own)

    # ------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64)
        if self.world > 1:
            t = self.accelerator.reduce(t.to(self.accelerator.device), reduction="sum").cpu()
        return t.tolist()

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum over ranks."""
        t = torch.tensor(list(values), dtype=torch.float64)
        if self.world > 1:
            t = self.accelerator.gather(t.to(self.accelerator.device)).view(self.world, -1).amax(0).cpu()
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.max([float(flag)])[0] > 0

    def all(self, flag: bool) -> bool:
        return self.sum([float(flag)])[0] == self.world

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's list, concatenated in rank order, on every rank (picklable items)."""
        if self.world == 1:
            return list(items)
        from accelerate.utils import gather_object

        return list(gather_object(list(items)))

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. builds a cache), then the others."""
        if self.world == 1:
            yield
            return
        with self.accelerator.main_process_first():
            yield

    @contextlib.contextmanager
    def micro_step(self, model, last: bool) -> Iterator[None]:
        """One micro-batch of gradient accumulation: gradients are reduced across ranks only on
        the last one (accelerate's `no_sync` for DDP; `sync_gradients`, which DeepSpeed reads as
        its accumulation boundary). Every rank runs as many micro-batches."""
        if self.world == 1 or self.accelerator is None:
            yield
            return
        acc = self.accelerator
        acc.sync_gradients = last
        try:
            with (contextlib.nullcontext() if last else acc.no_sync(model)):
                yield
        finally:
            acc.sync_gradients = True

    def log(self, log, msg: str) -> None:
        if self.is_main:
            log(msg)
