"""Metric names, their formulas, and where they are written.

Every training step writes one JSON object to `metrics.jsonl`; with
`train.report_to` set, the same values go to TensorBoard or W&B through
accelerate's trackers. Names are namespaced; `METRICS` documents each one and
`docs/metrics.md` is generated from it (a test keeps the two equal).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

METRICS: dict[str, str] = {
    "step": "training step: one rollout batch (train.mini_batches x train.epochs_per_batch optimiser steps)",
    "train/stage": "stage of a multi-stage run (sft_then_grpo: 1 = SFT, 2 = GRPO); top-level metrics.jsonl only",
    "reward/mean": "mean reward of the on-policy rollouts of the step (demonstrations excluded)",
    "reward/demo": "mean reward of the demonstrations in the groups",
    "reward/accuracy": "share of rollouts with reward >= 1 (binary verifier: equals reward/mean)",
    "rewards/<function>/mean": "mean of one reward function's own values over the step's rollouts (TRL's name; "
                               "values it returned None for are left out)",
    "rewards/<function>/std": "standard deviation (Bessel-corrected) of one reward function's values over the "
                              "step's rollouts",
    "reward/none": "number of samples the reward function returned None for (scored 0)",
    "reward/timeouts": "number of completions scored 0 because a reward function's call did not return within "
                       "data.reward_timeout",
    "advantage/zero_groups": "share of groups whose rewards are all equal (A = 0 for all their samples)",
    "entropy/rollout": "mean token entropy H = -sum_v p log p over rollout tokens, before the update (as the sampler "
                       "computed it, in one-pass on-policy mode)",
    "entropy/demo": "mean token entropy over demonstration tokens, before the update (in the update's own forward, "
                    "in one-pass mode)",
    "weight/sft": "mean w_SFT over demonstration tokens (0.5 sg(exp(-H)) for srft, Eq. 8)",
    "weight/rl": "mean w_RL over rollout tokens (0.1 sg(exp(H)) for srft, Eq. 12; applied where A > 0)",
    "weight/phi": "mean sg(p (1 - p)) over demonstration tokens (objective.sft_token_weight phi, CHORD-phi)",
    "weight/mu": "CHORD's SFT weight mu at the step: L = (1 - mu) L_RL_self + mu L_SFT_demo (losses.chord_mu)",
    "gate/sft_share": "HPT: share of the step's prompts with at most objective.sft_gate correct rollouts, trained "
                      "by SFT on their demonstration (the others by RL on their rollouts)",
    "loss/total": "the objective: sum of the loss/* terms present",
    "loss/sft_demo": "L_SFT_demo = agg(w_SFT * -log p) over demonstration tokens",
    "loss/nll_demo": "unweighted token-mean NLL of the demonstrations, -mean log p",
    "loss/rl_demo": "L_RL_demo = agg(-A f(p)) over demonstration tokens, f(p) = p or p/(p+gamma)",
    "loss/rl_self": "L_RL_self = agg(w * -min(rA, clip(r)A)) over rollout tokens",
    "loss/entropy_bonus": "-c * agg(H) over all response tokens with the run's aggregation (token-mean: -c * mean H; "
                          "as LUFFY's verl agg_loss); only when objective.entropy_bonus > 0",
    "policy/clip_frac": "share of rollout tokens where the clipped branch of the surrogate was taken",
    "policy/ratio_mean": "mean ratio r = pi / pi_old over rollout tokens",
    "policy/grad_norm": "global gradient norm before clipping (mean over the step's optimiser steps)",
    "response_length/mean": "mean rollout length in tokens (EOS included)",
    "response_length/max": "longest rollout in tokens",
    "response_length/clip_ratio": "share of rollouts that hit rollout.max_new_tokens without EOS",
    "response_length/demo": "mean demonstration length in tokens (EOS included)",
    "time/rollout": "seconds generating rollouts, the weight sync included (time/* are the main process's; all ranks "
                    "wait for each other)",
    "time/weight_sync": "seconds making the rollout engine sample from the current weights (0 for hf, which shares the "
                        "trainer's model; vllm: in-memory load plus the probe check)",
    "time/reward": "seconds scoring rollouts and demonstrations",
    "time/old_logprob": "seconds in the no-grad pass giving pi_old and the entropies (0 in one-pass on-policy mode)",
    "time/update": "seconds in forward/backward/optimiser steps",
    "time/step": "seconds for the whole step",
    "throughput/rollout_tokens_per_s": "generated tokens / time/rollout",
    "throughput/train_tokens_per_s": "prompt+response tokens through forward/backward / time/update",
    "throughput/tokens_per_s": "(generated + trained tokens) / time/step",
    "optim/lr": "learning rate used at this step",
    "rollout/logprob_gap": "mean over rollout tokens of |log pi_old - log mu| (mu: the rollout engine's own log-prob of the "
                           "sampled token; pi_old: the trainer's, before the update)",
    "rollout/max_ratio": "max over rollout tokens (all processes) of exp(log pi_old - log mu)",
    "rollout/is_weight_mean": "mean over rollout tokens of the truncated importance weight min(exp(log pi_old - log mu), "
                              "rollout.is_cap) (only with rollout.is_correction on)",
    "rollout/sync_check_gap": "vllm engine: max |log-prob difference| between vLLM and the trainer on a fixed probe "
                              "sequence right after the step's weight sync (must stay under rollout.vllm_sync_tol)",
    "train/pad_fraction": "1 - real tokens / padded (B x T) positions over the update's micro-batches "
                          "(train.micro_batch_grouping lowers it)",
    "memory/peak_allocated_gib": "peak GPU memory allocated by torch during the step, GiB, max over ranks (GPU runs only)",
    "dist/world_size": "number of training processes (ranks); every other metric is over all of them",
    "optim/skipped_updates": "optimiser updates skipped this step because the loss or gradient was not finite",
    "rollout/think_share": "share of the step's rollouts that close a </think> block (the demonstrations' format on "
                           "the testbed and in the paper's prompts); `srft experiment` reads it to tell an entropy "
                           "change from a change of format",
    "eval/<set>/accuracy": "avg@k accuracy on an evaluation set scored by a verifier (written on evaluation steps; "
                           "the evaluation before training goes to the trackers at step 0)",
    "eval/<set>/reward": "mean reward on an evaluation set scored by a reward that is not a built-in verifier "
                         "(mean over problems of the mean over k samples; not a percentage)",
}


def doc_for(name: str) -> Optional[str]:
    if name in METRICS:
        return METRICS[name]
    if name.startswith("eval/"):
        return METRICS["eval/<set>/reward" if name.endswith("/reward") else "eval/<set>/accuracy"]
    if name.startswith("rewards/") and name.rsplit("/", 1)[-1] in ("mean", "std"):
        return METRICS[f"rewards/<function>/{name.rsplit('/', 1)[-1]}"]
    return None


def metrics_markdown() -> str:
    lines = ["# Metrics", "", "Written once per step to `metrics.jsonl` (and TensorBoard / W&B with "
             "`--train.report_to`). Generated from `srft/metrics.py`.", "", "| name | formula / meaning |",
             "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in METRICS.items()]
    return "\n".join(lines) + "\n"


class MetricsWriter:
    """Appends one JSON object per step; forwards to accelerate trackers."""

    def __init__(self, path: Path, accelerator=None, use_trackers: bool = False, enabled: bool = True):
        """enabled: False in processes other than the main one (they write nothing)."""
        self.path = Path(path)
        self.accelerator = accelerator
        self.use_trackers = use_trackers
        self.enabled = enabled

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step}
        for k, v in values.items():
            v = float(v) if not isinstance(v, (str, bool)) else v
            row[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.use_trackers and self.accelerator is not None:
            self.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"},
                                 step=step)


    def log_trackers(self, step: int, values: dict[str, float]) -> None:
        """Values for the trackers only (not a metrics.jsonl row): the evaluation before training."""
        if self.enabled and self.use_trackers and self.accelerator is not None and values:
            self.accelerator.log({k: float(v) for k, v in values.items()}, step=step)


def truncate_metrics(path: Path, last_step: int, one_row_per_step: bool = True) -> int:
    """Keep the rows of steps <= last_step (a resumed run goes on from there), dropping
    later rows and a line cut short by a crash (and, with `one_row_per_step`, repeated
    steps); rewritten atomically. Returns the rows kept."""
    p = Path(path)
    kept, seen = [], set()
    for line in (p.read_text(errors="replace").splitlines() if p.exists() else []):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, int) and step <= last_step and not (one_row_per_step and step in seen):
            seen.add(step)
            kept.append(line + "\n")
    tmp = p.with_name(f".tmp-{p.name}")
    tmp.write_text("".join(kept))
    os.replace(tmp, p)
    return len(kept)


def read_metrics(path: Path) -> list[dict]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


if __name__ == "__main__":  # python -m srft.metrics > docs/metrics.md
    print(metrics_markdown(), end="")
