"""Config: defaults < preset < YAML < flags; validation names the field."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from srft.config import Config, add_config_flags, resolve_config, save_config


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return resolve_config(p.parse_args(argv))


def test_defaults_are_srft_on_testbed():
    cfg = parse([])
    assert cfg.train.preset == "srft"
    assert cfg.model.name_or_path == "testbed" and cfg.data.dataset == "testbed"
    assert cfg.objective.sft_demo and cfg.objective.rl_demo and cfg.objective.rl_self
    assert cfg.objective.w_sft_coef == 0.5 and cfg.objective.w_sft_sign == -1.0
    assert cfg.objective.w_rl_coef == 0.1 and cfg.objective.w_rl_sign == 1.0
    assert cfg.model.trust_remote_code is False


def test_precedence_preset_yaml_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump({"train": {"preset": "grpo", "max_steps": 7, "seed": 3},
                                 "rollout": {"n_rollouts": 4}}))
    cfg = parse(["--config", str(y)])
    assert cfg.train.preset == "grpo" and cfg.rollout.n_demos == 0  # preset applied
    assert cfg.rollout.n_rollouts == 4  # YAML beats the preset's 8
    assert cfg.train.max_steps == 7
    cfg = parse(["--config", str(y), "--max-steps", "9", "--rollout.n-rollouts", "5", "--seed", "11"])
    assert (cfg.train.max_steps, cfg.rollout.n_rollouts, cfg.train.seed) == (9, 5, 11)  # flags win
    cfg = parse(["--config", str(y), "--preset", "srft"])
    assert cfg.rollout.n_demos == 1 and cfg.rollout.n_rollouts == 4


def test_every_field_is_a_flag_and_types_parse():
    cfg = parse(["--objective.clip_eps", "none", "--objective.sft_demo", "false", "--optim.lr", "3e-4",
                 "--objective.demo_shaping_gamma", "0.1", "--train.output-dir", "x"])
    assert cfg.objective.clip_eps is None and cfg.objective.sft_demo is False
    assert cfg.optim.lr == 3e-4 and cfg.objective.demo_shaping_gamma == 0.1 and cfg.train.output_dir == "x"


def test_saved_config_round_trips(tmp_path):
    cfg = parse(["--max-steps", "13", "--preset", "sft"])
    save_config(cfg, tmp_path / "config.yaml")
    again = parse(["--config", str(tmp_path / "config.yaml")])
    assert again == cfg


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--optim.lr", "abc"], "optim.lr"),
        (["--rollout.n_rollouts", "1", "--rollout.n_demos", "0"], "rollout.n"),
        (["--train.mini_batches", "3"], "train.mini_batches"),
        (["--train.mini_batches", "0"], "train.mini_batches must be >= 1"),
        (["--train.epochs_per_batch", "0"], "train.epochs_per_batch must be >= 1"),
        (["--train.save_total_limit", "0"], "train.save_total_limit must be >= 1"),
        (["--train.max_nonfinite_steps", "0"], "train.max_nonfinite_steps must be >= 1"),
        (["--train.save_every", "-1"], "train.save_every must be >= 0"),
        (["--rollout.batch_size", "0"], "rollout.batch_size must be >= 1"),
        (["--eval.k", "0"], "eval.k must be >= 1"),
        (["--data.max_demo_tokens", "0"], "data.max_demo_tokens must be >= 1"),
        (["--rollout.is_cap", "0"], "rollout.is_cap must be a finite number > 0"),
    ],
)
def test_bad_values_name_the_field(argv, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        parse(argv)


@pytest.mark.parametrize("key,bad", [
    ("objective.aggregation", "mean"), ("train.preset", "nope"), ("objective.entropy_granularity", "word"),
    ("rollout.engine", "vlm"), ("rollout.is_correction", "always"),
    ("train.micro_batch_grouping", "random"), ("model.dtype", "fp8"), ("optim.schedule", "step"),
])
def test_bad_choices_name_the_field_from_flags_yaml_and_python(key, bad, tmp_path, capsys):
    from srft.config import Config, apply_overrides, choices

    section, name = key.split(".")
    with pytest.raises(SystemExit) as e:  # a flag: argparse refuses it, exit 2, the allowed values listed
        parse([f"--{key}", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--{key}" in err and f"invalid choice: '{bad}'" in err and all(c in err for c in choices(key))
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump({section: {name: bad}}))
    with pytest.raises(ValueError, match=key.replace(".", r"\.") if key != "train.preset" else "unknown preset"):
        parse(["--config", str(y)])
    cfg = apply_overrides(Config(), {}, "python")
    setattr(getattr(cfg, section), name, bad)
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + f": '{bad}' is not one of"):
        cfg.validate()


def test_help_shows_each_fields_docstring_and_allowed_values():
    from srft.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(sub.format_help().split())
    assert 'Rollout engine: "hf" (transformers' in text
    assert "--rollout.engine {hf,vllm}" in text and "--train.report_to {none,tensorboard,wandb}" in text
    assert "--preset {" in text and "sft_then_grpo" in text
    assert "On-policy samples per prompt" in text and "(default: 7)" in text
    assert "--optim.lr FLOAT" in text and "--train.max_steps INT" in text
    assert "data.system_prompt" in text and "(default: 'default')" in text
    # every documented field's docstring reaches the help
    from srft.config import Config, SECTIONS, field_docs

    for s in SECTIONS:
        for name, doc in field_docs(type(getattr(Config(), s))).items():
            assert doc[:40] in text, f"{s}.{name}: docstring missing from --help"


def test_vllm_engine_without_vllm_is_a_clear_error_before_any_model_loads(monkeypatch):
    import srft.rollout.vllm_engine as ve

    monkeypatch.setattr(ve, "vllm_available", lambda: False)
    with pytest.raises(ValueError, match=r"rollout\.engine: 'vllm' needs vLLM.*setup\.sh --vllm"):
        parse(["--rollout.engine", "vllm"])


def test_unknown_yaml_key_names_it(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("objective:\n  clip: 0.3\n")
    with pytest.raises(ValueError, match="objective.clip"):
        parse(["--config", str(y)])


def test_resume_reads_the_run_config_and_flags_still_win(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(parse(["--preset", "grpo", "--max-steps", "5", "--seed", "4", "--output-dir", "elsewhere"]),
                run / "config.yaml")
    assert "resume: ''" in (run / "config.yaml").read_text()  # a saved config never resumes by itself
    cfg = parse(["--resume", str(run), "--max-steps", "8"])
    assert cfg.train.resume == str(run) and cfg.train.output_dir == str(run)
    assert (cfg.train.preset, cfg.train.seed, cfg.rollout.n_demos, cfg.train.max_steps) == ("grpo", 4, 0, 8)
    with pytest.raises(ValueError, match="drop --output-dir"):
        parse(["--resume", str(run), "--output-dir", str(tmp_path / "other")])
    with pytest.raises(ValueError, match="no config.yaml there"):
        parse(["--resume", str(tmp_path)])


def _objective_of(cfg):
    import dataclasses

    return dataclasses.asdict(cfg.objective), cfg.rollout.n_rollouts, cfg.rollout.n_demos


def test_a_preset_gives_the_same_config_from_python_yaml_and_flags(tmp_path):
    """The preset trap: `cfg.train.preset = "grpo"` in Python used to train SRFT while config.yaml
    said grpo. Now Python, YAML and flags resolve to the same config."""
    from srft.config import Config, apply_preset

    from_flags = parse(["--preset", "grpo"])
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  preset: grpo\n")
    from_yaml = parse(["--config", str(y)])
    cfg = Config()
    cfg.train.preset = "grpo"
    from_python, keys = apply_preset(cfg)
    assert "objective.sft_demo" in keys
    assert _objective_of(from_python) == _objective_of(from_flags) == _objective_of(from_yaml)
    assert from_python.objective.sft_demo is False and from_python.rollout.n_demos == 0
    assert apply_preset(from_flags)[1] == []  # already applied: nothing changes


def test_python_values_win_over_the_preset_and_switching_presets_undoes_the_old_one():
    from srft.config import Config, apply_preset

    cfg = Config()
    cfg.train.preset = "grpo"
    cfg.objective.clip_eps = 0.3  # the user's own value stays
    cfg, _ = apply_preset(cfg)
    assert cfg.objective.clip_eps == 0.3 and cfg.objective.sft_demo is False
    cfg.train.preset = "srft"  # back: what grpo set goes back to srft's (the defaults)
    cfg, _ = apply_preset(cfg)
    assert _objective_of(cfg)[1:] == _objective_of(Config())[1:] and cfg.objective.sft_demo is True
    cfg.train.preset = "nope"
    with pytest.raises(ValueError, match="nope"):
        apply_preset(cfg)


# ---------------------------------------------------------------- no setting silently ignored
def test_misspelled_settings_in_python_are_refused_with_a_suggestion():
    from srft.config import OptimConfig

    cfg = Config()
    with pytest.raises(AttributeError, match=r"optim has no setting 'learning_rate' \(did you mean optim\.lr\?\)"):
        cfg.optim.learning_rate = 1e-6
    with pytest.raises(AttributeError, match=r"train has no setting 'max_step' \(did you mean train\.max_steps\?\)"):
        cfg.train.max_step = 100
    with pytest.raises(AttributeError, match=r"the config has no setting 'learnig_rate' \(did you mean optim\.lr"):
        cfg.learnig_rate = 1e-6  # TRL's names work at the top level (tests/test_trl_names.py); a misspelling does not
    with pytest.raises(TypeError, match=r"Config: unknown setting 'num_generation' \(did you mean rollout\.n_rollouts"):
        Config(num_generation=8)
    with pytest.raises(TypeError, match=r"OptimConfig: unknown setting 'learnig_rate' \(did you mean optim\.lr\?\)"):
        OptimConfig(learnig_rate=1e-6)
    cfg.optim.lr = 1e-6  # a real field still sets
    assert cfg.optim.lr == 1e-6 and cfg.train.max_steps == Config().train.max_steps


def test_misspelled_settings_in_yaml_are_refused_with_a_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 1.0e-6\n")
    with pytest.raises(ValueError, match=r"unknown config field 'optim\.learning_rate' \(did you mean optim\.lr\?\)"):
        parse(["--config", str(bad)])
    bad.write_text("train:\n  max_step: 3\n")
    with pytest.raises(ValueError, match=r"unknown config field 'train\.max_step' \(did you mean train\.max_steps\?\)"):
        parse(["--config", str(bad)])


@pytest.mark.parametrize("argv,needle", [
    (["--max-step", "2"], "--max-step (did you mean --train.max_steps or --max-steps"),  # no prefix matching
    (["--optim.learning_rate", "1e-6"], "--optim.learning_rate (did you mean --optim.lr"),
    (["--learnig_rate", "1e-6"], "--learnig_rate (did you mean --optim.lr or --learning_rate"),  # TRL names are flags too
    (["--train.max-step", "2"], "--train.max-step (did you mean --train.max_steps"),
])
def test_misspelled_flags_are_refused_with_the_subcommands_usage(argv, needle, capsys):
    from srft.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage: srft train" in err and needle in err, err


def test_help_lists_each_flag_once_with_its_text(capsys):
    from srft.cli import build_parser

    parser = build_parser()
    for argv in (["train", "--help"], ["eval", "--help"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        out = capsys.readouterr().out
        assert "--eval.max-new-tokens" not in out and "--eval.max_new_tokens INT" in out
        assert "Response budget for evaluation" in out
    assert parse(["--train.max-steps", "4"]).train.max_steps == 4  # the dashed spelling still works


@pytest.mark.parametrize("key,value,needle", [
    ("optim.max_grad_norm", "-1", "optim.max_grad_norm must be a finite number > 0"),  # would train backwards
    ("rollout.temperature", "-1", "rollout.temperature must be a finite number > 0"),  # softmax(-logits)
    ("optim.lr", "nan", "optim.lr must be a finite number > 0, got nan"),
    ("eval.limit", "-5", "eval.limit must be None (all) or >= 0"),  # was: 395 of 400 problems
    ("train.output_dir", "", "train.output_dir must be a folder name (not empty)"),  # was: the current folder
    ("rollout.top_p", "1.5", "rollout.top_p must be in (0, 1]"),
    ("objective.clip_eps", "-0.2", "objective.clip_eps must be None (no clipping) or a finite number > 0"),
    ("objective.entropy_bonus", "inf", "objective.entropy_bonus must be a finite number >= 0"),
    ("model.lora_dropout", "1.0", "model.lora_dropout must be in [0, 1)"),
])
def test_numbers_outside_their_meaning_are_refused(key, value, needle, tmp_path):
    with pytest.raises(ValueError) as flag_error:
        parse([f"--{key}", value])
    assert needle in str(flag_error.value)
    section, name = key.split(".")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({section: {name: value}}))
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse(["--config", str(tmp_path / "c.yaml")])
    cfg = Config()
    setattr(getattr(cfg, section), name, type(getattr(getattr(Config(), section), name) or 0.0)(value)
            if value else value)
    with pytest.raises(ValueError, match=re.escape(needle)):
        cfg.validate()


def test_report_to_takes_several_trackers_and_names_a_bad_one():
    from srft.config import report_targets

    assert parse(["--train.report_to", "tensorboard,wandb"]).train.report_to == "tensorboard,wandb"
    cfg = Config()
    cfg.train.report_to = ["tensorboard"]  # as TRL takes it
    cfg.validate()
    assert report_targets(cfg.train.report_to) == ["tensorboard"] and report_targets("none") == []
    for bad in (["--train.report_to", "tensorboard,mlflow"], ["--train.report_to", "mlflow"]):  # several values
        with pytest.raises(ValueError, match=r"train.report_to: 'mlflow' is not one of"):  # so validate names it
            parse(bad)
    cfg.train.report_to = ["mlflow"]
    with pytest.raises(ValueError, match=r"train.report_to: 'mlflow' is not one of"):
        cfg.validate()


def test_every_numeric_field_has_a_declared_domain():
    from srft.config import DOMAINS, numeric_fields

    assert numeric_fields() and [k for k in numeric_fields() if k not in DOMAINS] == []


def _numeric_cases():
    from srft.config import DOMAINS, numeric_fields

    for key in numeric_fields():
        ok = DOMAINS[key][0]
        for bad in (float("nan"), float("inf"), -1, -1.5, 2.5, True):
            if not ok(bad):
                yield key, bad


@pytest.mark.parametrize("key,bad", list(_numeric_cases()))
def test_a_value_outside_a_numeric_fields_domain_is_refused_naming_it(key, bad):
    """Every numeric field, every kind of bad value its domain refuses (NaN, infinities, negatives,
    a fraction for a count, a bool): in Python, validate() names the field and its domain."""
    from srft.config import DOMAINS

    cfg = Config()
    section, name = key.split(".")
    object.__setattr__(getattr(cfg, section), name, bad)  # (as a Python user can)
    with pytest.raises(ValueError, match=re.escape(f"{key} must be {DOMAINS[key][1]}")):
        cfg.validate()


def test_every_numeric_field_refuses_nan():
    from srft.config import DOMAINS, numeric_fields

    assert all(not DOMAINS[k][0](float("nan")) for k in numeric_fields())


@pytest.mark.parametrize("text,needle", [
    ("train:\n  max_steps: [1]\n", "bad value for train.max_steps: expected INT, got list [1]"),
    ("optim:\n  lr: {a: 1}\n", "unknown config field 'optim.lr.a'"),
    ("train:\n  max_steps: ten\n", "bad value for train.max_steps"),
    ("rollout:\n  temperature: -1\n", "rollout.temperature must be a finite number > 0"),
])
def test_wrong_yaml_types_are_refused_naming_the_field(tmp_path, text, needle):
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(ValueError) as e:
        parse(["--config", str(y)])
    assert needle in str(e.value)


def test_reliability_md_lists_every_domain():
    from srft.config import domains_markdown

    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    assert domains_markdown() in doc, "docs/reliability.md's domain table is stale: regenerate it from DOMAINS"


@pytest.mark.parametrize("key,bad", [("objective.demo_filter", "yes"), ("model.trust_remote_code", 1),
                                     ("train.overwrite", "true"), ("objective.rl_self_form", 3),
                                     ("train.output_dir", ["a"])])
def test_a_python_value_of_the_wrong_type_is_refused_naming_the_field(key, bad):
    cfg = Config()
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, bad)
    with pytest.raises(ValueError, match=re.escape(key) + r" must be (true or false|text), got"):
        cfg.validate()


def test_a_bad_value_for_a_trl_name_names_it():
    with pytest.raises(ValueError, match=r"learning_rate \(sets optim.lr\): bad value 'abc'"):
        Config(learning_rate="abc")
