"""Resume and atomic checkpoints: a run killed with SIGKILL and resumed with
`srft train --resume DIR` ends exactly where the uninterrupted run ends; a save cut
short leaves the previous checkpoint loadable and is never taken for a checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from srft.cli import main
from srft.config import Config, apply_overrides
from srft.metrics import read_metrics
from srft.trainer import Trainer, TrainingError, latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
VOLATILE = ("time/", "throughput/")  # wall-clock metrics differ between any two runs


def train_args(model_dir, data, out, steps=6) -> list[str]:
    return ["train", "--model", str(model_dir), "--output-dir", str(out), "--max-steps", str(steps),
            "--data.dataset", str(data), "--data.reward", "testbed", "--train.prompts_per_step", "4",
            "--rollout.n_rollouts", "3", "--rollout.max_new_tokens", "8", "--train.micro_batch_size", "8",
            "--train.eval_every", "0", "--train.save_every", "1", "--optim.lr", "1e-2", "--seed", "3"]


def cli_env() -> dict:
    # one thread everywhere: the runs being compared do the same float operations in the same order
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srft.cli", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=REPO, timeout=timeout)


def assert_same_run(a: Path, b: Path) -> None:
    """Same final weights (every tensor bit for bit), same metrics rows (no duplicate steps)."""
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert set(wa) == set(wb)
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"tensors that differ: {differ}"
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in rb] == [r["step"] for r in ra] == list(range(1, len(ra) + 1))
    for x, y in zip(ra, rb):
        assert set(x) == set(y)
        diff = {k: (x[k], y[k]) for k in x if not k.startswith(VOLATILE) and x[k] != y[k]}
        assert not diff, f"step {x['step']}: {diff}"


def without_timings(d):
    """eval.json without wall-clock seconds and the run's own folder name."""
    if isinstance(d, dict):
        return {k: without_timings(v) for k, v in d.items() if k not in ("seconds", "train_seconds", "final")}
    return [without_timings(x) for x in d] if isinstance(d, list) else d


def test_sigkill_mid_training_then_resume_matches_uninterrupted(tiny_model_dir, tiny_jsonl, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "killed"
    r = run_cli(train_args(tiny_model_dir, tiny_jsonl, ref))
    assert r.returncode == 0, r.stderr[-3000:]

    kill_after = random.Random(5).randint(1, 4)  # the checkpoint after which the run is killed (fixed seed)
    proc = subprocess.Popen([sys.executable, "-m", "srft.cli", *train_args(tiny_model_dir, tiny_jsonl, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(), cwd=REPO)
    marker = out / "checkpoints" / f"step-{kill_after:06d}" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {err[-2000:]}"
    assert not (out / "final").exists(), "killed after the end of training: nothing was interrupted"
    ck = latest_checkpoint(out)
    assert ck is not None and int(ck.name.split("-")[1]) >= kill_after

    r = run_cli(["train", "--resume", str(out)])
    assert r.returncode == 0, r.stderr[-3000:]
    step = int(ck.name.split("-")[1])
    assert f"resuming {out} from checkpoint {ck.name} (step {step} of 6)" in r.stdout + r.stderr
    assert_same_run(ref, out)
    ev_ref, ev = (json.loads((d / "eval.json").read_text()) for d in (ref, out))
    assert without_timings(ev) == without_timings(ev_ref) and ev["steps"] == 6


# ------------------------------------------------------------------ in-process runs
def tiny_cfg(model_dir, out, **over) -> Config:
    base = {"model.name_or_path": str(model_dir), "train.output_dir": str(out), "train.max_steps": 4,
            "train.prompts_per_step": 4, "rollout.n_rollouts": 3, "rollout.max_new_tokens": 8,
            "train.micro_batch_size": 8, "train.eval_every": 2, "train.save_every": 1, "eval.limit": 3,
            "eval.max_new_tokens": 6, "optim.lr": 1e-2, "train.seed": 1}
    return apply_overrides(Config(), {**base, **over}, "test")


class Interrupt(Exception):
    """Stands in for a crash: raised out of the training loop."""


def quiet(*_):
    pass


def test_resume_restores_eval_history_and_does_not_rerun_before_eval(tiny_model_dir, tmp_path, monkeypatch):
    """Testbed evaluation sets (eval.json before / history / after) survive an interruption."""
    ref = tmp_path / "ref"
    Trainer(tiny_cfg(tiny_model_dir, ref), log=quiet).train()

    out = tmp_path / "run"
    original = Trainer.save_checkpoint

    def crash_after_step_3(self):
        path = original(self)
        if self.step == 3:
            raise Interrupt
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_after_step_3)
    with pytest.raises(Interrupt):
        Trainer(tiny_cfg(tiny_model_dir, out), log=quiet).train()
    monkeypatch.undo()
    state = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["eval_history"]] == [0, 2] and state["eval_before"]

    calls = []
    monkeypatch.setattr(Trainer, "evaluate", lambda self, _f=Trainer.evaluate: calls.append(self.step) or _f(self))
    logs = []
    Trainer(tiny_cfg(tiny_model_dir, out, **{"train.resume": str(out)}), log=logs.append).train()
    assert calls == [4]  # only the final evaluation: "before" comes from the checkpoint
    assert any("from checkpoint step-000003 (step 3 of 4)" in str(m) for m in logs)
    assert_same_run(ref, out)
    ev_ref, ev = (without_timings(json.loads((d / "eval.json").read_text())) for d in (ref, out))
    assert ev == ev_ref and [h["step"] for h in ev["history"]] == [0, 2, 4]


def test_interrupted_save_keeps_previous_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    """torch.save fails half-way through the step-2 save: the run stops naming step 1, which stays
    complete and loadable; the half-written folder is removed (a .tmp folder left by a kill is never a
    checkpoint either), and --resume continues from step 1."""
    out = tmp_path / "run"
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        if "step-000002" in str(f):
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    cks = out / "checkpoints"
    with pytest.raises(TrainingError, match=r"step 2: writing the checkpoint step-000002 failed \(OSError: \[Errno 28\] "
                       r"No space left on device\) - the disk is full .* Last good checkpoint: .*step-000001"):
        Trainer(tiny_cfg(tiny_model_dir, out, **{"train.eval_every": 0}), log=quiet).train()
    monkeypatch.undo()
    assert sorted(p.name for p in cks.iterdir()) == ["step-000001"]  # the half-written folder is removed
    (cks / ".tmp-step-000002").mkdir()  # as a kill in the middle of the save leaves it
    (cks / ".tmp-step-000002" / "model.safetensors").write_bytes(b"half")
    AutoModelForCausalLM.from_pretrained(cks / "step-000001")  # loads
    state = json.loads((cks / "step-000001" / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["sampler"]["pos"] == 4
    (cks / "step-000009").mkdir()  # a folder without trainer_state.json is not a checkpoint either
    assert latest_checkpoint(out) == cks / "step-000001"

    logs = []
    trainer = Trainer(tiny_cfg(tiny_model_dir, out, **{"train.resume": str(out), "train.eval_every": 0}),
                      log=logs.append)
    assert trainer.step == 1 and not (cks / ".tmp-step-000002").exists()
    trainer.train()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resume_refusals_exit_2(tiny_model_dir, tiny_jsonl, tmp_path, capsys):
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    assert main(["train", "--resume", str(nothing)]) == 2
    assert "no config.yaml there" in capsys.readouterr().err

    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_jsonl, out, steps=1)
    assert main([*args, "--train.save_every", "0"]) == 0  # no checkpoint written
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint in" in err and "--train.overwrite true" in err

    done = tmp_path / "done"
    assert main(train_args(tiny_model_dir, tiny_jsonl, done, steps=1)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(done)]) == 2  # complete: its end (final/, eval.json, plots) is written
    assert "nothing left to train (pass --max-steps N with N > 1" in capsys.readouterr().err
    assert main(["train", "--resume", str(done), "--config", str(done / "config.yaml")]) == 2
    assert "drop --config" in capsys.readouterr().err
    assert main(["train", "--resume", str(done), "--max-steps", "2"]) == 0  # extending a finished run
    assert [r["step"] for r in read_metrics(done / "metrics.jsonl")] == [1, 2]


def test_resume_of_nonfinite_streak_counts_on(tiny_model_dir, tmp_path):
    """The consecutive non-finite count is part of the trainer state."""
    out = tmp_path / "run"
    trainer = Trainer(tiny_cfg(tiny_model_dir, out, **{"train.eval_every": 0}), log=quiet)
    trainer.nonfinite_streak = 2
    trainer.step = 1
    trainer.save_checkpoint()
    again = Trainer(tiny_cfg(tiny_model_dir, out, **{"train.resume": str(out), "train.eval_every": 0}), log=quiet)
    assert again.nonfinite_streak == 2 and again.step == 1
    at_the_end = Trainer(tiny_cfg(tiny_model_dir, out, **{"train.resume": str(out), "train.max_steps": 1}), log=quiet)
    assert at_the_end.step == 1  # steps done, no final/: resumable, to write the run's end


def test_lora_run_resumes_to_the_same_model(tiny_model_dir, tiny_jsonl, tmp_path):
    """LoRA: the checkpoint holds the adapter; resume puts it back on the base model."""
    pytest.importorskip("peft")
    over = {"model.lora_r": 4, "data.dataset": str(tiny_jsonl), "data.reward": "testbed"}
    ref, out = tmp_path / "ref", tmp_path / "run"
    Trainer(tiny_cfg(tiny_model_dir, ref, **over, **{"train.max_steps": 2}), log=quiet).train()
    Trainer(tiny_cfg(tiny_model_dir, out, **over, **{"train.max_steps": 1}), log=quiet).train()
    assert (out / "checkpoints" / "step-000001" / "adapter_model.safetensors").is_file()
    Trainer(tiny_cfg(tiny_model_dir, out, **over, **{"train.max_steps": 2, "train.resume": str(out)}),
            log=quiet).train()
    assert_same_run(ref, out)


def test_staged_run_resumes_in_its_unfinished_stage(tiny_model_dir, tmp_path, monkeypatch):
    """sft_then_grpo crashed after the first checkpoint of its GRPO stage: --resume keeps the
    finished SFT stage, continues the GRPO stage, and ends as the uninterrupted run."""
    from srft.objective import get_preset
    from srft.stages import run_stages

    over = {**get_preset("sft_then_grpo").overrides, "train.preset": "sft_then_grpo"}
    ref, out = tmp_path / "ref", tmp_path / "run"
    run_stages(tiny_cfg(tiny_model_dir, ref, **over), log=quiet)
    real_save = Trainer.save_checkpoint

    def crash_in_stage_2(self):
        path = real_save(self)
        if self.cfg.train.preset == "grpo" and self.step == 1:
            raise Interrupt()
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_in_stage_2)
    with pytest.raises(Interrupt):
        run_stages(tiny_cfg(tiny_model_dir, out, **over), log=quiet)
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    assert (out / "stage1-sft" / "final").exists() and not (out / "final").exists()
    sft_final = (out / "stage1-sft" / "final" / "model.safetensors").stat().st_mtime_ns

    assert main(["train", "--resume", str(out)]) == 0
    assert (out / "stage1-sft" / "final" / "model.safetensors").stat().st_mtime_ns == sft_final  # not redone
    assert_same_run(ref, out)
    assert [r["train/stage"] for r in read_metrics(out / "metrics.jsonl")] == [1, 1, 2, 2]
    ev_ref, ev = (json.loads((d / "eval.json").read_text()) for d in (ref, out))
    for key in ("before", "after", "history", "steps"):
        assert without_timings(ev[key]) == without_timings(ev_ref[key]), key
    assert main(["train", "--resume", str(out)]) == 2  # complete: nothing to resume



def test_extending_a_finished_run_continues_its_decay(tiny_model_dir, tmp_path):
    """A 2-step run extended to 4 with --resume (linear decay): the resumed steps take the 4-step
    schedule's rates (1/2, 1/4 of lr), not the 0 the 2-step schedule ended at."""
    out = tmp_path / "run"
    over = {"optim.schedule": "linear", "optim.lr": 1e-2, "train.eval_every": 0}
    Trainer(tiny_cfg(tiny_model_dir, out, **over, **{"train.max_steps": 2}), log=quiet).train()
    Trainer(tiny_cfg(tiny_model_dir, out, **over, **{"train.max_steps": 4, "train.resume": str(out)}),
            log=quiet).train()
    lrs = [r["optim/lr"] for r in read_metrics(out / "metrics.jsonl")]
    assert lrs == pytest.approx([1e-2, 5e-3, 5e-3, 2.5e-3])
