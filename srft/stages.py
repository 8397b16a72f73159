"""Multi-stage runs (the `sft_then_grpo` baseline): stages run one after another,
each a normal single-stage run in its own sub-folder, each starting from the
previous stage's final model with a fresh optimiser (the usual "SFT, then RL").

    OUT/stage1-sft/     a complete run folder (config, metrics, checkpoints, final/)
    OUT/stage2-grpo/    ditto, model = OUT/stage1-sft/final
    OUT/config.yaml     the resolved config of the whole run
    OUT/metrics.jsonl   every stage's rows, steps renumbered 1..max_steps, plus `train/stage`
    OUT/eval.json       base model before stage 1, final model after the last stage,
                        accuracy history over the global step
    OUT/final/          the last stage's final model (moved there)

Budget: the stages share `train.max_steps` by the preset's fractions (sft_then_grpo:
half and half; `train.stage_split` sets the first stage's share), so a two-stage run
makes as many optimiser steps as a one-stage run; with the default split its SFT stage
sees half the demonstrations and its GRPO stage half the rollouts of the corresponding
one-stage runs. `train.first_stage_lr` gives the first stage its own learning rate
(`srft experiment` uses SFT's selected rate there and GRPO's for the second stage,
and selects the split on the validation split).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from srft.checkpoint import latest_checkpoint, run_is_complete
from srft.config import Config, apply_overrides, apply_preset, flatten, save_config, to_dict
from srft.distributed import launched_rank
from srft.presets import get_preset
from srft.resume_rules import check_resume
from srft.run_dir import RunFolderLock, clear_previous_run, finish_run, refuse_used_output_dir
from srft.trainer import Trainer


def stage_steps(max_steps: int, fractions: list[float]) -> list[int]:
    """Split max_steps by fractions; the last stage takes the remainder."""
    total = sum(fractions)
    steps = [int(round(max_steps * f / total)) for f in fractions[:-1]]
    return steps + [max_steps - sum(steps)]


def stage_configs(cfg: Config) -> list[Config]:
    """One config per stage. The last stage is the run's config itself (its preset's
    overrides are the multi-stage preset's), so user flags reach it unchanged; earlier
    stages take the run's config with the multi-stage preset's values reset to the
    defaults, then their own preset's values (user flags still reach them)."""
    preset = get_preset(cfg.train.preset)
    names = [name for name, _ in preset.stages]
    fractions = [f for _, f in preset.stages]
    if cfg.train.stage_split is not None:  # the first stage's share; the rest keep the preset's proportions
        rest = sum(fractions[1:])
        fractions = [cfg.train.stage_split] + [(1.0 - cfg.train.stage_split) * f / rest for f in fractions[1:]]
    steps = stage_steps(cfg.train.max_steps, fractions)
    out = Path(cfg.train.output_dir)
    cfgs = []
    defaults = flatten(to_dict(Config()))
    current = flatten(to_dict(cfg))
    unset = {k: defaults[k] for k, v in preset.overrides.items() if current.get(k) == v}
    for i, (name, n) in enumerate(zip(names, steps)):
        if i == len(names) - 1:
            base = cfg
        else:
            base = apply_overrides(apply_overrides(cfg, unset, "stage defaults"), get_preset(name).overrides,
                                   f"stage {name}")
        sub = {"train.preset": name, "train.max_steps": n, "train.resume": "", "train.push_to_hub": False,
               "train.output_dir": str(out / f"stage{i + 1}-{name}"),  # the whole run is pushed, once, at the end
               "train.stage_split": None, "train.first_stage_lr": None}
        if i == 0 and cfg.train.first_stage_lr is not None:
            sub["optim.lr"] = cfg.train.first_stage_lr
        if i > 0:
            sub["model.name_or_path"] = str(out / f"stage{i}-{names[i - 1]}" / "final")
        c = apply_overrides(base, sub, f"stage {i + 1}")
        c.preset_applied, c.kind_applied = name, cfg.kind_applied  # its layers are in, under the user's (apply_preset)
        c.validate()
        cfgs.append(c)
    return cfgs


def is_staged(cfg: Config) -> bool:
    return bool(get_preset(cfg.train.preset).stages)


def _resume_stage(scfg: Config, is_last: bool, out: Path, log) -> Optional[dict]:
    """On resume: a finished stage's result (None if it must run); an unfinished stage with a
    checkpoint resumes from it, one without starts over."""
    sdir = Path(scfg.train.output_dir)
    done = sdir / "eval.json"
    if done.exists() and (sdir / "plots" / "accuracy.png").exists() and (
            (sdir / "final").exists() or (is_last and (out / "final").exists())):
        log(f"[srft] stage {sdir.name} is complete")
        return json.loads(done.read_text())
    if latest_checkpoint(sdir) is not None:
        scfg.train.resume = str(sdir)
    else:
        scfg.train.overwrite = True
    return None


def run_stages(cfg: Config, log=print, trainer_cls=None) -> dict:
    """Run every stage; returns the same result dict as `Trainer.train`. With
    `train.resume` (the run folder), finished stages are kept and the unfinished one
    continues from its newest checkpoint (see `srft.trainer.Trainer`). The run folder is locked
    for the whole run by the main process (`srft.run_dir.RunFolderLock`; each stage's trainer
    locks its own sub-folder too)."""
    cfg, _ = apply_preset(cfg)  # a config made in Python gets its preset's values (a no-op from the CLI)
    lock = RunFolderLock(Path(cfg.train.output_dir), log)
    if launched_rank() == 0:
        lock.acquire()
    try:
        return _run_stages(cfg, log, trainer_cls or Trainer)
    finally:
        lock.release()


def _run_stages(cfg: Config, log, trainer_cls) -> dict:
    out = Path(cfg.train.output_dir)
    resume = bool(cfg.train.resume)
    if resume and "train.max_steps" in check_resume(cfg, out):  # (each stage checks its own settings)
        raise ValueError(f"resume {out}: train.max_steps cannot change when resuming a staged run (its stages "
                         f"split train.max_steps)")
    refuse_used_output_dir(cfg)
    if resume and run_is_complete(out):
        raise ValueError(f"--resume {out}: the run is complete (final/, eval.json and plots/ are there)")
    main = launched_rank() == 0  # several processes: each stage trains on all, the main one writes
    if main and cfg.train.overwrite and not resume:
        clear_previous_run(out, log)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and main:
        save_config(cfg, out / "config.yaml")
    results, rows, offset = [], [], 0
    cfgs = stage_configs(cfg)
    for i, scfg in enumerate(cfgs):
        res = _resume_stage(scfg, i == len(cfgs) - 1, out, log) if resume else None
        if res is None:
            log(f"[srft] {cfg.train.preset}: stage {i + 1} = {scfg.train.preset} for {scfg.train.max_steps} "
                f"steps from {scfg.model.name_or_path}")
            res = trainer_cls(scfg, log=log).train()  # ends once every rank is done with the stage's files
        results.append(res)
        for line in (Path(scfg.train.output_dir) / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                row["step"] += offset
                row["train/stage"] = i + 1
                rows.append(row)
        offset += scfg.train.max_steps
    if main:
        tmp = out / ".tmp-metrics.jsonl"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, out / "metrics.jsonl")
    history, offset = [], 0
    for i, res in enumerate(results):
        for h in res.get("history", []):
            if i > 0 and h["step"] == 0:
                continue  # the same model as the previous stage's last entry
            history.append({**h, "step": h["step"] + offset})
        offset += res["steps"]
    last_final = Path(cfgs[-1].train.output_dir) / "final"
    final = out / "final"
    if main and last_final.exists():  # (a resumed run may have moved it already)
        if final.exists():
            shutil.rmtree(final)
        os.replace(last_final, final)
    result = {"preset": cfg.train.preset, "steps": offset, "model": results[0]["model"], "final": str(final),
              "train_seconds": round(sum(r["train_seconds"] for r in results), 1),
              "before": results[0]["before"], "after": results[-1]["after"], "history": history,
              "stages": [{"preset": r["preset"], "steps": r["steps"], "folder": str(Path(c.train.output_dir))}
                         for r, c in zip(results, cfgs)]}
    if main:
        result = finish_run(out, result, cfg, log)
    return result

