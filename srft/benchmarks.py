"""Benchmark files: loading (verl parquet, GPQA, MMLU-Pro), multiple-choice option
shuffling, and evaluation of one file with one setting.

    srft eval --model M --benchmark FILE [FILE ...] [--k K] [--limit N] [--temperature 0.6]
              [--max-new-tokens T] [--output-dir DIR]
    srft eval --model M --protocol srft --benchmark FILE [FILE ...]     (see srft.protocol)

Layouts read (`load_problems` detects them from the columns):

- verl / LUFFY parquet: one row per problem or per repeated copy: `data_source`,
  `prompt` (a list of chat messages), `reward_model.ground_truth`. Repeated copies
  (the AIME / AMC rows of LUFFY's files are repeated x8 / x4 so that one pass gives
  avg@k) are deduplicated by (data_source, prompt); k is a parameter instead.
- GPQA (the release's CSV, e.g. `gpqa_diamond.csv`): `Question`, `Correct Answer`,
  `Incorrect Answer 1..3`. The release has no option order (the correct answer is a
  column), so its four options are always shuffled with the fixed seed. Source name:
  `gpqa_diamond` when the file name says diamond, else `gpqa`.
- MMLU-Pro (the release's parquet / jsonl, TIGER-Lab/MMLU-Pro): `question`, `options`
  (a list of up to 10), `answer` (a letter A-J). Source name `mmlu_pro`.

GPQA and MMLU-Pro rows get the prompt layout of the verl multiple-choice files (the
question, a blank line, one ``A) option`` line per option) as the user message, after
`system_prompt` when given (`srft.protocol` passes the system message of the verl files
evaluated with them, so every source sees the same instruction).

Option shuffling (`shuffle_options`): the options of a multiple-choice prompt (a final
block of lines ``A) ...``, ``B) ...`` or ``1) ...``, ``2) ...`` in the last user
message) are permuted with a generator seeded from (seed, source, problem index), the
labels rewritten in order and the ground truth moved to the correct option's new
label. The same seed gives the same prompts on every machine and process count.
A prompt whose options cannot be found is kept as is and counted (`unshuffled`).

Scoring: the math verifier (`srft.math_reward`: last \\boxed{} after </think>,
math-verify equivalence, multiple-choice letters; `multi_box` scores answers split
over several boxes the way math-verify does). Reported per source and overall:

- avg@k  = mean over problems of (correct samples / k); with k = 1 this is pass@1
           (and for k > 1 it is the unbiased estimate of pass@1 from k samples);
- pass@k = share of problems with at least one correct sample.

"overall" is the mean over problems (micro average); "sources mean" is the mean of
the per-source avg@k (the paper's "average" column).
`limit` keeps the first N unique problems of each source.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Optional

from srft.config import EvalConfig
from srft.data import to_plain
from srft.evaluation import evaluate
from srft.math_reward import make_math_reward
from srft.rollout import make_engine
from srft.rollout.base import derive_seed


LETTERS = "ABCDEFGHIJ"
_OPTION_RE = re.compile(r"([A-J]|[1-9])\)\s?(.*)")


def load_benchmark(path, limit: Optional[int] = None) -> list[dict]:
    """Unique problems of a verl-layout parquet file: {source, prompt, answer, copies, index}."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--benchmark: no such file {path}")
    try:
        df = pd.read_parquet(p)
    except Exception as e:  # unreadable parquet
        raise ValueError(f"--benchmark {path}: cannot read parquet: {e}") from None
    return _verl_problems(df, path, limit)


def _verl_problems(df, path, limit: Optional[int]) -> list[dict]:
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
        seen[key] = {"source": source, "prompt": prompt, "answer": str(gt), "copies": 1,
                     "index": per_source.get(source, 0)}
        per_source[source] = per_source.get(source, 0) + 1
    return list(seen.values())


def choice_prompt(question: str, options: list[str], system_prompt: Optional[str] = None) -> list[dict]:
    """The verl multiple-choice layout: question, blank line, one ``A) option`` line each."""
    body = question.strip() + "\n\n" + "".join(f"{LETTERS[i]}) {str(o).strip()}\n" for i, o in enumerate(options))
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": body}]


def load_gpqa(path, limit: Optional[int] = None, system_prompt: Optional[str] = None, seed: int = 0) -> list[dict]:
    """GPQA's release CSV: the correct answer and three incorrect ones, shuffled with `seed`."""
    import pandas as pd

    df = pd.read_csv(path)
    need = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"--benchmark {path}: GPQA layout needs columns {need}; missing {missing}")
    source = "gpqa_diamond" if "diamond" in Path(path).name.lower() else "gpqa"
    out = []
    for i, row in enumerate(df.to_dict("records")):
        if limit is not None and len(out) >= limit:
            break
        cells = [row[c] for c in need]
        if any(c is None or (isinstance(c, float) and c != c) or not str(c).strip() for c in cells):
            raise ValueError(f"--benchmark {path}: row {i}: an empty cell in {need}")
        prob = {"source": source, "prompt": choice_prompt(str(cells[0]), [str(c) for c in cells[1:]], system_prompt),
                "answer": "A", "copies": 1, "index": len(out), "built": True}
        out.append(shuffle_options(prob, seed) or prob)  # the release has no order: always shuffled
    return out


def load_mmlu_pro(df, path, limit: Optional[int] = None, system_prompt: Optional[str] = None) -> list[dict]:
    """MMLU-Pro's release (question, options, answer letter)."""
    out = []
    for i, row in enumerate(df.to_dict("records")):
        if limit is not None and len(out) >= limit:
            break
        options = to_plain(row["options"])
        ans = str(row["answer"]).strip()
        if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
            raise ValueError(f"--benchmark {path}: row {i}: options must be a list of 2 to 10 strings")
        if len(ans) != 1 or ans not in LETTERS[: len(options)]:
            raise ValueError(f"--benchmark {path}: row {i}: answer {ans!r} is not a letter of its "
                             f"{len(options)} options")
        out.append({"source": "mmlu_pro", "prompt": choice_prompt(str(row["question"]), options, system_prompt),
                    "answer": ans, "copies": 1, "index": len(out), "built": True})
    return out


def load_problems(path, limit: Optional[int] = None, system_prompt: Optional[str] = None,
                  seed: int = 0) -> list[dict]:
    """Unique problems of a benchmark file in any layout above, detected from its columns."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--benchmark: no such file {path}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            return load_gpqa(p, limit, system_prompt, seed)
        if suffix in (".jsonl", ".json"):
            df = pd.read_json(p, lines=suffix == ".jsonl")
        else:
            df = pd.read_parquet(p)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as e:  # unreadable file
        raise ValueError(f"--benchmark {path}: cannot read {suffix or 'the file'}: {e}") from None
    cols = set(df.columns)
    if {"prompt", "reward_model"} <= cols:
        return _verl_problems(df, path, limit)
    if {"question", "options", "answer"} <= cols:
        return load_mmlu_pro(df, path, limit, system_prompt)
    raise ValueError(f"--benchmark {path}: unknown layout (columns {sorted(cols)}); expected the verl layout "
                     "(data_source, prompt, reward_model.ground_truth), GPQA's CSV (Question, Correct Answer, "
                     "Incorrect Answer 1-3) or MMLU-Pro's (question, options, answer)")


def split_options(text: str) -> Optional[tuple[str, list[str], list[str], str]]:
    """(stem, labels, options, tail) of a final block of option lines ``A) ...`` / ``1) ...``
    (labels consecutive from A or 1), or None when the text has no such block."""
    lines = text.split("\n")
    end = len(lines)
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and _OPTION_RE.fullmatch(lines[start - 1]):
        start -= 1
    labels = [_OPTION_RE.fullmatch(x).group(1) for x in lines[start:end]]
    if len(labels) < 2:
        return None
    first = labels[0]
    seq = LETTERS if first == "A" else "123456789" if first == "1" else None
    if seq is None or labels != list(seq[: len(labels)]):
        return None
    options = [_OPTION_RE.fullmatch(x).group(2) for x in lines[start:end]]
    return "\n".join(lines[:start]), labels, options, "\n".join(lines[end:])


def shuffle_options(problem: dict, seed: int) -> Optional[dict]:
    """A copy of `problem` with its options permuted and its answer relabelled, or None when the
    prompt has no option block or the answer is not one of its labels."""
    prompt = problem["prompt"]
    msgs = [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
    if not users:
        return None
    parts = split_options(str(msgs[users[-1]]["content"]))
    answer = str(problem["answer"]).strip().strip("()")
    if parts is None or answer not in parts[1]:
        return None
    stem, labels, options, tail = parts
    order = list(range(len(options)))
    random.Random(derive_seed(seed, "options", problem["source"], problem.get("index", 0))).shuffle(order)
    lines = "".join(f"{labels[j]}) {options[i]}\n" for j, i in enumerate(order))
    msgs[users[-1]]["content"] = stem + "\n" + lines + tail
    new_answer = labels[order.index(labels.index(answer))]
    return {**problem, "prompt": msgs if isinstance(prompt, list) else msgs[users[-1]]["content"],
            "answer": new_answer, "shuffled": True}


def by_source(problems: list[dict]) -> dict[str, list[dict]]:
    """Problems grouped by source, sources in order of first appearance."""
    out: dict[str, list[dict]] = {}
    for p in problems:
        out.setdefault(p["source"], []).append(p)
    return out


def source_summary(res: dict) -> dict:
    """One source's evaluate() result in the benchmark's terms (avg@k, pass@k, n, ...)."""
    k = res["k"]
    return {f"avg@{k}": res["accuracy"], f"pass@{k}": res[f"pass@{k}"], "n": res["n"]}


def evaluate_benchmark(model, tokenizer, problems: list[dict], k: int = 1, temperature: float = 0.6,
                       top_p: float = 1.0, max_new_tokens: int = 1024, batch_size: int = 64, seed: int = 0,
                       engine=None, dist=None, multi_box: bool = False, progress: bool = False) -> dict:
    """Every source of `problems` with one setting, through `srft.evaluation.evaluate` (the rollout
    engine given, else transformers; problems sharded over the ranks of `dist`)."""
    k = 1 if not temperature else max(1, k)
    cfg = EvalConfig(temperature=temperature, top_p=top_p, k=k, max_new_tokens=max_new_tokens,
                     batch_size=batch_size)
    if engine is None:
        engine = make_engine("hf", model, tokenizer, batch_size=batch_size)
    sets = {s: [{"prompt": p["prompt"], "answer": p["answer"]} for p in ps] for s, ps in by_source(problems).items()}
    raw = evaluate(model, tokenizer, sets, make_math_reward(multi_box), cfg, engine=engine, seed=seed, dist=dist,
                   progress=progress, details=True)
    per_problem = [dict(x, source=s, answer=row["answer"]) for s, r in raw.items()
                   for x, row in zip(r["per_problem"], sets[s])]
    n_all = len(per_problem)
    result = {
        "k": k, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
        "multi_box": multi_box,
        "per_source": {s: source_summary(r) for s, r in raw.items()},
        "overall": {f"avg@{k}": sum(x["avg"] for x in per_problem) / n_all,
                    f"pass@{k}": sum(x["any"] for x in per_problem) / n_all, "n": n_all},
        "generated_tokens": int(round(sum(x["length"] * k for x in per_problem))),
        "truncated": sum(r["truncated"] * r["n"] for r in raw.values()) / n_all,
        "seconds": round(sum(r["seconds"] for r in raw.values()), 1),
        "problems": per_problem,
    }
    result["sources_mean"] = sum(v[f"avg@{k}"] for v in result["per_source"].values()) / len(raw)
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
