"""Evaluation on real benchmarks in the verl / LUFFY parquet layout.

    srft eval --model M --benchmark FILE.parquet [--k K] [--limit N] [--temperature 0.6]
              [--max-new-tokens T] [--output-dir DIR]

The file has one row per problem or per repeated copy: `data_source`, `prompt`
(a list of chat messages), `reward_model.ground_truth`. Repeated copies (the
AIME / AMC rows of LUFFY's files are repeated x8 / x4 so that one pass gives
avg@k) are deduplicated by (data_source, prompt); k is a parameter instead.

For each unique problem k completions are sampled and scored by the math
verifier (`srft.math_reward`: last \\boxed{} after </think>, math-verify
equivalence, multiple-choice letters). Reported per source and overall:

- avg@k  = mean over problems of (correct samples / k); with k = 1 this is pass@1
           (and for k > 1 it is the unbiased estimate of pass@1 from k samples);
- pass@k = share of problems with at least one correct sample.

"overall" is the mean over problems (micro average); "sources mean" is the mean of
the per-source avg@k (the paper's "average" column).
`--limit N` keeps the first N unique problems of each source.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional


def load_benchmark(path, limit: Optional[int] = None) -> list[dict]:
    """Unique problems of a verl-layout parquet file: {source, prompt, answer, copies}."""
    import pandas as pd

    from srft.data import to_plain

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--benchmark: no such file {path}")
    try:
        df = pd.read_parquet(p)
    except Exception as e:  # unreadable parquet
        raise ValueError(f"--benchmark {path}: cannot read parquet: {e}") from None
    for col in ("prompt", "reward_model"):
        if col not in df.columns:
            raise ValueError(f"--benchmark {path}: column {col!r} missing (verl layout needs prompt, "
                             f"reward_model.ground_truth); columns: {list(df.columns)}")
    seen: dict[tuple, dict] = {}
    per_source: dict[str, int] = {}
    for i, row in enumerate(df.to_dict("records")):
        prompt = to_plain(row["prompt"])
        rm = to_plain(row["reward_model"])
        gt = rm.get("ground_truth") if isinstance(rm, dict) else None
        if gt is None or str(gt).strip() == "":
            raise ValueError(f"--benchmark {path}: row {i}: reward_model.ground_truth is missing or empty")
        source = str(row.get("data_source", "unknown"))
        key = (source, json.dumps(prompt, sort_keys=True))
        if key in seen:
            seen[key]["copies"] += 1
            continue
        if limit is not None and per_source.get(source, 0) >= limit:
            continue
        per_source[source] = per_source.get(source, 0) + 1
        seen[key] = {"source": source, "prompt": prompt, "answer": str(gt), "copies": 1}
    return list(seen.values())


def evaluate_benchmark(model, tokenizer, problems: list[dict], k: int = 1, temperature: float = 0.6,
                       top_p: float = 1.0, max_new_tokens: int = 1024, batch_size: int = 64, seed: int = 0,
                       engine=None, log=print) -> dict:
    from srft.data import encode_prompt
    from srft.math_reward import math_reward
    from srft.rollout.base import SamplingParams
    from srft.rollout.hf import HFRolloutEngine, stop_token_ids

    engine = engine or HFRolloutEngine(model, tokenizer.pad_token_id, stop_token_ids(model, tokenizer), batch_size)
    k = 1 if not temperature else max(1, k)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    t0 = time.time()
    prompt_ids = [encode_prompt(tokenizer, p["prompt"]) for p in problems for _ in range(k)]
    out = engine.generate(prompt_ids, params, seed=seed)
    gen_s = time.time() - t0
    completions = [tokenizer.decode(ids[m.bool()], skip_special_tokens=True)
                   for ids, m in zip(out.response_ids, out.response_mask)]
    golds = [p["answer"] for p in problems for _ in range(k)]
    t1 = time.time()
    rewards = math_reward([p["prompt"] for p in problems for _ in range(k)], completions, answer=golds)
    score_s = time.time() - t1
    per_problem = []
    for i, p in enumerate(problems):
        rs = rewards[i * k : (i + 1) * k]
        per_problem.append({"source": p["source"], "answer": p["answer"], "avg": sum(rs) / k,
                            "any": float(any(r >= 1.0 for r in rs)), "completion": completions[i * k]})
    sources = sorted({p["source"] for p in per_problem})

    def summary(items):
        return {f"avg@{k}": sum(x["avg"] for x in items) / len(items),
                f"pass@{k}": sum(x["any"] for x in items) / len(items), "n": len(items)}

    result = {
        "k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
        "per_source": {s: summary([x for x in per_problem if x["source"] == s]) for s in sources},
        "overall": summary(per_problem),
        "generated_tokens": int(out.response_mask.sum()),
        "truncated": float((~out.finished).float().mean()),
        "seconds": {"generate": round(gen_s, 1), "score": round(score_s, 1)},
        "problems": per_problem,
    }
    result["sources_mean"] = sum(v[f"avg@{k}"] for v in result["per_source"].values()) / len(sources)
    return result


def format_benchmark_table(result: dict) -> str:
    k = result["k"]
    lines = [f"| source | n | avg@{k} (%) | pass@{k} (%) |", "|---|---|---|---|"]
    for s, v in result["per_source"].items():
        lines.append(f"| {s} | {v['n']} | {100 * v[f'avg@{k}']:.1f} | {100 * v[f'pass@{k}']:.1f} |")
    o = result["overall"]
    lines.append(f"| overall | {o['n']} | {100 * o[f'avg@{k}']:.1f} | {100 * o[f'pass@{k}']:.1f} |")
    lines.append(f"| sources mean | | {100 * result['sources_mean']:.1f} | |")
    return "\n".join(lines)
