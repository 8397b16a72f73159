"""The evaluation sets of a training run, built once before the model loads (so a missing or
bad file stops the run before any training), from the run's config:

- `eval.dataset`: rows read with the training data's column names, scored by the run's reward;
- `eval.benchmark`: benchmark files (verl parquet, GPQA csv, MMLU-Pro), one set per
  data_source, scored by the math verifier; with `eval.protocol`, the paper's protocol's sets
  (options shuffled with seed 0 whatever the training seed, so every run sees the same
  prompts) with its per-source k and sampling;
- otherwise, on the testbed, the testbed's test sets (`srft.evaluation.testbed_eval_sets`).

`eval.limit` 0 turns evaluation off. The sets are evaluated by `srft.evaluation.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from srft.benchmarks import by_source, load_problems
from srft.config import Config
from srft.data import load_rows
from srft.evaluation import testbed_eval_sets
from srft.math_reward import make_math_reward
from srft.preflight import benchmark_files
from srft.protocol import get_protocol, load_protocol_sets
from srft.rewards import BUILTIN_REWARDS


@dataclass
class EvalSets:
    sets: dict[str, tuple[list[dict], Callable]] = field(default_factory=dict)
    """{set name: (rows, reward)}"""
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """{set name: eval.* values that differ for that set} (a protocol's per-source k and sampling)"""
    metrics: dict[str, str] = field(default_factory=dict)
    """{set name: "reward"} for sets scored by a reward that is not a built-in verifier (their mean
    is a mean reward, not an accuracy); other sets: "accuracy"."""


def is_verifier(rewards) -> bool:
    """Whether the run's reward is one built-in verifier (scores 0 or 1) at weight 1."""
    return len(rewards) == 1 and rewards[0].name in BUILTIN_REWARDS and rewards[0].weight == 1.0


def build_eval_sets(cfg: Config, reward_fn: Callable, need_answer: bool) -> EvalSets:
    """The run's evaluation sets (see the module docstring)."""
    e, out = cfg.eval, EvalSets()
    if e.limit == 0:
        return out
    if e.dataset is not None and reward_fn:  # (an SFT run without a reward scores nothing)
        d = cfg.data  # read with the training data's column names
        rows = load_rows(e.dataset, cfg.train.seed, need_answer=need_answer, columns={
            "prompt": d.prompt_column, "demonstration": d.demonstration_column, "answer": d.answer_column})
        out.sets["eval"] = (rows[: e.limit] if e.limit else rows, reward_fn)
        if not is_verifier(reward_fn):
            out.metrics["eval"] = "reward"
    if e.benchmark is not None:
        if e.protocol != "none":
            _protocol_sets(cfg, out)
        else:
            math_fn = make_math_reward(False)
            for f in benchmark_files(e.benchmark):
                for s, ps in by_source(load_problems(f, e.limit, seed=cfg.train.seed)).items():
                    out.sets.setdefault(s, ([], math_fn))[0].extend({"prompt": p["prompt"], "answer": p["answer"]}
                                                                    for p in ps)
    if not out.sets and cfg.data.dataset == "testbed":
        out.sets = {k: (v, reward_fn) for k, v in testbed_eval_sets(e.limit).items()}
        if not is_verifier(reward_fn):
            out.metrics.update({k: "reward" for k in out.sets})
    return out


def _protocol_sets(cfg: Config, out: EvalSets) -> None:
    """eval.protocol's sets: options shuffled with seed 0 whatever the training seed (every run
    sees the same prompts), the protocol's k, temperature and top-p per source."""
    proto = get_protocol(cfg.eval.protocol)
    rows_by, _ = load_protocol_sets(benchmark_files(cfg.eval.benchmark), proto, cfg.eval.limit, seed=0)
    reward = make_math_reward(proto.multi_box)
    for s, rows in rows_by.items():
        out.sets[s] = (rows, reward)
        out.settings[s] = {"k": proto.k_for(s), "temperature": proto.temperature, "top_p": proto.top_p}
