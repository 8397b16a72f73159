"""Issue 23's "done when": TRL's documented GRPOTrainer quickstart and SFT example, ported by
changing only the import and the class names (config from TRL's flat names, model "testbed",
local rows in place of the hub dataset), train 2 steps; the trainer's TRL surface (model, state,
callbacks, save_model, evaluate, resume_from_checkpoint, a re-run notebook cell); a real model's
first lines state real-model settings; a non-verifier reward is evaluated as a reward.

"testbed" here is a tiny random model placed where the testbed's base model is cached
(`srft.testbed.base_model.base_model_dir`, in a temporary SRFT_CACHE), so that nothing is built.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset

from srft.testbed.base_model import base_model_dir


@pytest.fixture
def testbed(tiny_model_dir, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SRFT_CACHE", str(tmp_path / "cache"))
    path = base_model_dir(0)
    shutil.copytree(tiny_model_dir, path)
    (path / "srft_testbed.json").write_text(json.dumps({"stand_in": "tests/test_trl_port.py"}))
    monkeypatch.chdir(tmp_path)
    return path


def prompts(n: int = 16) -> Dataset:
    """Stands in for load_dataset("trl-lib/tldr", split="train"): a `prompt` column."""
    return Dataset.from_list([{"prompt": f"Q:{i}+{i % 3}\nA:"} for i in range(n)])


def test_grpo_quickstart_ported(testbed):
    # TRL's quickstart (docs: GRPO Trainer), with `from trl import GRPOConfig, GRPOTrainer` replaced
    from srft import GRPOConfig, SRFTTrainer

    dataset = prompts()

    # Define the reward function, which rewards completions that are close to 20 characters
    def reward_len(completions, **kwargs):
        return [-abs(20 - len(completion)) for completion in completions]

    training_args = GRPOConfig(output_dir="Qwen2-0.5B-GRPO", max_steps=2, num_generations=4,
                               per_device_train_batch_size=8, max_completion_length=8, logging_steps=1)
    trainer = SRFTTrainer(
        model="testbed",
        reward_funcs=reward_len,
        args=training_args,
        train_dataset=dataset,
    )
    out = trainer.train()

    assert out.global_step == 2 and trainer.state.global_step == 2
    cfg = trainer.args
    assert (cfg.train.preset, cfg.rollout.n_rollouts, cfg.rollout.n_demos) == ("grpo", 4, 0)
    assert cfg.train.prompts_per_step == 2 and cfg.train.micro_batch_size == 8  # 8 completions = 2 prompts x 4
    rows = [json.loads(x) for x in Path("Qwen2-0.5B-GRPO/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "rewards/reward_len/mean" in rows[0]
    assert trainer.model is not None and trainer.processing_class is not None


def test_sft_example_ported(testbed):
    # TRL's SFT quickstart (docs: SFT Trainer), with `from trl import SFTConfig, SFTTrainer` replaced;
    # a conversational dataset with no answer column and no reward: SFT needs none
    from srft import SFTConfig, SRFTTrainer

    dataset = Dataset.from_list([{"messages": [{"role": "user", "content": f"Q:{i}+1\nA:"},
                                               {"role": "assistant", "content": f"<think>{i}+1={i + 1}</think>{i + 1}"}]}
                                 for i in range(12)])
    training_args = SFTConfig(output_dir="Qwen2.5-0.5B-SFT", max_steps=2, per_device_train_batch_size=4,
                              learning_rate=1e-3)
    trainer = SRFTTrainer(model="testbed", args=training_args, train_dataset=dataset)
    out = trainer.train()

    assert out.global_step == 2 and out.training_loss > 0
    assert trainer.args.train.preset == "sft" and trainer.args.train.prompts_per_step == 4
    rows = [json.loads(x) for x in Path("Qwen2.5-0.5B-SFT/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss/sft_demo"] > 0


def test_trainer_surface_callbacks_state_save_evaluate_resume(testbed, tmp_path):
    from transformers import TrainerCallback

    from srft import SRFTConfig, SRFTTrainer

    seen = {"log": [], "evaluate": [], "step_end": 0}

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen["log"].append(state.global_step)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen["evaluate"].append((state.global_step, sorted(metrics)))

        def on_step_end(self, args, state, control, **kwargs):
            seen["step_end"] += 1
            control.should_training_stop = state.global_step >= 2  # stop at step 2 of 5

    rows = [{"prompt": f"Q:{i}+1\nA:", "demonstration": f"{i + 1}", "answer": str(i + 1)} for i in range(8)]
    args = SRFTConfig(output_dir="run", max_steps=5, learning_rate=1e-3, save_steps=1, max_completion_length=6)
    args.train.prompts_per_step, args.eval.max_new_tokens = 2, 6
    trainer = SRFTTrainer("testbed", "testbed", args, train_dataset=rows, eval_dataset=rows[:4],
                          callbacks=[Recorder], log=lambda *a: None)
    out = trainer.train()
    assert out.global_step == 2 and seen["log"] == [1, 2] and seen["step_end"] == 2
    assert [s for s, _ in seen["evaluate"]] == [0, 2]  # before training, and where the callback stopped it
    assert seen["evaluate"][0][1] == ["eval/eval/accuracy"]  # the testbed's verifier: an accuracy
    assert [h["step"] for h in trainer.state.log_history if "loss/total" in h] == [1, 2]
    assert Path("run/final/model.safetensors").is_file() and json.loads(Path("run/eval.json").read_text())["steps"] == 2
    scores = trainer.evaluate()
    assert set(scores) == {"eval/eval/accuracy"}
    assert scores["eval/eval/accuracy"] == out.metrics["eval/eval/accuracy"]  # the same model, greedy
    saved = trainer.save_model(str(tmp_path / "saved"))
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.json").is_file()

    again = SRFTTrainer("testbed", "testbed", args, train_dataset=rows, eval_dataset=rows[:4], log=lambda *a: None)
    with pytest.raises(FileExistsError, match=r"args.train.output_dir run already holds a run: .*overwrite_output_dir"
                                               r"=True .*resume_from_checkpoint=True"):
        again.train()
    res = again.train(resume_from_checkpoint="run/checkpoints/step-000002")  # a checkpoint folder: its run
    assert res.global_step == 5 and again.state.global_step == 5


def test_a_rerun_notebook_cell_trains_into_a_fresh_default_folder(testbed):
    from srft import SRFTConfig, SRFTTrainer

    rows = [{"prompt": f"Q:{i}+1\nA:", "demonstration": f"{i + 1}", "answer": str(i + 1)} for i in range(4)]

    def cell(**kw):
        args = SRFTConfig(max_steps=1, max_completion_length=4, **kw)
        args.train.prompts_per_step, args.eval.limit = 2, 0
        return SRFTTrainer("testbed", args=args, train_dataset=rows, log=lambda *a: None).train()

    first, second = cell(), cell()
    assert Path(first["final"]).parent == Path("runs/srft") and Path(second["final"]).parent == Path("runs/srft-2")
    cell(output_dir="runs/srft", overwrite_output_dir=True)  # TRL's name for replacing a run


def test_a_real_models_first_lines_state_real_settings(tmp_path):
    """A tiny random Llama with its own BPE tokenizer (a real architecture, not the testbed's
    tokenizer), only a dataset given: the first lines give real-model settings, none the testbed's."""
    from srft import SRFTTrainer

    model = _tiny_llama(tmp_path / "llama")
    rows = [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is \\boxed{{{a + b}}}.",
             "answer": str(a + b)} for a in range(5) for b in range(5)]
    lines = []

    class Seen(Exception):
        pass

    def log(line):
        lines.append(str(line))
        if str(line).startswith("[srft]   system prompt"):
            raise Seen  # the settings are out: no need to train 500 steps

    with pytest.raises(ValueError, match=r"train_dataset: no training data given for .*llama"):
        SRFTTrainer(str(model))
    args = {"output_dir": str(tmp_path / "run")}
    from srft import SRFTConfig

    with pytest.raises(Seen):
        SRFTTrainer(str(model), args=SRFTConfig(**args), train_dataset=rows, log=log).train()
    text = "\n".join(lines)
    assert "real-model defaults" in text and "preset srft: 500 steps x 16 prompts" in text
    assert "lr 1e-06 (constant)" in text and "responses <= 1024 tokens (evaluation 1024)" in text
    assert "demonstrations <= 4096" in text and "reward: math (the math verifier" in text
    assert "system prompt: none (prompts are raw text: the tokenizer has no chat template)" in text
    for testbed_value in ("lr 0.001", "<= 40 tokens", "<= 64 (", "150 steps", "32 prompts"):
        assert testbed_value not in text, testbed_value


def test_a_non_verifier_reward_is_evaluated_as_a_reward_and_logged_at_step_0(testbed, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from srft import SRFTConfig, SRFTTrainer

    def reward_len(completions, **kwargs):
        return [-abs(20 - len(c)) for c in completions]  # -20 .. 0: not an accuracy

    rows = [{"prompt": f"Q:{i}+1\nA:", "demonstration": f"{i + 1}"} for i in range(6)]
    args = SRFTConfig(output_dir="run", max_steps=2, max_completion_length=4, report_to=["tensorboard"])
    args.train.prompts_per_step, args.train.eval_every, args.eval.max_new_tokens = 2, 1, 4
    SRFTTrainer("testbed", reward_len, args, train_dataset=rows, eval_dataset=rows[:3], log=lambda *a: None).train()
    ev = json.loads(Path("run/eval.json").read_text())
    assert ev["before"]["eval"]["metric"] == "reward" and "accuracy" not in ev["before"]["eval"]
    assert ev["before"]["eval"]["reward"] <= 0
    rows_ = [json.loads(x) for x in Path("run/metrics.jsonl").read_text().splitlines()]
    assert "eval/eval/reward" in rows_[0] and not any("eval/eval/accuracy" in r for r in rows_)
    assert Path("run/plots/eval_reward.png").is_file()
    events = [p for p in Path("run").rglob("events.out.tfevents*")]
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    steps = {e.step for e in acc.Scalars("eval/eval/reward")}
    assert steps == {0, 1, 2}  # the evaluation before training is logged at step 0
    assert "rewards/reward_len/mean" in acc.Tags()["scalars"]


def _tiny_llama(path: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([f"What is {a} + {b}? The answer is \\boxed{{{a + b}}}." for a in range(20)
                             for b in range(20)],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|endoftext|>", "<pad>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>",
                                   unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path
