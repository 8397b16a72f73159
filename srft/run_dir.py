"""The run folder, in one place: its owner (the lock), what marks a folder as holding a run,
the check that a new run never writes into a used one, clearing an older run for
`train.overwrite`, the per-step log files at the start of a run (created fresh, or cut back to
the checkpoint's step on resume), and the end-of-run files (eval.json, plots/, the hub push)
that single-stage runs (`srft.trainer`) and multi-stage runs (`srft.stages`) both write. Only
the main process calls the writing functions.

One owner (`RunFolderLock`, `hold_run_folder`): before anything is written to the folder (and
before the model loads), the main process takes an exclusive lock on `DIR/.srft-lock`
(`filelock`, an `flock` the operating system releases when the process ends, however it ends)
and records its PID, host and start time in `DIR/.srft-lock.json`. It holds it for the whole run
(`holding_run_folder` releases it when `Trainer.train` ends, `releasing_run_folder_on_error`
when the trainer's construction fails) and takes it again in the same process (a notebook
re-running a cell). A second run or resume on a held folder stops with `RunFolderInUse`
(exit 2) naming the holder. A record left behind by a killed run is recognised (the lock is
free, the record was not removed) and said in the log. Under torchrun / accelerate launch only
the main process (rank 0) holds it. Under the lock, the checks `srft.run_inputs.prepare_run`
made before are made again (another process may have written in between): the used-folder
check, the resume point; and `train.overwrite` clears the older run (`clear_previous_run`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Callable, Optional

from filelock import FileLock, Timeout

from srft.checkpoint import latest_checkpoint, resume_point
from srft.config import Config, save_config
from srft.distributed import launched_rank
from srft.errors import TrainingError
from srft.hub import push_to_hub
from srft.metrics import truncate_metrics
from srft.plots import make_plots
from srft.testbed.tasks import TESTBED_VERSION

LOCK_FILE = ".srft-lock"
HOLDER_FILE = ".srft-lock.json"
_HELD: dict[str, weakref.ref] = {}  # folder -> the RunFolderLock of this process that holds it


class RunFolderInUse(TrainingError):
    """Another run holds the run folder's lock; the message names its PID and host."""


class RunFolderLock:
    """The lock that makes one process the owner of a run folder (see the module docstring)."""

    def __init__(self, out: Path, log: Callable[[str], None] = print):
        self.out, self.log = Path(out), log
        self.key = str(self.out.resolve())
        self.running = False  # inside Trainer.train (another Trainer of this process cannot take it over)
        self._lock: FileLock | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> RunFolderLock:
        """Take the lock, or raise RunFolderInUse naming its holder. A lock held by an earlier object
        of this process that is not training (a notebook cell run again) is taken over."""
        if self.held:
            return self
        earlier = _HELD.get(self.key)
        earlier = earlier() if earlier else None
        if earlier is not None and earlier.held:
            if earlier.running:
                raise RunFolderInUse(f"{self.out} is in use by a run in progress in this process (PID {os.getpid()}); "
                                     f"let it finish, or train into another folder (--output-dir)")
            earlier.release()
        self.out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.out / LOCK_FILE), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise RunFolderInUse(_in_use_message(self.out)) from None
        self._lock = lock
        _HELD[self.key] = weakref.ref(self)
        left = _read_holder(self.out)
        if left is not None:
            self.log(f"[srft] {self.out}: the run of PID {left.get('pid')} on {left.get('host')} (started "
                     f"{left.get('started')}) ended without releasing the folder (killed?); its lock is free, "
                     f"this run takes it")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)[:500]}
        tmp = self.out / (HOLDER_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self.out / HOLDER_FILE)
        return self

    def release(self) -> None:
        """Give the folder up (the record first, then the lock); a no-op when not held."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            (self.out / HOLDER_FILE).unlink(missing_ok=True)
        finally:
            lock.release(force=True)
            if _HELD.get(self.key) is not None and _HELD[self.key]() is self:
                del _HELD[self.key]

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 (at interpreter shutdown, module globals are gone; the OS releases it)
            pass


def _read_holder(out: Path) -> dict | None:
    try:
        return json.loads((Path(out) / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _in_use_message(out: Path) -> str:
    """Who holds the folder, from its record. The holder writes the record right after taking the
    lock, so a missing record (or one of a process that is gone) is waited for a moment."""
    deadline = time.monotonic() + 3.0
    while True:
        who = _read_holder(out)
        fresh = who is not None and (who.get("host") != socket.gethostname() or _alive(who.get("pid")))
        if fresh or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not fresh:
        holder = "a process that has not recorded itself yet"
    else:
        holder = f"PID {who.get('pid')} on host {who.get('host')} (started {who.get('started')}: {who.get('command')})"
    return (f"run folder {out} is in use: {holder} holds its lock ({Path(out) / LOCK_FILE}). Wait for that run to "
            f"end (or stop it), or train into another folder (--output-dir)")


def hold_run_folder(inputs, log: Callable[[str], None] = print) -> RunFolderLock:
    """The run folder's lock for the run that `inputs` (`srft.run_inputs.RunInputs`) describes, taken
    by the main process before anything is written or loaded; under it the folder is checked again
    (another process may have written since `prepare_run` looked): a new run still refuses a used
    folder, a resume takes the resume point as it is now (into `inputs`), and `train.overwrite`
    clears the older run. Other processes of a torchrun get an unheld lock."""
    cfg = inputs.cfg
    out = Path(cfg.train.output_dir)
    lock = RunFolderLock(out, log)
    if launched_rank() != 0:
        return lock
    lock.acquire()
    try:
        refuse_used_output_dir(cfg)
        if cfg.train.resume:
            inputs.resume_from, inputs.resume_state = resume_point(out, cfg.train.max_steps)
        elif cfg.train.overwrite:
            clear_previous_run(out, log)
    except BaseException:
        lock.release()
        raise
    return lock


def releasing_run_folder_on_error(init):
    """For Trainer.__init__: its run folder lock (`self.run_lock`) is released when construction fails."""
    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except BaseException:
            lock = getattr(self, "run_lock", None)
            if lock is not None:
                lock.release()
            raise
    return wrapper


def holding_run_folder(train):
    """For Trainer.train: the run folder stays locked while it runs (taken again if an earlier call
    released it) and is released when it ends, however it ends."""
    @functools.wraps(train)
    def wrapper(self, *args, **kwargs):
        lock = getattr(self, "run_lock", None)
        if lock is None or launched_rank() != 0:
            return train(self, *args, **kwargs)
        lock.acquire()
        lock.running = True
        try:
            return train(self, *args, **kwargs)
        finally:
            lock.running = False
            lock.release()
    return wrapper


# what a run writes into its folder, removed by train.overwrite (anything else is left as it is)
RUN_FILES = ("checkpoints", "final", ".tmp-final", "eval.json", "plots", "metrics.jsonl", ".tmp-metrics.jsonl",
             "rollouts.jsonl", "completions.jsonl", "config.yaml", "resumes.jsonl", "srft", "train_rows.jsonl",
             "eval_rows.jsonl")
STAGE_FOLDER = re.compile(r"stage\d+-[\w-]+")


def clear_previous_run(out: Path, log: Callable[[str], None] = print) -> list[str]:
    """train.overwrite: remove what an earlier run wrote into `out` (its checkpoints, final model,
    evaluation, plots, logs, config and stage folders), so that nothing of it is mixed with the new
    run (a resume after a kill would otherwise find the old run's checkpoints). Says what it removed
    in the log; other files are kept and named. Returns the removed names."""
    out = Path(out)
    removed = []
    for p in sorted(out.iterdir()) if out.is_dir() else []:
        if p.name in RUN_FILES or STAGE_FOLDER.fullmatch(p.name) or p.name.startswith(".tmp-"):
            folder = p.is_dir() and not p.is_symlink()
            if folder:
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p.name + ("/" if folder else ""))
    if removed:
        kept = [p.name for p in sorted(out.iterdir()) if not p.name.startswith(".")]
        log(f"[srft] train.overwrite: removed the earlier run from {out} ({', '.join(removed)})"
            + (f"; kept what srft does not write: {', '.join(kept)}" if kept else ""))
    return removed

def holds_run(out: Path) -> bool:
    """Whether the folder holds something of a run worth keeping: a final model, an eval.json, a
    complete checkpoint or a logged step. A run that stopped before its first step was logged (a
    reward function that raised, a bad row found late) leaves none, and the same command runs again."""
    out = Path(out)
    if (out / "final").exists() or (out / "eval.json").exists() or latest_checkpoint(out) is not None:
        return True
    metrics = out / "metrics.jsonl"
    return metrics.is_file() and bool(metrics.read_text(errors="replace").strip())


def refuse_used_output_dir(cfg: Config, python: bool = False) -> None:
    """A new run (no train.resume, no train.overwrite) never writes into a folder that holds a run;
    the message names the command line's flags, or with `python` the Python API's arguments."""
    out = Path(cfg.train.output_dir)
    if cfg.train.resume or cfg.train.overwrite or not holds_run(out):
        return
    if python:
        raise FileExistsError(f"args.train.output_dir {out} already holds a run: pass another output_dir, "
                              f"overwrite_output_dir=True (args.train.overwrite = True) to replace it, or "
                              f"trainer.train(resume_from_checkpoint=True) to continue it")
    raise FileExistsError(f"train.output_dir {out} already holds a run; pass --output-dir NEW_DIR, "
                          f"--resume {out} to continue it, or --train.overwrite true to replace it")


def save_run_config(cfg: Config, out: Path, train_rows: list, eval_rows: Optional[list]) -> None:
    """config.yaml, re-runnable with `srft train --config`: datasets given in memory (the Python
    API) are written beside it, the validated rows with srft's column names, as train_rows.jsonl
    and eval_rows.jsonl, and config.yaml names those files."""
    data, ev = cfg.data, cfg.eval
    if not isinstance(data.dataset, str):
        data = dataclasses.replace(data, dataset=_write_rows(out / "train_rows.jsonl", train_rows),
                                   prompt_column=None, demonstration_column=None, answer_column=None)
    if ev.dataset is not None and not isinstance(ev.dataset, str) and eval_rows is not None:
        ev = dataclasses.replace(ev, dataset=_write_rows(out / "eval_rows.jsonl", eval_rows))
    save_config(dataclasses.replace(cfg, data=data, eval=ev) if data is not cfg.data or ev is not cfg.eval else cfg,
                out / "config.yaml")


def _write_rows(path: Path, rows: list) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    tmp.replace(path)
    return str(path)


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
