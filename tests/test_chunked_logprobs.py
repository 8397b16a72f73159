"""srft.chunked_logprobs against the naive path (full logits, log_softmax): values and
gradients to 1e-5 in float32, gradcheck in float64, finite gradients at -inf logits, no
positive log-probs, bfloat16 close to float32."""

from __future__ import annotations

import pytest
import torch

from srft.chunked_logprobs import chunked_logprobs_and_entropy, default_chunk_size


def naive(hidden, weight, labels, bias=None, temperature=1.0):
    z = hidden.float() @ weight.float().t()
    if bias is not None:
        z = z + bias.float()
    z = z / temperature
    logp_all = torch.log_softmax(z, -1)
    logp = logp_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    p = logp_all.exp()
    ent = -(torch.where(p > 0, p * logp_all, torch.zeros_like(p))).sum(-1)
    return logp, ent


def make(n=37, d=16, v=53, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=g, dtype=torch.float64) * 0.5).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=g, dtype=torch.float64) * 0.1).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    return h, w, b, y


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
def test_values_and_gradients_equal_the_naive_path(bias, temperature, chunk):
    h, w, b, y = make(bias=bias)
    ga = torch.Generator().manual_seed(1)
    c1, c2 = torch.randn(37, generator=ga), torch.randn(37, generator=ga)  # arbitrary upstream gradients

    lp, ent = chunked_logprobs_and_entropy(h, w, y, bias=b, temperature=temperature, chunk_size=chunk)
    ((lp * c1).sum() + (ent * c2).sum()).backward()
    got = [h.grad.clone(), w.grad.clone()] + ([b.grad.clone()] if bias else [])
    for t in (h, w, b):
        if t is not None:
            t.grad = None
    lp_n, ent_n = naive(h, w, y, b, temperature)
    ((lp_n * c1).sum() + (ent_n * c2).sum()).backward()
    want = [h.grad, w.grad] + ([b.grad] if bias else [])
    torch.testing.assert_close(lp, lp_n, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_n, atol=1e-5, rtol=1e-5)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    h, w, b, y = make(n=6, d=4, v=7, dtype=torch.float64, bias=True)

    def f(h, w, b):
        lp, ent = chunked_logprobs_and_entropy(h, w, y, bias=b, temperature=0.8, chunk_size=4)
        return lp, ent

    assert torch.autograd.gradcheck(f, (h, w, b), eps=1e-6, atol=1e-6)


def test_minus_inf_logits_give_finite_gradients_and_no_positive_logprobs():
    """A bias of -inf (a masked vocabulary entry) keeps every gradient finite (the naive
    entropy gradient is NaN there); log-probs are never above 0, even for a label whose
    logit dwarfs the others."""
    h, w, _, y = make(n=8, d=4, v=6)
    b = torch.zeros(6)
    b[2] = float("-inf")
    y = torch.where(y == 2, torch.zeros_like(y), y)
    lp, ent = chunked_logprobs_and_entropy(h, w, y, bias=b, chunk_size=3)
    (lp.sum() + ent.sum()).backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()

    h2 = torch.zeros(3, 2, requires_grad=True)
    w2 = torch.tensor([[1e4, 0.0], [0.0, 0.0], [-3.0, 0.0]], requires_grad=True)
    h2.data[:, 0] = 1.0
    lp2, ent2 = chunked_logprobs_and_entropy(h2, w2, torch.tensor([0, 0, 0]))
    assert (lp2 <= 0).all() and (ent2 >= 0).all()


def test_bfloat16_inputs_are_close_to_float32_and_keep_their_dtypes():
    h, w, _, y = make(n=64, d=32, v=300)
    lp32, ent32 = chunked_logprobs_and_entropy(h, w, y, chunk_size=16)
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    lpb, entb = chunked_logprobs_and_entropy(hb, wb, y, chunk_size=16)
    (lpb.sum() + entb.sum()).backward()
    assert lpb.dtype == torch.float32 and hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(lpb, lp32.detach(), atol=0.1, rtol=0.05)
    torch.testing.assert_close(entb, ent32.detach(), atol=0.1, rtol=0.05)


def test_without_entropy_and_the_default_chunk():
    h, w, _, y = make()
    lp, ent = chunked_logprobs_and_entropy(h, w, y, with_entropy=False)
    assert ent is None
    lp.sum().backward()
    lp_n, _ = naive(h.detach(), w.detach(), y)
    torch.testing.assert_close(lp, lp_n, atol=1e-5, rtol=1e-5)
    assert default_chunk_size(152_000) == (1 << 25) // 152_000 and default_chunk_size(10**9) == 1
