"""`srft testbed check`: does the testbed pose the paper's question? Measured, not assumed.

The paper's situation, in miniature, needs (issue 13; docs/results.md):

| precondition | measured as | passes when |
|---|---|---|
| `base_reasons` | share of the base model's sampled responses (temperature 1, k per problem) to in-distribution prompts that work the chain in its own style (steps "a-b=c" and "result"), and the accuracy of those and of the direct ones | share >= 5% and worked accuracy > direct accuracy |
| `demo_format_unseen` | share of those responses in the demonstrations' `<think>` format | 0 |
| `ood_base_nonzero` | greedy accuracy of the base model on each out-of-distribution set | >= 10% on each |
| `grpo_improves` | zero-RL (GRPO) at its selected learning rate: mean over seeds of the in-distribution accuracy gain over the base model | >= 5 points |
| `sft_improves` | SFT on the demonstrations at its selected learning rate, the same way | >= 10 points |
| `seed_spread` | standard deviation over seeds of each checked method's final in-distribution accuracy | <= 5 points |

The first three need only the base model (about a minute: `--quick`). The last three train:
GRPO, SFT and SRFT at the experiment's budget (`srft.experiment.EXPERIMENT_BUDGET`), each at
the learning rate `srft experiment` selects for it on the validation split (a small grid on
seed 0, `srft.experiment.select_learning_rates`), then with `--seeds`. The runs are kept in
`--output-dir` (a second call reuses them). Exit status 0 when every measured precondition
holds, 1 when one fails.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

from srft.config import EvalConfig, ModelConfig
from srft.evaluation import evaluate
from srft.experiment import run_grid, select_learning_rates
from srft.models import load_model_and_tokenizer
from srft.rollout import make_engine
from srft.rollout.base import SamplingParams, derive_seed
from srft.testbed.tasks import ID_TEST, TESTBED_VERSION, build_splits, chain_sum_reward, response_style, score

THRESHOLDS = {"worked_share": 0.05, "ood_base": 0.10, "grpo_gain": 5.0, "sft_gain": 10.0, "seed_std": 5.0}
CHECKED_METHODS = ("grpo", "sft", "srft")


def base_preconditions(model_dir: Optional[str] = None, k: int = 4, limit: int = 200, seed: int = 0,
                       batch_size: int = 512, log=print) -> dict:
    """Sample the base model on in-distribution prompts and evaluate it greedily on every set."""
    model, tok, path = load_model_and_tokenizer(model_dir or "testbed", ModelConfig(), log=log)
    splits = build_splits(0)
    rows = splits.test[ID_TEST][:limit]
    engine = make_engine("hf", model, tok, batch_size=batch_size)
    ids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows for _ in range(k)]
    seeds = [derive_seed(seed, "testbed-check", i, j) for i in range(len(rows)) for j in range(k)]
    out = engine.generate(ids, SamplingParams(max_new_tokens=48, temperature=1.0), seed=seeds)
    texts = [tok.decode(x[m.bool()], skip_special_tokens=True) for x, m in zip(out.response_ids, out.response_mask)]
    answers = [r["answer"] for r in rows for _ in range(k)]
    by_style: dict[str, list[float]] = {"direct": [], "worked": [], "think": []}
    for t, a in zip(texts, answers):
        by_style[response_style(t)].append(score(t, a))
    n = len(texts)
    greedy = evaluate(model, tok, splits.test, chain_sum_reward, EvalConfig(), seed=seed)

    def acc(xs):
        return statistics.fmean(xs) if xs else float("nan")

    return {"model": str(path), "n_samples": n, "k": k,
            "share": {s: len(v) / n for s, v in by_style.items()},
            "accuracy_by_style": {s: acc(v) for s, v in by_style.items()},
            "sampled_accuracy": acc([x for v in by_style.values() for x in v]),
            "greedy": {name: r["accuracy"] for name, r in greedy.items()},
            "examples": {s: next((t for t in texts if response_style(t) == s), None) for s in by_style}}


def training_preconditions(root: Path, seeds: list[int], jobs: int = 1, log=print) -> dict:
    """GRPO, SFT and SRFT at their selected learning rates, over `seeds`: the gain of each over the
    base model and the spread over seeds (runs kept under root)."""
    lrs = select_learning_rates(list(CHECKED_METHODS), root / "lr-selection", jobs=jobs, log=log)
    grid = run_grid(list(CHECKED_METHODS), seeds, root, jobs=jobs, log=log,
                    per_preset={p: {"optim.lr": lrs[p]["lr"]} for p in CHECKED_METHODS})
    out = {"lr": {p: lrs[p]["lr"] for p in CHECKED_METHODS}, "methods": {}}
    for p in CHECKED_METHODS:
        ev = [grid["runs"][(p, s)]["eval"] for s in seeds]
        base = 100 * ev[0]["before"]["id_chain4"]["accuracy"]
        final = [100 * e["after"]["id_chain4"]["accuracy"] for e in ev]
        out["methods"][p] = {"base": base, "final": final, "gain": statistics.fmean(final) - base,
                             "std": statistics.stdev(final) if len(final) > 1 else 0.0}
    return out


def evaluate_preconditions(base: dict, train: Optional[dict]) -> list[tuple[str, str, str, Optional[bool]]]:
    """Rows (precondition, measured, required, passed); passed is None when not measured."""
    share, accs = base["share"], base["accuracy_by_style"]
    rows = [
        ("base_reasons", f"{100 * share['worked']:.1f}% of responses worked in its own style (accuracy "
         f"{100 * accs['worked']:.1f}% worked vs {100 * accs['direct']:.1f}% direct)",
         f">= {100 * THRESHOLDS['worked_share']:.0f}%, worked more accurate",
         share["worked"] >= THRESHOLDS["worked_share"] and accs["worked"] > accs["direct"]),
        ("demo_format_unseen", f"{100 * share['think']:.1f}% of responses in the <think> format", "0%",
         share["think"] == 0.0),
    ]
    ood = {k: v for k, v in base["greedy"].items() if k.startswith("ood")}
    rows.append(("ood_base_nonzero", ", ".join(f"{k} {100 * v:.1f}%" for k, v in ood.items()),
                 f">= {100 * THRESHOLDS['ood_base']:.0f}% each", all(v >= THRESHOLDS["ood_base"] for v in ood.values())))
    if train is None:
        for name, req in (("grpo_improves", f">= +{THRESHOLDS['grpo_gain']:.0f} points"),
                          ("sft_improves", f">= +{THRESHOLDS['sft_gain']:.0f} points"),
                          ("seed_spread", f"std <= {THRESHOLDS['seed_std']:.0f} points")):
            rows.append((name, "not measured (--quick)", req, None))
        return rows
    m = train["methods"]
    for name, p, key in (("grpo_improves", "grpo", "grpo_gain"), ("sft_improves", "sft", "sft_gain")):
        rows.append((name, f"{m[p]['gain']:+.1f} points (lr {train['lr'][p]:g}; {len(m[p]['final'])} seeds)",
                     f">= +{THRESHOLDS[key]:.0f} points", m[p]["gain"] >= THRESHOLDS[key]))
    rows.append(("seed_spread", ", ".join(f"{p} {v['std']:.1f}" for p, v in m.items()),
                 f"std <= {THRESHOLDS['seed_std']:.0f} points each", all(v["std"] <= THRESHOLDS["seed_std"]
                                                                        for v in m.values())))
    return rows


def format_rows(rows) -> str:
    lines = ["| precondition | measured | required | holds |", "|---|---|---|---|"]
    for name, measured, req, ok in rows:
        lines.append(f"| {name} | {measured} | {req} | {'-' if ok is None else ('yes' if ok else 'NO')} |")
    return "\n".join(lines)


def run_check(output_dir: Path, quick: bool, seeds: list[int], jobs: int, log=print,
              model_dir: Optional[str] = None) -> int:
    """`model_dir`: another base model to check (default: the testbed's own; with --quick only,
    since the training rows train the testbed's)."""
    if model_dir and not quick:
        raise ValueError("--model: only with --quick (the training preconditions train the testbed's base model)")
    output_dir.mkdir(parents=True, exist_ok=True)
    base = base_preconditions(model_dir, log=log)
    train = None if quick else training_preconditions(output_dir, seeds, jobs=jobs, log=log)
    rows = evaluate_preconditions(base, train)
    table = format_rows(rows)
    (output_dir / "check.json").write_text(json.dumps(
        {"testbed_version": TESTBED_VERSION, "base": base, "train": train,
         "rows": [{"precondition": r[0], "measured": r[1], "required": r[2], "holds": r[3]} for r in rows]},
        indent=2))
    print(f"\nTestbed v{TESTBED_VERSION} preconditions (base model: {base['model']}):")
    print(table)
    print("\nbase model, greedy accuracy: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in base["greedy"].items()))
    failed = [r[0] for r in rows if r[3] is False]
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all measured preconditions hold'}  ({output_dir / 'check.json'})")
    return 1 if failed else 0
