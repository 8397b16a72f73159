"""The composed objective: srft / grpo / sft presets against their written formulas,
stop-gradient on the weights, and micro-batch invariance of the whole loss."""

from __future__ import annotations

import math

import pytest
import torch

from srft.config import Config, apply_overrides
from srft.objective import PRESETS, LossInputs, Normalizers, compute_loss, get_preset


def preset_cfg(name):
    return apply_overrides(Config(), get_preset(name).overrides, name).objective


def small_batch(seed=0, requires_grad=True):
    """2 rollouts + 1 demonstration of one group, T = 3, uneven lengths."""
    g = torch.Generator().manual_seed(seed)
    logprobs = (-torch.rand(3, 3, generator=g) * 2).requires_grad_(requires_grad)
    entropy = torch.rand(3, 3, generator=g)
    old = logprobs.detach() + 0.1 * torch.randn(3, 3, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.float32)
    is_demo = torch.tensor([False, False, True])
    adv = torch.tensor([1.0, -0.5, 0.5])
    return LossInputs(logprobs, entropy, old, adv, mask, is_demo)


def norms_of(x, batch_entropy=None):
    return Normalizers.from_masks(x.mask, x.is_demo, max_len=3, batch_entropy=batch_entropy)


def test_srft_equals_written_formula():
    x = small_batch()
    cfg = preset_cfg("srft")
    H_batch = 0.7
    loss, m = compute_loss(x, norms_of(x, H_batch), cfg)
    lp, old, A = x.logprobs.detach(), x.old_logprobs, x.advantages
    # L_SFT_demo = 0.5 e^{-H} * mean over the 3 demo tokens of -log p
    w_sft = 0.5 * math.exp(-H_batch)
    sft = w_sft * (-lp[2].sum()) / 3
    # L_RL_demo = -mean over demo tokens of A p
    rl_demo = -(A[2] * lp[2].exp()).sum() / 3
    # L_RL_self: 5 rollout tokens; row 0 has A = 1 > 0 -> weight 0.1 e^{H}; row 1 weight 1
    w_rl = 0.1 * math.exp(H_batch)
    total_self = 0.0
    for i, n in ((0, 2), (1, 3)):
        for t in range(n):
            r = math.exp(lp[i, t] - old[i, t])
            surr = -min(r * A[i], min(max(r, 0.8), 1.2) * A[i])
            total_self += (w_rl if A[i] > 0 else 1.0) * surr
    rl_self = total_self / 5
    assert m["loss/sft_demo"].item() == pytest.approx(float(sft), rel=1e-5)
    assert m["loss/rl_demo"].item() == pytest.approx(float(rl_demo), rel=1e-5)
    assert m["loss/rl_self"].item() == pytest.approx(float(rl_self), rel=1e-5)
    assert loss.item() == pytest.approx(float(sft + rl_demo + rl_self), rel=1e-5)
    assert m["weight/sft"].item() == pytest.approx(w_sft, rel=1e-6)
    assert m["weight/rl"].item() == pytest.approx(w_rl, rel=1e-6)


def test_grpo_and_sft_presets_equal_their_formulas():
    x = small_batch(1)
    lp, old, A = x.logprobs.detach(), x.old_logprobs, x.advantages
    loss, m = compute_loss(x, norms_of(x), preset_cfg("grpo"))
    assert set(k for k in m if k.startswith("loss/")) == {"loss/rl_self", "loss/total"}
    expected = 0.0
    for i, n in ((0, 2), (1, 3)):
        for t in range(n):
            r = math.exp(lp[i, t] - old[i, t])
            expected += -min(r * A[i], min(max(r, 0.8), 1.2) * A[i])
    assert loss.item() == pytest.approx(float(expected) / 5, rel=1e-5)

    loss, m = compute_loss(x, norms_of(x), preset_cfg("sft"))
    assert set(k for k in m if k.startswith("loss/")) == {"loss/sft_demo", "loss/nll_demo", "loss/total"}
    assert loss.item() == pytest.approx(float(-lp[2].mean()), rel=1e-6)


def test_is_weight_multiplies_the_on_policy_term_per_token():
    """GRPO with truncated importance weights: each rollout token's surrogate times its weight;
    demonstrations and padding are untouched (their weights may be anything, NaN included)."""
    from dataclasses import replace

    x = small_batch(1)
    lp, old, A = x.logprobs.detach(), x.old_logprobs, x.advantages
    w = torch.tensor([[0.5, 2.0, float("nan")], [1.0, 0.0, 1.5], [float("nan"), 9.0, 9.0]])
    loss, m = compute_loss(replace(x, is_weight=w), norms_of(x), preset_cfg("grpo"))
    expected = 0.0
    for i, n in ((0, 2), (1, 3)):
        for t in range(n):
            r = math.exp(lp[i, t] - old[i, t])
            expected += float(w[i, t]) * -min(r * A[i], min(max(r, 0.8), 1.2) * A[i])
    assert loss.item() == pytest.approx(float(expected) / 5, rel=1e-5)
    assert m["rollout/is_weight_mean"].item() == pytest.approx((0.5 + 2.0 + 1.0 + 0.0 + 1.5) / 5, rel=1e-6)
    ones = compute_loss(replace(x, is_weight=torch.ones(3, 3)), norms_of(x), preset_cfg("grpo"))[0]
    assert ones.item() == pytest.approx(compute_loss(x, norms_of(x), preset_cfg("grpo"))[0].item(), rel=1e-6)


def test_weights_are_stop_gradient():
    """d loss / d logprobs with entropy-dependent weights equals the gradient with the
    weights frozen as constants; and no gradient reaches the entropy tensor."""
    x = small_batch(2)
    x.entropy.requires_grad_(True)
    cfg = apply_overrides(Config(), {"objective.entropy_granularity": "token"}, "t").objective
    loss, _ = compute_loss(x, norms_of(x), cfg)
    loss.backward()
    assert x.entropy.grad is None or torch.all(x.entropy.grad == 0)
    g_entropy_weighted = x.logprobs.grad.clone()
    # same loss written with the weights as plain numbers
    lp = x.logprobs.detach().clone().requires_grad_(True)
    H = x.entropy.detach()
    w_sft, w_rl = 0.5 * torch.exp(-H), 0.1 * torch.exp(H)
    demo = torch.tensor([0.0, 0.0, 1.0]).unsqueeze(-1) * x.mask
    roll = x.mask - demo
    A = x.advantages.unsqueeze(-1)
    r = torch.exp(lp - x.old_logprobs)
    surr = -torch.minimum(r * A, r.clamp(0.8, 1.2) * A)
    w_tok = torch.where(A > 0, w_rl, torch.ones_like(w_rl))
    manual = (w_sft * -lp * demo).sum() / 3 + (-A * lp.exp() * demo).sum() / 3 + (w_tok * surr * roll).sum() / 5
    manual.backward()
    torch.testing.assert_close(g_entropy_weighted, lp.grad)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "token-sum-norm"])
def test_micro_batch_invariance_of_the_objective(preset, aggregation):
    g = torch.Generator().manual_seed(3)
    B, T = 8, 6
    lengths = torch.tensor([1, 6, 3, 5, 2, 6, 4, 3])
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()
    logits_like = torch.randn(B, T, generator=g, requires_grad=True)
    lp = torch.nn.functional.logsigmoid(logits_like)
    x = LossInputs(lp, torch.rand(B, T, generator=g), lp.detach() + 0.05, torch.randn(B, generator=g), mask,
                   torch.tensor([False, False, False, True, False, False, False, True]))
    cfg = apply_overrides(Config(), {**get_preset(preset).overrides, "objective.aggregation": aggregation,
                                     "objective.entropy_granularity": "sequence"}, "t").objective
    norms = norms_of(x)
    norms.max_len = T
    if cfg.sft_gate is not None:  # HPT: some samples leave the loss; the counts are those of the others
        x.active = torch.tensor([True, True, False, False, True, False, True, True])
        keep = x.mask * x.active.float().unsqueeze(-1)
        norms = Normalizers.from_masks(keep, x.is_demo, max_len=T)
    whole, _ = compute_loss(x, norms, cfg, mu=0.3)
    parts = 0.0
    for s in (slice(0, 3), slice(3, 5), slice(5, 8)):
        sub = LossInputs(x.logprobs[s], x.entropy[s], x.old_logprobs[s], x.advantages[s], x.mask[s], x.is_demo[s],
                         active=None if x.active is None else x.active[s])
        parts = parts + compute_loss(sub, norms, cfg, mu=0.3)[0]
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5, abs=1e-7)


def test_luffy_equals_written_formula():
    """L = [sum_roll -A r + sum_demo -A p/(p+0.1) - 0.001 sum_all H] / (N_seqs * L_max)."""
    x = small_batch(4)
    loss, m = compute_loss(x, norms_of(x), preset_cfg("luffy"))
    lp, old, A, H = x.logprobs.detach(), x.old_logprobs, x.advantages, x.entropy
    total = 0.0
    for i, n in ((0, 2), (1, 3)):  # rollouts: no clipping, -A r
        total += sum(-A[i] * math.exp(lp[i, t] - old[i, t]) for t in range(n))
    p = lp[2].exp()
    total += float((-A[2] * p / (p + 0.1)).sum())  # the demonstration, shaped
    total -= 0.001 * float((H * x.mask).sum())  # entropy bonus over all 8 response tokens
    expected = total / (3 * 3)  # N_seqs = 3 (rollouts and demonstration together), L_max = 3
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
    assert "loss/sft_demo" not in m and m["policy/clip_frac"].item() == 0.0


def test_rl_sft_equals_written_formula():
    x = small_batch(5)
    loss, _ = compute_loss(x, norms_of(x), preset_cfg("rl_sft"))
    lp, old, A = x.logprobs.detach(), x.old_logprobs, x.advantages
    grpo = 0.0
    for i, n in ((0, 2), (1, 3)):
        for t in range(n):
            r = math.exp(lp[i, t] - old[i, t])
            grpo += -min(r * A[i], min(max(r, 0.8), 1.2) * A[i])
    expected = float(grpo) / 5 + float(-lp[2].mean())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _grpo_sum(lp, old, A, rows, clip=True):
    total = 0.0
    for i, n in rows:
        for t in range(n):
            r = math.exp(lp[i, t] - old[i, t])
            total += -min(r * A[i], min(max(r, 0.8), 1.2) * A[i]) if clip else -r * A[i]
    return float(total)


def test_hpt_equals_written_formula():
    """Prompt 0 (rows 0-2: rollouts 0, 1 and its demonstration 2) had a correct rollout: RL on its
    rollouts; prompt 1 (rows 3-4: rollout 3, demonstration 4) had none: SFT on its demonstration.
    L = token-mean over rows 0-1 of -A r (no clip) + token-mean over row 4 of -log p
        - 0.001 token-mean of H over the active tokens."""
    g = torch.Generator().manual_seed(7)
    lp = -torch.rand(5, 3, generator=g) * 2
    H = torch.rand(5, 3, generator=g)
    old = lp + 0.1 * torch.randn(5, 3, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    is_demo = torch.tensor([False, False, True, False, True])
    A = torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0])
    from srft.losses import gate_groups

    active = gate_groups(torch.tensor([True, False, False, False, False]), torch.tensor([0, 0, 0, 1, 1]), is_demo, 0)
    assert active.tolist() == [True, True, False, False, True]
    x = LossInputs(lp, H, old, A, mask, is_demo, active=active)
    norms = Normalizers.from_masks(mask * active.float().unsqueeze(-1), is_demo, max_len=3)
    loss, m = compute_loss(x, norms, preset_cfg("hpt"))
    rl = _grpo_sum(lp, old, A, ((0, 2), (1, 3)), clip=False) / 5
    sft = float(-lp[4, :2].sum()) / 2
    ent = float((H[0, :2].sum() + H[1].sum() + H[4, :2].sum())) / 7
    assert m["loss/rl_self"].item() == pytest.approx(rl, rel=1e-5)
    assert m["loss/sft_demo"].item() == pytest.approx(sft, rel=1e-5)
    assert loss.item() == pytest.approx(rl + sft - 0.001 * ent, rel=1e-5)


def test_chord_and_chord_phi_equal_their_formulas():
    x = small_batch(8)
    lp, old, A = x.logprobs.detach(), x.old_logprobs, x.advantages
    grpo = _grpo_sum(lp, old, A, ((0, 2), (1, 3))) / 5
    loss, _ = compute_loss(x, norms_of(x), preset_cfg("chord"), mu=0.3)
    assert loss.item() == pytest.approx(0.7 * grpo + 0.3 * float(-lp[2].mean()), rel=1e-5)
    p = lp[2].exp()
    loss, m = compute_loss(x, norms_of(x), preset_cfg("chord_phi"), mu=0.1)
    assert loss.item() == pytest.approx(0.9 * grpo + 0.1 * float((-(p * (1 - p)) * lp[2]).mean()), rel=1e-5)
    assert m["weight/phi"].item() == pytest.approx(float((p * (1 - p)).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="needs mu"):
        compute_loss(x, norms_of(x), preset_cfg("chord"))


def test_phi_weight_is_stop_gradient():
    lp = torch.log(torch.tensor([0.5, 0.9])).requires_grad_(True)
    cfg = apply_overrides(Config(), {**get_preset("sft").overrides, "objective.sft_token_weight": "phi"}, "t").objective
    x = LossInputs(lp.unsqueeze(0), torch.zeros(1, 2), lp.detach().unsqueeze(0), torch.zeros(1), torch.ones(1, 2),
                   torch.tensor([True]))
    loss, _ = compute_loss(x, norms_of(x), cfg)
    loss.backward()
    # d/d lp of mean(-phi * lp) with phi held fixed: -phi / 2 = -(0.25, 0.09) / 2
    torch.testing.assert_close(lp.grad, torch.tensor([-0.125, -0.045]))


@pytest.mark.parametrize("name", ["srft_wsft_fixed", "srft_wrl_fixed", "srft_no_sft_demo", "srft_no_rl_demo",
                                  "srft_sign_script", "srft_shaping"])
def test_srft_ablations_change_exactly_their_term(name):
    x = small_batch(6)
    H = 0.9
    _, full = compute_loss(x, norms_of(x, H), preset_cfg("srft"))
    _, abl = compute_loss(x, norms_of(x, H), preset_cfg(name))
    lp, A = x.logprobs.detach(), x.advantages
    nll_demo = float(-lp[2].mean())
    p = lp[2].exp()
    expected = dict(full)
    if name == "srft_wsft_fixed":
        expected["loss/sft_demo"] = torch.tensor(nll_demo)  # w_SFT = 1
    if name == "srft_sign_script":
        expected["loss/sft_demo"] = torch.tensor(0.5 * math.exp(+H) * nll_demo)
    if name == "srft_shaping":
        expected["loss/rl_demo"] = -(A[2] * p / (p + 0.1)).mean()
    if name == "srft_wrl_fixed":  # row 0 (A > 0) no longer scaled by 0.1 e^H
        w = 0.1 * math.exp(H)
        row0 = (full["loss/rl_self"].item() * 5 - _rl_row(x, 1)) / w
        expected["loss/rl_self"] = (float(row0) + float(_rl_row(x, 1))) / 5
    for k in ("loss/sft_demo", "loss/rl_demo", "loss/rl_self"):
        dropped = (name == "srft_no_sft_demo" and k == "loss/sft_demo") or (name == "srft_no_rl_demo" and k == "loss/rl_demo")
        if dropped:
            assert k not in abl
        else:
            assert abl[k].item() == pytest.approx(float(expected[k]), rel=1e-5), k


def _rl_row(x, i):
    """Sum of the clipped surrogate over the tokens of rollout row i (unweighted)."""
    lp, old, A = x.logprobs.detach(), x.old_logprobs, x.advantages
    n = int(x.mask[i].sum())
    return sum(-min(math.exp(lp[i, t] - old[i, t]) * A[i], min(max(math.exp(lp[i, t] - old[i, t]), 0.8), 1.2) * A[i])
               for t in range(n))


def test_nan_old_logprobs_on_demonstrations_and_padding_never_reach_the_loss():
    """LossInputs allows any value of old_logprobs outside rollout tokens: NaN there gives the
    same finite loss and gradients as zeros there."""
    cfg = preset_cfg("srft")
    results = []
    for fill in (0.0, float("nan")):
        x = small_batch()
        old = x.old_logprobs.clone()
        old[2] = fill  # the demonstration row
        old[0, 2] = fill  # padding of rollout 0
        x = LossInputs(x.logprobs, x.entropy, old, x.advantages, x.mask, x.is_demo)
        loss, _ = compute_loss(x, norms_of(x, 0.7), cfg)
        loss.backward()
        results.append((loss.detach(), x.logprobs.grad.clone()))
    assert torch.isfinite(results[1][0]) and torch.isfinite(results[1][1]).all()
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("aggregation", ["token-mean", "token-sum-norm"])
def test_entropy_bonus_is_aggregated_like_the_policy_loss(aggregation):
    """-c * agg(H) over all 8 response tokens (LUFFY / verl agg_loss): under token-mean the
    mean entropy, under token-sum-norm sum H / (3 sequences * L_max 3)."""
    x = small_batch()
    c = 0.01
    base = apply_overrides(Config(), {"objective.aggregation": aggregation}, "test").objective
    with_bonus = apply_overrides(Config(), {"objective.aggregation": aggregation, "objective.entropy_bonus": c},
                                 "test").objective
    _, m0 = compute_loss(x, norms_of(x, 0.7), base)
    _, m1 = compute_loss(x, norms_of(x, 0.7), with_bonus)
    h_sum = float((x.entropy * x.mask).sum())
    want = -c * (h_sum / 8 if aggregation == "token-mean" else h_sum / (3 * 3))
    assert m1["loss/entropy_bonus"].item() == pytest.approx(want, rel=1e-6)
    assert m1["loss/total"].item() == pytest.approx(m0["loss/total"].item() + want, rel=1e-5)


def test_srft_paper_equals_the_papers_written_on_policy_form():
    """srft_paper (the HPT authors' reimplementation of SRFT): rollouts get -a log pi with
    a = +0.1 e^{H_seq} (correct) or -1 (wrong), no ratio or clip; the demonstration gets
    0.5 e^{-H_seq} NLL and -A p/(p+0.1); everything summed over tokens / (N_seqs * L_max); the bonus
    -0.001 sum H / (N_seqs * L_max) over every response token. Worked out token by token."""
    from srft.objective import advantages

    cfg = preset_cfg("srft_paper")
    # advantages: rewards 1 (correct rollout), 0 (wrong rollout), 1 (the demonstration) in one group
    adv = advantages(cfg, [1.0, 0.0, 1.0], [0, 0, 0], [False, False, True])
    assert adv.tolist() == pytest.approx([1.0, -1.0, 1.0 - 2.0 / 3.0])  # demo: R - mean(G_aug), no std
    base = small_batch(2)
    x = LossInputs(base.logprobs, base.entropy, base.old_logprobs, adv, base.mask, base.is_demo)
    loss, m = compute_loss(x, norms_of(x), cfg)
    lp, H, mask = x.logprobs.detach(), x.entropy, x.mask
    n_seqs, l_max = 3, 3
    h_seq = [(H[i] * mask[i]).sum() / mask[i].sum() for i in range(3)]
    sft = sum(0.5 * math.exp(-h_seq[2]) * -lp[2, t] for t in range(3)) / (n_seqs * l_max)
    rl_demo = sum(-adv[2] * lp[2, t].exp() / (lp[2, t].exp() + 0.1) for t in range(3)) / (n_seqs * l_max)
    correct = sum(-0.1 * math.exp(h_seq[0]) * lp[0, t] for t in range(2))  # w_RL E[-log pi(y+)]
    wrong = sum(lp[1, t] for t in range(3))                                   # + E[log pi(y-)]
    rl_self = (correct + wrong) / (n_seqs * l_max)
    bonus = -0.001 * (H * mask).sum() / (n_seqs * l_max)
    assert m["loss/sft_demo"].item() == pytest.approx(float(sft), rel=1e-5)
    assert m["loss/rl_demo"].item() == pytest.approx(float(rl_demo), rel=1e-5)
    assert m["loss/rl_self"].item() == pytest.approx(float(rl_self), rel=1e-5)
    assert m["loss/entropy_bonus"].item() == pytest.approx(float(bonus), rel=1e-5)
    assert loss.item() == pytest.approx(float(sft + rl_demo + rl_self + bonus), rel=1e-5)
    # no ratio: the old log-probs do not enter (a different pi_old gives the same loss)
    y = LossInputs(x.logprobs, x.entropy, x.old_logprobs + 1.0, adv, x.mask, x.is_demo)
    assert compute_loss(y, norms_of(y), cfg)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_sft_filtered_leaves_uncredited_demonstrations_out():
    from srft.objective import sample_gate

    cfg = preset_cfg("sft_filtered")
    # three prompts, one demonstration each; the verifier credits the first and the third
    assert sample_gate(cfg, [1.0, 0.0, 1.0], [0, 1, 2], [True, True, True]) == [True, False, True]
    x = small_batch(3)
    x = LossInputs(x.logprobs, x.entropy, x.old_logprobs, torch.zeros(3), x.mask, torch.tensor([True, True, True]),
                   active=torch.tensor([True, False, True]))
    loss, m = compute_loss(x, Normalizers.from_masks(x.mask * torch.tensor([[1.0], [0.0], [1.0]]), x.is_demo,
                                                     max_len=3), cfg)
    lp = x.logprobs.detach()
    expected = -(lp[0, :2].sum() + lp[2].sum()) / 5  # 2 + 3 tokens of the credited demonstrations
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
