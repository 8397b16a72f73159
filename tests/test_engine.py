"""Rollout engine: determinism, max-tokens, EOS handling, log-probs."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from srft.rollout.base import SamplingParams
from srft.rollout.hf import HFRolloutEngine, _top_p_filter


class UniformModel(torch.nn.Module):
    """Mock LM with uniform logits over V tokens (nanochat-style engine test); subclasses give
    other next-token logits."""

    def __init__(self, vocab: int = 11):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def logits(self, input_ids):
        b, t = input_ids.shape
        return torch.zeros(b, t, self.vocab)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=None):
        return type("Out", (), {"logits": self.logits(input_ids)})()


def test_same_seed_same_samples_and_max_tokens():
    eng = HFRolloutEngine(UniformModel(), pad_token_id=0, eos_token_id=None)
    prompts = [[1, 2, 3], [4], [5, 6]]
    p = SamplingParams(max_new_tokens=7, temperature=1.0)
    a = eng.generate(prompts, p, seed=123)
    b = eng.generate(prompts, p, seed=123)
    c = eng.generate(prompts, p, seed=124)
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.response_ids.shape == (3, 7)  # no EOS: exactly max_new_tokens
    assert a.response_mask.sum().item() == 21
    assert not a.finished.any()
    # uniform over 11 tokens: every sampled token has log-prob -ln 11
    torch.testing.assert_close(a.logprobs, torch.full((3, 7), -torch.log(torch.tensor(11.0)).item()))


def test_eos_stops_and_masks():
    eng = HFRolloutEngine(UniformModel(vocab=3), pad_token_id=0, eos_token_id=2)
    out = eng.generate([[1]] * 64, SamplingParams(max_new_tokens=20, temperature=1.0), seed=0)
    for ids, mask, fin in zip(out.response_ids, out.response_mask, out.finished):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # contiguous
        if fin:
            assert ids[n - 1].item() == 2  # EOS is the last generated token, inside the mask
            assert (ids[n:] == 0).all()  # padding after it
            assert (ids[: n - 1] != 2).all()
        else:
            assert n == 20
    assert out.finished.float().mean() > 0.5  # P(no EOS in 20 draws) = (2/3)^20


def test_top_p_filter_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_top_p_filter(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 <= 0.8
    assert torch.isfinite(_top_p_filter(logits, 1.0)).all()


def test_real_model_greedy_logprobs_match_teacher_forcing(tiny_model_dir):
    """Left padding and positions are right: the engine's sampling log-probs equal
    a teacher-forced forward pass of each prompt + response, unpadded."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    eng = HFRolloutEngine(model, tok.pad_token_id, tok.eos_token_id)
    prompts = [tok("Q:1+2\nA:")["input_ids"], tok("Q:9-3+4-1\nA:")["input_ids"]]
    out = eng.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0), seed=5)
    for i, p in enumerate(prompts):
        n = int(out.response_mask[i].sum())
        r = out.response_ids[i, :n].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + n - 1]
        ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(r).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(out.logprobs[i, :n], ref, atol=1e-4, rtol=1e-4)
    g1 = eng.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
    g2 = eng.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.0), seed=99)
    assert torch.equal(g1.response_ids, g2.response_ids)  # greedy ignores the seed


def test_engine_restores_training_mode(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.train()
    eng = HFRolloutEngine(model, 1, 0)
    eng.generate([[5, 6]], SamplingParams(max_new_tokens=2))
    assert model.training


class SkewedModel(UniformModel):
    """Mock LM whose next-token distribution depends on the last token (not uniform)."""

    def logits(self, input_ids):
        v = torch.arange(self.vocab, dtype=torch.float32)
        return torch.sin(input_ids.float().unsqueeze(-1) * 0.7 + v) * 2.0


def test_a_response_depends_on_its_own_seed_not_on_the_batch():
    """World-size invariance rests on this: the same (prompt, seed) gives the same response
    alone, in another batch, at another position, or split over generation batches."""
    eng = HFRolloutEngine(SkewedModel(vocab=13), pad_token_id=0, eos_token_id=None, batch_size=2)
    prompts = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]]
    seeds = [11, 22, 33, 44]
    p = SamplingParams(max_new_tokens=9, temperature=1.0)
    full = eng.generate(prompts, p, seed=seeds)
    for order in ([3, 1], [2], [0, 3, 2, 1]):
        part = eng.generate([prompts[i] for i in order], p, seed=[seeds[i] for i in order])
        for row, i in enumerate(order):
            assert torch.equal(part.response_ids[row], full.response_ids[i]), (order, i)
    # an int seed is row_seeds(seed, n): row i gets derive_seed(seed, i)
    from srft.rollout.base import derive_seed, row_seeds

    assert row_seeds(5, 3) == [derive_seed(5, i) for i in range(3)]
    assert torch.equal(eng.generate(prompts, p, seed=5).response_ids,
                       eng.generate(prompts, p, seed=row_seeds(5, 4)).response_ids)


def test_inverse_cdf_sampling_draws_the_distribution():
    """20,000 draws with one row's uniforms: frequencies match p; a token of probability 0 (also
    inside the vocabulary, where the CDF is flat) is never drawn."""
    from srft.rollout.hf import inverse_cdf_sample, row_uniforms

    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    u = row_uniforms([7], 20000, "cpu")[0]
    draws = inverse_cdf_sample(probs.expand(20000, 5), u)
    freq = torch.bincount(draws, minlength=5).float() / 20000
    assert freq[1] == 0 and freq[4] == 0
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    # the ends of [0, 1): u = 0 gives the first token with p > 0, u -> 1 the last
    assert inverse_cdf_sample(torch.tensor([[0.0, 0.6, 0.4, 0.0]] * 2), torch.tensor([0.0, 0.9999999])).tolist() == [1, 2]


def test_entropy_only_when_asked():
    """Uniform logits over 11 tokens: each generated token's entropy is ln 11; without
    return_entropy the engine does not compute it."""
    eng = HFRolloutEngine(UniformModel(), pad_token_id=0, eos_token_id=None)
    p = SamplingParams(max_new_tokens=4, temperature=1.0)
    assert eng.generate([[1], [2, 3]], p, seed=0).entropy is None
    out = eng.generate([[1], [2, 3]], SamplingParams(max_new_tokens=4, temperature=1.0, return_entropy=True), seed=0)
    torch.testing.assert_close(out.entropy, torch.full((2, 4), torch.log(torch.tensor(11.0)).item()))
