"""Pure tensor functions for every term, weight and advantage of SRFT.

Everything here imports with torch alone, takes tensors (and plain numbers) and
returns tensors. Nothing here knows about models, configs, tokenizers or rewards.
`srft.objective` composes these functions into the SRFT objective and into every
baseline.

Paper: Fu et al., "SRFT: A Single-Stage Method with Supervised and Reinforcement
Fine-Tuning for Reasoning", arXiv 2506.19767. Equation numbers below refer to it.

Shapes: B = sequences in the (micro-)batch, T = response length (padded), V =
vocabulary. `mask` is a (B, T) 0/1 tensor that is 1 on response tokens.

Functions and the equations they compute
----------------------------------------
- `token_logprobs_and_entropy`: log pi(y_t | y_<t) and the full-vocabulary entropy
  H_t = -sum_v pi(v) log pi(v) from logits, chunked over positions so that a long
  sequence never holds all T x V float32 log-softmax values at once.
- `clipped_surrogate`: on-policy PPO/GRPO term (Eq. 11-12 in its general advantage
  form): l_t = -min(r_t A, clip(r_t, 1-eps_low, 1+eps_high) A), r_t = exp(logp - logp_old).
- `off_policy_demo_term`: the RL term on demonstrations (Eq. 9-10): the behaviour
  policy is set to 1 and clipping is dropped, so l_t = -A f(pi(y_t)) with
  f(p) = p (paper) or f(p) = p / (p + gamma) (LUFFY's "policy shaping").
- `nll`: the supervised term on demonstrations, l_t = -log pi(y_t).
- `entropy_weight`: w = coef * sg(exp(sign * H)); w_SFT = 0.5 sg(exp(-H)) (Eq. 8),
  w_RL = 0.1 sg(exp(+H)) (Eq. 12). Always detached.
- `reduce_entropy`: H per token, per sequence (mean over its tokens) or per batch
  (one mean), broadcast back to (B, T): the granularity at which H enters a weight.
- `group_advantages`: A_k = (R_k - mean(G)) / std(G) over a group G that may mix
  on-policy rollouts and demonstrations (G_aug in the paper); the std division is
  optional (LUFFY omits it); a group whose rewards are all equal gives A = 0.
- `truncated_is_weight`: w_t = min(exp(log pi_old(y_t) - log mu(y_t)), C), detached: the
  truncated importance-sampling correction (TIS; Yao et al. 2025, as in verl and TRL) of
  the on-policy term for the gap between the sampler's log-probs mu (vLLM) and the
  trainer's pi_old on the same tokens. Not in the SRFT paper.
- `logprob_gap`: the sampler/trainer mismatch metrics: mean |log pi_old - log mu| and the
  largest per-token ratio exp(log pi_old - log mu) over the masked tokens.
- `phi_weight`: CHORD-phi's per-token weight sg(p (1 - p)) on the SFT NLL (arXiv 2508.11408).
- `chord_mu`: CHORD's schedule of the SFT weight mu (linear warm-up, cosine decay, valley).
- `gate_groups`: HPT's per-prompt switch (arXiv 2509.04419): prompts with at most `gate`
  correct rollouts train by SFT on their demonstrations, the others by RL on their rollouts.
- `aggregate`: the one loss-aggregation function shared by every term:
  "token-mean", "seq-mean-token-mean", "token-sum-norm" (sum / (n_seqs * L_max),
  LUFFY / Dr. GRPO). Normalisers are passed in as *global* counts so that the
  sum of micro-batch losses equals the loss of the whole batch.

Deviations and choices (the paper is silent on these)
-----------------------------------------------------
- std in `group_advantages` is the unbiased sample std (as in verl and TRL) plus
  `eps` in the denominator.
- `clipped_surrogate` also returns the per-token "clipped" indicator, i.e. the
  tokens where the clipped branch was taken (the usual `clip_frac` metric).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

AGGREGATION_MODES = ("token-mean", "seq-mean-token-mean", "token-sum-norm")
ENTROPY_GRANULARITIES = ("token", "sequence", "batch")


def token_logprobs_and_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: Optional[int] = 1024,
    with_entropy: bool = True,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-prob of `labels` and full-vocabulary entropy at every position.

    Args:
        logits: (B, T, V), already aligned so that logits[:, t] predicts labels[:, t].
        labels: (B, T) int64 token ids.
        chunk_size: number of positions (over B*T) converted to float32 at a time;
            None computes everything at once.
        with_entropy: skip the entropy when False (returns None for it).
        entropy_grad: False computes the entropy without autograd (nothing kept for a backward).

    Returns:
        logprobs (B, T) float32 and entropy (B, T) float32 (or None).
        The entropy is differentiable; callers detach it where it enters a weight.
    """
    B, T, V = logits.shape
    flat_logits = logits.reshape(B * T, V)
    flat_labels = labels.reshape(B * T)
    n = flat_logits.shape[0]
    step = max(n, 1) if not chunk_size or chunk_size <= 0 else chunk_size
    logp_chunks, ent_chunks = [], []
    for start in range(0, n, step):
        # logits of -inf (masked vocabulary entries) are raised to -1e30, as the hidden-state path
        # (srft.chunked_logprobs) does: the same probability, 0, but p * z = 0 and every gradient finite
        # (with -inf, d(p z)/dp = -inf times the 0 of the mask is NaN in the backward)
        z = flat_logits[start : start + step].float().clamp(min=-1e30)
        lse = torch.logsumexp(z, dim=-1)
        picked = torch.gather(z, -1, flat_labels[start : start + step].unsqueeze(-1)).squeeze(-1)
        logp_chunks.append(picked - lse)
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                p = torch.softmax(z, dim=-1)
                ent_chunks.append(lse - (p * z).sum(-1))  # H = logsumexp(z) - E_p[z]
    logprobs = torch.cat(logp_chunks).reshape(B, T)
    entropy = torch.cat(ent_chunks).reshape(B, T) if with_entropy else None
    return logprobs, entropy


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: Optional[float] = 0.2,
    clip_eps_high: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped policy-gradient surrogate (PPO / GRPO; SRFT Eq. 11-12).

    l_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A),  r_t = exp(logp_t - logp_old_t).
    With `clip_eps_low=None` there is no clipping: l_t = -r_t A (LUFFY's on-policy term).

    Args:
        logprobs, old_logprobs: (B, T).
        advantages: (B,) per sequence or (B, T) per token.
        clip_eps_high: defaults to clip_eps_low (symmetric clip).

    Returns:
        (per-token loss (B, T), ratio (B, T) detached, clipped indicator (B, T) float).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    if clip_eps_low is None:
        return -unclipped, ratio.detach(), torch.zeros_like(unclipped).detach()
    high = clip_eps_low if clip_eps_high is None else clip_eps_high
    clipped = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).float().detach()
    return loss, ratio.detach(), was_clipped


def reinforce_term(logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Per-token REINFORCE term, l_t = -A log pi(y_t): no ratio, no clipping (the paper's L_RL_self
    with rewards in {+1, -1}, as the HPT authors' reimplementation of SRFT writes it).

    Args:
        logprobs: (B, T); advantages: (B,) per sequence or (B, T) per token.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    return -advantages * logprobs


def signed_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """+1 for a correct response (reward >= 1, the binary verifier's credit), -1 otherwise: the
    paper's on-policy advantages, with no group baseline and no normalisation."""
    return torch.where(rewards >= 1.0, torch.ones_like(rewards), -torch.ones_like(rewards))


def truncated_is_weight(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Per-token truncated importance weight of a rollout token sampled by another engine:

        w_t = min(exp(log pi_old(y_t) - log mu(y_t)), cap)

    pi_old: the trainer's log-prob of the token under the weights that sampled it; mu: the
    sampler's own log-prob (vLLM's kernels and precision differ from the trainer's). The
    on-policy term is multiplied by w_t, which makes its gradient an estimate under pi_old
    rather than mu, with the variance bounded by `cap` (TIS, Yao et al. 2025; verl's
    `tis_imp_ratio_cap`, TRL's `vllm_importance_sampling_mode="token_truncate"`). Detached;
    NaN or -inf inputs (padding) give weight 0, so mask before use anyway.
    """
    if cap <= 0:
        raise ValueError(f"truncated_is_weight: cap must be > 0, got {cap}")
    w = torch.exp((old_logprobs - sampler_logprobs).detach().float()).clamp(max=cap)
    return torch.nan_to_num(w, nan=0.0, posinf=cap).to(old_logprobs.dtype)


def logprob_gap(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampler/trainer mismatch over the masked tokens: (sum |log pi_old - log mu|, token count,
    max exp(log pi_old - log mu)); sums and counts so that the mean is global over micro-batches
    and processes. Detached. With no masked token the max is 0."""
    m = mask.bool()
    d = (old_logprobs - sampler_logprobs).detach().float()
    d = torch.where(m, d, torch.zeros_like(d))
    ratio_max = torch.where(m, d.exp(), torch.zeros_like(d)).max() if m.any() else d.new_zeros(())
    return d.abs().sum(), m.sum().to(d.dtype), ratio_max


def off_policy_demo_term(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    shaping_gamma: Optional[float] = None,
) -> torch.Tensor:
    """Per-token off-policy RL term on demonstrations (SRFT Eq. 9-10).

    The demonstrator's behaviour probability is unknown and set to 1, clipping is
    dropped, so l_t = -A f(p_t) with p_t = pi(y_t):
        f(p) = p                   if shaping_gamma is None (paper),
        f(p) = p / (p + gamma)     otherwise (LUFFY policy shaping; gamma = 0.1).

    Args:
        logprobs: (B, T); advantages: (B,) or (B, T).
    Returns:
        per-token loss (B, T).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    p = torch.exp(logprobs)
    f = p if shaping_gamma is None else p / (p + shaping_gamma)
    return -advantages * f


def nll(logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood, -log pi(y_t) (the SFT term)."""
    return -logprobs


def phi_weight(logprobs: torch.Tensor) -> torch.Tensor:
    """CHORD-phi's per-token weight on the SFT NLL: phi = sg(p (1 - p)), p = exp(log p).
    Largest (1/4) at p = 1/2, vanishing for tokens the policy already has (p -> 1) and for
    tokens it finds very unlikely (p -> 0). Detached: the weight is never differentiated."""
    p = logprobs.detach().exp()
    return p * (1.0 - p)


def filter_demos(correct: torch.Tensor, is_demo: torch.Tensor) -> torch.Tensor:
    """Which samples enter the loss when demonstrations are filtered by the verifier: every rollout,
    and the demonstrations it credits (`correct`: reward >= 1). Imperfect teachers' traces are
    left out instead of imitated (the preset `sft_filtered`)."""
    return ~is_demo | correct


def chord_mu(step: int, warmup_steps: int, decay_steps: int, peak: float, valley: float) -> float:
    """CHORD's SFT weight mu at training step `step` (0-based):

        step < W:          mu = peak * step / W                              (linear warm-up from 0)
        W <= step < W + D: mu = valley + (peak - valley) (1 + cos(pi (step - W) / D)) / 2
        step >= W + D:     mu = valley

    With W = D = 0, mu is `valley` throughout (CHORD's constant-mu setting)."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    if step >= warmup_steps + decay_steps:
        return valley
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps))


def gate_groups(correct: torch.Tensor, groups: torch.Tensor, is_demo: torch.Tensor, gate: int) -> torch.Tensor:
    """HPT's switch as a mask of the samples that enter the loss, (N,) bool.

    c_g = number of correct rollouts (`correct`, bool, of non-demonstration samples) of prompt g
    (`groups`: each sample's prompt index). A prompt with c_g <= gate trains by SFT: its
    demonstrations are active, its rollouts not; a prompt with c_g > gate trains by RL: its
    rollouts are active, its demonstrations not."""
    _, inverse = torch.unique(groups, return_inverse=True)
    n = int(inverse.max().item()) + 1 if inverse.numel() else 0
    counts = torch.zeros(n, dtype=torch.long).index_add(0, inverse, (correct & ~is_demo).long())
    to_sft = counts[inverse] <= gate
    return torch.where(to_sft, is_demo, ~is_demo)


def reduce_entropy(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    granularity: str = "token",
    batch_value: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Entropy at the granularity where it enters a weight, broadcast to (B, T).

    - "token": H_t itself.
    - "sequence": mean of H over each sequence's masked tokens.
    - "batch": one scalar; `batch_value` if given (e.g. the mean over the whole
      rollout batch, so micro-batching does not change it), else the masked mean
      of `entropy` over this tensor.
    The result is detached.
    """
    entropy = entropy.detach()
    mask = mask.to(entropy.dtype)
    if granularity == "token":
        return entropy
    if granularity == "sequence":
        per_seq = (entropy * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.unsqueeze(-1).expand_as(entropy)
    if granularity == "batch":
        if batch_value is None:
            batch_value = (entropy * mask).sum() / mask.sum().clamp(min=1.0)
        batch_value = torch.as_tensor(batch_value, dtype=entropy.dtype, device=entropy.device)
        return batch_value.detach().expand_as(entropy)
    raise ValueError(f"unknown entropy granularity {granularity!r}; known: {ENTROPY_GRANULARITIES}")


def entropy_weight(entropy: torch.Tensor, coef: float, sign: float) -> torch.Tensor:
    """w = coef * sg(exp(sign * H)).

    w_SFT = 0.5 * sg(exp(-H)) is coef=0.5, sign=-1 (SRFT Eq. 8);
    w_RL  = 0.1 * sg(exp(+H)) is coef=0.1, sign=+1 (SRFT Eq. 12).
    Never differentiated through: the input is detached here whatever the caller did.
    """
    return coef * torch.exp(sign * entropy.detach())


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantages over groups that may mix rollouts and demonstrations.

    A_k = (R_k - mean_G R) / (std_G R + eps) if normalize_std else R_k - mean_G R,
    where G is the group of sample k (all samples sharing its group id: in SRFT the
    augmented group G_aug = rollouts + demonstrations of one prompt). std is the
    unbiased sample std. A group whose rewards are all equal (or of size 1) gives 0.

    Args:
        rewards: (N,) float.
        group_ids: (N,) int64, any labels.
    Returns:
        (N,) float advantages.
    """
    rewards = rewards.float()
    _, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    zeros = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    count = zeros.index_add(0, inverse, torch.ones_like(rewards))
    mean = zeros.index_add(0, inverse, rewards) / count
    centred = rewards - mean[inverse]
    var = zeros.index_add(0, inverse, centred**2) / (count - 1).clamp(min=1.0)
    std = var.sqrt()
    # all-equal groups are detected exactly (max == min), not through a float std
    hi = zeros.scatter_reduce(0, inverse, rewards, "amax", include_self=False)
    lo = zeros.scatter_reduce(0, inverse, rewards, "amin", include_self=False)
    degenerate = (hi == lo)[inverse] | (count[inverse] < 2)
    adv = centred / (std[inverse] + eps) if normalize_std else centred
    return torch.where(degenerate, torch.zeros_like(adv), adv)


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token-mean",
    num_tokens: Optional[float] = None,
    num_seqs: Optional[float] = None,
    max_len: Optional[int] = None,
) -> torch.Tensor:
    """Aggregate a per-token loss to a scalar, normalised by global counts.

    - "token-mean":          sum_{i,t} m l / N_tokens
    - "seq-mean-token-mean": sum_i ( sum_t m l / sum_t m ) / N_seqs
    - "token-sum-norm":      sum_{i,t} m l / (N_seqs * L_max)

    N_tokens and N_seqs default to the counts in `mask` itself. Pass the counts of
    the whole batch (all micro-batches, all ranks) to make the sum of micro-batch
    losses equal the whole-batch loss. For the sequence modes a sequence counts in
    N_seqs when it has at least one masked token.

    Args:
        per_token, mask: (B, T).
        max_len: L_max for "token-sum-norm" (defaults to T).
    """
    mask = mask.to(per_token.dtype)
    masked = per_token * mask
    if mode == "token-mean":
        denom = (mask.sum() if num_tokens is None
                 else torch.as_tensor(num_tokens, dtype=per_token.dtype, device=per_token.device))
        return masked.sum() / denom.clamp(min=1.0)
    seq_has = (mask.sum(-1) > 0).to(per_token.dtype)
    n_seqs = (seq_has.sum() if num_seqs is None
              else torch.as_tensor(num_seqs, dtype=per_token.dtype, device=per_token.device))
    n_seqs = n_seqs.clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.sum() / n_seqs
    if mode == "token-sum-norm":
        length = per_token.shape[-1] if max_len is None else max_len
        return masked.sum() / (n_seqs * length)
    raise ValueError(f"unknown aggregation mode {mode!r}; known: {AGGREGATION_MODES}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over positions where mask is 1 (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
