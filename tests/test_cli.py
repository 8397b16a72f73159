"""The command line, run as a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path



def run(args, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "srft.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])


def test_train_then_eval_subprocess(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    r = run(["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "2",
             "--train.prompts_per_step", "4", "--rollout.max_new_tokens", "6", "--eval.limit", "5",
             "--eval.max_new_tokens", "6", "--seed", "1", "--train.save_every", "0"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| id_chain4 |" in r.stdout and "| ood_mc5 |" in r.stdout and "base" in r.stdout
    assert (out / "final" / "model.safetensors").is_file()
    cfg = (out / "config.yaml").read_text()
    assert "max_steps: 2" in cfg and "seed: 1" in cfg
    again = run(["train", "--model", str(tiny_model_dir), "--output-dir", str(out), "--max-steps", "1"])
    assert again.returncode == 2 and "already holds a run" in again.stderr  # nothing is overwritten
    assert (out / "final" / "model.safetensors").is_file()
    r = run(["eval", "--model", str(out / "final"), "--eval.limit", "5", "--eval.max_new_tokens", "6",
             "--output-dir", str(tmp_path / "ev")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| id_chain4 |" in r.stdout
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())["results"]
    assert res["id_chain4"]["n"] == 5


def test_bad_flag_value_exits_2_naming_the_field(tmp_path):
    r = run(["train", "--objective.aggregation", "avg", "--output-dir", str(tmp_path / "x")])
    assert r.returncode == 2
    assert "objective.aggregation" in r.stderr


def test_missing_model_folder_exits_2(tmp_path):
    r = run(["eval", "--model", str(tmp_path / "nope")])
    assert r.returncode == 2 and "nope" in r.stderr


def test_presets_lists_formulas():
    r = run(["presets"])
    assert r.returncode == 0
    for name in ("srft", "grpo", "sft"):
        assert f"{name}\n" in r.stdout
