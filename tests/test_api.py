"""The Python API (srft.SRFTTrainer): a notebook-style script trains on a list of dicts with a reward
function object and an eval dataset, with no file written by the user; a model object works too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = '''\
from srft import SRFTConfig, SRFTTrainer

def reward_len(completions, **kwargs):  # TRL's quickstart reward signature
    return [-abs(6 - len(c)) / 6 for c in completions]

rows = [{"prompt": f"{a} + {b} =", "completion": f" {a + b}"}  # TRL's prompt-completion format
        for a in range(9) for b in range(9)]
cfg = SRFTConfig()
cfg.train.max_steps, cfg.train.prompts_per_step, cfg.train.save_every = 2, 4, 0
cfg.train.log_every = 1
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
    out = r.stdout.strip().splitlines()
    assert out[-1] == "2"
    # stdout is not a terminal: one plain progress line per train.log_every steps
    progress = [x for x in out if x.startswith("[srft] step ")]
    assert [x.split()[2] for x in progress] == ["1/2", "2/2"], out
    assert "tok/s" in progress[0] and "elapsed" in progress[0] and "eval eval " in progress[1]
    run = tmp_path / "runs" / "api"
    done = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert {c["step"] for c in done} == {1, 2} and all(set(c) == {"step", "group", "prompt", "completion",
                                                                   "reward", "advantage", "demo"} for c in done)
    assert any(c["demo"] for c in done) and any(not c["demo"] for c in done)
    demo = next(c for c in done if c["demo"])
    assert demo["completion"] == " " + str(eval(demo["prompt"].rstrip(" ="))) and demo["prompt"].endswith("=")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "loss/total" in x] == [1, 2]
    assert "loss/sft_demo" in rows[0]  # SRFT, the default preset
    ev = json.loads((run / "eval.json").read_text())
    assert set(ev["before"]) == set(ev["after"]) == {"eval"}  # the eval dataset, before and after
    assert ev["after"]["eval"]["n"] == 10
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # in-memory rows are written beside config.yaml, which names them (test_config_yaml_of_a_python_run_re_runs)
    assert saved["data"]["dataset"] == str(run / "train_rows.jsonl").replace(str(tmp_path) + "/", "")
    assert len((run / "train_rows.jsonl").read_text().splitlines()) == 60
    assert len((run / "eval_rows.jsonl").read_text().splitlines()) == 10
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


def _tiny(tmp_path, **train):
    from srft import SRFTConfig

    cfg = SRFTConfig()
    cfg.train.max_steps, cfg.train.prompts_per_step, cfg.train.save_every = 1, 4, 0
    cfg.rollout.n_rollouts, cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens = 3, 6, 6
    cfg.train.output_dir = str(tmp_path / "run")
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_conversational_messages_dataset_trains(tiny_model_dir, tmp_path):
    """TRL's `messages` format: the last assistant turn is the demonstration; no `answer` column,
    since the reward does not name one."""
    from srft import SRFTTrainer

    def reward_len(completions, **kwargs):
        return [-abs(6 - len(c)) / 6 for c in completions]

    rows = [{"messages": [{"role": "user", "content": f"{a} + {b} ="}, {"role": "assistant", "content": f"{a + b}"}]}
            for a in range(4) for b in range(4)]
    out = SRFTTrainer(model=str(tiny_model_dir), args=_tiny(tmp_path, log_every=1), train_dataset=rows,
                      reward_funcs=reward_len).train()
    assert out["steps"] == 1
    done = [json.loads(x) for x in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    demo = next(c for c in done if c["demo"])
    a, b = (int(x) for x in demo["prompt"][0]["content"].rstrip(" =").split(" + "))
    assert demo["completion"] == str(a + b)


def test_periodic_evaluation_on_a_benchmark_file(tiny_model_dir, tmp_path):
    """--eval.benchmark FILE: each data_source is an evaluation set scored by the math verifier,
    avg@k, before, every train.eval_every steps and after, into eval.json, metrics and the plot."""
    import pandas as pd

    from srft import SRFTTrainer
    from tests.conftest import tiny_rows, verl_row

    bench = tmp_path / "bench.parquet"
    pd.DataFrame([verl_row(i, f"{i} + 1 = ?", "x", str(i + 1), source="add") for i in range(3)] +
                 [verl_row(9, "Pick A.", "x", "A", source="choice")]).to_parquet(bench)
    cfg = _tiny(tmp_path, max_steps=2, eval_every=1)
    cfg.eval.benchmark, cfg.eval.k, cfg.eval.temperature = str(bench), 2, 1.0
    out = SRFTTrainer(model=str(tiny_model_dir), args=cfg, train_dataset=tiny_rows(), reward_funcs="testbed").train()
    assert set(out["before"]) == set(out["after"]) == {"add", "choice"}
    assert out["after"]["add"]["n"] == 3 and out["after"]["add"]["k"] == 2 and out["after"]["choice"]["n"] == 1
    assert [h["step"] for h in out["history"]] == [0, 1, 2]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("eval/add/accuracy" in r and "eval/choice/accuracy" in r for r in rows)
    assert (tmp_path / "run" / "plots" / "accuracy.png").exists()


def test_periodic_evaluation_on_the_papers_protocol(tiny_model_dir, tmp_path):
    """eval.protocol srft-fast over two benchmark files: its k per source (avg@4 on AIME), its
    temperature, options shuffled; the token budget stays eval.max_new_tokens."""
    from srft import SRFTTrainer
    from tests.conftest import tiny_rows
    from tests.test_protocol import bench_files

    files = bench_files(tmp_path)
    cfg = _tiny(tmp_path, max_steps=1, eval_every=1)
    cfg.eval.benchmark, cfg.eval.protocol = ",".join(str(f) for f in files[:2]), "srft-fast"
    out = SRFTTrainer(model=str(tiny_model_dir), args=cfg, train_dataset=tiny_rows(), reward_funcs="testbed").train()
    assert set(out["after"]) == {"aime", "math", "arc_c"}
    assert (out["after"]["aime"]["k"], out["after"]["math"]["k"], out["after"]["arc_c"]["k"]) == (4, 1, 1)
    assert all(r["mean_length"] <= 6 for r in out["after"].values())
    cfg.eval.benchmark, cfg.train.output_dir = None, str(tmp_path / "run2")
    with pytest.raises(ValueError, match="eval.protocol: 'srft-fast' evaluates benchmark files"):
        SRFTTrainer(model=str(tiny_model_dir), args=cfg, train_dataset=tiny_rows(), reward_funcs="testbed").train()
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()


def test_push_to_hub_after_training(tiny_model_dir, tmp_path, monkeypatch):
    """train.push_to_hub: final/ and its model card go to the hub (the hub client's two network
    calls are replaced by recorders; nothing leaves the machine)."""
    import huggingface_hub

    from srft import SRFTTrainer
    from tests.conftest import tiny_rows

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)) or repo_id)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload_folder", kw["repo_id"], kw)) or "commit-url")
    cfg = _tiny(tmp_path, push_to_hub=True, hub_model_id="me/srft-tiny")
    cfg.eval.limit = 0
    SRFTTrainer(model=str(tiny_model_dir), args=cfg, train_dataset=tiny_rows(), reward_funcs="testbed").train()
    assert [c[:2] for c in calls] == [("create_repo", "me/srft-tiny"), ("upload_folder", "me/srft-tiny")]
    assert Path(calls[1][2]["folder_path"]) == tmp_path / "run" / "final"
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "srft" in card and "Preset" in card


def test_peft_config_becomes_the_lora_fields():
    from peft import LoraConfig

    from srft import SRFTTrainer

    t = SRFTTrainer(args="grpo", peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                         target_modules=["v_proj", "q_proj"]))
    m = t.args.model
    assert (m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules) == (8, 16, 0.05, "q_proj,v_proj")
    assert SRFTTrainer(peft_config=LoraConfig(r=4, target_modules="all-linear")).args.model.lora_target_modules \
        == "all-linear"


def test_per_reward_metrics_are_logged_as_trl_names_them(tiny_model_dir, tmp_path):
    from srft import SRFTTrainer

    def reward_len(completions, **kwargs):
        return [-abs(6 - len(c)) / 6 for c in completions]

    def reward_one(completions, **kwargs):
        return [1.0] * len(completions)

    rows = [{"prompt": f"Q:{i}+1\nA:", "demonstration": f"{i + 1}"} for i in range(8)]
    SRFTTrainer(str(tiny_model_dir), args=_tiny(tmp_path), train_dataset=rows, reward_funcs=[reward_len, reward_one],
                reward_weights=[1.0, 0.5], log=lambda *a: None).train()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["rewards/reward_one/mean"] == 1.0 and row["rewards/reward_one/std"] == 0.0
    assert row["rewards/reward_len/mean"] <= 0.0 and row["rewards/reward_len/std"] >= 0.0
    # the logged total is the weighted sum of the functions' means
    assert abs(row["reward/mean"] - (row["rewards/reward_len/mean"] + 0.5)) < 1e-9


def test_a_raising_reward_names_itself_and_the_row_and_a_fixed_rerun_goes_ahead(tiny_model_dir, tmp_path):
    from srft import SRFTTrainer
    from srft.rewards import RewardError

    def picky(completions, answer, **kwargs):
        return [1.0 / (int(a) - 3) for a in answer]  # row with answer 3: ZeroDivisionError

    rows = [{"prompt": f"Q:{i}+1\nA:", "demonstration": f"{i + 1}", "answer": str(i + 1)} for i in range(4)]
    cfg = _tiny(tmp_path)
    cfg.train.prompts_per_step = 4
    with pytest.raises(RewardError, match=r"reward function 'picky' raised ZeroDivisionError: .* at step 1; "
                                          r"completion \d+ of the batch \(prompt 'Q:2\+1\\nA:'\) raises on its own"):
        SRFTTrainer(str(tiny_model_dir), args=cfg, train_dataset=rows, reward_funcs=picky, log=lambda *a: None).train()

    def fixed(completions, answer, **kwargs):
        return [1.0] * len(completions)

    out = SRFTTrainer(str(tiny_model_dir), args=_tiny(tmp_path), train_dataset=rows, reward_funcs=fixed,
                      log=lambda *a: None).train()  # the same folder: nothing in it to keep, so no refusal
    assert out["steps"] == 1


@pytest.mark.parametrize("kwargs,error,needle", [
    ({"model": 5}, TypeError, "model: expected a folder, a hub id"),
    ({"args": {"learning_rate": 1e-6}}, TypeError, "args: expected an SRFTConfig"),
    ({"reward_funcs": [3]}, TypeError, "reward_funcs: expected callables or names, got int"),
    ({"reward_processing_classes": ["tok"]}, ValueError, "reward_processing_classes: srft takes reward functions"),
    ({"optimizers": ("adam", None)}, ValueError, "optimizers: srft builds its AdamW"),
    ({"reward_funcs": ["math", "testbed"], "reward_weights": [1.0]}, ValueError, "reward_weights: 1 weights for 2"),
    ({"reward_weights": ["a"]}, TypeError, "reward_weights: expected numbers"),
    ({"callbacks": [object()]}, TypeError, "callbacks: object has none of on_train_begin"),
])
def test_every_argument_of_the_trainer_is_checked_when_it_is_made(kwargs, error, needle):
    from srft import SRFTTrainer

    with pytest.raises(error) as e:
        SRFTTrainer(**kwargs)
    assert needle in str(e.value)


def test_config_yaml_of_a_python_run_re_runs(tiny_model_dir, tmp_path, monkeypatch):
    """In-memory datasets are written beside config.yaml (train_rows.jsonl, eval_rows.jsonl), so
    `srft train --config DIR/config.yaml` re-runs a Python run; a reward defined in __main__ is
    named as such."""
    from srft import SRFTConfig, SRFTTrainer
    from srft.cli import main
    from srft.rewards import get_reward_fn

    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": f"Q:{i}+1\nA:", "demonstration": f"{i + 1}", "answer": str(i + 1)} for i in range(6)]
    args = SRFTConfig(output_dir="py", max_steps=1, max_completion_length=4)
    args.train.prompts_per_step, args.eval.max_new_tokens = 2, 4
    SRFTTrainer(str(tiny_model_dir), "tests.test_train_tiny:length_reward", args, train_dataset=rows,
                eval_dataset=rows[:3], log=lambda *a: None).train()
    saved = yaml.safe_load(Path("py/config.yaml").read_text())
    assert saved["data"]["dataset"] == str(Path("py") / "train_rows.jsonl")
    assert saved["eval"]["dataset"] == str(Path("py") / "eval_rows.jsonl")
    assert [json.loads(x)["prompt"] for x in Path("py/train_rows.jsonl").read_text().splitlines()] == \
        [r["prompt"] for r in rows]
    assert main(["train", "--config", "py/config.yaml", "--output-dir", "again"]) == 0
    assert Path("again/final/model.safetensors").is_file()
    with pytest.raises(ValueError, match="was defined in the script or notebook that started the run"):
        get_reward_fn("__main__:reward_len")
