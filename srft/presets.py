"""The preset registry: every method srft trains is a named setting of the objective's
switches (`srft.config.ObjectiveConfig`) and of the run's shape (rollouts and demonstrations
per group), never another copy of a loss. `srft presets` prints each one's formula; the
switches and the terms they turn on are `srft.objective.compute_loss`'s.

Pure data: importable without torch (the config's flag parser reads the names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    "srft_paper",
    "SRFT with the paper's L_RL_self (rewards in {+1, -1}) as the HPT authors' reimplementation writes it: "
    "REINFORCE on rollouts (no ratio, clip or group normalisation), a correct rollout weighted +0.1 sg(e^H), a "
    "wrong one -1, H each response's own token-mean entropy (detached); the demonstration in the group with "
    "mean-only advantages, LUFFY's shaping p/(p+0.1) and 0.5 sg(e^-H) NLL; token sum / (n_seqs * L_max); "
    "entropy bonus 0.001.",
    "L = [sum_demo (0.5 sg(e^-H) NLL - A p/(p+0.1)) + sum_roll -a log pi - 0.001 sum_all H] / (N_seqs L_max), "
    "a = +0.1 sg(e^H) if correct else -1, A = R - mean(G_aug)",
    {
        "rollout.n_rollouts": 7, "rollout.n_demos": 1,
        "objective.sft_demo": True, "objective.w_sft": "entropy", "objective.w_sft_coef": 0.5,
        "objective.w_sft_sign": -1.0, "objective.rl_demo": True, "objective.demo_shaping_gamma": 0.1,
        "objective.rl_self": True, "objective.w_rl": "entropy", "objective.w_rl_coef": 0.1,
        "objective.w_rl_sign": 1.0, "objective.rollout_advantage": "signed", "objective.rl_self_form": "reinforce",
        "objective.clip_eps": None, "objective.entropy_granularity": "sequence", "objective.adv_std_norm": False,
        "objective.demos_in_group": True, "objective.aggregation": "token-sum-norm",
        "objective.normalize_over": "batch", "objective.entropy_bonus": 0.001,
    },
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
    "sft_filtered",
    "SFT on verifier-filtered demonstrations: token-mean NLL on the demonstrations the reward credits "
    "(reward >= 1) only; the baseline for an imperfect teacher.",
    "L = token-mean over tokens of credited demonstrations of -log p",
    {
        "rollout.n_rollouts": 0, "rollout.n_demos": 1,
        "objective.sft_demo": True, "objective.w_sft": "constant", "objective.w_sft_coef": 1.0,
        "objective.rl_demo": False, "objective.rl_self": False, "objective.demo_filter": True,
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
