"""A tiny model trained for two steps: every parameter changes, the run folder
follows the contract, and the metrics file has the contract's keys."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from srft.config import Config, apply_overrides
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
    assert set(ev["before"]) == set(ev["after"]) == {"id_chain4", "ood_chain5", "ood_chain6"}
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


def test_tensorboard_when_asked(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_model_dir, out, **{"train.report_to": "tensorboard", "train.max_steps": 1,
                                           "train.save_every": 0})
    Trainer(cfg, log=lambda *a: None).train()
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
