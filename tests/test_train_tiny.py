"""A tiny model trained for two steps: every parameter changes, the run folder
follows the contract, and the metrics file has the contract's keys."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from srft.config import Config, apply_overrides
from srft.testbed.tasks import TESTBED_VERSION
from srft.metrics import METRICS, doc_for, read_metrics
from srft.trainer import Trainer

CONTRACT_KEYS = {"step", "reward/mean", "entropy/rollout", "weight/sft", "weight/rl", "loss/total"}


def tiny_cfg(model_dir, out, preset_over=None, **over):
    base = {
        "model.name_or_path": str(model_dir), "train.output_dir": str(out), "train.max_steps": 2,
        "train.prompts_per_step": 4, "train.micro_batch_size": 8, "train.eval_every": 0, "train.save_every": 1,
        "rollout.max_new_tokens": 8, "eval.limit": 4, "eval.max_new_tokens": 8,
        "optim.lr": 1e-2,
    }
    return apply_overrides(Config(), {**(preset_over or {}), **base, **over}, "test")


@pytest.mark.parametrize("preset", ["srft", "grpo", "sft"])
def test_two_steps_change_every_parameter(tiny_model_dir, tmp_path, preset):
    from srft.objective import get_preset

    over = {**get_preset(preset).overrides, "train.preset": preset}
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", over)
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict().items()}
    if preset == "grpo":
        # a random tiny model never answers right: give GRPO a reward with variance
        cfg.data.reward = "tests.test_train_tiny:length_reward"
    result = Trainer(cfg, log=lambda *a: None).train()
    after = load_file(tmp_path / "run" / "final" / "model.safetensors")
    unchanged = [k for k, v in before.items() if k in after and torch.equal(v, after[k])]
    assert not unchanged, f"parameters that did not change: {unchanged}"
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]  # one row per step, no duplicates
    steps = rows
    if preset == "srft":
        for r in steps:
            assert CONTRACT_KEYS <= set(r), CONTRACT_KEYS - set(r)
            assert 0 < r["weight/sft"] <= 0.5 and r["weight/rl"] >= 0.1
    for r in rows:
        for k in r:
            assert doc_for(k) is not None, f"metric {k} is not documented in srft.metrics.METRICS"
    assert result["steps"] == 2


def length_reward(prompts, completions, **_):
    """Reward with variance inside every group, for tests: 1 if the completion is short."""
    return [1.0 if len(c) < 6 else 0.0 for c in completions]


def test_run_folder_contract(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, out, **{"train.save_total_limit": 1})
    Trainer(cfg, log=lambda *a: None).train()
    for name in ["config.yaml", "metrics.jsonl", "eval.json"]:
        assert (out / name).is_file(), name
    for png in ["reward.png", "accuracy.png", "entropy.png", "weights.png"]:
        assert (out / "plots" / png).stat().st_size > 1000, png
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev["before"]) == set(ev["after"]) == {"id_chain4", "ood_mc4", "ood_mc5"}
    assert ev["testbed_version"] == TESTBED_VERSION
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in ev["after"].values())
    cks = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in cks] == ["step-000002"]  # retention limit 1
    state = json.loads((cks[0] / "trainer_state.json").read_text())
    assert state["step"] == 2 and (cks[0] / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert model.config.model_type == "qwen2"


def test_metrics_doc_is_generated_from_code():
    from pathlib import Path

    from srft.metrics import metrics_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    assert doc.read_text() == metrics_markdown(), "regenerate docs/metrics.md with `python -m srft.metrics`"
    assert "weight/sft" in METRICS


@pytest.mark.parametrize("report_to", ["tensorboard", ["tensorboard"]])  # TRL's list form too
def test_tensorboard_when_asked(tiny_model_dir, tmp_path, report_to):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, out, **{"train.max_steps": 1, "train.save_every": 0})
    cfg.train.report_to = report_to
    Trainer(cfg, log=lambda *a: None).train()
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "report_to: tensorboard\n" in (out / "config.yaml").read_text()  # re-runnable as YAML


def test_lora_and_gradient_checkpointing(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, out, **{"model.lora_r": 4, "model.gradient_checkpointing": True,
                                           "train.save_every": 0})
    Trainer(cfg, log=lambda *a: None).train()
    assert (out / "final" / "adapter" / "adapter_model.safetensors").is_file()
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()  # plain transformers load
    assert set(before) == set(merged)
    changed = [k for k in before if not torch.equal(before[k], merged[k])]
    assert any("q_proj" in k for k in changed) and any("mlp" in k for k in changed)
    assert not any("norm" in k for k in changed)  # LoRA touches only the adapted linear layers


def test_trains_on_a_luffy_parquet(tiny_model_dir, tmp_path):
    """The verl / LUFFY layout (prompt messages, demonstration in `target`, answer in
    reward_model.ground_truth) trains with the same command, scored by the math verifier."""
    pd = pytest.importorskip("pandas")
    from tests.conftest import verl_row

    rows = [verl_row(i, q, f"<think>easy</think> \\boxed{{{a}}}", a, system="Think, then box.", source="toy")
            for i, (q, a) in enumerate([("1+1?", "2"), ("2+3?", "5"), ("half of 1?", "\\frac{1}{2}"), ("3*3?", "9")])]
    f = tmp_path / "luffy.parquet"
    pd.DataFrame(rows).to_parquet(f)
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, out, **{"data.dataset": str(f), "train.max_steps": 1, "train.save_every": 0,
                                           "data.max_demo_tokens": 128})
    result = Trainer(cfg, log=lambda *a: None).train()
    row = read_metrics(out / "metrics.jsonl")[0]
    assert row["reward/demo"] == 1.0  # every demonstration verifies against its ground truth
    assert row["loss/sft_demo"] > 0 and result["steps"] == 1
    assert result["before"] == {}  # no testbed sets for a user dataset


def test_rl_sft_keeps_demonstrations_out_of_the_advantage_group(tiny_model_dir, tmp_path):
    from srft.objective import get_preset

    over = {**get_preset("rl_sft").overrides, "train.preset": "rl_sft"}
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", over, **{"data.reward": "tests.test_train_tiny:length_reward"})
    trainer = Trainer(cfg, log=lambda *a: None)
    samples, _ = trainer.make_experience()
    assert all(s.advantage == 0.0 for s in samples if s.is_demo)
    for g in {s.group for s in samples}:
        roll = [s.advantage for s in samples if s.group == g and not s.is_demo]
        assert len(roll) == 8 and abs(sum(roll)) < 1e-5  # centred over the rollouts alone


def first_update(cfg) -> tuple[dict, dict, list[str]]:
    """Metrics and gradients of the first optimiser step of a run (gradients recorded just
    before the optimiser applies them), and the run's log."""
    logs: list[str] = []
    trainer = Trainer(cfg, log=logs.append)
    grads = {}
    step = trainer.optimizer.step

    def recording_step(*a, **k):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in trainer.unwrapped.named_parameters() if p.grad is not None})
        return step(*a, **k)

    trainer.optimizer.step = recording_step
    trainer.evaluate = lambda: {}
    return trainer.train_step(), grads, logs


@pytest.mark.parametrize("granularity", ["batch", "token"])
def test_one_pass_equals_two_passes_on_the_same_batch(tiny_model_dir, tmp_path, granularity):
    """On-policy (one mini-batch, one epoch): pi_old taken from the update's own forward and the
    batch entropy from the sampler give the loss and gradients of the separate pi_old pass."""
    over = {"objective.entropy_granularity": granularity, "data.dataset": "testbed"}
    m1, g1, log1 = first_update(tiny_cfg(tiny_model_dir, tmp_path / "one", **over))
    m2, g2, log2 = first_update(tiny_cfg(tiny_model_dir, tmp_path / "two", **over,
                                         **{"train.old_logprob_pass": "always"}))
    assert any("no separate pi_old pass" in str(x) for x in log1)
    assert any("separate no-grad pass before the update (train.old_logprob_pass is always)" in str(x) for x in log2)
    assert m1["time/old_logprob"] == 0.0 and m2["time/old_logprob"] > 0
    for k in ("loss/total", "loss/sft_demo", "loss/rl_demo", "loss/rl_self", "weight/sft", "weight/rl",
              "entropy/rollout", "entropy/demo", "reward/mean", "policy/ratio_mean"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-5, abs=1e-6), k
    assert set(g1) == set(g2) and g1
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-4, msg=name)


def test_several_mini_batches_keep_the_pi_old_pass(tiny_model_dir, tmp_path):
    logs: list[str] = []
    Trainer(tiny_cfg(tiny_model_dir, tmp_path / "run", **{"train.mini_batches": 2}), log=logs.append)
    assert any("separate no-grad pass before the update (train.mini_batches or train.epochs_per_batch > 1" in str(x)
               for x in logs)


def test_length_grouped_micro_batches_change_padding_not_the_update(tiny_model_dir, tmp_path):
    """Micro-batches of samples sorted by length (train.micro_batch_grouping "length") pad less and
    give the loss and gradients of the groups' own order: the normalisers are whole-batch counts."""
    over = {"data.dataset": "testbed", "train.prompts_per_step": 4, "train.micro_batch_size": 4,
            "rollout.max_new_tokens": 12}
    m1, g1, _ = first_update(tiny_cfg(tiny_model_dir, tmp_path / "len", **over))
    m2, g2, _ = first_update(tiny_cfg(tiny_model_dir, tmp_path / "none", **over,
                                      **{"train.micro_batch_grouping": "none"}))
    assert 0 <= m1["train/pad_fraction"] < m2["train/pad_fraction"] < 1
    for k in ("loss/total", "loss/sft_demo", "loss/rl_demo", "loss/rl_self", "weight/sft", "weight/rl",
              "entropy/rollout", "entropy/demo"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-5, abs=1e-6), k
    assert set(g1) == set(g2) and g1
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_preset_set_in_python_trains_that_preset(tiny_model_dir, tmp_path):
    """cfg.train.preset = "grpo" in Python trains GRPO (it used to train SRFT while config.yaml said grpo)."""
    import yaml

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", **{"train.max_steps": 1})
    cfg.train.preset = "grpo"
    cfg.data.reward = length_reward  # a function object, as TRL takes it
    Trainer(cfg, log=lambda *a: None).train()
    row = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert "loss/rl_self" in row and "loss/sft_demo" not in row and "loss/rl_demo" not in row
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["preset"] == "grpo" and saved["objective"]["sft_demo"] is False
    assert saved["rollout"]["n_demos"] == 0 and saved["data"]["reward"].endswith("test_train_tiny:length_reward")


@pytest.mark.parametrize("preset", ["hpt", "chord", "chord_phi", "srft_paper", "sft_filtered"])
def test_newer_single_stage_presets_train(tiny_model_dir, tmp_path, preset):
    """HPT's switch and CHORD's mu reach the trainer: gate/sft_share, weight/mu by step, weight/phi;
    srft_paper's REINFORCE has no ratio to clip."""
    from srft.objective import get_preset

    over = {**get_preset(preset).overrides, "train.preset": preset, "train.save_every": 0}
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", over, **{"train.max_steps": 4})
    cfg.data.reward = "tests.test_train_tiny:length_reward"
    Trainer(cfg, log=lambda *a: None).train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(math.isfinite(r["loss/total"]) for r in rows)
    if preset == "hpt":
        # with length_reward some prompts have a correct rollout and some none; each step's share is k / 4
        shares = [r["gate/sft_share"] for r in rows]
        assert all(s in (0.0, 0.25, 0.5, 0.75, 1.0) for s in shares)
    if preset == "chord":  # cosine from 0.9 to 0.05 over the 4 steps
        assert [r["weight/mu"] for r in rows] == pytest.approx(
            [0.05 + 0.85 * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(4)])
    if preset == "chord_phi":
        assert [r["weight/mu"] for r in rows] == pytest.approx([0.1] * 4)
        assert all(0.0 <= r["weight/phi"] <= 0.25 for r in rows)
    if preset == "sft_filtered":  # the share of prompts whose demonstration the reward credits
        assert all(0.0 <= r["gate/sft_share"] <= 1.0 for r in rows)
    if preset == "srft_paper":
        assert all(r["loss/entropy_bonus"] < 0 and r["weight/rl"] > 0.1 for r in rows)  # 0.1 e^H, H > 0


def test_hpt_prompts_without_a_correct_rollout_train_by_sft_only(tiny_model_dir, tmp_path):
    """No rollout ever correct: every prompt trains by SFT; the RL term is empty (0, not NaN)."""
    from srft.objective import get_preset

    over = {**get_preset("hpt").overrides, "train.preset": "hpt", "train.save_every": 0}
    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run", over)
    cfg.data.reward = "tests.test_train_tiny:zero_reward"
    Trainer(cfg, log=lambda *a: None).train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["gate/sft_share"] for r in rows] == [1.0, 1.0]
    assert all(r["loss/rl_self"] == 0.0 and r["loss/sft_demo"] > 0 for r in rows)


def zero_reward(prompts, completions, **_):
    return [0.0 for _ in completions]
