"""Token log-probs and entropies from hidden states, chunked, with the logits recomputed
in the backward pass: memory that does not grow with sequence length x vocabulary.

For hidden states h (N, D) after the model's final norm, an output layer W (V, D)
(bias b optional) and a temperature tau, per position i:

    z_i = (W h_i + b) / tau                   the tempered logits, never kept
    logp_i = z_i[y_i] - logsumexp(z_i)        log pi(y_i)            (clamped to <= 0)
    H_i = logsumexp(z_i) - sum_v p_iv z_iv    entropy of pi_i = softmax(z_i)

Forward and backward walk over the positions `chunk_size` at a time; each chunk's
(chunk, V) logits live only while that chunk is processed, in float32 whatever the
input dtype. Backward recomputes them and uses

    d logp / dz = onehot(y) - p
    d H / dz    = -p * (z - E_p[z])           (= -p (log p + H); 0 where p = 0: logits of
                                               -inf are floored at -1e30, so gradients stay finite)

then dz/dh = W / tau, dz/dW = h / tau. Gradients reach h, W and b; W's gradient is
accumulated in float32 over the chunks and cast to W's dtype once (on a GPU with bfloat16 or
float16 weights its products take the chunk's logit gradient in that dtype, on the tensor cores,
summed in float32, as TRL's chunked path does). Peak extra memory
is a few (chunk, V) float32 buffers plus W's float32 gradient, independent of N. The
matmuls run in the inputs' dtype (bfloat16 logits are rounded as the model's own
output layer rounds them), the softmax statistics in float32.

Imports torch only. `srft.policy.PolicyScorer` uses it when the model's output layer
is a plain linear map (checked numerically against the model's own logits at start-up).
"""

from __future__ import annotations

from typing import Optional

import torch

DEFAULT_CHUNK_ELEMENTS = 1 << 25  # 32M logits per chunk: 128 MiB per float32 buffer


def default_chunk_size(vocab: int, budget_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Positions per chunk so that one (chunk, V) float32 buffer holds `budget_elements` values."""
    return max(1, budget_elements // max(1, vocab))


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for the softmax statistics, float64 when the inputs are float64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], inv_tau: float) -> torch.Tensor:
    """A chunk's tempered logits in the accumulation dtype (the matmul in the inputs' dtype, as the
    model's own output layer would do it). Logits of -inf (masked entries) are raised to -1e30,
    which gives them the same probability, 0, and keeps every product below finite."""
    z = (h.to(weight.dtype) @ weight.t()).to(_acc_dtype(h))
    if bias is not None:
        z += bias.to(z.dtype)
    if inv_tau != 1.0:
        z *= inv_tau
    return z.clamp_(min=-1e30)


def _add_weight_grad(acc: torch.Tensor, gz: torch.Tensor, h: torch.Tensor, w_dtype: torch.dtype) -> None:
    """acc += gz^T h, acc float32 (V, D). With bfloat16/float16 weights on a GPU the product runs
    on the tensor cores from gz and h in that dtype and is summed in float32 (`out_dtype`, torch
    >= 2.8, CUDA only); elsewhere it is a float32 product. On an H100 the path with this product in
    float32 took 2.5x the naive path's time in bfloat16 (1.6x in float32); the time with this
    change has not been measured on a GPU yet."""
    if acc.device.type == "cuda" and w_dtype in (torch.bfloat16, torch.float16):
        try:
            torch.addmm(acc, gz.t().to(w_dtype), h.to(w_dtype), out_dtype=acc.dtype, out=acc)
            return
        except (TypeError, RuntimeError, NotImplementedError):  # a torch without out_dtype
            pass
    acc.addmm_(gz.t(), h.to(acc.dtype))


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b, -1) without a (rows, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


class _ChunkedLogprobEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, inv_tau, chunk_size, with_entropy):
        n = hidden.shape[0]
        acc = _acc_dtype(hidden)
        logp = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        ez = torch.empty(n, dtype=acc, device=hidden.device)
        with torch.no_grad():
            for s in range(0, n, chunk_size):
                e = min(n, s + chunk_size)
                z = _chunk_logits(hidden[s:e], weight, bias, inv_tau)
                lse[s:e] = torch.logsumexp(z, dim=-1)
                logp[s:e] = z.gather(-1, labels[s:e].unsqueeze(-1)).squeeze(-1) - lse[s:e]
                p = z.sub(lse[s:e].unsqueeze(-1)).exp_()
                ez[s:e] = _rowdot(p, z)  # E_p[z]
                del z, p
        logp.clamp_(max=0.0)  # log pi <= 0, whatever the rounding
        ent = (lse - ez).clamp_(min=0.0)  # H = logsumexp(z) - E_p[z]
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), labels, lse, ez)
        ctx.set_materialize_grads(False)  # an entropy used only detached gets grad None: no work for it
        ctx.has_bias, ctx.inv_tau, ctx.chunk_size, ctx.with_entropy = bias is not None, inv_tau, chunk_size, with_entropy
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        hidden, weight, bias, labels, lse, ez = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        inv_tau, chunk = ctx.inv_tau, ctx.chunk_size
        n = hidden.shape[0]
        acc = _acc_dtype(hidden)
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        # dz/dlogits = inv_tau: folded into the per-position upstream gradients
        if grad_logp is None and grad_ent is None:
            return None, None, None, None, None, None, None
        g1 = (grad_logp.to(acc) if grad_logp is not None else torch.zeros(n, dtype=acc, device=hidden.device)) * inv_tau
        use_ent = ctx.with_entropy and grad_ent is not None
        g2 = grad_ent.to(acc) * inv_tau if use_ent else None
        with torch.no_grad():
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                z = _chunk_logits(hidden[s:e], weight, bias, inv_tau)
                p = z.sub(lse[s:e].unsqueeze(-1)).exp_()
                # dlogp/dz = onehot(y) - p;  dH/dz = -p (z - E_p[z])
                # gz = g1 onehot(y) - p (g1 + g2 (z - E_p[z]))
                if use_ent:
                    z.sub_(ez[s:e].unsqueeze(-1)).mul_(g2[s:e].unsqueeze(-1)).add_(g1[s:e].unsqueeze(-1))
                    gz = p.mul_(z).neg_()
                else:
                    gz = p.mul_(-g1[s:e].unsqueeze(-1))
                del z
                gz.scatter_add_(-1, labels[s:e].unsqueeze(-1), g1[s:e].unsqueeze(-1))
                if need_h:
                    grad_h[s:e] = (gz.to(weight.dtype) @ weight).to(hidden.dtype)
                if need_w:
                    _add_weight_grad(grad_w, gz, hidden[s:e], weight.dtype)
                if need_b:
                    grad_b += gz.sum(0)
                del gz
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None, None, None)


def chunked_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    chunk_size: Optional[int] = None,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log pi(labels) and the full-vocabulary entropy from hidden states (see the module docstring).

    Args:
        hidden: (..., D) hidden states, aligned so that hidden[..., t, :] predicts labels[..., t].
        weight: (V, D) output layer; bias: (V,) or None.
        labels: (...) int64 token ids.
        temperature: logits are divided by it (as when sampling).
        chunk_size: positions per chunk; None: `default_chunk_size(V)`.
        with_entropy: False returns None for the entropy (it is still computed, detached).

    Returns:
        logprobs (...) float32 (float64 for float64 inputs; <= 0) and entropy (...) or None; both differentiable
        with respect to hidden, weight and bias (the entropy only when with_entropy).
    """
    if temperature is None or temperature <= 0:
        temperature = 1.0
    shape = labels.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    chunk = chunk_size if chunk_size and chunk_size > 0 else default_chunk_size(weight.shape[0])
    logp, ent = _ChunkedLogprobEntropy.apply(h, weight, bias, y, 1.0 / float(temperature), int(chunk),
                                             bool(with_entropy))
    return logp.reshape(shape), (ent.reshape(shape) if with_entropy else None)
