"""The SRFT objective, composed in one place, and the preset registry.

SRFT (arXiv 2506.19767) optimises on every step

    L = L_SFT_demo + L_RL_demo + L_RL_self                                  (Eq. 13)

    L_SFT_demo = agg_demo( w_SFT * -log pi(y_t) ),   w_SFT = 0.5 sg(exp(-H))    (Eq. 8)
    L_RL_demo  = agg_demo( -A * f(pi(y_t)) ),        f(p) = p                   (Eq. 9-10)
    L_RL_self  = agg_roll( w_t * -min(r A, clip(r, 1-eps, 1+eps) A) ),          (Eq. 11-12)
                 w_t = 0.1 sg(exp(+H)) on tokens of rollouts with A > 0, else 1

with A the group advantage over the augmented group (rollouts + demonstrations of
one prompt), H the policy entropy (stop-gradient) and agg the aggregation of
`srft.losses.aggregate` over demonstration (agg_demo) or rollout (agg_roll)
tokens. Every baseline is another setting of the same switches
(`ObjectiveConfig`), never another copy of a loss: see `srft.presets.PRESETS`.

Choices where the paper is silent (each is an option of ObjectiveConfig):
- aggregation: token-mean, each term normalised by the count of its own tokens
  (demonstration tokens for the demo terms, rollout tokens for L_RL_self), over
  the whole mini-batch (`normalize_over="term"`); verl / LUFFY normalise every
  term by the whole batch (`normalize_over="batch"`).
- H enters the weights at "batch" granularity by default: the mean token entropy
  of the on-policy rollouts of the rollout batch, measured before the update
  (the policy entropy the paper plots); "token" and "sequence" are options, in
  which case each token uses its own entropy (demonstration tokens for w_SFT,
  rollout tokens for w_RL) or its sequence's mean.
- An optional entropy bonus, -c * agg_all(H): the entropy of every response token
  (demonstrations and rollouts) aggregated with the run's aggregation and counts of
  all tokens, as LUFFY's script (verl's `agg_loss(entropy, response_mask,
  loss_agg_mode)`) does: a token mean under token-mean, sum H / (N_seqs * L_max)
  under token-sum-norm. 0 by default (LUFFY's script: 0.001).

The paper's literal on-policy form (preset `srft_paper`, after the HPT authors' reimplementation,
`mix_core_alg.py::compute_token_on_off_policy_srft_loss`): `rollout_advantage = "signed"` (+1 for
a correct rollout, -1 for a wrong one, `srft.losses.signed_rewards`) and `rl_self_form =
"reinforce"` (-A log pi, `srft.losses.reinforce_term`), so L_RL_self = w_RL E[-log pi(y+)] +
E[log pi(y-)] with w_RL = 0.1 sg(exp(H)) of each rollout's own token-mean entropy.

Switches for the methods published after SRFT (presets `hpt`, `chord`, `chord_phi`):
- `sft_gate` (HPT): per prompt, SFT on the demonstration when at most `sft_gate` rollouts
  are correct, else RL on the rollouts (`srft.losses.gate_groups`; `LossInputs.active`);
- `mix_schedule = "chord"`: L = (1 - mu) L_RL_self + mu L_SFT_demo, mu from
  `srft.losses.chord_mu` at the step (passed to `compute_loss`);
- `sft_token_weight = "phi"`: the SFT NLL weighted per token by sg(p (1 - p))
  (`srft.losses.phi_weight`).

Not in the paper: when the rollouts come from another engine (vLLM), `LossInputs.is_weight`
multiplies L_RL_self per token by the truncated importance weight
min(exp(log pi_old - log mu), C) of `srft.losses.truncated_is_weight` (mu: the sampler's
log-prob; `rollout.is_correction`), the correction verl and TRL apply to vLLM rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from srft import losses as L
from srft.presets import PRESETS, SRFT_ABLATIONS, Preset, get_preset, register_preset  # noqa: F401 (the registry's
# home is srft.presets, pure data without torch; re-exported for callers of srft.objective)


@dataclass
class LossInputs:
    """Per-token tensors of one micro-batch, response-aligned (B, T).

    logprobs / entropy come from the current forward pass (with grad);
    old_logprobs from the policy that sampled the rollouts (any value on
    demonstration rows and padding, NaN included: they are masked out before use);
    advantages (B,); mask (B, T) 1 on response tokens; is_demo (B,) bool.
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    is_demo: torch.Tensor
    is_weight: Optional[torch.Tensor] = None
    """(B, T) detached importance weights of the on-policy term (`srft.losses.truncated_is_weight`:
    sampler/trainer mismatch correction); None: 1."""
    active: Optional[torch.Tensor] = None
    """(B,) bool: the samples that enter the loss (HPT's per-prompt switch, `srft.losses.gate_groups`);
    None: all. The Normalizers' counts must be those of the active samples."""


@dataclass
class Normalizers:
    """Counts over the whole mini-batch (all micro-batches, all ranks), so that the
    sum of micro-batch losses is the mini-batch loss."""

    demo_tokens: float
    demo_seqs: float
    rollout_tokens: float
    rollout_seqs: float
    max_len: int
    batch_entropy: Optional[float] = None

    @property
    def all_tokens(self) -> float:
        return self.demo_tokens + self.rollout_tokens

    @property
    def all_seqs(self) -> float:
        return self.demo_seqs + self.rollout_seqs

    @staticmethod
    def from_masks(mask: torch.Tensor, is_demo: torch.Tensor, max_len: int, batch_entropy=None) -> "Normalizers":
        d = mask[is_demo]
        r = mask[~is_demo]
        return Normalizers(
            demo_tokens=float(d.sum()),
            demo_seqs=float((d.sum(-1) > 0).sum()),
            rollout_tokens=float(r.sum()),
            rollout_seqs=float((r.sum(-1) > 0).sum()),
            max_len=max_len,
            batch_entropy=batch_entropy,
        )


def _weight(entropy_at: torch.Tensor, mode: str, coef: float, sign: float) -> torch.Tensor:
    if mode == "constant":
        return torch.full_like(entropy_at, coef)
    return L.entropy_weight(entropy_at, coef, sign)


# Over 60 lines on purpose: the whole objective (Eq. 8-13 and every switch a preset sets) reads in one place.
def compute_loss(x: LossInputs, norms: Normalizers, cfg, mu: Optional[float] = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective for one micro-batch. `cfg` is an `srft.config.ObjectiveConfig`; `mu` is
    CHORD's SFT weight at this step (`srft.losses.chord_mu`), needed when cfg.mix_schedule is "chord".

    Returns the loss (a scalar with grad) and detached metrics. Every returned
    value is normalised by the mini-batch counts in `norms`, so summing them over
    the micro-batches of a mini-batch gives the mini-batch value.
    """
    mask = x.mask.to(x.logprobs.dtype)
    if x.active is not None:
        mask = mask * x.active.to(mask.dtype).unsqueeze(-1)
    demo = x.is_demo.to(mask.dtype).unsqueeze(-1)
    demo_mask, roll_mask = mask * demo, mask * (1 - demo)
    H = L.reduce_entropy(x.entropy, mask, cfg.entropy_granularity, norms.batch_entropy)
    max_len = cfg.max_len_norm or norms.max_len

    def agg(per_token, which):
        if cfg.normalize_over == "batch" or which == "all":
            counts = dict(num_tokens=norms.all_tokens, num_seqs=norms.all_seqs)
        elif which == "demo":
            counts = dict(num_tokens=norms.demo_tokens, num_seqs=norms.demo_seqs)
        else:
            counts = dict(num_tokens=norms.rollout_tokens, num_seqs=norms.rollout_seqs)
        m = {"demo": demo_mask, "roll": roll_mask, "all": mask}[which]
        return L.aggregate(per_token, m, cfg.aggregation, max_len=max_len, **counts)

    def token_mean(values, m, n):  # additive over micro-batches
        return (values.detach() * m).sum() / max(n, 1.0)

    terms: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    if cfg.sft_demo:
        w_sft = _weight(H, cfg.w_sft, cfg.w_sft_coef, cfg.w_sft_sign)
        if cfg.sft_token_weight == "phi":
            phi = L.phi_weight(x.logprobs)
            w_sft = w_sft * phi
            metrics["weight/phi"] = token_mean(phi, demo_mask, norms.demo_tokens)
        terms["sft_demo"] = agg(w_sft * L.nll(x.logprobs), "demo")
        metrics["weight/sft"] = token_mean(w_sft, demo_mask, norms.demo_tokens)
        metrics["loss/nll_demo"] = token_mean(L.nll(x.logprobs), demo_mask, norms.demo_tokens)
    if cfg.rl_demo:
        terms["rl_demo"] = agg(L.off_policy_demo_term(x.logprobs, x.advantages, cfg.demo_shaping_gamma), "demo")
    if cfg.rl_self:
        # old log-probs only where they mean something (rollout tokens): elsewhere the current
        # detached log-prob (r = 1), so a NaN on a demonstration row or on padding never reaches the loss
        old = torch.where(roll_mask > 0, x.old_logprobs, x.logprobs.detach())
        per_tok, ratio, clipped = L.clipped_surrogate(x.logprobs, old, x.advantages, cfg.clip_eps, cfg.clip_eps_high)
        if cfg.rl_self_form == "reinforce":  # -A log pi: no ratio, no clip (the paper's form)
            per_tok = L.reinforce_term(x.logprobs, x.advantages)
        w_rl = _weight(H, cfg.w_rl, cfg.w_rl_coef, cfg.w_rl_sign)
        positive = (x.advantages > 0).to(mask.dtype).unsqueeze(-1)
        w_tok = positive * w_rl + (1 - positive)
        if x.is_weight is not None:
            w_is = torch.where(roll_mask > 0, x.is_weight, torch.zeros_like(x.is_weight))
            w_tok = w_tok * w_is
            metrics["rollout/is_weight_mean"] = token_mean(w_is, roll_mask, norms.rollout_tokens)
        terms["rl_self"] = agg(w_tok * per_tok, "roll")
        metrics["weight/rl"] = token_mean(w_rl, roll_mask, norms.rollout_tokens)
        metrics["policy/clip_frac"] = token_mean(clipped, roll_mask, norms.rollout_tokens)
        metrics["policy/ratio_mean"] = token_mean(ratio, roll_mask, norms.rollout_tokens)
    if cfg.mix_schedule == "chord":
        if mu is None:
            raise ValueError("objective.mix_schedule chord: compute_loss needs mu (srft.losses.chord_mu)")
        if "sft_demo" in terms:
            terms["sft_demo"] = mu * terms["sft_demo"]
        if "rl_self" in terms:
            terms["rl_self"] = (1.0 - mu) * terms["rl_self"]
    if cfg.entropy_bonus:
        terms["entropy_bonus"] = -cfg.entropy_bonus * agg(x.entropy, "all")
    total = sum(terms.values()) if terms else (x.logprobs * 0).sum()
    for k, v in terms.items():
        metrics[f"loss/{k}"] = v.detach()
    metrics["loss/total"] = total.detach()
    return total, metrics


# ---------------------------------------------------------------- per-step inputs of the objective
# What a method changes besides the loss formula is computed here, from the step's rewards, groups
# and position, so that the training loop (srft.experience, srft.update) stays the same for every
# method: the advantage groups, HPT's per-prompt gate, CHORD's mu, the truncated importance
# weights, and whether the entropy weights need the batch entropy.


def advantages(cfg, rewards: list[float], groups: list[int], is_demo: list[bool]) -> torch.Tensor:
    """Group advantages (`srft.losses.group_advantages`) of one rank's samples. With
    `cfg.demos_in_group` False, each demonstration is a group of its own (A = 0)."""
    if not rewards:
        return torch.zeros(0)
    group_ids = [g if (cfg.demos_in_group or not d) else -1 - i for i, (g, d) in enumerate(zip(groups, is_demo))]
    r = torch.tensor(rewards, dtype=torch.float32)
    adv = L.group_advantages(r, torch.tensor(group_ids, dtype=torch.long), cfg.adv_std_norm)
    if cfg.rollout_advantage == "signed":  # rollouts: +1 / -1; demonstrations keep the group's
        adv = torch.where(torch.tensor(is_demo), adv, L.signed_rewards(r))
    return adv


def gates_samples(cfg) -> bool:
    """Whether the objective leaves some samples out of the loss (`sample_gate`)."""
    return cfg.sft_gate is not None or cfg.demo_filter


def sample_gate(cfg, rewards: list[float], groups: list[int], is_demo: list[bool]) -> Optional[list[bool]]:
    """Which samples enter the loss (HPT's per-prompt switch, `cfg.sft_gate`: SFT on the
    demonstration when at most sft_gate rollouts are correct, else RL on the rollouts); None when
    the objective has no gate (every sample enters). With `cfg.demo_filter`, demonstrations the
    reward does not credit are left out too (`srft.losses.filter_demos`)."""
    if not gates_samples(cfg) or not rewards:
        return None
    correct, demo = torch.tensor([r >= 1.0 for r in rewards]), torch.tensor(is_demo)
    active = torch.ones(len(rewards), dtype=torch.bool)
    if cfg.sft_gate is not None:
        active = L.gate_groups(correct, torch.tensor(groups), demo, cfg.sft_gate)
    if cfg.demo_filter:
        active = active & L.filter_demos(correct, demo)
    return active.tolist()


def mix_weight(cfg, step: int, max_steps: int) -> Optional[float]:
    """CHORD's mu at `step` (`cfg.mix_schedule` "chord"; its warm-up and decay are shares of
    max_steps), else None. Passed to `compute_loss` as `mu` and logged as weight/mu."""
    if cfg.mix_schedule != "chord":
        return None
    return L.chord_mu(step, int(round(cfg.mu_warmup * max_steps)), int(round(cfg.mu_decay * max_steps)),
                      cfg.mu_peak, cfg.mu_valley)


def is_correction_cap(rollout_cfg) -> Optional[float]:
    """The cap C of the truncated importance weights on L_RL_self (`rollout.is_correction`: "tis",
    or "auto" with an engine other than the trainer's own), None when there is no correction."""
    corr = rollout_cfg.is_correction
    on = corr == "tis" or (corr == "auto" and rollout_cfg.engine != "hf")
    return rollout_cfg.is_cap if on else None


def needs_batch_entropy(cfg) -> bool:
    """Whether an entropy weight uses the batch entropy (granularity "batch")."""
    return cfg.entropy_granularity == "batch" and ((cfg.sft_demo and cfg.w_sft == "entropy") or
                                                   (cfg.rl_self and cfg.w_rl == "entropy"))


def loss_inputs(cfg, logprobs: torch.Tensor, entropy: torch.Tensor, old_logprobs: torch.Tensor,
                batch: dict[str, torch.Tensor], is_cap: Optional[float]) -> LossInputs:
    """`LossInputs` of one collated micro-batch (`srft.samples.collate`) on the forward's device:
    the importance weights when `is_cap` is set (`is_correction_cap`), the gate's `active` mask
    when the objective has one."""
    dev = logprobs.device
    mu = batch["sampler_logprobs"].to(dev)
    w_is = L.truncated_is_weight(old_logprobs, mu, is_cap) if is_cap is not None else None
    active = batch["active"].to(dev) if gates_samples(cfg) else None
    return LossInputs(logprobs, entropy, old_logprobs, batch["advantages"].to(dev), batch["mask"].to(dev),
                      batch["is_demo"].to(dev), w_is, active)

