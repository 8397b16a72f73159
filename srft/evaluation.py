"""Evaluation: accuracy of a model on held-out sets.

For each problem, k completions are sampled (greedy when temperature is 0, in
which case k is 1) and scored by the reward function. Reported per set:

- `accuracy` = avg@k = mean over problems of (correct samples / k)   (pass@1 when k = 1)
- `pass@k`   = share of problems with at least one correct sample
- `mean_length` = mean completion length in tokens
- `truncated` = share of samples that hit the token budget before their end token

The testbed's sets are its in-distribution test set (`id_chain4`) and its
out-of-distribution sets (`ood_mc4`, `ood_mc5`: multiple choice); see `srft.testbed.tasks`.

With several processes (`dist`, a `srft.distributed.Dist`) each rank generates and
scores its share of the problems (problem i on rank i % world, padded so that every
rank runs as many batches), and the per-problem results are gathered on every rank.
Sample j of problem i is seeded from (seed, set, i, j), so the results do not depend
on the number of processes.
"""

from __future__ import annotations

import time
from typing import Optional

from srft.data import encode_prompt
from srft.distributed import Dist
from srft.rewards import score_completions
from srft.rollout import make_engine
from srft.rollout.base import RolloutOutput, SamplingParams, derive_seed
from srft.testbed.tasks import build_splits


def testbed_eval_sets(limit: Optional[int] = None) -> dict[str, list[dict]]:
    sets = build_splits(0).test
    return {k: (v[:limit] if limit else v) for k, v in sets.items()}


def evaluate(model, tokenizer, sets: dict[str, list[dict]], reward_fn, eval_cfg, engine=None, seed: int = 0,
             dist=None, system_prompt: Optional[str] = None, chat: str = "auto", state=None,
             progress: bool = False, details: bool = False, metric: str = "accuracy") -> dict:
    """Evaluate on every set; returns {set: {"accuracy", "pass@k", "n", "k", "mean_length", "truncated"}}
    (the same on every rank). Prompts are encoded as in training (`system_prompt`, `chat`);
    `state` (a srft.rewards.RewardState) is the rewards' `trainer_state`.

    progress: generate in chunks of `eval_cfg.batch_size` sequences with a progress bar (main
    rank); the samples do not change (each has its own seed). details: add "per_problem", one
    {"avg", "any", "length", "completion"} per problem (the first sample's completion).
    metric: "accuracy" for a verifier's 0/1 scores; "reward" for any other reward, whose mean is
    reported as a mean reward (no pass@k, never a percentage)."""
    dist = dist or Dist()
    engine = engine or make_engine("hf", model, tokenizer, batch_size=eval_cfg.batch_size)
    k = 1 if not eval_cfg.temperature else max(1, eval_cfg.k)
    params = SamplingParams(
        max_new_tokens=eval_cfg.max_new_tokens, temperature=eval_cfg.temperature, top_p=eval_cfg.top_p
    )
    results = {}
    for name, rows in sets.items():
        t0 = time.time()
        own, n_real = dist.padded_shard(len(rows))
        prompt_ids = [encode_prompt(tokenizer, rows[i]["prompt"], system_prompt, chat) for i in own for _ in range(k)]
        seeds = [derive_seed(seed, "eval", name, i, j) for i in own for j in range(k)]
        out = _generate(engine, prompt_ids, params, seeds, tokenizer.pad_token_id,
                        eval_cfg.batch_size if progress else None,
                        f"{name} ({len(rows)} x {k})" if progress and dist.is_main else None)
        n_local = n_real * k  # the padding rows (repeats) are dropped
        completions = [
            tokenizer.decode(ids[m.bool()], skip_special_tokens=True)
            for ids, m in zip(out.response_ids[:n_local], out.response_mask[:n_local])
        ]
        real = [rows[i] for i in own[:n_real]]
        # the reward sees what it sees in training: every column but the prompt and demonstration
        cols = {c: [r.get(c) for r in real for _ in range(k)] for c in rows[0] if c not in ("prompt", "demonstration")}
        prompts = [r["prompt"] for r in real for _ in range(k)]
        ids = [x[m.bool()].tolist() for x, m in zip(out.response_ids[:n_local], out.response_mask[:n_local])]
        rewards, _ = (score_completions(reward_fn, prompts, completions, cols, completion_ids=ids, state=state)
                      if real else ([], 0))
        lengths = out.lengths[:n_local].tolist()
        finished = out.finished[:n_local].tolist()
        local = [(i, rewards[a * k : (a + 1) * k], lengths[a * k : (a + 1) * k],
                  [{"prompt": prompts[a * k + j], "completion": completions[a * k + j], "reward": rewards[a * k + j]}
                   for j in range(k)] if i < 3 else [],
                  sum(not f for f in finished[a * k : (a + 1) * k]),
                  completions[a * k] if details else None)
                 for a, i in enumerate(own[:n_real])]
        results[name] = _summarise(sorted(dist.gather(local), key=lambda x: x[0]), len(rows), k, details, metric)
        results[name]["seconds"] = round(time.time() - t0, 2)
    return results


def _summarise(per_problem: list, n: int, k: int, details: bool, metric: str = "accuracy") -> dict:
    """One set's scores from every problem's (index, rewards, lengths, samples, truncated, completion)."""
    flat_samples = [s for p in per_problem for s in p[3]]
    res = {
        metric: sum(sum(p[1]) / k for p in per_problem) / n,
        **({f"pass@{k}": sum(any(x >= 1.0 for x in p[1]) for p in per_problem) / n} if metric == "accuracy" else
           {"metric": metric}),
        "n": n,
        "k": k,
        "mean_length": float(sum(sum(p[2]) for p in per_problem) / max(1, n * k)),
        "truncated": float(sum(p[4] for p in per_problem) / max(1, n * k)),
        "seconds": 0.0,
        "samples": flat_samples[:3],
    }
    if details:
        res["per_problem"] = [{"avg": sum(p[1]) / k, "any": float(any(x >= 1.0 for x in p[1])),
                               "length": sum(p[2]) / k, "completion": p[5]} for p in per_problem]
    return res


def _generate(engine, prompt_ids: list, params, seeds: list, pad_id: int, chunk: Optional[int],
              desc: Optional[str]):
    """engine.generate over all prompts, or over chunks of `chunk` with a progress bar titled `desc`
    (None: no bar, e.g. on the other ranks, which still run the same chunks)."""
    if not chunk or len(prompt_ids) <= chunk:
        return engine.generate(prompt_ids, params, seed=seeds)
    from tqdm.auto import tqdm

    parts = []
    with tqdm(total=len(prompt_ids), desc=desc, unit="seq", disable=desc is None, leave=False) as bar:
        for a in range(0, len(prompt_ids), chunk):
            parts.append(engine.generate(prompt_ids[a : a + chunk], params, seed=seeds[a : a + chunk]))
            bar.update(len(prompt_ids[a : a + chunk]))
    return RolloutOutput.concat(parts, pad_id)


def eval_score(result: dict) -> tuple[str, float]:
    """("accuracy", value) or ("reward", value) of one set's results (`evaluate`)."""
    metric = result.get("metric", "accuracy")
    return metric, result[metric]


def eval_metrics(results: dict) -> dict[str, float]:
    """{"eval/<set>/accuracy" or "eval/<set>/reward": value} of `evaluate`'s results."""
    return {f"eval/{name}/{eval_score(r)[0]}": eval_score(r)[1] for name, r in results.items()}


def format_table(before: dict, after: Optional[dict] = None) -> str:
    """Markdown table per set, base vs trained: accuracy in %, a mean reward as it is ("(reward)")."""
    lines = ["| set | base | trained | change |", "|---|---|---|---|"] if after else [
        "| set | accuracy |", "|---|---|"]
    for name in before:
        metric, b = eval_score(before[name])
        scale, fmt, label = (100, ".1f", name) if metric == "accuracy" else (1, ".3f", f"{name} (mean reward)")
        if after:
            a = eval_score(after[name])[1] * scale
            lines.append(f"| {label} | {b * scale:{fmt}} | {a:{fmt}} | {a - b * scale:+{fmt}} |")
        else:
            lines.append(f"| {label} | {b * scale:{fmt}} |")
    return "\n".join(lines)
