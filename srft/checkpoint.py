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
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

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
