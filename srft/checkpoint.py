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

Resume (`srft train --resume DIR`, `train.resume`): `resume_point` finds the newest complete
checkpoint and refuses a run with nothing left to train; `check_resumable` refuses a
checkpoint written for other data or another number of processes; `load_checkpoint`
restores every rank's state; `trainer_state` is what trainer_state.json holds.
`check_finite` keeps non-finite weights from ever being saved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
    accelerator.save_state(str(tmp), safe_serialization=True)
    dist.barrier()
    if dist.is_main:
        tokenizer.save_pretrained(tmp)
        if hasattr(unwrapped, "peft_config"):
            unwrapped.save_pretrained(tmp, safe_serialization=True)  # the adapter alone
        elif (tmp / "model.safetensors").is_file():
            unwrapped.config.save_pretrained(tmp)  # full weights + config: loads with from_pretrained
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))  # last: marks it complete
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


def remove_partial_saves(run_dir: Path) -> None:
    """Drop .tmp-* folders left by a save that a crash cut short."""
    for stale in (Path(run_dir) / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


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
                  eval_history: list, world_size: int) -> dict:
    """The trainer's part of a checkpoint (trainer_state.json): what accelerate's state does not hold."""
    return {"step": step, "sampler": sampler_state, "model": model_path, "nonfinite_streak": nonfinite_streak,
            "eval_before": eval_before, "eval_history": eval_history, "world_size": world_size}


def resume_point(run_dir: Path, max_steps: int) -> tuple[Path, dict]:
    """The newest complete checkpoint of the run folder and its trainer state; a TrainingError
    when there is none or the run is already complete."""
    run_dir = Path(run_dir)
    ck = latest_checkpoint(run_dir)
    if ck is None:
        raise TrainingError(
            f"--resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'} (one is written every "
            f"train.save_every steps); nothing to resume. To start the run over: srft train --config "
            f"{run_dir / 'config.yaml'} --output-dir {run_dir} --train.overwrite true")
    state = read_state(ck)
    if state["step"] >= max_steps:
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
