"""The Python API, in the spirit of TRL's trainers:

    from srft import SRFTConfig, SRFTTrainer

    def reward_len(completions, **kwargs):              # TRL's quickstart reward, unchanged
        return [-abs(20 - len(c)) for c in completions]

    trainer = SRFTTrainer(
        model="testbed",                                # a folder, a hub id, or a model object
        args="grpo",                                    # a preset name or an SRFTConfig
        train_dataset=[{"prompt": "1 + 2 =", "demonstration": " 3", "answer": "3"}, ...],
        reward_funcs=[reward_len, my_other_reward], reward_weights=[1.0, 0.5],
        eval_dataset=[...],                             # scored by the same rewards
    )
    trainer.train()

`SRFTConfig` is srft's config tree (`srft.config.Config`: model, data, rollout, objective, optim,
train, eval); the same fields as the command line's flags and the YAML files. A preset given as
`args="grpo"` or set as `cfg.train.preset = "grpo"` applies as on the command line: its values
go under the ones you set (`srft.config.apply_preset`). The command line (`srft train`) builds a
config and runs the same `srft.trainer.Trainer`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

from srft.config import Config
from srft.run_inputs import prepare_run
from srft.stages import is_staged, run_stages
from srft.trainer import Trainer

SRFTConfig = Config


class SRFTTrainer:
    def __init__(
        self,
        model: Any = None,
        args: Union[Config, str, None] = None,
        train_dataset: Any = None,
        reward_funcs: Union[str, Callable, Sequence[Union[str, Callable]], None] = None,
        reward_weights: Optional[Sequence[float]] = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        log: Callable[[str], None] = print,
    ):
        """model: a model folder, a hub id, "testbed", or a transformers model object (then
        `processing_class`, its tokenizer, or the tokenizer saved with it); None: the config's
        model.name_or_path ("testbed" by default). args: an SRFTConfig or
        a preset name. train_dataset / eval_dataset: a list of dicts, a `datasets.Dataset`, or
        anything `data.dataset` takes (a file, a folder, "testbed", "champ"). reward_funcs: one
        reward or a list (callables, built-in names, "module:function"), called as TRL calls them.
        peft_config: a peft LoraConfig, as TRL takes it (its r, lora_alpha, lora_dropout and
        target_modules become model.lora_*)."""
        cfg = Config() if args is None or isinstance(args, str) else _copy_config(args)
        if isinstance(args, str):
            cfg.train.preset = args
        self.model = None
        if isinstance(model, str):
            cfg.model.name_or_path = model
        elif model is not None:
            self.model = model
            cfg.model.name_or_path = getattr(model, "name_or_path", "") or "<in-memory model>"
        if train_dataset is not None:
            cfg.data.dataset = train_dataset
        if reward_funcs is not None:
            cfg.data.reward = reward_funcs
        if reward_weights is not None:
            cfg.data.reward_weights = ",".join(str(float(w)) for w in reward_weights)
        if eval_dataset is not None:
            cfg.eval.dataset = eval_dataset
        if peft_config is not None:
            _apply_peft_config(cfg, peft_config)
        self.args = cfg
        self.processing_class = processing_class
        self.log = log

    def train(self) -> dict:
        """Train; returns the run's summary (steps, final model folder, evaluation). The run's inputs
        (config with its preset, rewards, data, evaluation sets) are checked and built before the
        model loads (`srft.run_inputs.prepare_run`)."""
        if is_staged(self.args):  # (the preset's name decides; run_stages applies its values)
            if self.model is not None:
                raise ValueError(f"preset {self.args.train.preset!r} runs in stages, each loading the previous "
                                 f"stage's folder: give the model as a folder, not an object")
            return run_stages(self.args, log=self.log)
        inputs = prepare_run(self.args, model_given=self.model is not None)
        return Trainer(inputs.cfg, log=self.log, model=self.model, tokenizer=self.processing_class,
                       inputs=inputs).train()


def _copy_config(cfg: Config) -> Config:
    """A copy of `cfg` whose sections can be changed without touching the caller's (the values,
    in-memory datasets and reward functions included, are shared, not copied)."""
    return dataclasses.replace(cfg, **{f.name: copy.copy(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})


def _apply_peft_config(cfg: Config, peft_config: Any) -> None:
    """A peft LoraConfig as srft's model.lora_* fields (the other LoRA options are not used)."""
    r = getattr(peft_config, "r", None)
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"peft_config: expected a peft LoraConfig with r >= 1, got {type(peft_config).__name__}")
    cfg.model.lora_r = r
    cfg.model.lora_alpha = int(getattr(peft_config, "lora_alpha", cfg.model.lora_alpha))
    cfg.model.lora_dropout = float(getattr(peft_config, "lora_dropout", cfg.model.lora_dropout))
    targets = getattr(peft_config, "target_modules", None)
    if targets:
        cfg.model.lora_target_modules = targets if isinstance(targets, str) else ",".join(sorted(targets))

