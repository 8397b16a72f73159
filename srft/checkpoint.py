"""Checkpoint I/O in one place: atomic checkpoints through accelerate's state API,
the final model as a plain Hugging Face folder, and finding the newest checkpoint.

A checkpoint `checkpoints/step-NNNNNN/` holds:

- what `accelerator.save_state` writes: the model (`model.safetensors` for one process
  and DDP; the engine's sharded layout under FSDP / DeepSpeed), `optimizer.bin`,
  `scheduler.bin`, and one `random_states_<rank>.pkl` per process (torch, CUDA,
  numpy and Python generators of that rank);
- the tokenizer, and `config.json` next to a full `model.safetensors` (the folder
  then loads with `AutoModelForCausalLM.from_pretrained`); with LoRA the adapter
  (`adapter_model.safetensors`, `adapter_config.json`) instead;
- `trainer_state.json` (step, prompt order, eval history, world size), written last.

Protocol, in every process count: the main process makes `.tmp-step-NNNNNN`; every
rank writes its part into it (`save_state`); after a barrier the main process adds
the tokenizer and `trainer_state.json`, flushes the folder to disk and renames it
into place, then deletes checkpoints beyond `train.save_total_limit`; a last barrier
keeps the other ranks from running ahead. A crash at any point leaves either the
previous checkpoints or the complete new one; a `.tmp-*` folder is never taken for
a checkpoint and is removed on resume. Loading goes through `accelerator.load_state`
(safetensors for the weights, `torch.load(weights_only=True)` for the rest).

trainer_state.json also lists every file of the checkpoint with its size (`files`): a
checkpoint whose files are missing, cut short or grown since (a disk that filled up, a copy
cut short) is damaged, and resume takes the newest intact one instead (`damage`).

Resume (`srft train --resume DIR`, `train.resume`): `resume_point` finds the newest intact
checkpoint and refuses a run with nothing left to train (its steps done and its end written:
`run_is_complete`); a run whose steps are done but whose final/, eval.json or plots are
missing resumes at its last step and writes them. `check_resumable` refuses a
checkpoint written for other data or another number of processes; `load_checkpoint`
restores every rank's state; `trainer_state` is what trainer_state.json holds.
`check_finite` keeps non-finite weights from ever being saved. A save that fails (a full
disk: an OSError, or the RuntimeError of torch's or safetensors' writer) stops the run with a
`TrainingError` naming the last good checkpoint; its half-written folder is removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import torch

from srft.errors import TrainingError

CHECKPOINT_NAME = re.compile(r"step-(\d{6,})")
STATE_FILE = "trainer_state.json"


def latest_checkpoint(run_dir) -> Optional[Path]:
    """The newest complete checkpoint of a run folder: a folder checkpoints/step-NNNNNN holding
    trainer_state.json (written last; a save cut short is a .tmp-* folder and never counts)."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for p in root.iterdir() if root.is_dir() else []:
        m = CHECKPOINT_NAME.fullmatch(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def read_state(ck: Path) -> dict:
    return json.loads((Path(ck) / STATE_FILE).read_text())


def checkpoints(run_dir) -> list[Path]:
    """The complete checkpoints of a run folder (trainer_state.json present), newest first."""
    root = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else [])
             if (m := CHECKPOINT_NAME.fullmatch(p.name)) and p.is_dir() and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found, reverse=True)]


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` (trainer_state.json aside) with its size in bytes."""
    folder = Path(folder)
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != STATE_FILE}


def damage(ck: Path) -> str | None:
    """Why checkpoint `ck` cannot be resumed from (None: intact): its trainer_state.json does not
    read, or a file it lists is missing or has another size than was written. Checkpoints of
    srft versions before the file list are taken as intact."""
    try:
        state = read_state(ck)
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} does not read ({type(e).__name__})"
    for name, size in (state.get("files") or {}).items():
        f = Path(ck) / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} were written"
    return None


def run_is_complete(run_dir) -> bool:
    """Whether the end of a run is written: final/, eval.json and the plots (written in that order)."""
    run_dir = Path(run_dir)
    return ((run_dir / "final").is_dir() and (run_dir / "eval.json").is_file()
            and (run_dir / "plots" / "accuracy.png").is_file())


def fsync_tree(folder: Path) -> None:
    """Flush a folder's files to disk before it is renamed into place."""
    for f in Path(folder).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def save_checkpoint(accelerator, dist, run_dir: Path, step: int, state: dict, tokenizer, unwrapped,
                    keep: int) -> Path:
    """Write checkpoints/step-NNNNNN atomically (see the module docstring). Every rank calls it."""
    ck_root = Path(run_dir) / "checkpoints"
    final = ck_root / f"step-{step:06d}"
    tmp = ck_root / f".tmp-step-{step:06d}"
    if dist.is_main:
        ck_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    with _writing(run_dir, tmp, step, f"checkpoint {final.name}", dist.is_main):
        accelerator.save_state(str(tmp), safe_serialization=True)
    dist.barrier()
    if dist.is_main:
        with _writing(run_dir, tmp, step, f"checkpoint {final.name}", True):
            tokenizer.save_pretrained(tmp)
            if hasattr(unwrapped, "peft_config"):
                unwrapped.save_pretrained(tmp, safe_serialization=True)  # the adapter alone
            elif (tmp / "model.safetensors").is_file():
                unwrapped.config.save_pretrained(tmp)  # full weights + config: loads with from_pretrained
            full = {**state, "step": step, "files": file_sizes(tmp)}
            (tmp / STATE_FILE).write_text(json.dumps(full, indent=2))  # last: marks it complete
            fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        kept = sorted((int(m.group(1)), p) for p in ck_root.iterdir() if (m := CHECKPOINT_NAME.fullmatch(p.name)))
        for _, old in kept[: max(0, len(kept) - keep)]:
            shutil.rmtree(old)
    dist.barrier()
    return final


def load_checkpoint(accelerator, ck: Path) -> dict:
    """Weights, optimiser, scheduler and this rank's random states from `ck` (every rank calls
    it); returns the trainer state."""
    ck = Path(ck)
    if (ck / "optimizer.pt").is_file():
        raise FileNotFoundError(f"checkpoint {ck} has no optimizer.bin: it was written by an older srft "
                                f"(before checkpoints went through accelerate's save_state) and cannot be resumed")
    accelerator.load_state(str(ck))
    return read_state(ck)


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def _writing(run_dir: Path, tmp: Path, step: int | None, what: str, is_main: bool) -> Iterator[None]:
    """A failed write (a full disk: an OSError from Python, the RuntimeError of torch's writer,
    safetensors' error) becomes a TrainingError naming the last good checkpoint; the main process
    removes the half-written folder `tmp` (it was never a checkpoint; removing it frees the space)."""
    try:
        yield
    except Exception as e:
        if isinstance(e, TrainingError):
            raise
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        text = f"{type(e).__name__}: {e}".strip()[:400]
        full = (getattr(e, "errno", None) in FULL_DISK
                or any(w in text.lower() for w in ("no space", "file too large", "quota", "write failed", "i/o error",
                                                   "unexpected pos", "pytorchstreamwriter")))
        where = "" if step is None else f"step {step}: "
        why = " - the disk is full (or a file size or quota limit was hit)" if full else ""
        raise TrainingError(
            f"{where}writing the {what} failed ({text}){why}. The run stopped. Last good checkpoint: "
            f"{latest_checkpoint(run_dir) or 'none'}; once there is room, srft train --resume {run_dir} "
            f"continues from it") from e


def remove_partial_saves(run_dir: Path, resume_from: Path | None = None) -> list[str]:
    """Drop .tmp-* folders left by a save that a crash cut short. With `resume_from` (the
    checkpoint a resume starts from), the damaged checkpoints newer than it are set aside as
    checkpoints/.damaged-step-NNNNNN (kept for inspection, never taken for a checkpoint, replaced by
    a later one of the same step). Returns a line for the log per damaged checkpoint."""
    root = Path(run_dir) / "checkpoints"
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    notes = []
    for ck in checkpoints(run_dir) if resume_from is not None else []:
        if ck == Path(resume_from) or int(CHECKPOINT_NAME.fullmatch(ck.name).group(1)) < _step_of(resume_from):
            continue
        why = damage(ck) or "not intact"
        aside = root / f".damaged-{ck.name}"
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(ck, aside)
        notes.append(f"[srft] checkpoint {ck.name} is damaged ({why}): set aside as {aside}; resuming from "
                     f"{Path(resume_from).name}, the newest intact checkpoint")
    return notes


def _step_of(ck: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(Path(ck).name).group(1))


def resume_message(run_dir: Path, ck: Path, step: int, max_steps: int) -> str:
    """The log line of a resume."""
    line = f"[srft] resuming {run_dir} from checkpoint {Path(ck).name} (step {step} of {max_steps})"
    if step >= max_steps:
        line += "; every step is done: writing the run's end (final/, eval.json, plots)"
    return line


def save_final_model(accelerator, dist, model, unwrapped, tokenizer, run_dir: Path) -> Path:
    """final/: a plain Hugging Face folder (safetensors), whatever the sharding: the full state
    dict is assembled by accelerate (a collective under FSDP / ZeRO-3, so every rank calls this)
    and written by the main process. With LoRA: the adapter in final/adapter and the merged
    model in final/."""
    final = Path(run_dir) / "final"
    tmp = Path(run_dir) / ".tmp-final"
    is_peft = hasattr(unwrapped, "peft_config")
    state_dict = None if is_peft else accelerator.get_state_dict(model)
    if dist.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        with _writing(run_dir, tmp, None, "final model (final/)", True):
            if is_peft:
                unwrapped.save_pretrained(tmp / "adapter", safe_serialization=True)
                merged = unwrapped.merge_and_unload()
                merged.save_pretrained(tmp, safe_serialization=True)
            else:
                unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()
    return final


def trainer_state(step: int, sampler_state: dict, model_path: str, nonfinite_streak: int, eval_before: dict,
                  eval_history: list, world_size: int, eval_after: dict | None = None) -> dict:
    """The trainer's part of a checkpoint (trainer_state.json): what accelerate's state does not hold.
    `eval_after`: at the run's last step, its final evaluation (eval.json's "after"), so that a
    resume after the last step writes the uninterrupted run's eval.json without evaluating again."""
    state = {"step": step, "sampler": sampler_state, "model": model_path, "nonfinite_streak": nonfinite_streak,
             "eval_before": eval_before, "eval_history": eval_history, "world_size": world_size}
    if eval_after is not None:
        state["eval_after"] = eval_after
    return state


def resume_point(run_dir: Path, max_steps: int) -> tuple[Path, dict]:
    """The newest intact checkpoint of the run folder (damaged newer ones are passed over: see
    `damage`) and its trainer state; a TrainingError when there is none, or when the run is
    complete (its steps done, its final/, eval.json and plots written). A checkpoint at the last
    step of a run whose end is missing is returned: the resume writes that end."""
    run_dir = Path(run_dir)
    found = checkpoints(run_dir)
    intact = next((ck for ck in found if damage(ck) is None), None)
    if intact is None:
        damaged = "; ".join(f"{ck.name}: {damage(ck)}" for ck in found)
        raise TrainingError(
            f"--resume {run_dir}: no {'intact' if found else 'complete'} checkpoint in {run_dir / 'checkpoints'} "
            f"({'damaged: ' + damaged if found else 'one is written every train.save_every steps'}); nothing to "
            f"resume. To start the run over: srft train --config {run_dir / 'config.yaml'} --output-dir {run_dir} "
            f"--train.overwrite true")
    ck, state = intact, read_state(intact)
    if state["step"] > max_steps or (state["step"] == max_steps and run_is_complete(run_dir)):
        raise TrainingError(f"--resume {run_dir}: checkpoint {ck.name} is at step {state['step']} and "
                            f"train.max_steps is {max_steps}: nothing left to train (pass "
                            f"--max-steps N with N > {state['step']} to train further)")
    return ck, state


def check_resumable(run_dir: Path, ck: Path, state: dict, n_rows: int, world: int) -> None:
    """The checkpoint was trained on as many rows and written by as many processes as this run has."""
    if state["sampler"]["n"] != n_rows:
        raise TrainingError(f"--resume {run_dir}: checkpoint {ck.name} was trained on {state['sampler']['n']} "
                            f"rows, the data now has {n_rows} (data.* settings changed?)")
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise TrainingError(f"--resume {run_dir}: checkpoint {ck.name} was written by {saved_world} process(es), "
                            f"this run has {world}; resume with {saved_world} (the random states and "
                            f"any sharded optimiser state are per process)")


def check_finite(unwrapped, dist, run_dir: Path, step: int, what: str) -> None:
    """Refuse to save non-finite weights (the previous checkpoint stays as it is); every rank
    checks its own parameters (its shard, when sharded) and all learn the answer."""
    bad = next((name for name, p in unwrapped.named_parameters() if not torch.isfinite(p).all()), None)
    if dist.any(bad is not None):
        last = latest_checkpoint(run_dir)
        raise TrainingError(f"step {step}: parameter {bad or '(on another process)'} is not finite; the "
                            f"{what} was not saved (last good checkpoint: {last or 'none'})")
