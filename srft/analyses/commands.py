"""`srft analyze token-shift` and `srft analyze dynamics`: flags and the glue to an experiment
folder (`--experiment DIR` picks its runs' final models and run folders)."""

from __future__ import annotations

import argparse
from pathlib import Path

from srft.analyses.dynamics import format_table, run_dynamics, run_points
from srft.analyses.token_shift import run_token_shift

SHIFT_PRESETS = ("sft", "grpo", "srft")


def _pairs(values, what: str) -> dict[str, str]:
    """["name=value", "value"] -> {name: value}; a bare value is named after its folder."""
    out = {}
    for v in values or []:
        name, sep, rest = v.partition("=")
        if not sep:
            name, rest = Path(v.rstrip("/")).name, v
        if not name or not rest:
            raise ValueError(f"{what}: expected NAME=VALUE, got {v!r}")
        out[name] = rest
    return out


def _experiment_runs(root: str, seed: int, presets=None) -> dict[str, Path]:
    base = Path(root) / "runs"
    if not base.is_dir():
        raise FileNotFoundError(f"--experiment: {root} has no runs/ folder (not an `srft experiment` output)")
    found = {p.name: p / f"seed-{seed}" for p in sorted(base.iterdir()) if (p / f"seed-{seed}" / "eval.json").is_file()}
    if presets:
        missing = [p for p in presets if p not in found]
        if missing:
            raise FileNotFoundError(f"--experiment: {root} has no finished seed-{seed} run of {', '.join(missing)}")
        found = {p: found[p] for p in presets}
    return found


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="analysis", required=True)
    ts = sub.add_parser("token-shift", help="dp = p_tuned - p_base on the tuned model's greedy responses: "
                        "histogram, shares above thresholds, heat map")
    ts.add_argument("--base", default="testbed", help="the base model (default: the testbed's)")
    ts.add_argument("--tuned", action="append", metavar="NAME=PATH", help="a tuned model folder (repeatable)")
    ts.add_argument("--experiment", default=None,
                    help=f"an `srft experiment` folder: its {', '.join(SHIFT_PRESETS)} final models (--seed)")
    ts.add_argument("--seed", type=int, default=0, help="which seed's runs of --experiment (default 0)")
    ts.add_argument("--prompts", default="testbed:id_chain4",
                    help="testbed:SET or a data file / hub id with a prompt column (default: testbed:id_chain4)")
    ts.add_argument("--limit", type=int, default=200, help="prompts used (default 200; 0: all)")
    ts.add_argument("--max-new-tokens", type=int, default=48)
    ts.add_argument("--output-dir", default="runs/analysis/token-shift")
    ts.set_defaults(func=run_token_shift_from_args)

    dy = sub.add_parser("dynamics", help="place every checkpoint at its NLL on reference response sets and plot "
                        "one trajectory per run")
    dy.add_argument("--run", action="append", metavar="[NAME=]DIR", help="a run folder (repeatable)")
    dy.add_argument("--experiment", default=None, help="an `srft experiment` folder: every method's run (--seed)")
    dy.add_argument("--presets", default=None, help="with --experiment: only these methods (comma-separated)")
    dy.add_argument("--seed", type=int, default=0)
    dy.add_argument("--ref", action="append", metavar="NAME=SPEC",
                    help="a reference response set: NAME=demonstrations (the prompts' demonstration column) or "
                         "NAME=MODEL (its sampled responses). Default: teacher=demonstrations, base=the runs' base "
                         "model, and grpo=the experiment's GRPO model when there is one")
    dy.add_argument("--axes", default=None, help="the two references on the plot's axes, X,Y (default: the first two)")
    dy.add_argument("--prompts", default="testbed:val", help="held-out prompts (default: testbed:val)")
    dy.add_argument("--limit", type=int, default=100, help="prompts used (default 100; 0: all)")
    dy.add_argument("--max-new-tokens", type=int, default=48)
    dy.add_argument("--output-dir", default="runs/analysis/dynamics")
    dy.set_defaults(func=run_dynamics_from_args)


def run_token_shift_from_args(args) -> int:
    tuned = _pairs(args.tuned, "--tuned")
    if args.experiment:
        runs = _experiment_runs(args.experiment, args.seed)
        tuned = {**{p: str(runs[p] / "final") for p in SHIFT_PRESETS if p in runs}, **tuned}
    res = run_token_shift(args.base, tuned, args.prompts, args.limit or None, args.max_new_tokens, args.output_dir)
    print()
    print(res["table"])
    print(f"\nwritten: {Path(args.output_dir) / 'token_shift.json'}, token_shift_hist.png, token_shift_examples.png")
    return 0


def run_dynamics_from_args(args) -> int:
    runs = _pairs(args.run, "--run")
    exp = {}
    if args.experiment:
        exp = _experiment_runs(args.experiment, args.seed,
                               [p.strip() for p in args.presets.split(",")] if args.presets else None)
        runs = {**{p: str(d) for p, d in exp.items()}, **runs}
    if not runs:
        raise ValueError("dynamics: give --run DIR (repeatable) or --experiment DIR")
    refs = _pairs(args.ref, "--ref")
    if not refs:
        base = run_points(Path(next(iter(runs.values()))))[0][1]
        refs = {"teacher": "demonstrations", "base": base}
        if "grpo" in exp and (exp["grpo"] / "final" / "config.json").is_file():
            refs["grpo"] = str(exp["grpo"] / "final")
    axes = tuple(a.strip() for a in args.axes.split(",")) if args.axes else None
    res = run_dynamics(runs, refs, args.prompts, args.limit or None, args.max_new_tokens, args.output_dir, axes)
    print()
    print(format_table(res))
    print(f"\nwritten: {Path(args.output_dir) / 'dynamics.json'}, dynamics.png")
    return 0
