"""The `srft` command line.

    srft train [--preset srft|grpo|sft] [--output-dir DIR] [--max-steps N] [--seed S]
               [--config FILE.yaml] [--section.field VALUE ...]
    srft eval --model DIR [--output-dir DIR] [--eval.limit N] [--eval.temperature T]
    srft presets
    srft build-testbed

`srft train` with no arguments runs SRFT on the built-in testbed (building the
testbed's base model the first time) and prints in- and out-of-distribution
accuracy, base vs trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def cmd_train(args) -> int:
    from srft.config import resolve_config
    from srft.evaluation import format_table
    from srft.trainer import Trainer

    cfg = resolve_config(args)
    t0 = time.time()
    trainer = Trainer(cfg)
    result = trainer.train()
    out = Path(cfg.train.output_dir)
    print()
    if result["before"]:
        print(f"Accuracy (%), {cfg.train.preset}, {result['steps']} steps, seed {cfg.train.seed} "
              f"(greedy, {sum(v['n'] for v in result['before'].values())} problems):")
        print(format_table(result["before"], result["after"]))
    print(f"\nrun folder: {out}  (config.yaml, metrics.jsonl, eval.json, plots/, checkpoints/, final/)")
    print(f"total time: {time.time() - t0:.0f}s")
    return 0


def cmd_eval(args) -> int:
    from srft.config import Config, EvalConfig, ModelConfig, apply_overrides
    from srft.evaluation import evaluate, format_table, testbed_eval_sets
    from srft.rewards import get_reward_fn
    from srft.trainer import load_model_and_tokenizer

    over = {k[len("cfg__"):]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}
    cfg = apply_overrides(Config(), over, "command line")
    model, tok, path = load_model_and_tokenizer(args.model, ModelConfig(trust_remote_code=args.trust_remote_code))
    sets = testbed_eval_sets(cfg.eval.limit)
    res = evaluate(model, tok, sets, get_reward_fn("testbed"), cfg.eval, seed=args.seed)
    print(f"model: {path}")
    print(format_table(res))
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "eval.json").write_text(json.dumps({"model": path, "results": res}, indent=2))
    return 0


def cmd_presets(args) -> int:
    from srft.objective import PRESETS

    for p in PRESETS.values():
        print(f"{p.name}\n  {p.summary}\n  {p.formula}")
        if p.overrides:
            print("  " + " ".join(f"--{k} {v}" for k, v in p.overrides.items()))
    return 0


def cmd_build_testbed(args) -> int:
    from srft.testbed.base_model import ensure_base_model

    print(ensure_base_model(args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from srft.config import add_config_flags

    p = argparse.ArgumentParser(prog="srft", description="Supervised Reinforcement Fine-Tuning (SRFT) and baselines.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (default: SRFT on the built-in testbed)")
    add_config_flags(t)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="evaluate a model on the testbed's test sets")
    e.add_argument("--model", default="testbed", help="model folder (default: the testbed base model)")
    e.add_argument("--output-dir", default=None, help="write eval.json here")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--trust-remote-code", action="store_true")
    from srft.config import EvalConfig
    import dataclasses

    for f in dataclasses.fields(EvalConfig):
        e.add_argument(f"--eval.{f.name}", f"--eval.{f.name.replace('_', '-')}", dest=f"cfg__eval.{f.name}",
                       default=None, metavar="V")
    e.set_defaults(func=cmd_eval)
    pr = sub.add_parser("presets", help="list the loss presets and their formulas")
    pr.set_defaults(func=cmd_presets)
    b = sub.add_parser("build-testbed", help="build (or find) the testbed base model and print its folder")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_build_testbed)
    return p


def main(argv=None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"srft: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
