"""Evaluation: accuracy of a model on held-out sets.

For each problem, k completions are sampled (greedy when temperature is 0, in
which case k is 1) and scored by the reward function. Reported per set:

- `accuracy` = avg@k = mean over problems of (correct samples / k)   (pass@1 when k = 1)
- `pass@k`   = share of problems with at least one correct sample
- `mean_length` = mean completion length in tokens

The testbed's sets are its in-distribution test set (`id_chain3`) and its
out-of-distribution sets (`ood_chain4`, `ood_chain5`); see `srft.testbed.tasks`.
"""

from __future__ import annotations

import time
from typing import Optional

from srft.data import encode_prompt
from srft.rewards import score_completions
from srft.rollout.base import SamplingParams


def testbed_eval_sets(limit: Optional[int] = None) -> dict[str, list[dict]]:
    from srft.testbed.tasks import build_splits

    sets = build_splits(0).test
    return {k: (v[:limit] if limit else v) for k, v in sets.items()}


def evaluate(model, tokenizer, sets: dict[str, list[dict]], reward_fn, eval_cfg, engine=None, seed: int = 0) -> dict:
    """Evaluate on every set; returns {set: {"accuracy", "pass@k", "n", "k", "mean_length"}}."""
    from srft.rollout.hf import HFRolloutEngine, stop_token_ids

    engine = engine or HFRolloutEngine(model, tokenizer.pad_token_id, stop_token_ids(model, tokenizer),
                                       eval_cfg.batch_size)
    k = 1 if not eval_cfg.temperature else max(1, eval_cfg.k)
    params = SamplingParams(
        max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p
    )
    results = {}
    for name, rows in sets.items():
        t0 = time.time()
        prompt_ids = [encode_prompt(tokenizer, r["prompt"]) for r in rows for _ in range(k)]
        out = engine.generate(prompt_ids, params, seed=seed)
        completions = [
            tokenizer.decode(ids[m.bool()], skip_special_tokens=True)
            for ids, m in zip(out.response_ids, out.response_mask)
        ]
        cols = {c: [r.get(c) for r in rows for _ in range(k)] for c in rows[0] if c != "prompt"}
        prompts = [r["prompt"] for r in rows for _ in range(k)]
        rewards, _ = score_completions(reward_fn, prompts, completions, cols)
        per_problem = [rewards[i * k : (i + 1) * k] for i in range(len(rows))]
        results[name] = {
            "accuracy": sum(sum(p) / k for p in per_problem) / len(rows),
            f"pass@{k}": sum(any(x >= 1.0 for x in p) for p in per_problem) / len(rows),
            "n": len(rows),
            "k": k,
            "mean_length": float(out.lengths.float().mean()),
            "seconds": round(time.time() - t0, 2),
            "samples": [{"prompt": prompts[i], "completion": completions[i], "reward": rewards[i]}
                        for i in range(min(3, len(completions)))],
        }
    return results


def format_table(before: dict, after: Optional[dict] = None) -> str:
    """Markdown table of accuracy per set, base vs trained."""
    lines = ["| set | base | trained | change |", "|---|---|---|---|"] if after else [
        "| set | accuracy |", "|---|---|"]
    for name in before:
        b = before[name]["accuracy"] * 100
        if after:
            a = after[name]["accuracy"] * 100
            lines.append(f"| {name} | {b:.1f} | {a:.1f} | {a - b:+.1f} |")
        else:
            lines.append(f"| {name} | {b:.1f} |")
    return "\n".join(lines)
