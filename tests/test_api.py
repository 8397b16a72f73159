"""The Python API (srft.SRFTTrainer): a notebook-style script trains on a list of dicts with a reward
function object and an eval dataset, with no file written by the user; a model object works too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = '''\
from srft import SRFTConfig, SRFTTrainer

def reward_len(completions, **kwargs):  # TRL's quickstart reward signature
    return [-abs(6 - len(c)) / 6 for c in completions]

rows = [{"prompt": f"{a} + {b} =", "demonstration": f" {a + b}", "answer": str(a + b)}
        for a in range(9) for b in range(9)]
cfg = SRFTConfig()
cfg.train.max_steps, cfg.train.prompts_per_step, cfg.train.save_every = 2, 4, 0
cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens = 8, 8
cfg.train.output_dir = "runs/api"
trainer = SRFTTrainer(model=MODEL, args=cfg, train_dataset=rows[:60],
                      eval_dataset=rows[60:70], reward_funcs=reward_len)
print(trainer.train()["steps"])
'''


def test_notebook_style_script(tiny_model_dir, tmp_path):
    script = tmp_path / "notebook.py"  # a plain script: no `if __name__ == "__main__":`
    script.write_text(f"MODEL = {str(tiny_model_dir)!r}\n" + SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "2"
    run = tmp_path / "runs" / "api"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "loss/total" in x] == [1, 2]
    assert "loss/sft_demo" in rows[0]  # SRFT, the default preset
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["before"]) == set(ev["after"]) == {"eval"}  # the eval dataset, before and after
    assert ev["after"]["eval"]["n"] == 10
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["dataset"] == "<in memory: 60 rows>" and saved["eval"]["dataset"] == "<in memory: 10 rows>"
    assert saved["data"]["reward"] == "__main__:reward_len"


def test_model_object_and_preset_name(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srft import SRFTConfig, SRFTTrainer

    def reward_short(completions, **kwargs):
        return [1.0 if len(c) < 6 else 0.0 for c in completions]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = SRFTConfig()
    cfg.train.max_steps, cfg.train.prompts_per_step, cfg.train.save_every = 1, 4, 0
    cfg.rollout.max_new_tokens, cfg.eval.limit = 8, 0
    cfg.train.output_dir = str(tmp_path / "run")
    rows = [{"prompt": f"{a} - {b} =", "answer": str(a - b)} for a in range(5) for b in range(5)]
    trainer = SRFTTrainer(model=model, args=cfg, train_dataset=rows, reward_funcs=[reward_short],
                          processing_class=tok)
    trainer.args.train.preset = "grpo"  # set after construction, in Python: still trains GRPO
    out = trainer.train()
    assert out["steps"] == 1
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss/rl_self" in row and "loss/sft_demo" not in row
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
