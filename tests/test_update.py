"""The update (srft.update) on its own: the schedule by hand, when pi_old needs its own pass,
the pi_old pass, and `Updater` on a tiny model with hand-made samples (micro-batching does not
change the update; a non-finite loss skips the optimiser step and says so)."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from srft.config import Config, OptimConfig, apply_overrides
from srft.distributed import Dist
from srft.models import load_model_and_tokenizer
from srft.policy import PolicyScorer
from srft.presets import get_preset
from srft.samples import Sample
from srft.update import Updater, lr_lambda, make_optimizer, old_logprobs, pi_old_mode, reapply_schedule


def test_lr_lambda_by_hand():
    warm = lr_lambda(OptimConfig(warmup_steps=2, schedule="linear"), total_steps=6)
    # warm-up (step+1)/2, then linear decay over the 4 steps after it
    assert [warm(s) for s in range(7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    cos = lr_lambda(OptimConfig(schedule="cosine"), total_steps=4)
    assert cos(2) == pytest.approx(0.5) and cos(4) == pytest.approx(0.0)
    assert lr_lambda(OptimConfig(schedule="constant"), total_steps=4)(3) == 1.0


@pytest.mark.parametrize("over,one_pass,why", [
    ({}, True, ""),
    ({"train.mini_batches": 2}, False, "several updates"),
    ({"train.old_logprob_pass": "always"}, False, "always"),
    ({**get_preset("sft").overrides, "objective.w_sft": "entropy"}, False, "batch entropy comes from the demonstrations"),
])
def test_pi_old_mode(over, one_pass, why):
    ok, reason = pi_old_mode(apply_overrides(Config(), over, "test"))
    assert ok is one_pass and why in reason


def test_reapply_schedule_takes_the_new_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer(torch.nn.ParameterList([p]), OptimConfig(lr=1.0, schedule="linear"), total_steps=2)
    opt.step(), sched.step(), opt.step(), sched.step()  # the end of a 2-step schedule: rate 0
    assert opt.param_groups[0]["lr"] == 0.0
    sched.lr_lambdas[0] = lr_lambda(OptimConfig(schedule="linear"), total_steps=4)  # the run extended to 4
    reapply_schedule(opt, sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5) and sched.get_last_lr() == [pytest.approx(0.5)]


def _samples() -> list[Sample]:
    """Two groups of 2 rollouts + 1 demonstration, with advantages set by hand."""
    out = []
    for g in range(2):
        p = [5 + g, 6, 7]
        out += [Sample(g, p, [8, 9, 10][: 2 + k], False, reward=float(k), advantage=(1.0 if k else -1.0),
                       sampler_logprobs=torch.full((2 + k,), -1.0)) for k in range(2)]
        out.append(Sample(g, p, [11, 12], True, reward=1.0, advantage=0.5))
    return out


def _updater(model_dir, micro: int, **over):
    cfg = apply_overrides(Config(), {"train.micro_batch_size": micro, "optim.lr": 1e-2, "train.max_steps": 2,
                                     "rollout.n_rollouts": 2, **over}, "test")
    model, tok, _ = load_model_and_tokenizer(str(model_dir), cfg.model)
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    opt, sched = make_optimizer(model, cfg.optim, 2)
    model, opt, sched = acc.prepare(model, opt, sched)
    scorer = PolicyScorer(model, acc.unwrap_model(model), 1.0)
    logs: list[str] = []
    return Updater(cfg, acc, model, opt, sched, scorer, Dist(acc), tok.pad_token_id, logs.append), logs


def test_micro_batching_does_not_change_the_update(tiny_model_dir):
    results = []
    for micro in (6, 1):
        upd, _ = _updater(tiny_model_dir, micro)
        samples = _samples()
        ent = old_logprobs(upd.scorer, samples, upd.pad_id, upd.dist, upd.cfg.train)
        assert math.isfinite(ent["entropy/rollout"]) and math.isfinite(ent["entropy/demo"])
        grads = {}
        step = upd.optimizer.step

        def recording_step(*a, **k):  # the gradient the optimiser is about to apply
            grads["g"] = torch.cat([p.grad.flatten() for p in upd.model.parameters() if p.grad is not None])
            return step(*a, **k)

        upd.optimizer.step = recording_step
        m = upd.update(samples, ent["entropy/rollout"], one_pass=False, step=0)
        results.append((m, grads["g"]))
    (m6, w6), (m1, w1) = results
    assert m6["optim/skipped_updates"] == 0.0 and m6["_train_tokens"] == m1["_train_tokens"]
    for k in ("loss/total", "loss/sft_demo", "loss/rl_self", "policy/grad_norm"):
        assert m6[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k
    assert torch.allclose(w6, w1, rtol=1e-4, atol=1e-7)  # the same gradient
    assert m1["train/pad_fraction"] < m6["train/pad_fraction"]  # one sample a micro-batch: less padding


def test_non_finite_loss_skips_the_step(tiny_model_dir, monkeypatch):
    upd, logs = _updater(tiny_model_dir, 6)
    before = torch.cat([p.detach().flatten().clone() for p in upd.model.parameters()])
    samples = _samples()
    samples[0].advantage = float("nan")
    old_logprobs(upd.scorer, samples, upd.pad_id, upd.dist, upd.cfg.train)
    m = upd.update(samples, 1.0, one_pass=False, step=4)
    after = torch.cat([p.detach().flatten() for p in upd.model.parameters()])
    assert m["optim/skipped_updates"] == 1.0 and torch.equal(before, after)
    assert any("step 5: non-finite loss or gradient" in line for line in logs)
