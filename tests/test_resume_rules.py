"""Issue 24 item 4: a resume never half-applies a changed config (srft.resume_rules). Settings that
cannot change mid-run are refused naming the setting, from `--resume` and from
`train(resume_from_checkpoint=...)`; settings that can (max steps, evaluation, logging) are applied,
config.yaml says what the run is now, and each resume's changes are in resumes.jsonl."""

from __future__ import annotations

import json

import pytest
import yaml

from srft.cli import main
from srft.config import Config, save_config
from srft.resume_rules import check_resume


def test_check_resume_by_hand(tmp_path):
    cfg = Config()
    save_config(cfg, tmp_path / "config.yaml")
    assert check_resume(Config(), tmp_path) == {}
    longer = Config()
    longer.train.max_steps, longer.eval.limit = 300, 5
    assert check_resume(longer, tmp_path) == {"train.max_steps": [150, 300], "eval.limit": [None, 5]}
    for key, value in (("optim.lr", 0.05), ("train.preset", "grpo"), ("model.name_or_path", "other"),
                       ("train.seed", 1), ("rollout.n_rollouts", 3), ("data.dataset", "x.jsonl")):
        changed = Config()
        section, name = key.split(".")
        setattr(getattr(changed, section), name, value)
        with pytest.raises(ValueError, match=rf"{key} was .* in this run and is {value!r} now; it cannot change"):
            check_resume(changed, tmp_path)


def _args(model, out, *extra):
    return ["train", "--model", str(model), "--output-dir", str(out), "--max-steps", "2", "--train.prompts_per_step",
            "2", "--rollout.max_new_tokens", "4", "--eval.limit", "0", "--train.save_every", "1", *extra]


def test_resume_refuses_frozen_changes_and_records_the_others(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_model_dir, out)) == 0
    for flag, value, name in (("--optim.lr", "0.05", "optim.lr"), ("--preset", "grpo", "train.preset"),
                              ("--seed", "7", "train.seed")):
        code = main(["train", "--resume", str(out), flag, value, "--max-steps", "3"])
        assert code == 2 and f"{name} was" in capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 1e-3  # untouched by the refusals
    assert main(["train", "--resume", str(out), "--max-steps", "3"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 3  # config.yaml says what the run is now
    rows = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and rows[-1]["changes"] == {"train.max_steps": [2, 3]}
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_resume_from_checkpoint_in_python_goes_through_the_same_rules(tiny_model_dir, tmp_path):
    from srft import SRFTConfig, SRFTTrainer

    rows = [{"prompt": f"Q:{i}+1\nA:", "demonstration": f"{i + 1}", "answer": str(i + 1)} for i in range(4)]

    def args(**kw):
        a = SRFTConfig(output_dir=str(tmp_path / "py"), max_steps=1, max_completion_length=4, save_steps=1, **kw)
        a.train.prompts_per_step, a.eval.limit = 2, 0
        return a

    SRFTTrainer(str(tiny_model_dir), "testbed", args(), train_dataset=rows, log=lambda *a: None).train()
    with pytest.raises(ValueError, match="optim.lr was 0.001 in this run and is 0.5 now"):
        SRFTTrainer(str(tiny_model_dir), "testbed", args(learning_rate=0.5), train_dataset=rows,
                    log=lambda *a: None).train(resume_from_checkpoint=True)
