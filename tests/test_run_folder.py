"""The run folder (srft.run_dir, srft.checkpoint): one owner at a time (the lock), a run whose
steps are done but whose end is missing resumes to the uninterrupted run's files, overwrite means a
clean folder, a full disk and a damaged checkpoint end in messages and fallbacks. docs/reliability.md
lists each case with its test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import srft.stages as stages_mod
import srft.trainer as trainer_mod
from srft import run_dir
from srft.checkpoint import damage, latest_checkpoint, resume_point
from srft.cli import main
from srft.config import Config, apply_overrides
from srft.errors import TrainingError
from srft.metrics import read_metrics
from srft.presets import get_preset
from srft.run_dir import HOLDER_FILE, LOCK_FILE, RunFolderInUse, RunFolderLock
from srft.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"prompt": f"Q:{a}+1\nA:", "demonstration": f"<think>{a}+1={a + 1}</think>{a + 1}", "answer": str(a + 1)}
        for a in range(4)]


class Interrupt(Exception):
    """Stands in for a kill: raised out of the run."""


def quiet(*_):
    pass


def rows_file(tmp_path: Path) -> Path:
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def tiny_cfg(model_dir, out, **over) -> Config:
    """A 3-step run on ROWS with a checkpoint every step and a testbed evaluation at the end."""
    base = {"model.name_or_path": str(model_dir), "train.output_dir": str(out), "train.max_steps": 3,
            "data.dataset": str(rows_file(Path(out).parent)), "data.reward": "testbed",
            "train.prompts_per_step": 4, "rollout.n_rollouts": 3, "rollout.max_new_tokens": 6,
            "train.micro_batch_size": 16, "train.eval_every": 0, "train.save_every": 1, "train.save_total_limit": 5,
            "eval.limit": 2, "eval.max_new_tokens": 4, "optim.lr": 1e-2, "train.seed": 2}
    return apply_overrides(Config(), {**base, **over}, "test")


def cli_args(model_dir, data, out, steps=3) -> list[str]:
    return ["train", "--model", str(model_dir), "--output-dir", str(out), "--max-steps", str(steps),
            "--data.dataset", str(data), "--data.reward", "testbed", "--train.prompts_per_step", "4",
            "--rollout.n_rollouts", "3", "--rollout.max_new_tokens", "6", "--train.micro_batch_size", "16",
            "--train.eval_every", "0", "--train.save_every", "1", "--eval.limit", "2", "--eval.max_new_tokens", "4",
            "--optim.lr", "1e-2", "--seed", "2"]


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO)}


def sha(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


def eval_json(out: Path) -> dict:
    """eval.json without wall-clock seconds and the run's own folder names."""
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("seconds", "train_seconds", "final", "folder")}
        return [strip(x) for x in d] if isinstance(d, list) else d
    return strip(json.loads((out / "eval.json").read_text()))


def assert_same_end(ref: Path, out: Path) -> None:
    """The files an uninterrupted run writes: final weights byte for byte, eval.json, the plots, metrics."""
    assert sha(ref / "final" / "model.safetensors") == sha(out / "final" / "model.safetensors")
    assert eval_json(ref) == eval_json(out)
    assert sorted(p.name for p in (ref / "plots").iterdir()) == sorted(p.name for p in (out / "plots").iterdir())
    steps = [[r["step"] for r in read_metrics(d / "metrics.jsonl")] for d in (ref, out)]
    assert steps[0] == steps[1]


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails: a refusal must come before it."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(trainer_mod, "load_model_and_tokenizer", refuse)


def hold_in_child(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's lock (through srft's own RunFolderLock)."""
    code = textwrap.dedent(f"""
        import sys, time
        from srft.run_dir import RunFolderLock
        lock = RunFolderLock({str(folder)!r}, log=lambda *_: None).acquire()
        print("held", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env1())
    assert proc.stdout.readline().strip() == "held"
    return proc


# ------------------------------------------------------------------ one owner
def test_a_held_folder_refuses_a_second_run_and_resume_before_the_model_loads(tiny_model_dir, tmp_path, capsys,
                                                                              reference, no_model_load):
    """Another process holds the folder: a new run and a resume there stop with exit 2 naming its PID
    and host, before any model loads, and write nothing."""
    out = tmp_path / "run"
    holder = hold_in_child(out)
    try:
        assert main(cli_args(tiny_model_dir, rows_file(tmp_path), out)) == 2
        err = capsys.readouterr().err
        assert f"srft: error: run folder {out} is in use: PID {holder.pid} on host {socket.gethostname()}" in err
        assert "holds its lock" in err and "--output-dir" in err
        assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_FILE, HOLDER_FILE])
    finally:
        holder.kill()
        holder.wait()
    done = tmp_path / "done"
    shutil.copytree(reference, done)
    before = {p: p.stat().st_mtime_ns for p in done.rglob("*")}
    holder = hold_in_child(done)
    try:
        assert main(["train", "--resume", str(done), "--max-steps", "4"]) == 2
        assert f"is in use: PID {holder.pid}" in capsys.readouterr().err
        assert {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.name != HOLDER_FILE} == {
            p: t for p, t in before.items() if p.name != HOLDER_FILE}
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_recognised(tiny_model_dir, tmp_path):
    """SIGKILL leaves the record but the operating system releases the lock: the next run takes it,
    says so, and leaves no record behind when it ends."""
    out = tmp_path / "run"
    holder = hold_in_child(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((out / HOLDER_FILE).read_text())["pid"] == holder.pid  # the stale record
    logs = []
    Trainer(tiny_cfg(tiny_model_dir, out, **{"train.max_steps": 1}), log=logs.append).train()
    assert any(f"the run of PID {holder.pid} on {socket.gethostname()}" in str(m) and "ended without releasing"
               in str(m) for m in logs)
    assert not (out / HOLDER_FILE).exists() and (out / "final").is_dir()


def test_the_lock_is_released_and_taken_again_in_one_process(tiny_model_dir, tmp_path, monkeypatch):
    """A notebook: a trainer built and never trained, then the cell run again; a construction that
    fails; a finished run: each leaves the folder free for the next one in this process and others."""
    out = tmp_path / "run"
    def cfg(**o):
        return tiny_cfg(tiny_model_dir, out, **{"train.max_steps": 1, **o})
    first = Trainer(cfg(), log=quiet)
    assert first.run_lock.held
    second = Trainer(cfg(), log=quiet)  # the same cell again: takes the lock over
    assert second.run_lock.held and not first.run_lock.held

    def broken(self, *a, **k):
        raise Interrupt
    monkeypatch.setattr(Trainer, "_build_stages", broken)
    with pytest.raises(Interrupt):  # fails after taking the lock: releases it
        Trainer(cfg(), log=quiet)
    monkeypatch.undo()
    second.train()
    assert not second.run_lock.held and not (out / HOLDER_FILE).exists()
    code = f"from srft.run_dir import RunFolderLock\nRunFolderLock({str(out)!r}).acquire().release()"
    other = subprocess.run([sys.executable, "-c", code], env=env1(), timeout=60, check=False)
    assert other.returncode == 0  # another process can take it
    Trainer(cfg(**{"train.resume": str(out), "train.max_steps": 2}), log=quiet).train()  # and this one again
    lock = RunFolderLock(out).acquire()
    lock.running = True  # a run in progress in this process is never taken over
    with pytest.raises(RunFolderInUse, match="in use by a run in progress in this process"):
        RunFolderLock(out).acquire()
    lock.release()


def test_only_the_main_process_takes_the_lock(tmp_path, monkeypatch):
    from srft.run_inputs import RunInputs

    monkeypatch.setenv("RANK", "1")
    cfg = apply_overrides(Config(), {"train.output_dir": str(tmp_path / "run")}, "test")
    lock = run_dir.hold_run_folder(RunInputs(cfg, None, False, [], None), log=quiet)
    assert not lock.held and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_runs_and_two_resumes_at_once(tiny_model_dir, tmp_path):
    """Two `srft train` on one folder at once: one trains, the other is refused (exit 2); the folder
    holds one run (each step once, the config of the run that trained). The same for two resumes."""
    data = rows_file(tmp_path)
    out = tmp_path / "run"

    def both(args_a, args_b):
        procs = [subprocess.Popen([sys.executable, "-m", "srft.cli", *a], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env1(), cwd=REPO) for a in (args_a, args_b)]
        return [(p.wait(timeout=300), p.communicate()[1]) for p in procs]

    res = both(cli_args(tiny_model_dir, data, out) + ["--seed", "0"],
               cli_args(tiny_model_dir, data, out) + ["--seed", "1"])
    codes = sorted(rc for rc, _ in res)
    assert codes == [0, 2], res
    winner = next(i for i, (rc, _) in enumerate(res) if rc == 0)
    loser_err = res[1 - winner][1]
    assert "is in use: PID" in loser_err or "already holds a run" in loser_err, loser_err[-2000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
    assert f"seed: {winner}" in (out / "config.yaml").read_text()

    res = both(["train", "--resume", str(out), "--max-steps", "5"], ["train", "--resume", str(out), "--max-steps", "5"])
    assert sorted(rc for rc, _ in res) == [0, 2], res
    loser_err = next(e for rc, e in res if rc == 2)
    assert "is in use: PID" in loser_err or "nothing left to train" in loser_err, loser_err[-2000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ the end of a run
@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> Path:
    """The uninterrupted 3-step run."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    Trainer(tiny_cfg(tiny_model_dir, ref), log=quiet).train()
    return ref


@pytest.mark.parametrize("cut", ["before_final", "before_eval_json", "before_plots"])
def test_a_run_killed_after_its_last_checkpoint_resumes_to_the_same_end(tiny_model_dir, tmp_path, monkeypatch,
                                                                       reference, cut, capsys):
    """--resume on a run whose steps are all done (checkpoint at max_steps) but whose final/, eval.json
    or plots are missing writes them, exit 0, the same files as the uninterrupted run (final weights
    byte for byte); nothing is trained again. A complete run is still refused."""
    out = tmp_path / "run"
    real_finish = trainer_mod.finish_run

    def killed(*a, **k):
        if cut == "before_final":
            raise Interrupt
        real_finish(*a, **k)
        shutil.rmtree(out / "plots")
        if cut == "before_eval_json":
            (out / "eval.json").unlink()
        raise Interrupt

    if cut == "before_final":
        monkeypatch.setattr(Trainer, "save_final", lambda self: killed())
    else:
        monkeypatch.setattr(trainer_mod, "finish_run", killed)
    with pytest.raises(Interrupt):
        Trainer(tiny_cfg(tiny_model_dir, out), log=quiet).train()
    monkeypatch.undo()
    assert latest_checkpoint(out).name == "step-000003" and not (out / "plots").exists()
    assert (out / "final").exists() == (cut != "before_final")

    steps = []
    monkeypatch.setattr(Trainer, "train_step", lambda self: steps.append(self.step))
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert steps == []  # nothing trained again
    assert ("resuming " + str(out) + " from checkpoint step-000003 (step 3 of 3); every step is done: writing the "
            "run's end (final/, eval.json, plots)") in capsys.readouterr().out
    assert_same_end(reference, out)
    assert main(["train", "--resume", str(out)]) == 2
    assert "nothing left to train" in capsys.readouterr().err


@pytest.mark.parametrize("cut", ["stage_final", "top_eval_json"])
def test_a_staged_run_killed_after_its_last_step_resumes_to_the_same_end(tiny_model_dir, tmp_path, monkeypatch, cut):
    """sft_then_grpo cut after its last checkpoint (before the last stage's final/), or after the
    stages (before the run's own eval.json): --resume ends with the uninterrupted run's files."""
    over = {**get_preset("sft_then_grpo").overrides, "train.preset": "sft_then_grpo", "train.max_steps": 2}
    ref, out = tmp_path / "ref", tmp_path / "run"
    stages_mod.run_stages(tiny_cfg(tiny_model_dir, ref, **over), log=quiet)
    if cut == "stage_final":
        real = Trainer.save_final
        monkeypatch.setattr(Trainer, "save_final",
                            lambda self: (_ for _ in ()).throw(Interrupt()) if self.cfg.train.preset == "grpo"
                            else real(self))
    else:
        monkeypatch.setattr(stages_mod, "finish_run", lambda *a, **k: (_ for _ in ()).throw(Interrupt()))
    with pytest.raises(Interrupt):
        stages_mod.run_stages(tiny_cfg(tiny_model_dir, out, **over), log=quiet)
    monkeypatch.undo()
    assert not (out / "eval.json").exists()
    assert main(["train", "--resume", str(out)]) == 0
    assert_same_end(ref, out)
    assert main(["train", "--resume", str(out)]) == 2


# ------------------------------------------------------------------ overwrite
def test_overwrite_over_a_finished_run_starts_from_a_clean_folder(tiny_model_dir, tmp_path, monkeypatch):
    """--train.overwrite true over an older run removes its checkpoints, final model, evaluation, plots
    and logs (said in the log; other files kept); a kill of the new run then resumes the new run."""
    out = tmp_path / "run"
    Trainer(tiny_cfg(tiny_model_dir, out, **{"train.max_steps": 3}), log=quiet).train()
    (out / "notes.txt").write_text("mine")
    real = Trainer.save_checkpoint

    def killed_after_step_1(self):
        real(self)
        raise Interrupt
    monkeypatch.setattr(Trainer, "save_checkpoint", killed_after_step_1)
    logs = []
    with pytest.raises(Interrupt):
        Trainer(tiny_cfg(tiny_model_dir, out, **{"train.overwrite": True, "train.seed": 5}), log=logs.append).train()
    monkeypatch.undo()
    said = [str(m) for m in logs if "train.overwrite: removed the earlier run" in str(m)]
    assert said and "checkpoints/" in said[0] and "final/" in said[0] and "eval.json" in said[0]
    assert "kept what srft does not write: notes.txt" in said[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]  # the old run's are gone
    assert not (out / "final").exists() and not (out / "eval.json").exists() and not (out / "plots").exists()
    assert (out / "notes.txt").read_text() == "mine"
    ck, state = resume_point(out, 3)
    assert ck.name == "step-000001" and state["sampler"]["seed"] == 5  # the new run's
    Trainer(tiny_cfg(tiny_model_dir, out, **{"train.resume": str(out), "train.seed": 5}), log=quiet).train()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


# ------------------------------------------------------------------ faults
FULL_DISK_CHILD = """
import resource, sys
from srft.cli import main
from srft.trainer import Trainer
real = Trainer.save_checkpoint
def save_then_fill_the_disk(self):
    path = real(self)
    # from now on no file may grow past 20 KB (the checkpoint's model.safetensors is ~110 KB): the
    # writers get EFBIG from the operating system, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return path
Trainer.save_checkpoint = save_then_fill_the_disk
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("limit, writer", [(20_000, "SafetensorError"), (150_000, "RuntimeError")],
                         ids=["safetensors", "torch"])
def test_a_full_disk_stops_with_the_last_good_checkpoint(tiny_model_dir, tmp_path, limit, writer):
    """A real write failure (RLIMIT_FSIZE in a child process: the writers fail as on a full disk;
    20 KB stops safetensors' model.safetensors, 150 KB torch's optimizer.bin) while writing checkpoint
    2: exit 2 with a message naming checkpoint 1; the half-written folder is removed; --resume
    continues from checkpoint 1."""
    out, data = tmp_path / "run", rows_file(tmp_path)
    r = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD.replace("20_000", str(limit)),
                        *cli_args(tiny_model_dir, data, out)],
                       capture_output=True, text=True, env=env1(), cwd=REPO, timeout=300, check=False)
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr
    assert f"srft: error: step 2: writing the checkpoint step-000002 failed ({writer}: " in err, err[-3000:]
    assert "the disk is full (or a file size or quota limit was hit). The run stopped. Last good checkpoint: " \
           f"{out / 'checkpoints' / 'step-000001'}; once there is room, srft train --resume {out}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]
    assert main(["train", "--resume", str(out)]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tiny_model_dir, tmp_path, monkeypatch,
                                                                        reference):
    """The newest checkpoint's model.safetensors is cut short (a disk that filled, a copy cut short):
    the resume says so, sets it aside and continues from the checkpoint before it, ending as the
    uninterrupted run."""
    out = tmp_path / "run"
    real = Trainer.save_checkpoint

    def killed_after_step_2(self):
        path = real(self)
        if self.step == 2:
            raise Interrupt
        return path
    monkeypatch.setattr(Trainer, "save_checkpoint", killed_after_step_2)
    with pytest.raises(Interrupt):
        Trainer(tiny_cfg(tiny_model_dir, out), log=quiet).train()
    monkeypatch.undo()
    weights = out / "checkpoints" / "step-000002" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    assert damage(weights.parent) == f"model.safetensors has {size // 2} bytes, {size} were written"
    assert resume_point(out, 3)[0].name == "step-000001"
    logs = []
    Trainer(tiny_cfg(tiny_model_dir, out, **{"train.resume": str(out)}), log=logs.append).train()
    text = "\n".join(map(str, logs))
    assert (f"checkpoint step-000002 is damaged (model.safetensors has {size // 2} bytes, {size} were written): set "
            f"aside as {out / 'checkpoints' / '.damaged-step-000002'}; resuming from step-000001") in text
    assert "from checkpoint step-000001 (step 1 of 3)" in text
    assert_same_end(reference, out)

    for ck in (out / "checkpoints").glob("step-*"):  # every checkpoint damaged: refused, naming each
        (ck / "trainer_state.json").write_text("{")
    with pytest.raises(TrainingError, match=r"no intact checkpoint .*damaged: step-000003: trainer_state.json does not "
                                            r"read"):
        resume_point(out, 5)
