"""TRL's flat config names as srft settings (srft.trl_names), in Python, YAML and flags, and the
model-kind defaults layer (srft.model_kinds); the expected values are worked out by hand from
the table in docs/coming-from-trl.md."""

from __future__ import annotations

import argparse

import pytest

from srft.config import Config, add_config_flags, apply_preset, resolve_config


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_flags(p)
    return resolve_config(p.parse_args(argv))


def test_flat_names_set_the_fields_and_read_back():
    c = Config(learning_rate=1e-6, max_steps=7, output_dir="o", report_to=["tensorboard"], loss_type="dr_grpo",
               scale_rewards="none", epsilon=0.3, bf16=True, lr_scheduler_type="constant_with_warmup")
    assert (c.optim.lr, c.train.max_steps, c.train.output_dir, c.train.report_to) == (1e-6, 7, "o", "tensorboard")
    assert (c.objective.aggregation, c.objective.adv_std_norm, c.objective.clip_eps) == ("token-sum-norm", False, 0.3)
    assert (c.model.dtype, c.optim.schedule) == ("bfloat16", "constant")
    assert c.learning_rate == 1e-6 and c.max_steps == 7
    c.learning_rate = 2e-6  # as an attribute too
    assert c.optim.lr == 2e-6


def test_num_generations_counts_the_demonstration_in_the_group():
    from srft import GRPOConfig, SFTConfig

    assert Config(num_generations=8).rollout.n_rollouts == 7  # srft: 7 rollouts + 1 demonstration
    g = GRPOConfig(num_generations=8)
    assert (g.train.preset, g.rollout.n_rollouts) == ("grpo", 8)  # after the grpo preset: no demonstration
    g, _ = apply_preset(g)
    assert (g.rollout.n_rollouts, g.rollout.n_demos) == (8, 0)
    with pytest.raises(ValueError, match="num_generations=8: this preset generates no rollouts"):
        SFTConfig(num_generations=8)
    c = Config(num_generations=8, per_device_train_batch_size=16)  # set before the preset changes
    c.train.preset = "grpo"
    c, _ = apply_preset(c)
    assert (c.rollout.n_rollouts, c.train.prompts_per_step) == (8, 2)  # converted again for grpo's group


def test_batch_sizes_count_completions_as_grpo_config_does():
    from srft import GRPOConfig, SFTConfig

    g = GRPOConfig(num_generations=8, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    # 8 completions x 2 accumulation steps = 16 completions = 2 prompts x 8; one optimiser step
    assert (g.train.prompts_per_step, g.train.micro_batch_size, g.train.mini_batches) == (2, 8, 1)
    g = GRPOConfig(num_generations=4, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                   steps_per_generation=4)
    # 8 x 4 = 32 completions = 8 prompts x 4; 4 / 2 = 2 optimiser steps per rollout batch
    assert (g.train.prompts_per_step, g.train.mini_batches) == (8, 2)
    s = SFTConfig(per_device_train_batch_size=4, gradient_accumulation_steps=3)
    assert s.train.prompts_per_step == 12  # SFT: a group is one demonstration, so examples
    with pytest.raises(ValueError, match="12 completions must be a multiple of the group size 8"):
        GRPOConfig(num_generations=8, per_device_train_batch_size=12)


@pytest.mark.parametrize("kwargs,needle", [
    ({"top_k": 5}, "top_k has no equivalent in srft: rollouts sample with temperature and top-p only"),
    ({"beta": 0.04}, "beta=0.04 has no equivalent in srft: srft has no KL term"),
    ({"scale_rewards": "batch"}, "scale_rewards='batch' has no equivalent in srft"),
    ({"loss_type": "cispo"}, "loss_type='cispo' has no equivalent in srft"),
    ({"vllm_mode": "server"}, "vllm_mode='server' has no equivalent in srft"),
    ({"report_to": "all"}, "report_to='all' has no equivalent in srft: name the trackers"),
])
def test_names_without_a_meaning_here_are_refused_with_the_reason(kwargs, needle):
    with pytest.raises(ValueError) as e:
        Config(**kwargs)
    assert needle in str(e.value)
    assert Config(beta=0.0).optim.lr == Config().optim.lr  # TRL's default beta means what srft does


def test_flat_names_as_flags_and_yaml_keys(tmp_path):
    c = parse(["--preset", "grpo", "--learning_rate", "1e-6", "--num-generations", "4", "--max_completion_length", "9"])
    assert (c.optim.lr, c.rollout.n_rollouts, c.rollout.n_demos, c.rollout.max_new_tokens) == (1e-6, 4, 0, 9)
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 1.0e-6\nnum_generations: 4\nper_device_train_batch_size: 8\n")
    c = parse(["--config", str(y)])
    assert (c.optim.lr, c.rollout.n_rollouts, c.train.prompts_per_step) == (1e-6, 3, 2)  # 3 + 1 demo; 8 / 4
    c = parse(["--config", str(y), "--optim.lr", "3e-6"])  # a flag is above the YAML layer
    assert c.optim.lr == 3e-6
    with pytest.raises(ValueError, match=r"command line: optim.lr is given twice, by its name and by a TRL name"):
        parse(["--learning_rate", "1e-6", "--optim.lr", "1e-5"])
    with pytest.raises(ValueError, match="top_k has no equivalent in srft"):
        parse(["--top_k", "5"])


def test_a_real_model_gets_real_model_defaults_under_the_users_settings(tmp_path):
    from tests.test_trl_port import _tiny_llama

    real = str(_tiny_llama(tmp_path / "llama"))
    c = parse(["--model", real, "--data.dataset", "x.jsonl"])
    assert (c.optim.lr, c.optim.schedule, c.rollout.max_new_tokens, c.data.max_demo_tokens) == (1e-6, "constant",
                                                                                                1024, 4096)
    assert (c.train.prompts_per_step, c.train.max_steps, c.kind_applied) == (16, 500, "real")
    assert parse(["--model", real, "--data.dataset", "x.jsonl", "--optim.lr", "1e-3"]).optim.lr == 1e-3
    assert parse(["--model", real, "--data.dataset", "x.jsonl", "--preset", "sft"]).optim.lr == 5e-6  # the paper's
    with pytest.raises(ValueError, match=r"data.dataset: no training data given for .*give --data.dataset"):
        parse(["--model", real])
    testbed = parse([])
    assert (testbed.optim.lr, testbed.rollout.max_new_tokens, testbed.kind_applied) == (1e-3, 40, "testbed")
    # in Python: a value set by hand stays, even one equal to the testbed's default
    c = Config()
    c.model.name_or_path, c.optim.lr = real, 1e-3
    c, _ = apply_preset(c)
    assert (c.optim.lr, c.rollout.max_new_tokens) == (1e-3, 1024)


def test_num_train_epochs_sets_the_steps_once_the_rows_are_known():
    from srft.run_inputs import steps_for_epochs

    c = Config(num_train_epochs=2, per_device_train_batch_size=16)  # 16 completions / 8 = 2 prompts a step
    assert steps_for_epochs(c, 100) == 100  # ceil(2 x 100 / 2)
    with pytest.raises(ValueError, match="give one"):
        steps_for_epochs(Config(num_train_epochs=2, max_steps=3), 100)
