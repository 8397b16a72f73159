"""The SRFT paper's evaluation protocol in one command, with a table like its Table 2.

    srft eval --model M --protocol srft --benchmark math_id.parquet arc_c.parquet \
              [gpqa_diamond.csv] [mmlu_pro.parquet] [--limit N] [--engine vllm] [--output-dir DIR]
    accelerate launch -m srft.cli eval --protocol srft ...      (problems sharded over the processes)

The protocol (arXiv 2506.19767, Sec. 4 "Evaluation"; `../shared/docs/SRFT-METHOD.md`,
"Evaluation protocol"):

- in distribution: AIME24 and AMC with avg@32, MATH-500, Minerva and OlympiadBench with
  pass@1 (one sample at temperature 0.6);
- out of distribution: ARC-Challenge, GPQA-Diamond, MMLU-Pro, pass@1, the options of
  each question shuffled (seeded: `srft.benchmarks.shuffle_options`);
- temperature 0.6, top-p 1.0, at most 8,192 new tokens;
- "ID avg" / "OOD avg": the mean of the per-source scores of each group (macro average).

Sources are recognised by name (`SOURCES`, with aliases such as `aime24`, `math500`,
`gpqa`); a source the protocol does not know is evaluated with k = 1 and reported as
"other", outside both averages.

Choices where the paper is silent (each a `Protocol` field or a flag):

- answers: the math verifier of training (`srft.math_reward`) with `multi_box` on:
  an answer split over several ``\\boxed{}`` (``\\boxed{(2, 2)}`` and ``\\boxed{(6, 2)}``)
  is scored as the set of its parts, as math-verify scores it. The harness the SRFT code
  is built on (LUFFY's ``eval_scripts/generate_vllm.py``) runs ``math_verify.parse`` on the
  text after ``</think>``, which does this. The paper's final numbers used a second grader
  (OAT-Grader) that srft does not reimplement: numbers can differ by that grader.
- prompts: each file's own messages (system message included) through the model's chat
  template (`srft.data.encode_prompt`); ``--system-prompt drop`` removes the system
  messages, as LUFFY's script does before applying the model's own template. GPQA and
  MMLU-Pro rows built from their releases get the system message of the verl files
  evaluated with them (else `DEFAULT_SYSTEM_PROMPT`).
- seeds: sample j of problem i of source s is seeded from (seed, "eval", s, i, j), so
  results do not depend on the number of processes or on the engine's batching.

`srft-fast` is a cheaper subset for evaluation during training (`eval.protocol`): the
same settings with avg@4 instead of avg@32. During training the token budget is
`eval.max_new_tokens` (a run's periodic evaluation cannot afford 8,192 tokens on CPU);
`srft eval --protocol` uses the protocol's 8,192 unless `--max-new-tokens` is given.

Resuming: each finished source is written to ``DIR/sources/<source>.json`` with the
settings it was evaluated with; running the same command again keeps the sources whose
settings match and evaluates the rest.

Outputs: ``DIR/protocol.json`` (every number, the settings, per-source samples) and
``DIR/protocol.md`` (the table printed at the end). The paper's rows are the SRFT paper's
Table 2 averages for Qwen2.5-Math-7B (`PAPER_ROWS`), printed beside this model's for
reference: they compare only when the model is that family and every source is complete.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from srft.benchmarks import by_source, load_problems, shuffle_options
from srft.config import EvalConfig, ModelConfig, RolloutConfig
from srft.distributed import Dist
from srft.evaluation import evaluate
from srft.math_reward import make_math_reward
from srft.models import load_model_and_tokenizer
from srft.rollout import make_engine

ID_SOURCES = ("aime", "amc", "math", "minerva", "olympiad_bench")
OOD_SOURCES = ("arc_c", "gpqa_diamond", "mmlu_pro")
SOURCES = {  # canonical name -> (display name, aliases)
    "aime": ("AIME24", ("aime", "aime24", "aime2024", "aime_2024")),
    "amc": ("AMC", ("amc", "amc23", "amc2023")),
    "math": ("MATH-500", ("math", "math500", "math_500")),
    "minerva": ("Minerva", ("minerva", "minerva_math")),
    "olympiad_bench": ("OlympiadBench", ("olympiad_bench", "olympiadbench", "olympiad")),
    "arc_c": ("ARC-C", ("arc_c", "arc_challenge", "arc")),
    "gpqa_diamond": ("GPQA-Diamond", ("gpqa_diamond", "gpqa")),
    "mmlu_pro": ("MMLU-Pro", ("mmlu_pro",)),
}
DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
PAPER_MODEL = "Qwen2.5-Math-7B"
PAPER_ROWS = (  # (method, ID avg, OOD avg): SRFT paper, Table 2 (SRFT-METHOD.md, "Headline numbers")
    ("base", 23.5, 15.4), ("SFT", 54.3, 49.2), ("RL (GRPO)", 49.3, 49.7), ("SFT -> RL", 54.5, 54.6),
    ("LUFFY", 55.5, 57.8), ("SRFT", 59.5, 62.5),
)


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 8192
    k: dict = field(default_factory=dict)
    """Samples per problem by canonical source; every other source: 1 (pass@1)."""
    shuffle_options: bool = True
    multi_box: bool = True

    def k_for(self, source: str) -> int:
        return int(self.k.get(source, 1))


PROTOCOLS = {
    "srft": Protocol("srft", "the SRFT paper's: avg@32 on AIME24 and AMC, pass@1 elsewhere; temperature 0.6, "
                     "top-p 1.0, 8,192 new tokens; options shuffled; multi-box answers",
                     k={"aime": 32, "amc": 32}),
    "srft-fast": Protocol("srft-fast", "srft with avg@4 on AIME24 and AMC (for evaluation during training)",
                          k={"aime": 4, "amc": 4}),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"--protocol: unknown protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def canonical_source(name: str) -> str:
    """`aime24` -> `aime`, `GPQA` -> `gpqa_diamond`, ...; an unknown name is returned lower-cased."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    for canon, (_, aliases) in SOURCES.items():
        if key in aliases:
            return canon
    return key


def group_of(source: str) -> str:
    return "ID" if source in ID_SOURCES else "OOD" if source in OOD_SOURCES else "other"


def display(source: str) -> str:
    return SOURCES[source][0] if source in SOURCES else source


# ---------------------------------------------------------------------------- problems
def load_protocol_sets(files: list, protocol: Protocol, limit: Optional[int] = None, seed: int = 0,
                       system_prompt: str = "file") -> tuple[dict[str, list[dict]], dict]:
    """{canonical source: rows ({"prompt", "answer"})} from every file, options shuffled when the
    protocol says so; and facts about the loading (files per source, unshuffled counts).

    system_prompt: "file" (keep the files' system messages), "drop" (remove them), or a text
    (replace every system message with it)."""
    problems, origin = [], {}
    for f in files:
        for s, ps in by_source(load_problems(f, limit, seed=seed)).items():
            canon = canonical_source(s)
            if canon in origin:
                raise ValueError(f"--benchmark: source {s!r} of {f} is also in {origin[canon]}; give each source once")
            origin[canon] = str(f)
            problems += [dict(p, source=canon) for p in ps]
    file_system = next((m["content"] for p in problems if isinstance(p["prompt"], list) and not p.get("built")
                        for m in p["prompt"] if m.get("role") == "system"), None)
    sets: dict[str, list[dict]] = {}
    unshuffled: dict[str, int] = {}
    for p in problems:
        if p.get("built"):  # GPQA / MMLU-Pro rows: the instruction the verl files give
            p = dict(p, prompt=[{"role": "system", "content": file_system or DEFAULT_SYSTEM_PROMPT}] + p["prompt"])
        if protocol.shuffle_options and p["source"] not in ID_SOURCES and not p.get("shuffled"):
            q = shuffle_options(p, seed)
            if q is None:
                unshuffled[p["source"]] = unshuffled.get(p["source"], 0) + 1
            else:
                p = q
        sets.setdefault(p["source"], []).append({"prompt": _system(p["prompt"], system_prompt), "answer": p["answer"]})
    return sets, {"files": origin, "unshuffled": unshuffled}


def _system(prompt, how: str):
    if how == "file" or not isinstance(prompt, list):
        return prompt
    rest = [m for m in prompt if m.get("role") != "system"]
    return rest if how == "drop" else [{"role": "system", "content": how}] + rest


# ---------------------------------------------------------------------------- running
@dataclass
class Settings:
    """What a source's numbers depend on (a finished source is reused only when these match)."""

    model: str
    protocol: str
    temperature: float
    top_p: float
    max_new_tokens: int
    k: int
    limit: Optional[int]
    seed: int
    multi_box: bool
    shuffle_options: bool
    system_prompt: str
    n: int


def run_protocol(model, tokenizer, sets: dict[str, list[dict]], protocol: Protocol, *, model_name: str,
                 out_dir: Optional[Path] = None, engine=None, dist=None, seed: int = 0, limit: Optional[int] = None,
                 system_prompt: str = "file", overrides: Optional[dict] = None, batch_size: int = 64,
                 log: Callable[[str], None] = print) -> dict:
    """Evaluate every source with the protocol's settings (`overrides`: temperature, top_p,
    max_new_tokens, k for all sources); finished sources in `out_dir/sources` are kept."""
    dist = dist or Dist()
    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    done_dir = out_dir / "sources" if out_dir else None
    order = sorted(sets, key=lambda s: (("ID", "OOD", "other").index(group_of(s)),
                                       (ID_SOURCES + OOD_SOURCES).index(s) if s in SOURCES else 0, s))
    results, t_all = {}, time.time()
    for i, source in enumerate(order):
        rows = sets[source]
        st = Settings(model_name, protocol.name, over.get("temperature", protocol.temperature),
                      over.get("top_p", protocol.top_p), over.get("max_new_tokens", protocol.max_new_tokens),
                      over.get("k", protocol.k_for(source)), limit, seed, protocol.multi_box,
                      protocol.shuffle_options, system_prompt, len(rows))
        if not st.temperature:
            st.k = 1
        kept = _finished(done_dir, source, st) if dist.is_main else None
        kept = dist.gather([kept] if dist.is_main else [])[0]  # the main rank's files decide, on every rank
        if kept is not None:
            log(f"[srft] {i + 1}/{len(order)} {display(source)}: kept from {done_dir / (source + '.json')}")
            results[source] = kept
            continue
        log(f"[srft] {i + 1}/{len(order)} {display(source)}: {len(rows)} problems x {st.k} samples, "
            f"up to {st.max_new_tokens} new tokens")
        cfg = EvalConfig(temperature=st.temperature, top_p=st.top_p, k=st.k, max_new_tokens=st.max_new_tokens,
                         batch_size=batch_size)
        res = evaluate(model, tokenizer, {source: rows}, make_math_reward(protocol.multi_box), cfg, engine=engine,
                       seed=seed, dist=dist, progress=True)[source]
        res = {"group": group_of(source), "settings": asdict(st), **res}
        results[source] = res
        if done_dir and dist.is_main:
            done_dir.mkdir(parents=True, exist_ok=True)
            tmp = done_dir / f"{source}.json.tmp"
            tmp.write_text(json.dumps(res, indent=2))
            tmp.replace(done_dir / f"{source}.json")  # never a half-written file
        log(f"[srft]   {display(source)}: {score_name(res)} {100 * res['accuracy']:.1f}%  "
            f"({res['seconds']:.0f} s, truncated {100 * res['truncated']:.1f}%)")
    return summarize(results, protocol, model_name, time.time() - t_all)


def _finished(done_dir: Optional[Path], source: str, st: Settings) -> Optional[dict]:
    if done_dir is None or not (done_dir / f"{source}.json").is_file():
        return None
    try:
        res = json.loads((done_dir / f"{source}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return res if res.get("settings") == asdict(st) else None


def score_name(res: dict) -> str:
    return f"avg@{res['k']}" if res["k"] > 1 else "pass@1"


def summarize(results: dict, protocol: Protocol, model_name: str, seconds: float) -> dict:
    groups = {}
    for g, names in (("ID", ID_SOURCES), ("OOD", OOD_SOURCES)):
        present = [s for s in names if s in results]
        groups[g] = {"average": (sum(results[s]["accuracy"] for s in present) / len(present)) if present else None,
                     "sources": present, "missing": [s for s in names if s not in results],
                     "limited": any(r["settings"]["limit"] for s, r in results.items() if s in present)}
    return {"model": model_name, "protocol": asdict(protocol), "sources": results, "groups": groups,
            "paper": {"model": PAPER_MODEL, "rows": [list(r) for r in PAPER_ROWS]}, "seconds": round(seconds, 1)}


# ---------------------------------------------------------------------------- the table
def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def format_protocol_table(summary: dict) -> str:
    """Markdown: per source, the group averages, the paper's rows beside this model's, the settings."""
    src = summary["sources"]
    lines = [f"### {summary['model']} on the `{summary['protocol']['name']}` protocol", "",
             "| source | group | n | score | % | pass@k (%) | mean length | truncated (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for s, r in src.items():
        k = r["k"]
        lines.append(f"| {display(s)} | {r['group']} | {r['n']} | {score_name(r)} | {_pct(r['accuracy'])} | "
                     f"{_pct(r[f'pass@{k}'])} | {r['mean_length']:.0f} | {_pct(r['truncated'])} |")
    notes = []
    for g in ("ID", "OOD"):
        info = summary["groups"][g]
        lines.append(f"| **{g} average** | | | | **{_pct(info['average'])}** | | | |")
        if info["missing"] and info["sources"]:
            notes.append(f"{g} average over {len(info['sources'])} of {len(info['sources']) + len(info['missing'])} "
                         f"sources (missing: {', '.join(display(s) for s in info['missing'])}): not the paper's "
                         "average")
        if info["limited"]:
            notes.append(f"{g} sources were cut to the first problems (--limit): not the full sets")
    lines += ["", f"The paper's numbers ({summary['paper']['model']}, SRFT paper Table 2), beside this model's:", "",
              "| model | ID avg | OOD avg |", "|---|---|---|"]
    lines += [f"| {m} ({summary['paper']['model']}) | {a:.1f} | {b:.1f} |" for m, a, b in summary["paper"]["rows"]]
    lines.append(f"| **this model** ({summary['model']}) | {_pct(summary['groups']['ID']['average'])} | "
                 f"{_pct(summary['groups']['OOD']['average'])} |")
    p = summary["protocol"]
    any_src = next(iter(src.values()), None)
    st = any_src["settings"] if any_src else {}
    lines += ["", f"Settings: temperature {st.get('temperature', p['temperature'])}, top-p "
              f"{st.get('top_p', p['top_p'])}, at most {st.get('max_new_tokens', p['max_new_tokens'])} new tokens, "
              f"k per source as in the table, options shuffled: {p['shuffle_options']} (seed {st.get('seed', 0)}), "
              f"multi-box answers: {p['multi_box']}, system prompt: {st.get('system_prompt', 'file')}; "
              f"{summary['seconds']:.0f} s."]
    if notes:
        lines += [""] + [f"Note: {n}." for n in notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the command
def run_protocol_from_args(args, overrides: dict) -> int:
    """`srft eval --protocol NAME`: load, evaluate (resuming), print and write the table."""
    from accelerate import Accelerator

    protocol = get_protocol(args.protocol)
    if not args.benchmark:
        raise ValueError("--protocol needs the benchmark files: --benchmark FILE [FILE ...] (e.g. LUFFY's "
                         "math_id.parquet and arc_c.parquet, GPQA's gpqa_diamond.csv, MMLU-Pro's test parquet; "
                         "see docs/evaluation.md)")
    acc = Accelerator()
    dist = Dist(acc)
    log = print if dist.is_main else (lambda *_a, **_k: None)
    sets, facts = load_protocol_sets(args.benchmark, protocol, overrides.get("limit"), args.seed, args.system_prompt)
    model, tok, path = load_model_and_tokenizer(args.model, ModelConfig(trust_remote_code=args.trust_remote_code,
                                                                        dtype=args.dtype), log=log)
    model.to(acc.device).eval()
    # vLLM: the model's own context length (max_position_embeddings) bounds prompt + response; a
    # model with a shorter context than the protocol's budget is cut there (see docs/evaluation.md)
    # sequences per generate call (and progress update): vLLM schedules its own batches, so it gets more
    batch = overrides.get("batch_size") or (1024 if args.engine == "vllm" else 64)
    rollout = RolloutConfig(engine=args.engine, batch_size=batch)
    engine = make_engine(args.engine, model, tok, rollout)
    out_dir = Path(args.output_dir or Path("runs") / "protocol" / Path(str(path)).name)
    for s, n in facts["unshuffled"].items():
        log(f"[srft] warning: {n} problems of {s} have no option block to shuffle; kept as they are")
    log(f"[srft] {protocol.name} protocol: {protocol.summary}; {dist.describe()}; output {out_dir}", )
    summary = run_protocol(model, tok, sets, protocol, model_name=str(path), out_dir=out_dir, engine=engine, dist=dist,
                           seed=args.seed, limit=overrides.get("limit"), system_prompt=args.system_prompt,
                           overrides={k: overrides.get(k) for k in ("temperature", "top_p", "max_new_tokens", "k")},
                           batch_size=batch, log=log)
    summary["files"], summary["unshuffled"] = facts["files"], facts["unshuffled"]
    summary["engine"], summary["world_size"] = args.engine, dist.world
    if dist.is_main:
        table = format_protocol_table(summary)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "protocol.json").write_text(json.dumps(summary, indent=2))
        (out_dir / "protocol.md").write_text(table + "\n")
        print(table)
        print(f"\n[srft] wrote {out_dir / 'protocol.json'} and {out_dir / 'protocol.md'}", file=sys.stderr)
    close = getattr(engine, "close", None)
    if close:
        close()
    return 0
