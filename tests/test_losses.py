"""Unit tests for srft.losses: hand-computed values, invariances, loop references."""

import math
import statistics

import pytest
import torch
from torch.testing import assert_close

from srft.losses import (
    aggregate,
    clipped_surrogate,
    entropy_weight,
    group_advantages,
    masked_mean,
    nll,
    off_policy_demo_term,
    logprob_gap,
    reduce_entropy,
    token_logprobs_and_entropy,
    truncated_is_weight,
)
from srft import losses as L

TOL = dict(rtol=1e-5, atol=1e-5)


def t(x, **kw):
    return torch.tensor(x, dtype=torch.float32, **kw)


# ---------------------------------------------------------------- token_logprobs_and_entropy


def test_logprobs_entropy_uniform_and_nonuniform_by_hand():
    # position 0: uniform logits -> p = 1/3 each; position 1: logits log[1, 2, 3] -> p = [1, 2, 3] / 6
    logits = torch.stack([torch.zeros(3), torch.log(t([1.0, 2.0, 3.0]))]).unsqueeze(0)  # (1, 2, 3)
    labels = torch.tensor([[1, 2]])
    logp, ent = token_logprobs_and_entropy(logits, labels, chunk_size=None)
    assert logp.shape == (1, 2) and ent.shape == (1, 2)
    # pos 0: log(1/3) = -1.098612; pos 1: log(3/6) = -ln 2 = -0.693147
    assert_close(logp, t([[-1.098612, -0.693147]]), **TOL)
    # pos 0: H = ln 3 = 1.098612
    # pos 1: H = ln6/6 + ln3/3 + ln2/2 = 0.298627 + 0.366204 + 0.346574 = 1.011404
    assert_close(ent, t([[1.098612, 1.011404]]), **TOL)


def test_logprobs_entropy_second_nonuniform_case():
    # logits log[1, 1, 2] -> p = [0.25, 0.25, 0.5]; label 0 -> log 0.25 = -1.386294
    logits = torch.log(t([1.0, 1.0, 2.0])).view(1, 1, 3)
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([[0]]))
    assert_close(logp, t([[-1.386294]]), **TOL)
    # H = 2 * 0.25 * ln 4 + 0.5 * ln 2 = 0.693147 + 0.346574 = 1.039721
    assert_close(ent, t([[1.039721]]), **TOL)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, None, 0])
def test_logprobs_entropy_chunked_equals_unchunked(chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g) * 3
    labels = torch.randint(0, 11, (2, 5), generator=g)
    ref_logp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    ref_ent = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    logp, ent = token_logprobs_and_entropy(logits, labels, chunk_size=chunk_size)
    full_logp, full_ent = token_logprobs_and_entropy(logits, labels, chunk_size=None)
    assert_close(logp, full_logp, **TOL)
    assert_close(ent, full_ent, **TOL)
    assert_close(logp, ref_logp, **TOL)
    assert_close(ent, ref_ent, **TOL)


def test_logprobs_without_entropy_and_float32_output():
    logits = torch.zeros(1, 2, 3, dtype=torch.bfloat16)
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([[0, 2]]), with_entropy=False)
    assert ent is None
    assert logp.dtype == torch.float32
    assert_close(logp, t([[-1.098612, -1.098612]]), **TOL)  # -ln 3


def test_logprobs_gradient_flows():
    logits = torch.zeros(1, 1, 3, requires_grad=True)
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([[0]]), chunk_size=1)
    logp.sum().backward()
    # d log p_0 / d z = onehot(0) - softmax = [1 - 1/3, -1/3, -1/3]
    assert_close(logits.grad, t([[[0.666667, -0.333333, -0.333333]]]), **TOL)
    # entropy is documented as differentiable too
    assert ent.requires_grad


# ---------------------------------------------------------------- clipped_surrogate


def _surr(ratios, advs, **kw):
    logp = torch.log(t(ratios)).view(1, -1)
    return clipped_surrogate(logp, torch.zeros_like(logp), t(advs).view(1, -1), **kw)


def test_clipped_surrogate_hand_values_symmetric():
    # columns: (r, A) = (1.1, 2) inside | (1.5, 1) above, A>0 | (0.5, -1) below, A<0
    #          | (1.5, -1) above, A<0 | (0.5, 1) below, A>0
    loss, ratio, clipped = _surr([1.1, 1.5, 0.5, 1.5, 0.5], [2.0, 1.0, -1.0, -1.0, 1.0], clip_eps_low=0.2)
    expected = t([[
        -2.2,  # -min(1.1*2, 1.1*2) = -2.2
        -1.2,  # -min(1.5*1, 1.2*1) = -1.2 (clipped branch)
        0.8,  # -min(0.5*-1, 0.8*-1) = -(-0.8) = 0.8 (clipped branch)
        1.5,  # -min(1.5*-1, 1.2*-1) = -(-1.5) = 1.5 (unclipped: min picks r*A)
        -0.5,  # -min(0.5*1, 0.8*1) = -0.5 (unclipped)
    ]])
    assert_close(loss, expected, **TOL)
    assert_close(ratio, t([[1.1, 1.5, 0.5, 1.5, 0.5]]), **TOL)
    assert_close(clipped, t([[0.0, 1.0, 1.0, 0.0, 0.0]]))
    assert not ratio.requires_grad and not clipped.requires_grad


def test_clipped_surrogate_no_clip_mode():
    loss, _, clipped = _surr([1.5, 0.5], [2.0, -1.0], clip_eps_low=None)
    # -r*A: -(1.5*2) = -3.0 ; -(0.5*-1) = 0.5
    assert_close(loss, t([[-3.0, 0.5]]), **TOL)
    assert_close(clipped, t([[0.0, 0.0]]))


def test_clipped_surrogate_asymmetric_high():
    # eps_low = 0.2, eps_high = 0.28 -> clip range [0.8, 1.28]
    loss, _, clipped = _surr([1.5, 1.25, 0.5], [1.0, 1.0, -1.0], clip_eps_low=0.2, clip_eps_high=0.28)
    # -min(1.5, 1.28) = -1.28 ; -min(1.25, 1.25) = -1.25 (inside) ; -min(-0.5, -0.8) = 0.8
    assert_close(loss, t([[-1.28, -1.25, 0.8]]), **TOL)
    assert_close(clipped, t([[1.0, 0.0, 1.0]]))
    # with the symmetric default, r = 1.25 is clipped to 1.2: loss -1.2
    loss_sym, _, clipped_sym = _surr([1.25], [1.0], clip_eps_low=0.2)
    assert_close(loss_sym, t([[-1.2]]), **TOL)
    assert_close(clipped_sym, t([[1.0]]))


def test_clipped_surrogate_gradient_zero_on_clipped_tokens():
    logp = torch.log(t([[1.1, 1.5]])).requires_grad_(True)
    loss, _, _ = clipped_surrogate(logp, torch.zeros(1, 2), t([1.0]), clip_eps_low=0.2)
    loss.sum().backward()
    # d(-r*A)/dlogp = -r*A = -1.1 inside the range; 0 for the clipped token
    assert_close(logp.grad, t([[-1.1, 0.0]]), **TOL)


def test_clipped_surrogate_seq_and_token_advantages_agree():
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(3, 4, generator=g) * 0.3
    old = torch.randn(3, 4, generator=g) * 0.3
    adv = t([1.5, -0.5, 0.0])
    for kw in ({"clip_eps_low": 0.2}, {"clip_eps_low": 0.2, "clip_eps_high": 0.3}, {"clip_eps_low": None}):
        a = clipped_surrogate(logp, old, adv, **kw)
        b = clipped_surrogate(logp, old, adv.unsqueeze(-1).expand(3, 4), **kw)
        for x, y in zip(a, b):
            assert_close(x, y, **TOL)


# ---------------------------------------------------------------- off_policy_demo_term / nll


def test_off_policy_demo_term_values_and_gradients():
    logp = torch.full((1, 1), math.log(0.5), requires_grad=True)
    loss = off_policy_demo_term(logp, t([2.0]))
    assert_close(loss, t([[-1.0]]), **TOL)  # -A * p = -2 * 0.5 = -1.0
    loss.sum().backward()
    assert_close(logp.grad, t([[-1.0]]), **TOL)  # d(-A e^logp)/dlogp = -A*p = -2*0.5 = -1.0

    logp2 = torch.full((1, 1), math.log(0.5), requires_grad=True)
    shaped = off_policy_demo_term(logp2, t([[2.0]]), shaping_gamma=0.1)
    assert_close(shaped, t([[-1.666667]]), **TOL)  # -2 * 0.5 / (0.5 + 0.1) = -1.666667
    shaped.sum().backward()
    # d/dlogp p/(p+g) = p*g/(p+g)^2 -> -2 * 0.5*0.1/0.36 = -0.277778
    assert_close(logp2.grad, t([[-0.277778]]), **TOL)


def test_off_policy_demo_term_seq_advantages_broadcast():
    logp = torch.log(t([[0.5, 0.25], [1.0, 0.1]]))
    loss = off_policy_demo_term(logp, t([2.0, -1.0]))
    # row 0: -2*0.5 = -1, -2*0.25 = -0.5 ; row 1: 1*1.0 = 1, 1*0.1 = 0.1
    assert_close(loss, t([[-1.0, -0.5], [1.0, 0.1]]), **TOL)


def test_nll():
    assert_close(nll(t([[-0.5, -2.0, 0.0]])), t([[0.5, 2.0, 0.0]]))


# ---------------------------------------------------------------- entropy_weight / reduce_entropy


def test_entropy_weight_hand_values():
    h = t([0.0, 1.0, 2.0])
    # 0.5*exp(-0) = 0.5 ; 0.5*exp(-1) = 0.183940 ; 0.5*exp(-2) = 0.067668
    assert_close(entropy_weight(h, 0.5, -1.0), t([0.5, 0.183940, 0.067668]), **TOL)
    # 0.1*exp(0) = 0.1 ; 0.1*e = 0.271828 ; 0.1*e^2 = 0.738906
    assert_close(entropy_weight(h, 0.1, 1.0), t([0.1, 0.271828, 0.738906]), **TOL)


def test_entropy_weight_has_no_gradient():
    h = t([0.0, 1.0, 2.0], requires_grad=True)
    w = entropy_weight(h, 0.5, -1.0)
    assert not w.requires_grad
    x = t([1.0, 2.0, 3.0], requires_grad=True)
    (w * x).sum().backward()
    assert h.grad is None
    assert_close(x.grad, t([0.5, 0.183940, 0.067668]), **TOL)  # dL/dx = w
    # entropy computed from logits: the weight must not reach the logits either
    logits = torch.randn(1, 2, 4, requires_grad=True)
    _, ent = token_logprobs_and_entropy(logits, torch.tensor([[0, 1]]))
    y = torch.ones(1, 2, requires_grad=True)
    (entropy_weight(ent, 0.1, 1.0) * y).sum().backward()
    assert logits.grad is None


ENT = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
ENT_MASK = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_reduce_entropy_token_and_sequence():
    ent = t(ENT, requires_grad=True)
    mask = t(ENT_MASK)
    tok = reduce_entropy(ent, mask, "token")
    assert_close(tok, t(ENT))
    seq = reduce_entropy(ent, mask, "sequence")
    # row 0: (1+2)/2 = 1.5 ; row 1: 4/1 = 4 ; row 2: empty mask -> 0/clamp(0,1) = 0
    assert_close(seq, t([[1.5] * 3, [4.0] * 3, [0.0] * 3]), **TOL)
    assert not tok.requires_grad and not seq.requires_grad


def test_reduce_entropy_batch_and_override():
    ent = t(ENT, requires_grad=True)
    mask = t(ENT_MASK)
    b = reduce_entropy(ent, mask, "batch")
    assert_close(b, torch.full((3, 3), 2.333333), **TOL)  # (1+2+4)/3 = 7/3 = 2.333333
    assert not b.requires_grad
    over = reduce_entropy(ent, mask, "batch", batch_value=t(0.7, requires_grad=True))
    assert_close(over, torch.full((3, 3), 0.7), **TOL)
    assert not over.requires_grad
    assert_close(reduce_entropy(ent, mask, "batch", batch_value=0.7), torch.full((3, 3), 0.7), **TOL)


def test_scalars_given_as_numbers_follow_the_tensors_device():
    """A batch entropy or a global count passed as a number lands on the tensors' device (found on a
    GPU: a CPU tensor broadcast against CUDA ones stopped every run; the meta device shows it here)."""
    ent = torch.zeros(3, 3, device="meta")
    mask = torch.ones(3, 3, device="meta")
    assert reduce_entropy(ent, mask, "batch", batch_value=0.7).device == ent.device
    for mode in ("token-mean", "token-sum-norm", "seq-mean-token-mean"):
        out = aggregate(ent, mask, mode, num_tokens=9.0, num_seqs=3.0, max_len=3)
        assert out.device == ent.device, mode


def test_reduce_entropy_unknown_granularity():
    with pytest.raises(ValueError):
        reduce_entropy(t(ENT), t(ENT_MASK), "prompt")


# ---------------------------------------------------------------- group_advantages


def test_group_advantages_mixed_group_by_hand():
    rewards = t([0, 0, 1, 0, 0, 0, 0, 1])  # 7 rollouts | 1 demonstration
    ids = torch.zeros(8, dtype=torch.long)
    # mean = 2/8 = 0.25 ; centred: -0.25 (x6), 0.75 (x2)
    assert_close(group_advantages(rewards, ids, normalize_std=False),
                 t([-0.25] * 2 + [0.75] + [-0.25] * 4 + [0.75]), **TOL)
    # unbiased std = sqrt((6*0.25^2 + 2*0.75^2)/7) = sqrt(1.5/7) = 0.462910
    # -0.25/(0.462910+1e-6) = -0.540060 ; 0.75/(0.462910+1e-6) = 1.620181
    assert_close(group_advantages(rewards, ids),
                 t([-0.540060] * 2 + [1.620181] + [-0.540060] * 4 + [1.620181]), **TOL)


@pytest.mark.parametrize("value", [0.0, 1.0])
@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_advantages_all_equal_is_exactly_zero(value, normalize_std):
    adv = group_advantages(torch.full((8,), value), torch.zeros(8, dtype=torch.long), normalize_std)
    assert torch.equal(adv, torch.zeros(8))


def test_group_advantages_all_equal_fractional_is_zero():
    # float rounding in the mean must not leak a fake signal (0.1 x7 once gave -0.0074)
    for value in (0.1, 0.3, 0.7, 1 / 3):
        adv = group_advantages(torch.full((7,), value), torch.zeros(7, dtype=torch.long))
        assert torch.equal(adv, torch.zeros(7))


def test_group_advantages_interleaved_groups_and_singletons():
    r_a, r_b = t([1, 0, 0, 1]), t([0.5, 0, 1])
    rewards = t([1, 0.5, 0, 0, 0, 1, 1, 0.3])
    ids = torch.tensor([7, -3, 7, -3, 7, -3, 7, 42])  # groups 7 and -3 interleaved, 42 alone
    for norm in (True, False):
        adv = group_advantages(rewards, ids, norm)
        sep_a = group_advantages(r_a, torch.zeros(4, dtype=torch.long), norm)
        sep_b = group_advantages(r_b, torch.zeros(3, dtype=torch.long), norm)
        assert_close(adv[ids == 7], sep_a, **TOL)
        assert_close(adv[ids == -3], sep_b, **TOL)
        assert adv[7].item() == 0.0  # group of size 1 -> 0
    assert group_advantages(t([0.8]), torch.tensor([0])).item() == 0.0


def _loop_advantages(rewards, ids, normalize_std, eps=1e-6):
    out = []
    for r, g in zip(rewards, ids):
        grp = [rr for rr, gg in zip(rewards, ids) if gg == g]
        mean = sum(grp) / len(grp)
        if len(grp) < 2 or all(x == grp[0] for x in grp):
            out.append(0.0)
            continue
        out.append((r - mean) / (statistics.stdev(grp) + eps) if normalize_std else r - mean)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_advantages_matches_python_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n = 40
    rewards = torch.randint(0, 2, (n,), generator=g).float()
    rewards[::5] = torch.rand(8, generator=g)  # some non-binary rewards too
    ids = torch.randint(0, 7, (n,), generator=g) * 13 - 20  # arbitrary, non-contiguous labels
    for norm in (True, False):
        ref = t(_loop_advantages(rewards.tolist(), ids.tolist(), norm))
        assert_close(group_advantages(rewards, ids, norm), ref, **TOL)


# ---------------------------------------------------------------- aggregate / masked_mean

PER_TOK = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
AGG_MASK = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # lengths 2, 1, 0


def test_aggregate_hand_values():
    x, m = t(PER_TOK), t(AGG_MASK)
    assert_close(aggregate(x, m, "token-mean"), t(2.333333), **TOL)  # (1+2+4)/3 = 2.333333
    # per seq: (1+2)/2 = 1.5, 4/1 = 4; empty row not counted -> (1.5+4)/2 = 2.75
    assert_close(aggregate(x, m, "seq-mean-token-mean"), t(2.75), **TOL)
    assert_close(aggregate(x, m, "token-sum-norm", max_len=4), t(0.875), **TOL)  # 7/(2*4) = 0.875
    assert_close(aggregate(x, m, "token-sum-norm"), t(1.166667), **TOL)  # L_max = T = 3: 7/(2*3)
    # explicit global counts
    assert_close(aggregate(x, m, "token-mean", num_tokens=10), t(0.7), **TOL)  # 7/10
    assert_close(aggregate(x, m, "seq-mean-token-mean", num_seqs=5), t(1.1), **TOL)  # 5.5/5
    assert_close(aggregate(x, m, "token-sum-norm", num_seqs=5, max_len=2), t(0.7), **TOL)  # 7/(5*2)


def test_aggregate_unknown_mode():
    with pytest.raises(ValueError):
        aggregate(t(PER_TOK), t(AGG_MASK), "seq-sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "token-sum-norm"])
def test_aggregate_micro_batch_invariance(mode):
    g = torch.Generator().manual_seed(3)
    per_tok = torch.randn(6, 5, generator=g)
    lengths = torch.tensor([5, 1, 3, 2, 4, 1])
    mask = (torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)).float()
    kw = dict(num_tokens=mask.sum().item(), num_seqs=6, max_len=8)
    whole = aggregate(per_tok, mask, mode, **kw)
    parts = sum(aggregate(per_tok[i:i + 2], mask[i:i + 2], mode, **kw) for i in range(0, 6, 2))
    assert_close(parts, whole, **TOL)
    # the defaults (counts from the mask itself) give the same whole-batch value
    assert_close(aggregate(per_tok, mask, mode, max_len=8), whole, **TOL)


def test_aggregate_per_micro_batch_normalisation_differs():
    # hand case: micro 1 = one seq, 1 token of loss 1; micro 2 = one seq, 3 tokens of loss 3
    per_tok = t([[1.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    mask = t([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    whole = aggregate(per_tok, mask, "token-mean")
    assert_close(whole, t(2.5), **TOL)  # (1 + 9)/4 = 2.5
    local = (aggregate(per_tok[:1], mask[:1]) + aggregate(per_tok[1:], mask[1:])) / 2
    assert_close(local, t(2.0), **TOL)  # (1/1 + 9/3)/2 = 2.0 != 2.5
    # random case, uneven lengths, micro-batches of 2, each normalised by its own count
    g = torch.Generator().manual_seed(4)
    per_tok = torch.rand(6, 5, generator=g) + 0.5
    mask = (torch.arange(5).unsqueeze(0) < torch.tensor([[5], [1], [3], [2], [4], [1]])).float()
    whole = aggregate(per_tok, mask, "token-mean")
    local = sum(aggregate(per_tok[i:i + 2], mask[i:i + 2]) for i in range(0, 6, 2)) / 3
    assert abs(local.item() - whole.item()) > 1e-3


def test_masked_mean():
    assert_close(masked_mean(t([[1.0, 2.0], [3.0, 4.0]]), t([[1, 0], [1, 1]])), t(2.666667), **TOL)  # 8/3
    assert masked_mean(t([[1.0, 2.0]]), t([[0, 0]])).item() == 0.0  # empty mask -> 0


# ---------------------------------------------------------------- sampler/trainer mismatch

def test_truncated_is_weight_by_hand():
    old = t([[-1.0, -2.0, 0.0, -1.0]])
    mu = t([[-1.5, -1.0, -3.0, float("nan")]])  # the last one: padding
    w = truncated_is_weight(old, mu, cap=2.0)
    # exp(0.5) = 1.648721, exp(-1) = 0.367879, exp(3) = 20.09 -> capped at 2, NaN -> 0
    assert_close(w, t([[1.648721, 0.367879, 2.0, 0.0]]), **TOL)
    assert not truncated_is_weight(old.requires_grad_(), mu).requires_grad
    with pytest.raises(ValueError):
        truncated_is_weight(old, mu, cap=0.0)


def test_logprob_gap_by_hand():
    old = t([[-1.0, -2.0, -0.5], [-0.1, 0.0, 0.0]])
    mu = t([[-1.5, -1.0, float("nan")], [-0.4, 0.0, 0.0]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    s, n, rmax = logprob_gap(old, mu, mask)
    # |0.5| + |-1| + |0.3| = 1.8 over 3 tokens; max ratio exp(0.5) = 1.648721
    assert_close(s, t(1.8), **TOL)
    assert n.item() == 3
    assert_close(rmax, t(1.648721), **TOL)
    assert logprob_gap(old, mu, torch.zeros_like(mask))[2].item() == 0.0


def test_phi_weight_by_hand():
    lp = torch.log(torch.tensor([[0.5, 0.9, 1.0, 0.1]]))
    torch.testing.assert_close(L.phi_weight(lp), torch.tensor([[0.25, 0.09, 0.0, 0.09]]))


def test_chord_mu_by_hand():
    # warm-up 4 steps to 0.8, then a cosine over 4 steps down to 0.2, then 0.2
    mu = [L.chord_mu(s, 4, 4, 0.8, 0.2) for s in range(10)]
    expected = [0.0, 0.2, 0.4, 0.6, 0.8, 0.2 + 0.6 * (1 + math.cos(math.pi / 4)) / 2, 0.5,
                0.2 + 0.6 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.2, 0.2]
    assert mu == pytest.approx(expected)
    assert [L.chord_mu(s, 0, 0, 0.9, 0.1) for s in (0, 5)] == [0.1, 0.1]  # constant mu


def test_gate_groups_by_hand():
    # prompt 0: rollouts r,r (1 correct) + demo; prompt 1: rollouts r,r (0 correct) + demo; prompt 2: 2 correct
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    is_demo = torch.tensor([False, False, True] * 3)
    correct = torch.tensor([True, False, False, False, False, True, True, True, False])  # a demo's own flag is ignored
    active = L.gate_groups(correct, groups, is_demo, gate=0)
    assert active.tolist() == [True, True, False, False, False, True, True, True, False]
    active = L.gate_groups(correct, groups, is_demo, gate=1)  # at most 1 correct: prompts 0 and 1 to SFT
    assert active.tolist() == [False, False, True, False, False, True, True, True, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_minus_inf_logits_both_paths_finite_and_equal(dtype):
    """Masked vocabulary entries (logits of -inf): the full-logits path (token_logprobs_and_entropy,
    used under FSDP / DeepSpeed and with train.logprob_path logits) and the hidden-state path
    (srft.chunked_logprobs) give finite log-probs, entropies and gradients, and the same ones."""
    from srft.chunked_logprobs import chunked_logprobs_and_entropy

    g = torch.Generator().manual_seed(0)
    n, d, v = 12, 8, 20
    h0 = torch.randn(n, d, generator=g).to(dtype)
    w0 = (torch.randn(v, d, generator=g) * 0.5).to(dtype)
    bias = torch.zeros(v, dtype=dtype)
    bias[[3, 7, 19]] = float("-inf")
    labels = torch.randint(0, v, (n,), generator=g)
    labels = torch.where((labels == 3) | (labels == 7) | (labels == 19), torch.zeros_like(labels), labels)
    c1, c2 = torch.randn(n, generator=g), torch.randn(n, generator=g)  # arbitrary upstream gradients

    def run(path):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        if path == "logits":
            logits = h @ w.t() + bias  # what the model's output layer gives, in its dtype
            lp, ent = token_logprobs_and_entropy(logits.unsqueeze(0), labels.unsqueeze(0), chunk_size=5)
            lp, ent = lp[0], ent[0]
        else:
            lp, ent = chunked_logprobs_and_entropy(h, w, labels, bias=bias, chunk_size=5)
        ((lp * c1).sum() + (ent * c2).sum()).backward()
        return lp.detach(), ent.detach(), h.grad.float(), w.grad.float()

    full, hidden = run("logits"), run("hidden")
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    for name, a, b in zip(("logprobs", "entropy", "grad hidden", "grad weight"), full, hidden):
        assert torch.isfinite(a).all() and torch.isfinite(b).all(), name
        assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")
    # the masked entries take no gradient through the full logits either
    logits = (h0.float() @ w0.float().t() + bias.float()).requires_grad_()
    lp, ent = token_logprobs_and_entropy(logits.unsqueeze(0), labels.unsqueeze(0))
    (lp.sum() + ent.sum()).backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, [3, 7, 19]] == 0).all()
