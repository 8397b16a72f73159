"""srft.distributed: the sharding rules (pure) and the single-process case."""

from __future__ import annotations

from pathlib import Path

import pytest

from srft.config import Config, apply_overrides, load_yaml
from srft.distributed import Dist

REPO = Path(__file__).resolve().parents[1]


class FakeAccelerator:
    def __init__(self, rank: int, world: int):
        self.process_index, self.num_processes = rank, world
        self.distributed_type = "DistributedType.MULTI_CPU"


def test_shards_are_disjoint_cover_everything_and_keep_minibatches_even():
    world, n = 4, 16
    shards = [Dist(FakeAccelerator(r, world)).shard(n) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert shards[1] == [1, 5, 9, 13]
    # 2 mini-batches of 8 groups: each rank owns 2 groups of each, contiguous in its own order
    for s in shards:
        assert [sum(1 for g in s if g // 8 == m) for m in range(2)] == [2, 2]
        assert all(g // 8 == 0 for g in s[:2]) and all(g // 8 == 1 for g in s[2:])


def test_padded_shards_run_the_same_number_of_items():
    world, n = 3, 7
    got = [Dist(FakeAccelerator(r, world)).padded_shard(n) for r in range(world)]
    assert got == [([0, 3, 6], 3), ([1, 4, 4], 2), ([2, 5, 5], 2)]
    assert Dist(FakeAccelerator(2, 4)).padded_shard(1) == ([0], 0)  # nothing of its own: one filler


def test_single_process_collectives_are_identities():
    d = Dist()
    assert (d.world, d.rank, d.is_main, d.kind, d.lockstep_generation) == (1, 0, True, "NO", False)
    assert d.sum([1.0, 2.5]) == [1.0, 2.5] and d.max([3.0]) == [3.0] and d.gather([1, 2]) == [1, 2]
    assert d.any(True) and not d.any(False) and d.all(True)
    with d.micro_step(None, last=False):
        pass


@pytest.mark.parametrize("path", sorted((REPO / "examples" / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_recipes_are_valid_configs(path):
    cfg = apply_overrides(Config(), load_yaml(str(path)), str(path))
    cfg.validate()
    assert cfg.train.preset == "srft" and cfg.optim.lr == 1e-6 and cfg.rollout.temperature == 1.0
    assert cfg.rollout.n_rollouts == 7 and cfg.rollout.n_demos == 1 and cfg.eval.temperature == 0.6


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "zero2", "zero3"])
def test_accelerate_configs_are_there_and_name_their_engine(name):
    import yaml

    cfg = yaml.safe_load((REPO / "examples" / "accelerate" / f"{name}.yaml").read_text())
    expected = {"ddp": "MULTI_GPU", "fsdp2": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[name]
    assert cfg["distributed_type"] == expected
    if name == "fsdp2":
        assert cfg["fsdp_config"]["fsdp_version"] == 2
    if name.startswith("zero"):
        assert cfg["deepspeed_config"]["zero_stage"] == int(name[-1])
