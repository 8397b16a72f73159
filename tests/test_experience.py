"""Experience making (srft.experience) with a fake engine and a fake reward: no model, no
tokenizer files. Checks the group layout (K rollouts then the demonstrations of each prompt),
the per-response seeds, the reward call, the advantages by hand, HPT's gate, the step's
statistics and the rollout dump."""

from __future__ import annotations

import json

import pytest
import torch

from srft.config import Config, apply_overrides
from srft.data import Example
from srft.distributed import Dist
from srft.experience import ExperienceMaker
from srft.presets import get_preset
from srft.rollout.base import RolloutOutput, derive_seed


class FakeEngine:
    """Response i is [prompt's first token + 10, 7] cut to length 1 + (seed % 2): a function of its
    prompt and seed only; records every call."""

    def __init__(self):
        self.calls, self.synced = [], 0

    def sync_weights(self, model):
        self.synced += 1

    def generate(self, prompt_ids, params, seed):
        self.calls.append((prompt_ids, params, list(seed)))
        n, T = len(prompt_ids), 2
        ids = torch.zeros((n, T), dtype=torch.long)
        mask = torch.zeros((n, T))
        for i, (p, s) in enumerate(zip(prompt_ids, seed)):
            length = 1 + s % 2
            ids[i, :length] = torch.tensor([p[0] + 10, 7][:length])
            mask[i, :length] = 1
        ent = torch.full((n, T), 0.5) * mask if params.return_entropy else None
        return RolloutOutput(ids, mask, -0.25 * mask, torch.tensor([bool(s % 2) for s in seed]), ent)


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def reward_first_token(completions, answer, **kwargs):
    """1 when the completion's first token equals the row's answer (demonstrations are the answer)."""
    return [1.0 if c.split()[0] == a else 0.0 for c, a in zip(completions, answer)]


def examples(n=4):
    return [Example(index=i, prompt=f"q{i}", prompt_ids=[i + 1, 99], demo_texts=[str(i + 11)], demo_ids=[[i + 11]],
                    answer=str(i + 11 if i % 2 == 0 else -1), columns={"answer": str(i + 11 if i % 2 == 0 else -1)})
            for i in range(n)]


def make_cfg(preset="srft", **over):
    base = {"train.prompts_per_step": 2, "rollout.n_rollouts": 3, "rollout.n_demos": 1, "train.seed": 5,
            **get_preset(preset).overrides, "train.preset": preset}
    return apply_overrides(Config(), {**base, **over}, "test")


def test_groups_seeds_rewards_and_advantages(tmp_path):
    cfg = make_cfg(**{"train.save_rollouts": True})
    engine = FakeEngine()
    maker = ExperienceMaker(cfg, examples(), engine, FakeTokenizer(), reward_first_token, Dist(), tmp_path)
    samples, info = maker.make(step=3, idx=[0, 1], policy=None, return_entropy=True)
    assert engine.synced == 1
    prompts, params, seeds = engine.calls[0]
    assert prompts == [[1, 99]] * 3 + [[2, 99]] * 3
    assert seeds == [derive_seed(5, "rollout", 3, g * 3 + k) for g in range(2) for k in range(3)]
    assert params.return_entropy and params.max_new_tokens == cfg.rollout.max_new_tokens
    # each group: 3 rollouts, then the demonstration
    assert [(s.group, s.is_demo) for s in samples] == [(0, False)] * 3 + [(0, True)] + [(1, False)] * 3 + [(1, True)]
    # group 0 (answer 11): every rollout starts with 11, the demonstration is "11": all correct, A = 0
    assert [s.reward for s in samples[:4]] == [1.0] * 4 and all(s.advantage == 0.0 for s in samples[:4])
    # group 1 (answer -1): rollouts and demonstration wrong: all 0, A = 0
    assert [s.reward for s in samples[4:]] == [0.0] * 4
    assert info["advantage/zero_groups"] == 1.0 and info["reward/mean"] == 0.5 and info["reward/demo"] == 0.5
    assert all(s.entropy is not None for s in samples if not s.is_demo)
    dump = json.loads((tmp_path / "rollouts.jsonl").read_text())
    assert dump["step"] == 4 and len(dump["samples"]) == 8 and dump["samples"][3]["demo"] is True


def test_advantages_by_hand_with_demo_in_group(tmp_path):
    """Group of 3 rollouts + 1 demonstration with rewards 1, 0, 0, 1 (demonstration correct):
    mean 0.5, std (unbiased) sqrt(1/3), so A = +-0.5 / 0.57735 = +-0.8660."""
    cfg = make_cfg(**{"train.prompts_per_step": 1})

    def reward(completions, **kw):
        return [1.0, 0.0, 0.0, 1.0]

    samples, _ = ExperienceMaker(cfg, examples(), FakeEngine(), FakeTokenizer(), reward, Dist()).make(
        step=0, idx=[2], policy=None, return_entropy=False)
    adv = [s.advantage for s in samples]
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()
    assert adv == pytest.approx([0.5 / (std + 1e-6), -0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.5 / (std + 1e-6)],
                                abs=1e-5)
    assert abs(adv[0] - 0.8660) < 1e-3


def test_demonstrations_out_of_the_group_get_zero_advantage():
    cfg = make_cfg("rl_sft", **{"train.prompts_per_step": 1, "rollout.n_rollouts": 2})

    def reward(completions, **kw):
        return [1.0, 0.0, 1.0]

    samples, _ = ExperienceMaker(cfg, examples(), FakeEngine(), FakeTokenizer(), reward, Dist()).make(
        step=0, idx=[0], policy=None, return_entropy=False)
    assert samples[2].is_demo and samples[2].advantage == 0.0
    assert samples[0].advantage == pytest.approx(-samples[1].advantage) and samples[0].advantage > 0


def test_hpt_gate_switches_each_prompt_between_sft_and_rl():
    """HPT (sft_gate 0): a prompt with no correct rollout trains on its demonstration only; a prompt
    with a correct rollout trains on its rollouts only."""
    cfg = make_cfg("hpt", **{"rollout.n_rollouts": 2})

    def reward(completions, **kw):
        return [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # group 0: none correct; group 1: one correct

    samples, info = ExperienceMaker(cfg, examples(), FakeEngine(), FakeTokenizer(), reward, Dist()).make(
        step=0, idx=[0, 1], policy=None, return_entropy=False)
    assert [s.active for s in samples] == [False, False, True, True, True, False]
    assert info["gate/sft_share"] == 0.5


def test_no_rollouts_sft():
    cfg = make_cfg("sft", **{"train.prompts_per_step": 2})
    engine = FakeEngine()
    samples, info = ExperienceMaker(cfg, examples(), engine, FakeTokenizer(), reward_first_token, Dist()).make(
        step=0, idx=[1, 3], policy=None, return_entropy=False)
    assert engine.calls == [] and engine.synced == 0  # SFT samples nothing
    assert all(s.is_demo for s in samples) and len(samples) == 2
    assert "time/weight_sync" not in info and info["response_length/demo"] == 1.0


def test_per_function_reward_metrics_by_hand():
    """Two reward functions over 3 rollouts + 1 demonstration of one prompt: rewards/<name>/mean and
    /std are over the rollouts only, with None values left out."""
    from srft.rewards import Reward

    def a(completions, **kw):
        return [1.0, 2.0, 4.0, 100.0]  # the demonstration's 100 is not a rollout's

    def b(completions, **kw):
        return [None, 0.5, 0.5, 0.0]

    cfg = make_cfg(**{"train.prompts_per_step": 1})
    _, info = ExperienceMaker(cfg, examples(), FakeEngine(), FakeTokenizer(), [Reward("a", a), Reward("b", b)],
                              Dist()).make(step=0, idx=[0], policy=None, return_entropy=False)
    assert info["rewards/a/mean"] == pytest.approx(7 / 3)
    assert info["rewards/a/std"] == pytest.approx(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) ** 0.5 / 2 ** 0.5)
    assert info["rewards/b/mean"] == 0.5 and info["rewards/b/std"] == 0.0
    assert info["reward/mean"] == pytest.approx((1.0 + 2.5 + 4.5) / 3) and info["reward/none"] == 0.0
