"""`srft experiment`: SRFT against its baselines and ablations on the testbed.

Runs a grid of presets x seeds at an equal budget per method, then writes

    OUT/results.md      the comparison table (mean +- std over seeds, base model first)
    OUT/results.json    every number behind it (per run, per seed, curves)
    OUT/plots/          accuracy vs step and rollout entropy vs step, one line per method
    OUT/runs/PRESET/seed-S/   each run's own folder (config, metrics, eval, final model)

Learning rates (issue 13): unless `--optim.lr` is given (or `--no-select-lr`, the default
with `--quick`), each method's learning rate is chosen first from `--lr-grid` (LR_GRID) by
one run per rate at seed 0, scored on the testbed's validation split (`testbed:val`, never
a test set; `select_learning_rates`, runs kept in OUT/lr-selection); every method selects
its own rate, SRFT's ablations included. A rate selected at an edge of those tried gets one
more rate beside it on that side (1-3-10 steps, at most MAX_EXTENSIONS times; `extension`),
and the report marks added rates and rates still at an edge. SFT-then-GRPO runs its SFT
stage at SFT's selected rate; its stage split (the share of the steps given to SFT,
STAGE_SPLITS) is selected at GRPO's rate (`select_stage_split`), then its GRPO stage's rate is
selected for RL after SFT (`select_second_stage_lr`). The selected setting then runs with every seed (default 0-4), and the table
adds each method's gap to SRFT with a Welch 95% interval over seeds (`srft.stats.welch_interval`;
the statistics and verdict rules are `srft.stats`).

Equal budget (EXPERIMENT_BUDGET): every method makes the same number of optimiser
steps (`train.max_steps`, with the learning rate decaying linearly to 0) on the same
number of prompts per step, with groups of 8
responses per prompt where it samples (SRFT/LUFFY: 7 rollouts + 1 demonstration;
GRPO: 8 rollouts; RL+SFT: 8 rollouts and the demonstration as an extra NLL term).
SFT sees one demonstration per prompt, the same demonstration count as SRFT.
SFT-then-GRPO splits the same steps between its stages (half and half unless selected; see
`srft.stages`). Everything else is
the config defaults, identical across methods (clipping, lengths; the learning rate too when it is not selected).

Finished runs are kept: running the same command again skips every run whose
`eval.json` exists and redoes unfinished ones, so an interrupted grid continues. A
finished run whose saved config differs from the one asked for stops the command
(ValueError naming the fields) instead of mixing settings in one table.

Precedence for each run: defaults < preset < experiment budget (< --quick) < YAML
(--config) < command-line flags; the flags apply to every run of the grid.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from srft.config import Config, add_config_flags, flag_overrides, flatten, layer_config, load_yaml, to_dict
from srft.metrics import read_metrics
from srft.presets import SRFT_ABLATIONS, get_preset
from srft.runtime import quiet_libraries
from srft.stages import is_staged, run_stages
from srft.stats import (T_CRIT, holm, mean_std, min_detectable_difference, steps_to_reach, welch_interval,
                        welch_p, welch_t)
from srft.testbed.base_model import ensure_base_model
from srft.trainer import Trainer

MAIN_PRESETS = ["srft", "srft_paper", "sft", "sft_filtered", "grpo", "sft_then_grpo", "luffy", "rl_sft", "hpt", "chord", "chord_phi"]
EXPERIMENT_BUDGET = {
    "train.max_steps": 150, "train.prompts_per_step": 16, "train.eval_every": 10, "train.save_every": 0,
    "optim.schedule": "linear",  # decay to 0, as TRL's default: at a constant rate SFT's seeds ended 55-74
}
QUICK_BUDGET = {
    "train.max_steps": 2, "train.prompts_per_step": 4, "train.eval_every": 1, "train.save_every": 0,
    "train.micro_batch_size": 32, "rollout.max_new_tokens": 8, "eval.limit": 6, "eval.max_new_tokens": 8,
}
QUICK_PRESETS = ["srft", "sft", "grpo", "sft_then_grpo"]
QUICK_SEEDS = [0, 1]
ID_SETS = ("id_chain4",)


def all_presets() -> list[str]:
    return MAIN_PRESETS + list(SRFT_ABLATIONS)


def parse_presets(text: str) -> list[str]:
    names: list[str] = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        expand = {"all": all_presets(), "main": MAIN_PRESETS, "ablations": ["srft", *SRFT_ABLATIONS]}.get(part)
        for n in expand or [part]:
            get_preset(n)  # unknown names fail here, before anything runs
            if n not in names:
                names.append(n)
    if not names:
        raise ValueError("--presets is empty")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", default=None,
                   help="comma-separated presets, or the groups all / main / ablations (default: all; "
                        f"--quick: {','.join(QUICK_PRESETS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default: 0 1 2 3 4)")
    p.add_argument("--select-lr", dest="select_lr", action=argparse.BooleanOptionalAction, default=None,
                   help="choose each method's learning rate on the validation split first (default: on, "
                        "off with --quick or a given --optim.lr)")
    p.add_argument("--lr-grid", default=",".join(f"{x:g}" for x in LR_GRID),
                   help="learning rates tried per method when selecting (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a tiny grid (2 steps, few problems) for tests and smoke checks")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep a checkpoint at every evaluation (train.eval_every) of every run, for `srft analyze "
                        "dynamics`; runs already finished without them are not redone")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process with cpu_count/jobs torch threads (default 1)")
    add_config_flags(p)  # --output-dir, --max-steps, --config, --section.field ... apply to every run


# ---------------------------------------------------------------------------- running
def run_config(preset: str, seed: int, root: Path, quick: bool, yaml_over: dict, flag_over: dict):
    run_dir = root / "runs" / preset / f"seed-{seed}"
    cfg = layer_config(preset, [("experiment budget", QUICK_BUDGET if quick else EXPERIMENT_BUDGET),
                                ("--config", yaml_over), ("command line", flag_over),
                                ("grid", {"train.seed": seed, "train.output_dir": str(run_dir),
                                          "train.overwrite": True})])
    cfg.validate()
    return cfg


# no effect on results; train.output_dir: a run folder copied or moved elsewhere is the same run
IGNORED_FOR_REUSE = ("train.overwrite", "train.resume", "train.save_every", "train.save_total_limit",
                     "train.output_dir")


def is_done(cfg) -> bool:
    """A run of the grid is done when its eval.json exists; its saved config must then be the one
    asked for now (else the grid would mix settings: a ValueError names the differences)."""
    run_dir = Path(cfg.train.output_dir)
    if not (run_dir / "eval.json").exists():
        return False
    saved = load_yaml(str(run_dir / "config.yaml"))
    wanted = flatten(to_dict(cfg))
    defaults = flatten(to_dict(Config()))
    # a field added to the config after the run was made, left at its default, changes nothing
    diff = sorted(k for k in set(saved) | set(wanted)
                  if k not in IGNORED_FOR_REUSE and saved.get(k) != wanted.get(k)
                  and not (k not in saved and k in defaults and wanted.get(k) == defaults[k]))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in diff[:5])
        raise ValueError(f"{run_dir} was run with other settings ({shown}); pass a new --output-dir to run "
                         f"this grid, or delete that run folder to redo it")
    return True


def run_one(cfg, log_path: Path) -> dict:
    """One run of the grid, its log written to log_path; returns its eval.json."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as fh:
        def log(*a):
            print(*a, file=fh, flush=True)

        if is_staged(cfg):
            return run_stages(cfg, log=log)
        return Trainer(cfg, log=log).train()


def _worker_init(threads: int) -> None:
    os.environ["TQDM_DISABLE"] = "1"
    torch.set_num_threads(threads)
    quiet_libraries()


def _run_in_worker(cfg) -> tuple[dict, float]:
    """One run (in this process or a pool worker): its final accuracies and wall seconds."""
    t = time.perf_counter()
    res = run_one(cfg, Path(cfg.train.output_dir) / "log.txt")
    return {"after": res["after"]}, time.perf_counter() - t


def run_grid(presets: list[str], seeds: list[int], root: Path, quick: bool = False, yaml_over=None,
             flag_over=None, log=print, jobs: int = 1, per_preset: Optional[dict] = None) -> dict:
    """Every preset x seed (`per_preset`: extra overrides of a preset, e.g. its selected learning
    rate); finished runs are reused. Returns {"runs", "elapsed", "n_run_now", "cfgs"}."""
    yaml_over, flag_over, per_preset = yaml_over or {}, flag_over or {}, per_preset or {}
    cfgs = {(p, s): run_config(p, s, root, quick, yaml_over, {**flag_over, **per_preset.get(p, {})})
            for p in presets for s in seeds}
    log(f"[srft] experiment: {len(presets)} presets x {len(seeds)} seeds = {len(cfgs)} runs in {root}")
    elapsed, n_now = run_configs(cfgs, root, jobs, log)
    runs = {}
    for key, cfg in cfgs.items():
        run_dir = Path(cfg.train.output_dir)
        runs[key] = {"eval": json.loads((run_dir / "eval.json").read_text()),
                     "metrics": read_metrics(run_dir / "metrics.jsonl")}
    return {"runs": runs, "elapsed": elapsed, "n_run_now": n_now, "cfgs": cfgs}


def run_configs(cfgs: dict, root: Path, jobs: int = 1, log=print) -> tuple[float, int]:
    """Run every config not done yet (`jobs` at a time); returns (wall seconds, runs made)."""
    from tqdm.auto import tqdm

    root.mkdir(parents=True, exist_ok=True)
    if any(c.model.name_or_path == "testbed" for c in cfgs.values()):
        ensure_base_model(0, log=log)  # once, before any worker needs it
    todo = [k for k, c in cfgs.items() if not is_done(c)]
    log(f"[srft] {len(cfgs)} runs, {len(cfgs) - len(todo)} already done")
    t0 = time.perf_counter()
    prev = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # one progress bar for the grid, not one per run

    def report(key, res, seconds):
        acc = " ".join(f"{k} {100 * v['accuracy']:.1f}" for k, v in res["after"].items())
        log(f"[srft] {' '.join(map(str, key))}: {acc}  ({seconds:.0f}s)")

    try:
        bar = tqdm(total=len(todo), desc="experiment", disable=False if sys.stderr.isatty() else None)
        if jobs <= 1:
            for key in todo:
                bar.set_postfix(run="/".join(map(str, key)))
                report(key, *_run_in_worker(cfgs[key]))
                bar.update()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                     initargs=(threads,)) as pool:
                futures = {pool.submit(_run_in_worker, cfgs[key]): key for key in todo}
                for fut in as_completed(futures):
                    res, seconds = fut.result()
                    report(futures[fut], res, seconds)
                    bar.update()
        bar.close()
    finally:
        if prev is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = prev
    return time.perf_counter() - t0, len(todo)


LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
MAX_EXTENSIONS = 2
"""A rate selected at an edge of what was tried gets one more rate on that side, at most this often."""
SELECTION_SEED = 0
VAL_DATASET = "testbed:val"


def best_lr(val: dict[float, float]) -> float:
    """The learning rate with the highest validation accuracy; a tie goes to the smaller rate."""
    return max(val, key=lambda lr: (val[lr], -lr))


def next_rate(lr: float, up: bool) -> float:
    """The neighbour of `lr` on the 1-3-10 ladder: 1e-3 -> 3e-3 -> 1e-2 up, 1e-3 -> 3e-4 -> 1e-4 down."""
    exp = math.floor(math.log10(lr) + 1e-9)
    mantissa = lr / 10 ** exp
    factor = (3 if mantissa < 2 else 10) if up else (1 if mantissa > 2 else 0.3)
    return float(f"{factor * 10 ** exp:.3g}")


def extension(val: dict[float, float]) -> Optional[float]:
    """The rate to try next when the best of `val` is at an edge of the rates tried (None otherwise)."""
    best = best_lr(val)
    if len(val) < 2 or min(val) < best < max(val):
        return None
    return next_rate(best, up=best == max(val))


def _validation_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / "eval.json").read_text())["after"]["eval"]["accuracy"]


def select_learning_rates(presets: list[str], root: Path, grid=LR_GRID, quick: bool = False, yaml_over=None,
                          flag_over=None, jobs: int = 1, log=print, extend: Optional[int] = None
                          ) -> dict[str, dict]:
    """Each preset's learning rate: one run per value of `grid` (seed SELECTION_SEED, the grid's
    budget), scored by its final accuracy on the validation split (`testbed:val`, never a test
    set); the best wins (ties: the smaller rate). A best rate at an edge of the rates tried gets one
    more rate on that side (`extension`), at most `extend` times (MAX_EXTENSIONS; 0 with `quick`).
    Returns {preset: {"lr", "val": {lr: accuracy}, "edge": best still at an edge, "extended": [rates]}}.
    Runs are kept under root/PRESET/lr-X and reused."""
    yaml_over, flag_over = yaml_over or {}, flag_over or {}

    def make(p: str, lr: float):
        cfg = run_config(p, SELECTION_SEED, root, quick, yaml_over,
                         {**flag_over, "optim.lr": lr, "eval.dataset": VAL_DATASET})
        cfg.train.output_dir = str(root / p / f"lr-{lr:g}")
        return cfg

    log(f"[srft] learning-rate selection: {len(presets)} presets x {len(grid)} rates on {VAL_DATASET}")
    return select_rates(presets, grid, make, root, jobs, log, (0 if quick else MAX_EXTENSIONS) if extend is None
                        else extend)


def select_rates(keys: list[str], grid, make, root: Path, jobs: int, log, extend: int) -> dict[str, dict]:
    """The rate selection loop for `keys` (presets, or a stage of one): `make(key, lr)` gives the run's
    config (its output_dir the run folder); the grid first, then at most `extend` rounds of one more
    rate beside a best rate at an edge."""
    tried = {k: list(grid) for k in keys}
    pending = {k: list(grid) for k in keys}
    for round_ in range(extend + 1):
        run_configs({(k, f"lr {lr:g}"): make(k, lr) for k, lrs in pending.items() for lr in lrs}, root, jobs, log)
        pending = {}
        for k in keys if round_ < extend else []:
            new = extension({lr: _validation_accuracy(Path(make(k, lr).train.output_dir)) for lr in tried[k]})
            if new is not None:
                tried[k].append(new)
                pending[k] = [new]
                log(f"[srft] {k}: the best rate is at an edge of {sorted(tried[k][:-1])}; trying {new:g}")
        if not pending:
            break
    out = {}
    for k in keys:
        val = {lr: _validation_accuracy(Path(make(k, lr).train.output_dir)) for lr in sorted(tried[k])}
        best = best_lr(val)
        out[k] = {"lr": best, "val": val, "edge": len(val) > 1 and best in (min(val), max(val)),
                  "extended": tried[k][len(grid):]}
        log(f"[srft] {k}: lr {best:g}{' (at an edge)' if out[k]['edge'] else ''} (validation accuracy "
            + ", ".join(f"{lr:g}: {100 * v:.1f}" for lr, v in val.items()) + ")")
    return out


def select_second_stage_lr(selection: dict, split: float, root: Path, grid=LR_GRID, quick: bool = False,
                           yaml_over=None, flag_over=None, jobs: int = 1, log=print) -> dict:
    """sft_then_grpo's GRPO-stage rate, selected for RL after SFT (not zero-RL's): its SFT stage at
    SFT's selected rate and the selected `split`, the GRPO stage over the grid (extended at an edge as
    for the presets), scored on the validation split; runs under root/sft_then_grpo/stage2-lr-X."""
    yaml_over, flag_over = yaml_over or {}, flag_over or {}

    def make(_key: str, lr: float):
        over = {**flag_over, **staged_overrides(selection, split), "optim.lr": lr, "eval.dataset": VAL_DATASET}
        cfg = run_config(STAGED, SELECTION_SEED, root, quick, yaml_over, over)
        cfg.train.output_dir = str(root / STAGED / f"stage2-lr-{lr:g}")
        return cfg

    log(f"[srft] {STAGED}: the GRPO stage's rate, after SFT, x {len(grid)} rates on {VAL_DATASET}")
    return select_rates([STAGED], grid, make, root, jobs, log, 0 if quick else MAX_EXTENSIONS)[STAGED]


STAGE_SPLITS = (0.25, 0.5, 0.75)
STAGED = "sft_then_grpo"


def staged_overrides(selection: dict, split: float) -> dict:
    """sft_then_grpo at the selected rates: SFT's for its SFT stage, GRPO's for its GRPO stage."""
    return {"optim.lr": selection["grpo"]["lr"], "train.first_stage_lr": selection["sft"]["lr"],
            "train.stage_split": split}


def select_stage_split(selection: dict, root: Path, splits=STAGE_SPLITS, quick: bool = False, yaml_over=None,
                       flag_over=None, jobs: int = 1, log=print) -> dict:
    """sft_then_grpo's stage split, chosen as the learning rates are: one run per share of the steps
    given to SFT (`splits`), each stage at its method's selected rate (`staged_overrides`), seed
    SELECTION_SEED, scored on the validation split; the best wins (ties: the smaller SFT share).
    Returns {"split", "val": {split: accuracy}, "overrides"}; runs kept under root/sft_then_grpo/split-X."""
    yaml_over, flag_over = yaml_over or {}, flag_over or {}
    cfgs = {}
    for sp in splits:
        over = {**flag_over, **staged_overrides(selection, sp), "eval.dataset": VAL_DATASET}
        cfg = run_config(STAGED, SELECTION_SEED, root, quick, yaml_over, over)
        cfg.train.output_dir = str(root / STAGED / f"split-{sp:g}")
        cfgs[(STAGED, f"split {sp:g}")] = cfg
    log(f"[srft] stage-split selection: {STAGED} x {len(splits)} splits on {VAL_DATASET}")
    run_configs(cfgs, root, jobs, log)
    val = {sp: json.loads((root / STAGED / f"split-{sp:g}" / "eval.json").read_text())["after"]["eval"]["accuracy"]
           for sp in splits}
    best = best_lr(val)  # the same rule: highest accuracy, ties to the smaller value
    log(f"[srft] {STAGED}: SFT share {best:g} (validation accuracy "
        + ", ".join(f"{sp:g}: {100 * v:.1f}" for sp, v in val.items()) + ")")
    return {"split": best, "val": val, "overrides": staged_overrides(selection, best)}


# ---------------------------------------------------------------------------- summary
def _final_entropy(rows: list[dict], tail: float = 0.1) -> float:
    vals = [r["entropy/rollout"] for r in rows if isinstance(r.get("entropy/rollout"), (int, float))
            and math.isfinite(r["entropy/rollout"])]
    if not vals:
        return float("nan")
    n = max(1, int(round(len(vals) * tail)))
    return statistics.fmean(vals[-n:])


def summarize(presets: list[str], seeds: list[int], runs: dict) -> dict:
    """Per method: accuracy per set and on average (in- and out-of-distribution), mean and
    std over seeds; final rollout entropy; mean curves of accuracy and entropy per step."""
    first = runs[(presets[0], seeds[0])]["eval"]
    sets = list(first["after"])
    id_sets = [s for s in sets if s in ID_SETS] or sets[:1]
    ood_sets = [s for s in sets if s not in id_sets]

    def cells(evals: list[dict]) -> dict:
        out = {}
        for s in sets:
            out[s] = mean_std([100 * e[s]["accuracy"] for e in evals])
        out["ID avg"] = mean_std([statistics.fmean(100 * e[s]["accuracy"] for s in id_sets) for e in evals])
        if ood_sets:
            out["OOD avg"] = mean_std([statistics.fmean(100 * e[s]["accuracy"] for s in ood_sets) for e in evals])
        return out

    table = {"base": {**cells([first["before"]]), "entropy": (float("nan"), float("nan"))}}
    curves = {}
    for p in presets:
        evals = [runs[(p, s)]["eval"]["after"] for s in seeds]
        table[p] = {**cells(evals), "entropy": mean_std([_final_entropy(runs[(p, s)]["metrics"]) for s in seeds])}
        curves[p] = _mean_curves([runs[(p, s)] for s in seeds], id_sets, ood_sets)
    return {"sets": sets, "id_sets": id_sets, "ood_sets": ood_sets, "table": table, "curves": curves}


def _mean_curves(runs: list[dict], id_sets, ood_sets) -> dict:
    """Mean over seeds of the ID / OOD accuracy at each evaluated step and of the rollout
    entropy at each step (steps present in every seed only)."""
    def mean_by_step(series: list[dict[int, float]]) -> list[tuple[int, float]]:
        steps = sorted(set.intersection(*[set(s) for s in series])) if series else []
        return [(st, statistics.fmean(s[st] for s in series)) for st in steps]

    acc_id, acc_ood, ent = [], [], []
    for r in runs:
        hist = r["eval"].get("history", [])
        acc_id.append({h["step"]: 100 * statistics.fmean(h[s] for s in id_sets) for h in hist})
        if ood_sets:
            acc_ood.append({h["step"]: 100 * statistics.fmean(h[s] for s in ood_sets) for h in hist})
        ent.append({row["step"]: row["entropy/rollout"] for row in r["metrics"]
                    if isinstance(row.get("entropy/rollout"), (int, float)) and math.isfinite(row["entropy/rollout"])})
    return {"accuracy_id": mean_by_step(acc_id), "accuracy_ood": mean_by_step(acc_ood) if ood_sets else [],
            "entropy": mean_by_step([e for e in ent if e])}


def gap_intervals(runs: dict, presets: list[str], seeds: list[int], sets: list[str], ref: str = "srft"):
    """{method: (difference, low, high, df)}: ref minus method on the mean accuracy (points) over
    `sets`, Welch 95% interval over seeds."""
    def per_seed(p):
        return [100 * statistics.fmean(runs[(p, s)]["eval"]["after"][x]["accuracy"] for x in sets) for s in seeds]

    ref_vals = per_seed(ref)
    return {p: welch_interval(ref_vals, per_seed(p)) for p in presets if p != ref}


ALPHA = 0.05
SPEED_THRESHOLD = 80.0
"""In-distribution accuracy (%) the speed claim counts the steps to; fixed here, before any grid runs."""
FORMAT_MOVE_LIMIT = 0.20
"""An entropy claim is not testable when the share of rollouts in the demonstrations' format
(rollout/think_share) moves by more than this between the first and the last 10% of steps."""
RULES = {
    "interval": "holds / fails: Welch two-sided test of SRFT minus the other over seeds, p Holm-adjusted over "
                "every claim below < 0.05, the sign deciding; else not distinguishable (MDD: the smallest "
                "difference this many seeds detect with 80% power at 0.05)",
    "entropy": "the same test on each seed's rollout entropy relative to the base model's (the first step's): "
               "level = mean of the last 10% of steps / base, area = mean over all steps / base; not testable "
               f"when the share of rollouts in the demonstration format moves by more than "
               f"{100 * FORMAT_MOVE_LIMIT:.0f} points",
    "speed": f"the same test on each seed's steps to {SPEED_THRESHOLD:.0f}% in-distribution accuracy (never: the "
             "last evaluated step + one interval), SFT-then-GRPO minus SRFT; not testable when no seed of either "
             "reaches it",
}


def _entropy_levels(rows: list[dict]) -> tuple[float, float]:
    """(level, area) of a run's rollout entropy relative to the base model's (its first step's)."""
    vals = [r["entropy/rollout"] for r in rows if isinstance(r.get("entropy/rollout"), (int, float))
            and math.isfinite(r["entropy/rollout"])]
    if not vals or vals[0] <= 0:
        return float("nan"), float("nan")
    n = max(1, int(round(len(vals) * 0.1)))
    return statistics.fmean(vals[-n:]) / vals[0], statistics.fmean(vals) / vals[0]


def _format_move(rows: list[dict]) -> Optional[float]:
    """How far rollout/think_share moves from the first to the last 10% of steps (None: not logged)."""
    vals = [r["rollout/think_share"] for r in rows if isinstance(r.get("rollout/think_share"), (int, float))]
    if not vals:
        return None
    n = max(1, int(round(len(vals) * 0.1)))
    return abs(statistics.fmean(vals[-n:]) - statistics.fmean(vals[:n]))


def _steps_to(history: list[dict], id_sets: list[str], threshold: float) -> tuple[float, bool]:
    """(the first evaluated step at which the in-distribution mean reaches threshold %, reached?)."""
    pts = [(h["step"], 100 * statistics.fmean(h[x] for x in id_sets)) for h in history
           if h["step"] > 0 and all(x in h for x in id_sets)]
    for step, acc in pts:
        if acc >= threshold:
            return float(step), True
    last = pts[-1][0] if pts else 0
    gap = pts[-1][0] - pts[-2][0] if len(pts) > 1 else last
    return float(last + gap), False


def _claim_tests(runs: dict, presets: list[str], seeds: list[int], summary: dict) -> list[dict]:
    """Each claim as two samples over seeds (SRFT's and the other's, larger meaning the claim's way)."""
    tests = []
    per_seed = lambda p, sets: [100 * statistics.fmean(runs[(p, s)]["eval"]["after"][x]["accuracy"] for x in sets)  # noqa: E731
                                for s in seeds]
    for label, sets in (("in distribution", summary["id_sets"]), ("out of distribution", summary["ood_sets"])):
        for p in [p for p in presets if p != "srft" and sets]:
            kind = "ablation" if p in SRFT_ABLATIONS else "baseline"
            if kind == "baseline" or label == "in distribution":
                tests.append({"claim": f"SRFT above {p} ({kind}), {label}", "a": per_seed("srft", sets),
                              "b": per_seed(p, sets), "unit": "points", "rule": "interval", "testable": True})
    if "grpo" in presets:
        lv = {p: [_entropy_levels(runs[(p, s)]["metrics"]) for s in seeds] for p in ("srft", "grpo")}
        moves = [m for p in ("srft", "grpo") for s in seeds if (m := _format_move(runs[(p, s)]["metrics"])) is not None]
        moved = bool(moves) and max(moves) > FORMAT_MOVE_LIMIT
        for i, what in ((0, "level"), (1, "area")):
            a, b = [x[i] for x in lv["srft"]], [x[i] for x in lv["grpo"]]
            tests.append({"claim": f"rollout entropy kept higher under SRFT than under GRPO ({what}, relative to base)",
                          "a": a, "b": b, "unit": "x base", "rule": "entropy",
                          "testable": all(math.isfinite(x) for x in a + b) and not moved,
                          "note": (f"format share moved by up to {100 * max(moves):.0f} points" if moved else "")})
    if STAGED in presets and summary["id_sets"]:
        steps = {p: [_steps_to(runs[(p, s)]["eval"].get("history", []), summary["id_sets"], SPEED_THRESHOLD)
                     for s in seeds] for p in ("srft", STAGED)}
        reached = any(ok for v in steps.values() for _, ok in v)
        tests.append({"claim": f"one stage faster than two: steps to {SPEED_THRESHOLD:.0f}% in distribution, "
                               f"{STAGED} minus SRFT", "a": [x for x, _ in steps[STAGED]],
                      "b": [x for x, _ in steps["srft"]], "unit": "steps", "rule": "speed", "testable": reached,
                      "note": "" if reached else "no seed reached the threshold"})
    return tests


def claim_verdicts(runs: dict, presets: list[str], seeds: list[int], summary: dict) -> list[dict]:
    """One verdict per claim of the paper this grid can test (holds / fails / not distinguishable /
    not testable), each by its rule (RULES): Welch's test over seeds with the p-values Holm-adjusted
    over every testable claim (`srft.stats.holm`), the minimum detectable difference beside each
    (`srft.stats.min_detectable_difference`). Rows: {"claim", "measured", "p", "p_holm", "mdd",
    "verdict", "rule", "note"}."""
    if "srft" not in presets or len(seeds) < 2:
        return []
    tests = _claim_tests(runs, presets, seeds, summary)
    idx = [i for i, t in enumerate(tests) if t["testable"]]
    raw = {i: welch_p(tests[i]["a"], tests[i]["b"]) for i in idx}
    adjusted = dict(zip(idx, holm([raw[i] for i in idx])))
    out = []
    for i, t in enumerate(tests):
        row = {"claim": t["claim"], "rule": RULES[t["rule"]], "note": t.get("note", ""), "p": None, "p_holm": None,
               "mdd": None, "measured": "-", "verdict": "not testable"}
        if t["testable"]:
            d, lo, hi, _ = welch_interval(t["a"], t["b"])
            (_, sa), (_, sb) = mean_std(t["a"]), mean_std(t["b"])
            digits = 2 if t["unit"] == "x base" else 1
            row.update(p=raw[i], p_holm=adjusted[i], mdd=min_detectable_difference(sa, sb, len(t["a"]), len(t["b"])),
                       measured=f"{d:+.{digits}f} {t['unit']} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
            row["verdict"] = (("holds" if d > 0 else "fails") if adjusted[i] < ALPHA else "not distinguishable")
        out.append(row)
    return out


def format_verdicts(rows: list[dict]) -> str:
    lines = ["| claim | measured (95% interval) | p | p (Holm) | MDD | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        mdd = "-" if r["mdd"] is None else f"{r['mdd']:.2f}"
        p = "-" if r["p"] is None else f"{r['p']:.3f}"
        ph = "-" if r["p_holm"] is None else f"{r['p_holm']:.3f}"
        verdict = r["verdict"] + (f" ({r['note']})" if r.get("note") else "")
        lines.append(f"| {r['claim']} | {r['measured']} | {p} | {ph} | {mdd} | {verdict} |")
    rules = sorted({r["rule"] for r in rows})
    return "\n".join(lines + ["", "Rules:"] + [f"- {rule}" for rule in rules])


def compare_to(table: dict, ref: str, col: str, n: int) -> dict[str, tuple[float, float]]:
    """ref minus each other method on column col: (difference, Welch t)."""
    m1, s1 = table[ref][col]
    return {m: (m1 - row[col][0], welch_t(m1, s1, row[col][0], row[col][1], n))
            for m, row in table.items() if m not in (ref, "base")}


def _or_never(step) -> str:
    return "never" if step is None else str(step)


def format_results_table(summary: dict) -> str:
    sets = summary["sets"]
    cols = sets + ["ID avg"] + (["OOD avg"] if summary["ood_sets"] else []) + ["entropy"]
    head = ["method"] + [c if c != "entropy" else "final rollout entropy" for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in summary["table"].items():
        out = [method]
        for c in cols:
            m, s = row[c]
            if not math.isfinite(m):
                out.append("-")
            elif c == "entropy":
                out.append(f"{m:.3f} ± {s:.3f}")
            else:
                out.append(f"{m:.1f} ± {s:.1f}" if method != "base" else f"{m:.1f}")
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- plots
def _draw(ax, methods, curves, key, color, title, ylabel, **style) -> None:
    """One line per method: the mean curve `key` (step, value)."""
    for m in methods:
        pts = curves[m][key]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m, color=color[m], **style)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt  # heavy, and MPLCONFIGDIR must be set first: deferred until a plot is drawn

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_experiment_plots(summary: dict, out: Path) -> list[Path]:
    import matplotlib  # heavy, and MPLCONFIGDIR must be set first: deferred until a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    curves = summary["curves"]
    groups = {"main": [p for p in curves if p not in SRFT_ABLATIONS],
              "ablations": [p for p in curves if p in SRFT_ABLATIONS or p == "srft"]}
    if len(groups["ablations"]) <= 1:
        groups.pop("ablations")
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("tab20").colors[1::2])
    color = {m: palette[i % len(palette)] for i, m in enumerate(curves)}  # one colour per method in every plot
    written = []
    for gname, methods in groups.items():
        fig, axes = plt.subplots(1, 2 if summary["ood_sets"] else 1, figsize=(11, 4), squeeze=False)
        for key, ax, title in (("accuracy_id", axes[0][0], "in-distribution"),
                               ("accuracy_ood", axes[0][-1], "out-of-distribution (mean)")):
            if key == "accuracy_ood" and not summary["ood_sets"]:
                continue
            _draw(ax, methods, curves, key, color, f"Accuracy, {title}", "accuracy (%), mean over seeds",
                  marker="o", markersize=3)
        written.append(_save(fig, out / f"accuracy_{gname}.png"))

        fig, ax = plt.subplots(figsize=(6.5, 4))
        _draw(ax, methods, curves, "entropy", color, "Rollout entropy (mean over seeds; SFT samples no rollouts)",
              "nats / token")
        ax.set_yscale("log")
        written.append(_save(fig, out / f"entropy_{gname}.png"))
    return written


# ---------------------------------------------------------------------------- command
def write_results(root: Path, presets, seeds, grid: dict, summary: dict, command: str, quick: bool,
                  selection: Optional[dict] = None) -> str:
    """Write OUT/results.md and OUT/results.json; returns the markdown."""
    budget = _budget_text(next(iter(grid["cfgs"].values())), selection)
    text = _header_lines(presets, seeds, grid, summary, command, quick, budget)
    if selection:
        text += _selection_lines(selection)
    if "srft" in presets and len(seeds) > 1:
        text += _gap_lines(grid["runs"], presets, seeds, summary)
    verdicts = claim_verdicts(grid["runs"], presets, seeds, summary)
    if verdicts:
        text += ["Verdicts, one per claim of the paper (holds / fails / not distinguishable / not testable), each "
                 "by the rule printed under the table: Welch's p over seeds, Holm-adjusted over every testable claim "
                 "(p (Holm)), and the minimum detectable difference (MDD, 80% power at 0.05) beside each.", "",
                 format_verdicts(verdicts), ""]
    text += _speed_lines(presets, summary)
    text.append("Plots: " + ", ".join(f"[{p.name}](plots/{p.name})" for p in sorted((root / "plots").glob("*.png"))))
    md = "\n".join(text) + "\n"
    (root / "results.md").write_text(md)
    js = _results_json(presets, seeds, grid, summary, command, quick, budget, selection, verdicts)
    (root / "results.json").write_text(json.dumps(js, indent=2))
    return md


def _budget_text(cfg0, selection: Optional[dict]) -> str:
    """The budget of one run of the grid, in words (its first config stands for all)."""
    lr_text = "learning rate selected per method (below)" if selection else f"lr {cfg0.optim.lr}"
    return (f"{cfg0.train.max_steps} training steps x {cfg0.train.prompts_per_step} prompts per step, "
            f"groups of {cfg0.rollout.n_rollouts + cfg0.rollout.n_demos} (srft), rollout.max_new_tokens "
            f"{cfg0.rollout.max_new_tokens}, {lr_text}, eval every {cfg0.train.eval_every} steps on "
            f"{cfg0.eval.limit or 'all'} problems per set (greedy)")


def _header_lines(presets, seeds, grid: dict, summary: dict, command: str, quick: bool, budget: str) -> list[str]:
    """results.md up to the results table included."""
    seconds = {p: mean_std([grid["runs"][(p, s)]["eval"]["train_seconds"] for s in seeds])[0] for p in presets}
    return [
        f"# srft experiment{' (quick)' if quick else ''}",
        "",
        f"Command: `{command}`",
        f"Seeds: {' '.join(map(str, seeds))}; budget per run: {budget}.",
        f"Wall time of this invocation: {grid['elapsed'] / 60:.1f} min for {grid['n_run_now']} runs "
        f"(the others were already done); per-run training time (s): "
        + ", ".join(f"{p} {seconds[p]:.0f}" for p in presets) + ".",
        "",
        "Accuracy (%) after training, mean ± std over seeds; final rollout entropy = mean token entropy of "
        "the rollouts over the last 10% of steps.",
        "",
        format_results_table(summary),
        "",
    ]


def _selection_lines(selection: dict) -> list[str]:
    """The learning-rate selection table (every rate tried; rates added beside an edge marked +, a
    selected rate still at an edge marked "(edge)"), and sft_then_grpo's split and second-stage rate."""
    grid_lrs = sorted({lr for p, r in selection.items() if p != STAGED for lr in r["val"]})
    text = ["Learning rates, selected per method (the ablations included) on the validation split "
            f"(`testbed:val`, seed {SELECTION_SEED}, final accuracy %); + marks a rate added because the best was "
            f"at an edge (at most {MAX_EXTENSIONS} times), (edge) a selected rate still at an edge:", "",
            "| method | " + " | ".join(f"lr {lr:g}" for lr in grid_lrs) + " | selected |",
            "|---|" + "---|" * (len(grid_lrs) + 1)]
    for p, r in selection.items():
        if p != STAGED:
            added = set(r.get("extended", []))
            text.append(f"| {p} | " + " | ".join((f"{100 * r['val'][lr]:.1f}" + ("+" if lr in added else ""))
                                                  if lr in r["val"] else "-" for lr in grid_lrs)
                        + f" | {r['lr']:g}{' (edge)' if r.get('edge') else ''} |")
    text.append("")
    if STAGED in selection:
        r = selection[STAGED]
        second = r.get("second_stage")
        stage2 = (f"GRPO stage at its own rate after SFT, {second['lr']:g}{' (edge)' if second.get('edge') else ''} "
                  "(validation accuracy %: " + ", ".join(f"{lr:g}: {100 * v:.1f}" for lr, v in second["val"].items())
                  + ")" if second else f"GRPO stage at GRPO's ({selection['grpo']['lr']:g})")
        text += [f"{STAGED}: SFT stage at SFT's rate ({selection['sft']['lr']:g}); the share of the steps given to "
                 "SFT selected at GRPO's rate (validation accuracy %): "
                 + ", ".join(f"{sp:g}: {100 * v:.1f}" for sp, v in r["val"].items())
                 + f"; selected {r['split']:g}; {stage2}.", ""]
    return text


def _gap_lines(runs: dict, presets, seeds, summary: dict) -> list[str]:
    """SRFT minus each method with its Welch 95% interval, and Welch's t on the in-distribution mean."""
    rows = []
    for col, sets in (("in distribution", summary["id_sets"]), ("out of distribution", summary["ood_sets"])):
        if sets:
            gaps = gap_intervals(runs, presets, seeds, sets)
            rows.append(f"| {col} | " + " | ".join(f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
                                                   for d, lo, hi, _ in gaps.values()) + " |")
    others = [p for p in presets if p != "srft"]
    text = [f"SRFT minus each method, accuracy points, with the Welch 95% interval over {len(seeds)} seeds "
            "(an interval that excludes 0 separates the two):", "",
            "| | " + " | ".join(others) + " |", "|---|" + "---|" * len(others), *rows, ""]
    text.append("In-distribution accuracy of srft minus each method, points, with Welch's t over seeds "
                f"(|t| > {T_CRIT.get(len(seeds), 2.0):.2f} is unlikely under equal means at 5%, two-sided, "
                f"with {len(seeds)} seeds each): "
                + ", ".join(f"{p} {d:+.1f} (t {t:+.1f})" for p, (d, t) in
                            compare_to(summary["table"], "srft", "ID avg", len(seeds)).items()) + ".")
    text.append("")
    return text


def _speed_lines(presets, summary: dict) -> list[str]:
    """The first evaluated step at which each method reaches the best accuracy sft_then_grpo reached."""
    ref = "sft_then_grpo"
    trained = {p: [pt for pt in summary["curves"][p]["accuracy_id"] if pt[0] > 0] for p in presets}
    if not trained.get(ref):
        return []
    target = max(v for _, v in trained[ref])
    return [f"First evaluated step at which each method's mean in-distribution accuracy reaches the best "
            f"{ref} reached at any evaluation ({target:.1f}%): "
            + ", ".join(f"{p} {_or_never(steps_to_reach(trained[p], target))}" for p in presets) + ".", ""]


def _results_json(presets, seeds, grid: dict, summary: dict, command: str, quick: bool, budget: str,
                  selection: Optional[dict], verdicts: list[dict]) -> dict:
    """Every number behind results.md (results.json)."""
    return {"command": command, "presets": presets, "seeds": seeds, "quick": quick, "budget": budget,
            "elapsed_seconds": grid["elapsed"], "sets": summary["sets"],
            "selection": {p: {**({"lr": r["lr"]} if "lr" in r else {"split": r["split"], "overrides": r["overrides"]}),
                              "val": {f"{k:g}": v for k, v in r["val"].items()}}
                          for p, r in (selection or {}).items()},
            "table": {m: {c: list(v) for c, v in row.items()} for m, row in summary["table"].items()},
            "curves": summary["curves"], "verdicts": verdicts, "speed_threshold": SPEED_THRESHOLD, "alpha": ALPHA,
            "runs": {f"{p}/seed-{s}": {k: v["accuracy"] for k, v in r["eval"]["after"].items()}
                     for (p, s), r in grid["runs"].items()}}


def run_experiment_from_args(args) -> int:
    flag_over = flag_overrides(args)
    for k in ("train.preset", "train.seed"):
        if k in flag_over:
            raise ValueError(f"{k} is set by the grid: use --presets / --seeds")
    if flag_over.get("train.resume"):
        raise ValueError("--resume: run the same `srft experiment` command again instead; it skips finished "
                         "runs and redoes unfinished ones")
    root = Path(flag_over.pop("train.output_dir", "runs/experiment-quick" if args.quick else "runs/experiment"))
    if getattr(args, "keep_checkpoints", False):
        budget = QUICK_BUDGET if args.quick else EXPERIMENT_BUDGET
        flag_over = {"train.save_every": flag_over.get("train.eval_every", budget["train.eval_every"]),
                     "train.save_total_limit": 1000, **flag_over}
    yaml_over = load_yaml(args.config) if args.config else {}
    presets = parse_presets(args.presets or (",".join(QUICK_PRESETS) if args.quick else "all"))
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else [0, 1, 2, 3, 4])
    select = args.select_lr if args.select_lr is not None else not args.quick
    if "optim.lr" in flag_over or "optim.lr" in yaml_over:
        select = False  # the user fixed the learning rate
    selection, per_preset = None, {}
    if select:
        own = [p for p in presets if p != STAGED]  # every method, the ablations included, selects its own rate
        if STAGED in presets:  # its stages run at SFT's and GRPO's selected rates
            own += [p for p in ("sft", "grpo") if p not in own]
        grid_lrs = tuple(float(x) for x in args.lr_grid.split(","))
        selection = select_learning_rates(own, root / "lr-selection", grid_lrs, args.quick, yaml_over, flag_over,
                                          jobs=args.jobs)
        per_preset = {p: {"optim.lr": selection[p]["lr"]} for p in presets if p != STAGED}
        if STAGED in presets:
            split = select_stage_split(selection, root / "lr-selection", quick=args.quick, yaml_over=yaml_over,
                                       flag_over=flag_over, jobs=args.jobs)
            second = select_second_stage_lr(selection, split["split"], root / "lr-selection", grid_lrs, args.quick,
                                            yaml_over, flag_over, jobs=args.jobs)
            split = {**split, "second_stage": second, "overrides": {**split["overrides"], "optim.lr": second["lr"]}}
            per_preset[STAGED] = split["overrides"]
            selection = {**selection, STAGED: split}
    grid = run_grid(presets, seeds, root, args.quick, yaml_over, flag_over, jobs=args.jobs, per_preset=per_preset)
    summary = summarize(presets, seeds, grid["runs"])
    make_experiment_plots(summary, root / "plots")
    command = "srft experiment " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 \
        else "srft experiment"
    md = write_results(root, presets, seeds, grid, summary, command, args.quick, selection)
    print()
    print(md)
    print(f"results: {root / 'results.md'}  (results.json, plots/, runs/)")
    return 0
