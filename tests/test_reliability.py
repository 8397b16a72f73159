"""Faults and bad input: numerical guards, validation through the command line (exit
status 2, a message naming the field or row), pickle weights, model output never run
as code, and a run that writes only to its own folder. docs/reliability.md lists
each case with the test that checks it."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import srft.update as update_mod
from srft.cli import main
from srft.config import Config, ModelConfig, apply_overrides
from srft.metrics import read_metrics
from srft.trainer import Trainer, TrainingError, latest_checkpoint, load_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]


def quiet(*_):
    pass


ROWS = [{"prompt": f"Q:{a}+1\nA:", "demonstration": f"<think>{a}+1={a + 1}</think>{a + 1}", "answer": str(a + 1)}
        for a in range(4)]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_cfg(model_dir, out, **over) -> Config:
    """A 3-step run on ROWS (a JSONL file next to the run folder), scored by the testbed verifier."""
    data = write_rows(Path(out).parent / "rows.jsonl", ROWS)
    base = {"model.name_or_path": str(model_dir), "train.output_dir": str(out), "train.max_steps": 3,
            "data.dataset": str(data), "data.reward": "testbed",
            "train.prompts_per_step": 4, "rollout.n_rollouts": 3, "rollout.max_new_tokens": 6,
            "train.micro_batch_size": 16, "train.eval_every": 0, "train.save_every": 1, "eval.limit": 2,
            "eval.max_new_tokens": 4, "optim.lr": 1e-2}
    return apply_overrides(Config(), {**base, **over}, "test")


@pytest.fixture
def poison(monkeypatch):
    """Steps (1-based) whose loss is made NaN, through srft.objective.compute_loss as the update calls it."""
    steps: set[int] = set()
    state = {"trainer": None}
    real = update_mod.compute_loss

    def nan_loss(*a, **k):
        loss, mets = real(*a, **k)
        if state["trainer"] is not None and state["trainer"].step + 1 in steps:
            loss = loss * float("nan")
            return loss, {**mets, "loss/total": loss.detach()}
        return loss, mets

    monkeypatch.setattr(update_mod, "compute_loss", nan_loss)
    return steps, state


# ------------------------------------------------------------------ numerical guards
def test_nonfinite_step_is_skipped_logged_and_leaves_weights(tiny_model_dir, tmp_path, poison):
    steps, state = poison
    steps.add(2)
    out, logs = tmp_path / "run", []
    trainer = Trainer(tiny_cfg(tiny_model_dir, out, **{"train.save_total_limit": 3}), log=logs.append)
    state["trainer"] = trainer
    trainer.train()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["optim/skipped_updates"] for r in rows] == [0.0, 1.0, 0.0]
    assert rows[1]["loss/total"] is None  # NaN written as null, never as a number
    assert any("step 2: non-finite loss or gradient" in str(m) for m in logs)
    w1, w2, w3 = (load_file(out / "checkpoints" / f"step-{s:06d}" / "model.safetensors") for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the skipped step changed nothing
    assert not all(torch.equal(w2[k], w3[k]) for k in w2)  # the next good step trains again
    assert all(torch.isfinite(v).all() for v in load_file(out / "final" / "model.safetensors").values())


def test_nonfinite_steps_in_a_row_stop_the_run(tiny_model_dir, tmp_path, poison, capsys, monkeypatch):
    """Through `srft train`: exit status 2, the message names the step and the limit; the last good
    checkpoint loads and is finite; no final model is written."""
    steps, state = poison
    steps.update({3, 4, 5, 6})
    real_init = Trainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        state["trainer"] = self

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "__init__", init)
    code = main(["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "8",
                 "--data.dataset", str(write_rows(tmp_path / "rows.jsonl", ROWS)), "--data.reward", "testbed",
                 "--train.prompts_per_step", "4", "--rollout.n_rollouts", "3", "--rollout.max_new_tokens", "6",
                 "--eval.limit", "2", "--eval.max_new_tokens", "4", "--train.save_every", "2",
                 "--train.max_nonfinite_steps", "3"])
    err = capsys.readouterr().err
    assert code == 2
    assert ("srft: error: step 5: the loss or gradient was not finite for 3 steps in a row "
            "(train.max_nonfinite_steps=3); the run stopped. Last good checkpoint: ") in err
    assert "step-000004" in err and "--resume" in err
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    ck = latest_checkpoint(out)
    assert ck.name == "step-000004" and not (out / "final").exists()
    model = AutoModelForCausalLM.from_pretrained(ck)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((ck / "trainer_state.json").read_text())["nonfinite_streak"] == 2


def test_nonfinite_weights_are_never_saved(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(tiny_cfg(tiny_model_dir, out), log=quiet)
    trainer.step = 1
    good = trainer.save_checkpoint()
    with torch.no_grad():
        next(trainer.unwrapped.parameters())[0, 0] = float("inf")
    trainer.step = 2
    with pytest.raises(TrainingError, match=r"step 2: parameter .* is not finite; the checkpoint was not saved "
                                            r"\(last good checkpoint: .*step-000001\)"):
        trainer.save_checkpoint()
    with pytest.raises(TrainingError, match="the final model was not saved"):
        trainer.save_final()
    assert latest_checkpoint(out) == good and not (out / "final").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]


# ------------------------------------------------------------------ validation through the CLI
def bad_data(tmp_path, case: str) -> Path:
    """A data file with one fault."""
    p = tmp_path / f"{case}.jsonl"
    if case == "missing_answer":
        return write_rows(p, ROWS[:1] + [{k: v for k, v in ROWS[1].items() if k != "answer"}])
    if case == "empty_answer":
        return write_rows(p, ROWS[:1] + [{**ROWS[1], "answer": "  "}])
    if case == "empty_prompt":
        return write_rows(p, ROWS[:1] + [{**ROWS[1], "prompt": ""}])
    if case == "not_utf8":
        p.write_bytes(json.dumps(ROWS[0]).encode() + b'\n{"prompt": "\xff\xfe", "answer": "1"}\n')
        return p
    if case == "empty":
        p.write_text("")
        return p
    return write_rows(p, ROWS)


def model_without_weights(tmp_path, tiny_model_dir, pickle: bool) -> Path:
    d = tmp_path / ("pickle_model" if pickle else "no_weights")
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    if pickle:
        torch.save(load_file(tiny_model_dir / "model.safetensors"), d / "pytorch_model.bin")
    return d


CLI_CASES = {
    # id: (extra flags, data case, expected message)
    "group_below_2": (["--rollout.n_rollouts", "1", "--rollout.n_demos", "0"], "ok",
                      "a group needs at least 2 samples for advantages, got rollout.n_rollouts + rollout.n_demos = 1"),
    "more_demos_than_a_row_has": (["--rollout.n_demos", "2"], "ok",
                                  "row 0: field 'demonstration' has 1 demonstration(s), fewer than rollout.n_demos=2"),
    "mini_batches_do_not_divide": (["--train.mini_batches", "3"], "ok",
                                   "train.mini_batches (3) must divide train.prompts_per_step (4)"),
    "mini_batches_zero": (["--train.mini_batches", "0"], "ok", "train.mini_batches must be >= 1 (a whole number), got 0"),
    "micro_batch_zero": (["--train.micro_batch_size", "0"], "ok", "train.micro_batch_size must be >= 1"),
    "missing_answer": ([], "missing_answer", "row 1: field 'answer' is missing"),
    "empty_answer": ([], "empty_answer", "row 1: field 'answer' is empty"),
    "empty_prompt": ([], "empty_prompt", "row 1: field 'prompt' is empty"),
    "demos_over_limit_drop": (["--data.max_demo_tokens", "2"], "ok",
                              "no training rows left after applying data.long_demo_policy=drop: every row has a "
                              "demonstration longer than data.max_demo_tokens=2"),
    "unknown_prompt_column": (["--data.prompt_column", "question"], "ok",
                              "no column 'question' for field 'prompt' (configured)"),
    "unknown_config_field": (["--train.bogus", "1"], "ok", "unrecognized arguments: --train.bogus"),
    "unknown_yaml_field": (["--config", "{yaml}"], "ok", "unknown config field 'train.bogus'"),
    "not_utf8": ([], "not_utf8", "not_utf8.jsonl line 2: not UTF-8"),
    "empty_dataset": ([], "empty", "empty.jsonl: the file has no data rows"),
    "no_such_data_file": (["--data.dataset", "{tmp}/nope.jsonl"], "ok", "no such file or folder"),
    "model_without_weights": (["--model", "{no_weights}"], "ok", "has no *.safetensors weights"),
    "pickle_weights_refused": (["--model", "{pickle}"], "ok",
                               "found pickle weights ['pytorch_model.bin']: convert them to safetensors, or pass "
                               "--model.allow_pickle true"),
    "no_such_model": (["--model", "{tmp}/missing_model"], "ok", "model.name_or_path: no such folder"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_input_exits_2_naming_the_field_or_row(case, tiny_model_dir, tmp_path, capsys):
    flags, data_case, needle = CLI_CASES[case]
    (tmp_path / "c.yaml").write_text("train:\n  bogus: 1\n")
    subst = {"{yaml}": str(tmp_path / "c.yaml"), "{tmp}": str(tmp_path)}
    if "{no_weights}" in flags:
        subst["{no_weights}"] = str(model_without_weights(tmp_path, tiny_model_dir, pickle=False))
    if "{pickle}" in flags:
        subst["{pickle}"] = str(model_without_weights(tmp_path, tiny_model_dir, pickle=True))
    flags = [next((f.replace(k, v) for k, v in subst.items() if k in f), f) for f in flags]
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "1",
            "--data.dataset", str(bad_data(tmp_path, data_case)), "--data.reward", "testbed",
            "--train.prompts_per_step", "4", "--rollout.n_rollouts", "3", *flags]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects unknown flags itself, also with status 2
        code = e.code
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()  # nothing started


EARLY_CASES = {
    # id: (flags, what the message names); each is refused before the data or the model loads
    "unknown_engine": (["--rollout.engine", "sglang"], "--rollout.engine: invalid choice: 'sglang'"),
    "unknown_engine_in_yaml": (["--config", "{yaml_engine}"], "rollout.engine: 'sglang' is not one of ['hf', 'vllm']"),
    "vllm_not_installed": (["--rollout.engine", "vllm"], "rollout.engine: 'vllm' needs vLLM"),
    "reward_not_importable": (["--data.reward", "no_such_module:score"],
                              "data.reward: cannot import reward function 'no_such_module:score'"),
    "reward_weights_count": (["--data.reward", "testbed", "--data.reward_weights", "1,2"],
                             "data.reward_weights: 2 weights for 1 reward functions"),
    "tracker_not_installed": (["--train.report_to", "wandb"], "train.report_to: 'wandb' needs the wandb package"),
    "bad_dtype": (["--model.dtype", "fp8"], "--model.dtype: invalid choice: 'fp8'"),
    "unknown_preset": (["--preset", "ppo"], "--preset: invalid choice: 'ppo'"),
    "no_such_model_folder": (["--model", "{tmp}/missing_model"], "model.name_or_path: no such folder"),
    "no_such_benchmark": (["--eval.benchmark", "{tmp}/math.parquet"], "eval.benchmark: no such file"),
}


@pytest.mark.parametrize("case", list(EARLY_CASES))
def test_early_validation_exits_2_before_data_or_model_load(case, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """docs/reliability.md "Early validation": each case exits 2 naming the field, and neither the
    data nor the model is touched (both loaders fail the test if called)."""
    import importlib.util

    import srft.data
    import srft.eval_sets
    import srft.models
    import srft.run_inputs
    import srft.trainer
    from srft.rollout import vllm_engine

    def must_not_run(*_a, **_k):
        raise AssertionError("loaded before the bad value was caught")

    for mod in (srft.models, srft.trainer):
        monkeypatch.setattr(mod, "load_model_and_tokenizer", must_not_run)
    for mod in (srft.data, srft.run_inputs, srft.eval_sets):  # every module that reads rows
        monkeypatch.setattr(mod, "load_rows", must_not_run)
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    (tmp_path / "engine.yaml").write_text("rollout:\n  engine: sglang\n")
    subst = {"{yaml_engine}": str(tmp_path / "engine.yaml"), "{tmp}": str(tmp_path)}
    flags, needle = EARLY_CASES[case]
    flags = [next((f.replace(k, v) for k, v in subst.items() if k in f), f) for f in flags]
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "1",
            "--data.dataset", str(write_rows(tmp_path / "ok.jsonl", ROWS)), *flags]
    try:
        code = main(argv)
    except SystemExit as e:  # a choice given as a flag: argparse refuses it, also with status 2
        code = e.code
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_unreadable_data_file_exits_2(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """chmod 000 where permissions apply; as root (who reads anything) the read error is simulated."""
    data = write_rows(tmp_path / "locked.jsonl", ROWS)
    data.chmod(0)
    try:
        if os.access(data, os.R_OK):
            real = Path.read_bytes

            def denied(self):
                if self == data:
                    raise PermissionError(13, "Permission denied", str(self))
                return real(self)

            monkeypatch.setattr(Path, "read_bytes", denied)
        code = main(["train", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "run"),
                     "--data.dataset", str(data)])
    finally:
        data.chmod(0o644)
    assert code == 2
    assert "locked.jsonl: cannot read the file: Permission denied" in capsys.readouterr().err


def test_long_demonstrations_follow_the_policy(tiny_model_dir, tmp_path):
    long_demo = "<think>" + "1+1=2, " * 40 + "</think>2"
    data = write_rows(tmp_path / "d.jsonl", ROWS[:2] + [{**ROWS[2], "demonstration": long_demo}])
    logs = []
    t = Trainer(tiny_cfg(tiny_model_dir, tmp_path / "a", **{"data.dataset": str(data), "data.reward": "testbed",
                                                            "data.max_demo_tokens": 32}), log=logs.append)
    assert [e.index for e in t.examples] == [0, 1] and any("warning: 1 of 3 rows dropped" in str(m) for m in logs)
    t = Trainer(tiny_cfg(tiny_model_dir, tmp_path / "b", **{"data.dataset": str(data), "data.reward": "testbed",
                                                            "data.max_demo_tokens": 32,
                                                            "data.long_demo_policy": "truncate"}), log=logs.append)
    assert len(t.examples) == 3 and len(t.examples[2].demo_ids[0]) == 32
    assert any("1 demonstrations over data.max_demo_tokens=32 truncated" in str(m) for m in logs)


# ------------------------------------------------------------------ security
def test_pickle_weights_load_only_when_allowed(tiny_model_dir, tmp_path):
    d = model_without_weights(tmp_path, tiny_model_dir, pickle=True)
    with pytest.raises(FileNotFoundError, match=r"--model\.allow_pickle true"):
        load_model_and_tokenizer(str(d), ModelConfig())
    logs = []
    model, _, _ = load_model_and_tokenizer(str(d), ModelConfig(allow_pickle=True), log=logs.append)
    assert any("warning" in m and "pytorch_model.bin" in m and "model.allow_pickle" in m for m in logs)
    ref = load_file(tiny_model_dir / "model.safetensors")
    sd = model.state_dict()
    assert all(torch.equal(ref[k], sd[k]) for k in ref)


def test_model_output_is_never_run_as_code(tmp_path):
    """Hostile completions go through both verifiers as text; no srft module calls eval / exec / compile."""
    from srft.answers import extract_answer
    from srft.math_reward import verify_one
    from srft.testbed.tasks import score

    marker = tmp_path / "PWNED"
    payloads = [f"__import__('os').system('touch {marker}')", f"exec(\"open('{marker}', 'w')\")",
                f"eval(\"__import__('pathlib').Path('{marker}').touch()\")"]
    for p in payloads:
        completion = f"<think>x</think> \\boxed{{{p}}}"
        assert verify_one(extract_answer(completion), "1") == 0.0 and score(p, "1") == 0.0
    assert not marker.exists()
    for f in sorted((REPO / "srft").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in ("eval", "exec", "compile"), f"{f}:{node.lineno} calls {node.func.id}"


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_run_writes_only_to_its_run_folder(tiny_model_dir, tmp_path):
    """HOME, the working directory and TMPDIR are empty folders before the run and after it;
    the only new paths are under the run folder. ($SRFT_CACHE, the testbed base model's cache,
    is the documented exception and is not used with a local model.)"""
    home, cwd, tmp, cache = (tmp_path / n for n in ("home", "cwd", "tmp", "cache"))
    for d in (home, cwd, tmp, cache):
        d.mkdir()
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "out" / "run"
    before = snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "XDG_", "MPLCONFIGDIR", "TRANSFORMERS_", "TORCH_", "TRITON_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), SRFT_CACHE=str(cache), PYTHONPATH=str(REPO),
               PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "srft.cli", "train", "--model", str(model), "--output-dir", str(out),
                        "--max-steps", "2", "--data.dataset", str(data), "--data.reward", "testbed",
                        "--train.prompts_per_step", "2", "--rollout.n_rollouts", "3", "--rollout.max_new_tokens", "6",
                        "--train.save_every", "1"],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    new = snapshot(tmp_path) - before
    outside = sorted(p for p in new if not (p == "out" or p.startswith("out/run")))
    assert not outside, f"written outside the run folder: {outside}"
    assert (out / "final" / "model.safetensors").is_file()


def test_a_reward_that_never_returns_does_not_hang_the_run(tiny_model_dir, tmp_path):
    """A custom reward that sleeps forever (here in a child `srft train`): each call is abandoned after
    data.reward_timeout, its completions score 0 and are counted (reward/timeouts), the run finishes
    and the process exits at once (the abandoned calls are daemon threads)."""
    import time

    (tmp_path / "hang_reward.py").write_text("import threading\n\ndef hang(completions, **kwargs):\n"
                                             "    threading.Event().wait()\n")
    data, out = write_rows(tmp_path / "d.jsonl", ROWS), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "srft.cli", "train", "--model", str(tiny_model_dir), "--output-dir",
                        str(out), "--max-steps", "2", "--data.dataset", str(data), "--data.reward", "hang_reward:hang",
                        "--data.reward_timeout", "0.5", "--train.prompts_per_step", "2", "--rollout.n_rollouts", "3",
                        "--rollout.max_new_tokens", "6", "--eval.limit", "2", "--eval.max_new_tokens", "4"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.monotonic() - t0 < 120
    assert "reward function 'hang_reward:hang' did not return within data.reward_timeout=0.5 s at step 1" in r.stderr
    rows = read_metrics(out / "metrics.jsonl")
    assert [m["reward/timeouts"] for m in rows] == [8.0, 8.0]  # 2 prompts x (3 rollouts + 1 demonstration)
    assert [m["reward/mean"] for m in rows] == [0.0, 0.0]


def test_non_finite_rewards_stop_the_run_naming_the_reward(tiny_model_dir, tmp_path, capsys):
    """A reward of inf would make its group's advantages NaN (and the message blame the learning rate):
    the run stops at once, exit 2, naming the function, the completion and the value."""
    def infinite(completions, **kwargs):
        return [float("inf")] * len(completions)

    cfg = tiny_cfg(tiny_model_dir, tmp_path / "run")
    cfg.data.reward = infinite
    with pytest.raises(ValueError,
                       match=r"reward function 'infinite' returned a non-finite reward, inf, for completion 0 at "
                             r"step 1 .*rewards must be finite numbers"):
        Trainer(cfg, log=quiet).train()
    assert not (tmp_path / "run" / "checkpoints").exists()
