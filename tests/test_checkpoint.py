"""Checkpoint and resume rules (srft.checkpoint) on hand-made run folders: which checkpoint
counts, when a resume is refused and what the message says, retention, and the
non-finite guard. The end-to-end resume runs are in tests/test_resume.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srft import checkpoint as ckpt
from srft.distributed import Dist
from srft.errors import TrainingError


def fake_checkpoint(run: Path, step: int, complete: bool = True, **state) -> Path:
    folder = run / "checkpoints" / (f"step-{step:06d}" if complete else f".tmp-step-{step:06d}")
    folder.mkdir(parents=True)
    if complete:
        full = ckpt.trainer_state(step, {"n": 10, "epoch": 0, "pos": 0}, "testbed", 0, {}, [], 1)
        (folder / ckpt.STATE_FILE).write_text(json.dumps({**full, **state}))
    return folder


def test_newest_complete_checkpoint_counts(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 6, complete=False)  # a save cut short
    (tmp_path / "checkpoints" / "step-000008").mkdir()  # no trainer_state.json: never finished
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000004"
    ck, state = ckpt.resume_point(tmp_path, max_steps=10)
    assert ck.name == "step-000004" and state["step"] == 4
    ckpt.remove_partial_saves(tmp_path)
    assert not (tmp_path / "checkpoints" / ".tmp-step-000006").exists()


def test_resume_refusals_name_the_way_out(tmp_path):
    with pytest.raises(TrainingError, match=r"no complete checkpoint.*--train.overwrite true"):
        ckpt.resume_point(tmp_path, max_steps=10)
    fake_checkpoint(tmp_path, 10)
    ck, state = ckpt.resume_point(tmp_path, max_steps=10)  # the steps are done, the run's end is not written
    assert ck.name == "step-000010" and state["step"] == 10
    for name in ("final/model.safetensors", "eval.json", "plots/accuracy.png"):  # the end of the run
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert ckpt.run_is_complete(tmp_path)
    with pytest.raises(TrainingError, match=r"nothing left to train \(pass --max-steps N with N > 10"):
        ckpt.resume_point(tmp_path, max_steps=10)
    with pytest.raises(TrainingError, match=r"nothing left to train"):  # past max_steps
        ckpt.resume_point(tmp_path, max_steps=8)
    ck, state = ckpt.resume_point(tmp_path, max_steps=12)
    with pytest.raises(TrainingError, match=r"trained on 10 rows, the data now has 9"):
        ckpt.check_resumable(tmp_path, ck, state, n_rows=9, world=1)
    with pytest.raises(TrainingError, match=r"written by 1 process\(es\), this run has 2"):
        ckpt.check_resumable(tmp_path, ck, state, n_rows=10, world=2)
    ckpt.check_resumable(tmp_path, ck, state, n_rows=10, world=1)  # the same data and world size: fine


def test_check_finite_refuses_nan_weights(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt.check_finite(model, Dist(), tmp_path, 3, "checkpoint")  # finite: no error
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(TrainingError, match=r"step 3: parameter weight is not finite; the checkpoint was not saved"):
        ckpt.check_finite(model, Dist(), tmp_path, 3, "checkpoint")
