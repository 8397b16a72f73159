"""What a resume may change (docs/reliability.md "Resume").

A resumed run continues the same optimisation: the model, the preset and objective, the
data and reward, the seed, the group and batch shape and the optimiser and its schedule cannot
change mid-run (a run folder would otherwise hold weights trained one way under a config that
says another). `check_resume` compares the config a resume asks for (`srft train --resume DIR
--flag ...`, or `train(resume_from_checkpoint=...)` in Python) with the run's own config.yaml and
refuses any change to such a setting, naming it. The settings in CAN_CHANGE (the length of the
run, evaluation, logging, checkpointing, trackers, the hub, memory knobs that do not change
what is computed) are applied, listed in DIR/resumes.jsonl (one row per resume: the step and
{setting: [before, after]}), and config.yaml is rewritten with them, so it always says what
the run is now. In-memory datasets (Python) are not compared (config.yaml only describes them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from srft.config import Config, flatten, saved_dict

CAN_CHANGE = (
    "train.max_steps", "train.eval_every", "train.save_every", "train.save_total_limit", "train.log_every",
    "train.log_completions", "train.report_to", "train.push_to_hub", "train.hub_model_id", "train.hub_private",
    "train.max_nonfinite_steps", "train.resume", "train.output_dir", "train.overwrite", "train.save_rollouts",
    "train.micro_batch_size", "rollout.batch_size", "rollout.vllm_gpu_memory_utilization",
    "rollout.vllm_enable_sleep_mode", "eval.",
)
"""Settings (or, ending in ".", sections) a resume may change."""


def _may_change(key: str) -> bool:
    return any(key == c or (c.endswith(".") and key.startswith(c)) for c in CAN_CHANGE)


NOT_RECORDED = ("train.resume", "train.output_dir", "train.overwrite")  # where and how, not what trains


def check_resume(cfg: Config, run: Path) -> dict[str, list]:
    """{setting: [the run's value, this resume's]} for the settings that change (all in
    CAN_CHANGE); a ValueError naming the first setting that cannot change."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return {}
    saved = flatten(yaml.safe_load(path.read_text()) or {})
    changes = {}
    for key, now in flatten(saved_dict(cfg)).items():
        if key not in saved or key in NOT_RECORDED:
            continue
        before = saved[key]
        if key in ("data.dataset", "eval.dataset") and str(now).startswith("<in memory"):
            continue  # in-memory rows: config.yaml holds only a description
        if _same(before, now):
            continue
        if not _may_change(key):
            raise ValueError(f"resume {run}: {key} was {before!r} in this run and is {now!r} now; it cannot change "
                             f"mid-run (what trained so far used {before!r}). Resume without changing it, or start "
                             f"a new run in another folder")
        changes[key] = [before, now]
    return changes


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b or (a in (None, "") and b in (None, ""))


def record_resume(run: Path, step: int, changes: dict[str, list]) -> None:
    """One row of DIR/resumes.jsonl: when, from which step, and what changed."""
    with open(Path(run) / "resumes.jsonl", "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": step, "changes": changes},
                           default=str) + "\n")
