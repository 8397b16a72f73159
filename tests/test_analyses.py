"""The paper's analyses: token-probability shift and learning dynamics. Their arithmetic against
numbers worked out by hand, checkpoint discovery, and both commands end to end on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from srft.analyses.dynamics import mean_token_nll, run_points, trajectory_length
from srft.analyses.token_shift import paper_pattern, prob_shift, shift_histogram, shift_shares
from srft.cli import main


def test_token_shift_arithmetic_by_hand():
    # p_tuned = (0.9, 0.5, 0.2 | 0.3, pad), p_base = (0.4, 0.45, 0.2 | 0.9, pad)
    lp_t = torch.log(torch.tensor([[0.9, 0.5, 0.2], [0.3, 1.0, 1.0]]))
    lp_b = torch.log(torch.tensor([[0.4, 0.45, 0.2], [0.9, 1.0, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    dp = prob_shift(lp_t, lp_b, mask)
    torch.testing.assert_close(dp, torch.tensor([[0.5, 0.05, 0.0], [-0.6, 0.0, 0.0]]), rtol=1e-5, atol=1e-6)
    # |dp| over the 4 tokens: 0.5, 0.05, 0, 0.6
    assert shift_shares(dp, mask) == pytest.approx({0.01: 0.75, 0.1: 0.5, 0.5: 0.25})
    counts, edges = shift_histogram(dp, mask, bins=4)  # bins [-1,-.5) [-.5,0) [0,.5) [.5,1]
    assert counts == [1, 0, 2, 1] and edges == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])
    shares = {"sft": {0.01: 0.8, 0.1: 0.4}, "grpo": {0.01: 0.3, 0.1: 0.01}, "srft": {0.01: 0.5, 0.1: 0.2}}
    assert paper_pattern(shares) == {0.01: False, 0.1: False}  # SFT > 50% and GRPO < 2% at no threshold
    shares["sft"][0.1] = 0.6
    assert paper_pattern(shares) == {0.01: False, 0.1: True}
    assert paper_pattern({"srft": {0.1: 0.2}}) == {0.1: None}


def test_dynamics_arithmetic_by_hand():
    lp = torch.log(torch.tensor([[0.5, 0.25], [1.0, 0.125]]))
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # tokens: 0.5, 0.25, 0.125 -> NLL ln2, 2 ln2, 3 ln2: mean 2 ln2
    assert mean_token_nll(lp, mask) == pytest.approx(2 * math.log(2))
    assert math.isnan(mean_token_nll(lp, torch.zeros(2, 2)))
    assert trajectory_length([(0, 0), (3, 4), (3, 5)]) == pytest.approx(6.0)


def _fake_model(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")


def test_run_points_single_and_two_stage(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "BASE"}, "train": {"max_steps": 6}}))
    for s in (2, 4, 6):
        _fake_model(one / "checkpoints" / f"step-{s:06d}")
    (one / "checkpoints" / ".tmp-step-000008").mkdir()  # an unfinished save is never a point
    _fake_model(one / "final")
    assert run_points(one) == [(0, "BASE"), (2, str(one / "checkpoints" / "step-000002")),
                               (4, str(one / "checkpoints" / "step-000004")),
                               (6, str(one / "checkpoints" / "step-000006"))]
    two = tmp_path / "two"
    two.mkdir()
    (two / "config.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "BASE"}, "train": {"max_steps": 10}}))
    for stage, steps in (("stage1-sft", 4), ("stage2-grpo", 6)):
        (two / stage).mkdir()
        (two / stage / "config.yaml").write_text(yaml.safe_dump({"train": {"max_steps": steps}}))
        _fake_model(two / stage / "checkpoints" / "step-000002")
    _fake_model(two / "stage1-sft" / "final")
    _fake_model(two / "final")
    assert [s for s, _ in run_points(two)] == [0, 2, 4, 6, 10]  # stage 2's step 2 is global step 6
    assert run_points(two)[2][1] == str(two / "stage1-sft" / "final")
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        run_points(tmp_path)


def test_token_shift_command_end_to_end(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import make_tiny_model

    # a random tiny model is near uniform over its vocabulary: sharpen another one's output layer so
    # that its probabilities differ from the base model's by more than the thresholds
    other = make_tiny_model(tmp_path / "other", seed=1)
    m = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        m.get_output_embeddings().weight.mul_(200.0)
    m.save_pretrained(other)
    AutoTokenizer.from_pretrained(other).save_pretrained(other)
    out = tmp_path / "shift"
    assert main(["analyze", "token-shift", "--base", str(tiny_model_dir), "--tuned", f"sft={other}",
                 "--tuned", f"same={tiny_model_dir}", "--limit", "3", "--max-new-tokens", "5",
                 "--output-dir", str(out)]) == 0
    res = json.loads((out / "token_shift.json").read_text())
    assert res["n_prompts"] == 3 and set(res["models"]) == {"sft", "same"}
    sft, same = res["models"]["sft"], res["models"]["same"]
    shares = [sft["share_above"][k] for k in ("0.01", "0.1", "0.5")]
    assert 0 < sft["tokens"] <= 15 and shares == sorted(shares, reverse=True) and 0 < shares[0] <= 1
    assert sum(sft["histogram"]["counts"]) == sft["tokens"]
    assert same["mean_abs_dp"] == pytest.approx(0.0, abs=1e-6)  # the base against itself moves nothing
    for name in ("token_shift_hist.png", "token_shift_examples.png"):
        assert (out / name).stat().st_size > 1000
    assert "| sft |" in capsys.readouterr().out


def test_dynamics_command_end_to_end(tiny_model_dir, tmp_path, capsys):
    """A two-step run with a checkpoint per step: three points (base, step 1, step 2), each with its
    NLL on the teacher's demonstrations and on the base model's responses."""
    from srft.config import Config, apply_overrides
    from srft.trainer import Trainer

    run = tmp_path / "run"
    cfg = apply_overrides(Config(), {
        "model.name_or_path": str(tiny_model_dir), "train.output_dir": str(run), "train.max_steps": 2,
        "train.prompts_per_step": 2, "train.micro_batch_size": 8, "train.eval_every": 0, "train.save_every": 1,
        "rollout.max_new_tokens": 6, "eval.limit": 2, "eval.max_new_tokens": 4, "optim.lr": 1e-2}, "test")
    Trainer(cfg, log=lambda *a: None).train()
    out = tmp_path / "dyn"
    assert main(["analyze", "dynamics", "--run", f"srft={run}", "--limit", "3", "--max-new-tokens", "5",
                 "--output-dir", str(out)]) == 0
    res = json.loads((out / "dynamics.json").read_text())
    assert res["axes"] == ["teacher", "base"] and res["references"]["teacher"] == "demonstrations"
    pts = res["runs"]["srft"]["points"]
    assert [p["step"] for p in pts] == [0, 1, 2]
    assert all(set(p["nll"]) == {"teacher", "base"} and all(v > 0 for v in p["nll"].values()) for p in pts)
    assert pts[0]["nll"]["teacher"] != pts[-1]["nll"]["teacher"]  # training moved the model
    assert (out / "dynamics.png").stat().st_size > 1000
    assert "| srft | 2 |" in capsys.readouterr().out
    assert main(["analyze", "dynamics", "--run", str(run), "--axes", "teacher,nope",
                 "--output-dir", str(out)]) == 2
