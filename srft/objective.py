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
(`ObjectiveConfig`), never another copy of a loss: see `PRESETS`.

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

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from srft import losses as L


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


@dataclass
class Preset:
    name: str
    summary: str
    formula: str
    overrides: dict[str, Any] = field(default_factory=dict)
    stages: tuple[tuple[str, float], ...] = ()
    """Multi-stage presets: (preset, share of train.max_steps) run one after the other, each
    stage starting from the previous stage's final model (see `srft.stages`). The last
    stage's overrides must equal `overrides`, so the resolved config is the last stage's."""


PRESETS: dict[str, Preset] = {}


def register_preset(p: Preset) -> Preset:
    PRESETS[p.name] = p
    return p


register_preset(Preset(
    "srft",
    "SRFT: SFT + off-policy RL on demonstrations + on-policy RL, entropy-weighted (the paper's defaults).",
    "L = 0.5 sg(e^-H) NLL(demo) - A f(p)(demo) + clipped PG(rollouts; w=0.1 sg(e^H) where A>0)",
    {},
))
register_preset(Preset(
    "grpo",
    "GRPO / zero-RL: clipped policy gradient on 8 on-policy rollouts per prompt, no demonstrations.",
    "L = token-mean over rollouts of -min(r A, clip(r) A), A = (R - mean) / std over 8 rollouts",
    {
        "rollout.n_rollouts": 8, "rollout.n_demos": 0,
        "objective.sft_demo": False, "objective.rl_demo": False, "objective.rl_self": True,
        "objective.w_rl": "constant", "objective.w_rl_coef": 1.0,
    },
))
register_preset(Preset(
    "sft",
    "SFT: token-mean NLL on the demonstrations only, no rollouts.",
    "L = token-mean over demonstration tokens of -log p",
    {
        "rollout.n_rollouts": 0, "rollout.n_demos": 1,
        "objective.sft_demo": True, "objective.w_sft": "constant", "objective.w_sft_coef": 1.0,
        "objective.rl_demo": False, "objective.rl_self": False,
    },
))
register_preset(Preset(
    "luffy",
    "LUFFY (arXiv 2504.14945): mixed group 7+1, unclipped on-policy term, shaped off-policy term, "
    "token sum / (n_seqs * L_max), entropy bonus 0.001, advantages not divided by std.",
    "L = [sum_roll -A r + sum_demo -A p/(p+0.1) - 0.001 sum_all H] / (N_seqs * L_max), A = R - mean(G_aug)",
    {
        "rollout.n_rollouts": 7, "rollout.n_demos": 1,
        "objective.sft_demo": False, "objective.rl_demo": True, "objective.demo_shaping_gamma": 0.1,
        "objective.rl_self": True, "objective.clip_eps": None, "objective.w_rl": "constant",
        "objective.w_rl_coef": 1.0, "objective.aggregation": "token-sum-norm", "objective.normalize_over": "batch",
        "objective.entropy_bonus": 0.001, "objective.adv_std_norm": False,
    },
))
register_preset(Preset(
    "rl_sft",
    "RL with an SFT loss (multi-task): GRPO on 8 rollouts per prompt plus 1.0 x NLL on the demonstration; "
    "the demonstration is not part of the advantage group.",
    "L = token-mean_roll -min(rA, clip(r)A) + token-mean_demo -log p, A over the 8 rollouts",
    {
        "rollout.n_rollouts": 8, "rollout.n_demos": 1, "objective.demos_in_group": False,
        "objective.sft_demo": True, "objective.w_sft": "constant", "objective.w_sft_coef": 1.0,
        "objective.rl_demo": False, "objective.rl_self": True, "objective.w_rl": "constant",
        "objective.w_rl_coef": 1.0,
    },
))

# Single-stage SFT + RL methods published after SRFT (issue 14; docs/results.md). Both train on 8
# rollouts + 1 demonstration per prompt, the budget of rl_sft, with the demonstration outside the
# advantage group.
register_preset(Preset(
    "hpt",
    "HPT / Unified Post-Training (arXiv 2509.04419): per prompt, if at most 0 of its 8 rollouts are correct "
    "the prompt trains by SFT on its demonstration, else by RL on its rollouts (A = R - mean, no std, no "
    "clip), entropy bonus 0.001. Deviation: the RL term is a token mean over the RL prompts' rollout tokens "
    "(HPT's script divides the sum by the padded length, 8192).",
    "per prompt g, c_g = #correct of 8 rollouts: c_g <= 0: token-mean_demo -log p; else token-mean_roll -A r; "
    "- 0.001 token-mean H (active tokens)",
    {
        "rollout.n_rollouts": 8, "rollout.n_demos": 1, "objective.demos_in_group": False,
        "objective.sft_demo": True, "objective.w_sft": "constant", "objective.w_sft_coef": 1.0,
        "objective.rl_demo": False, "objective.rl_self": True, "objective.w_rl": "constant",
        "objective.w_rl_coef": 1.0, "objective.sft_gate": 0, "objective.adv_std_norm": False,
        "objective.clip_eps": None, "objective.entropy_bonus": 0.001,
    },
))
_CHORD = {
    "rollout.n_rollouts": 8, "rollout.n_demos": 1, "objective.demos_in_group": False,
    "objective.sft_demo": True, "objective.w_sft": "constant", "objective.w_sft_coef": 1.0,
    "objective.rl_demo": False, "objective.rl_self": True, "objective.w_rl": "constant", "objective.w_rl_coef": 1.0,
    "objective.mix_schedule": "chord",
}
register_preset(Preset(
    "chord",
    "CHORD-mu (arXiv 2508.11408): (1 - mu) GRPO + mu SFT, mu decaying by a cosine from 0.9 to 0.05 (Trinity-RFT's "
    "chord-mu values). Guess: the decay spans the whole run (their configs give steps of runs of unknown length).",
    "L = (1 - mu_t) token-mean_roll -min(rA, clip(r)A) + mu_t token-mean_demo -log p, "
    "mu_t = 0.05 + 0.85 (1 + cos(pi t / T)) / 2",
    {**_CHORD, "objective.mu_peak": 0.9, "objective.mu_valley": 0.05, "objective.mu_warmup": 0.0,
     "objective.mu_decay": 1.0},
))
register_preset(Preset(
    "chord_phi",
    "CHORD-phi (arXiv 2508.11408): (1 - mu) GRPO + mu SFT with mu = 0.1 constant and the per-token weight "
    "phi = sg(p (1 - p)) on the SFT term (Trinity-RFT's defaults).",
    "L = 0.9 token-mean_roll -min(rA, clip(r)A) + 0.1 token-mean_demo -sg(p (1 - p)) log p",
    {**_CHORD, "objective.mu_peak": 0.1, "objective.mu_valley": 0.1, "objective.mu_warmup": 0.0,
     "objective.mu_decay": 0.0, "objective.sft_token_weight": "phi"},
))

register_preset(Preset(
    "sft_then_grpo",
    "SFT then GRPO (two stages): SFT on demonstrations for half of train.max_steps, then GRPO from the "
    "SFT model for the other half (fresh optimiser). Same optimiser steps as one-stage methods.",
    "stage 1: L_sft (the sft preset); stage 2: L_grpo (the grpo preset), starting from stage 1's final model",
    dict(PRESETS["grpo"].overrides),
    stages=(("sft", 0.5), ("grpo", 0.5)),
))

# Ablations of SRFT: one switch changed each (the paper's Table 4 and the paper/script differences).
SRFT_ABLATIONS = {
    "srft_wsft_fixed": ("w_SFT fixed to 1", {"objective.w_sft": "constant", "objective.w_sft_coef": 1.0}),
    "srft_wrl_fixed": ("w_RL fixed to 1", {"objective.w_rl": "constant", "objective.w_rl_coef": 1.0}),
    "srft_no_sft_demo": ("without L_SFT_demo", {"objective.sft_demo": False}),
    "srft_no_rl_demo": ("without L_RL_demo", {"objective.rl_demo": False}),
    "srft_sign_script": ("w_SFT = 0.5 sg(exp(+H)), the sign of the released script", {"objective.w_sft_sign": 1.0}),
    "srft_shaping": ("f(p) = p / (p + 0.1) on demonstrations (LUFFY's shaping)", {"objective.demo_shaping_gamma": 0.1}),
    "srft_entropy_token": ("H per token in the weights", {"objective.entropy_granularity": "token"}),
    "srft_entropy_sequence": ("H per sequence in the weights", {"objective.entropy_granularity": "sequence"}),
}
for _name, (_what, _over) in SRFT_ABLATIONS.items():
    register_preset(Preset(_name, f"SRFT ablation: {_what}.", f"the srft formula, {_what}", dict(_over)))


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
