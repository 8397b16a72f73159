"""The run folder, in one place: what marks a folder as holding a run, the check that a new
run never writes into a used one, the per-step log files at the start of a run (created
fresh, or cut back to the checkpoint's step on resume), and the end-of-run files
(eval.json, plots/, the hub push) that single-stage runs (`srft.trainer`) and multi-stage
runs (`srft.stages`) both write. Only the main process calls the writing functions.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from srft.checkpoint import latest_checkpoint
from srft.config import Config
from srft.hub import push_to_hub
from srft.metrics import truncate_metrics
from srft.plots import make_plots
from srft.testbed.tasks import TESTBED_VERSION

def holds_run(out: Path) -> bool:
    """Whether the folder holds something of a run worth keeping: a final model, an eval.json, a
    complete checkpoint or a logged step. A run that stopped before its first step was logged (a
    reward function that raised, a bad row found late) leaves none, and the same command runs again."""
    out = Path(out)
    if (out / "final").exists() or (out / "eval.json").exists() or latest_checkpoint(out) is not None:
        return True
    metrics = out / "metrics.jsonl"
    return metrics.is_file() and bool(metrics.read_text(errors="replace").strip())


def refuse_used_output_dir(cfg: Config) -> None:
    """A new run (no train.resume, no train.overwrite) never writes into a folder that holds a run."""
    out = Path(cfg.train.output_dir)
    if not cfg.train.resume and not cfg.train.overwrite and holds_run(out):
        raise FileExistsError(f"train.output_dir {out} already holds a run; pass --output-dir NEW_DIR, "
                              f"--resume {out} to continue it, or --train.overwrite true to replace it")


def keep_matplotlib_cache_in(run_dir: Path) -> None:
    """matplotlib (plots; also imported by reasoning-gym) writes its font cache to ~/.cache/matplotlib
    unless MPLCONFIGDIR says otherwise; a run keeps it in its own folder (run_dir/.matplotlib), unless
    MPLCONFIGDIR is set or matplotlib is already loaded in this process."""
    if "matplotlib" not in sys.modules:
        os.environ.setdefault("MPLCONFIGDIR", str(Path(run_dir).resolve() / ".matplotlib"))


def start_step_logs(out: Path, step: int, resumed: bool, save_rollouts: bool) -> None:
    """metrics.jsonl, rollouts.jsonl and completions.jsonl at the start of a run: empty for a new
    run; for a resumed one, cut back to the checkpoint's `step` (rows written after it, and a line
    cut short by a crash, are dropped). completions.jsonl of a new run is started by its
    `srft.run_log.CompletionLog`."""
    if resumed:
        truncate_metrics(out / "metrics.jsonl", step)
        if (out / "rollouts.jsonl").exists():
            truncate_metrics(out / "rollouts.jsonl", step)
        if (out / "completions.jsonl").exists():
            truncate_metrics(out / "completions.jsonl", step, one_row_per_step=False)
        return
    (out / "metrics.jsonl").write_text("")
    if save_rollouts:
        (out / "rollouts.jsonl").write_text("")


def uses_testbed(cfg: Config) -> bool:
    data, model = cfg.data.dataset, cfg.model.name_or_path
    return (isinstance(data, str) and data.split(":")[0] == "testbed") or model == "testbed"


def finish_run(out: Path, result: dict, cfg: Config, log: Callable[[str], None]) -> dict:
    """The end-of-run files: eval.json (the run's result, with the testbed's version when the run
    used it: its tasks, splits and base model change between versions), plots/, and the hub push
    when train.push_to_hub. Returns the result (with "hub" after a push)."""
    if uses_testbed(cfg):
        result["testbed_version"] = TESTBED_VERSION
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    make_plots(out)
    if cfg.train.push_to_hub:
        result["hub"] = push_to_hub(out, cfg.train.hub_model_id or out.resolve().name,
                                    private=cfg.train.hub_private, log=log)
    return result
