"""The Python API, shaped like TRL's GRPOTrainer (and SFTTrainer):

    from srft import SRFTConfig, SRFTTrainer

    def reward_len(completions, **kwargs):              # TRL's quickstart reward, unchanged
        return [-abs(20 - len(c)) for c in completions]

    args = SRFTConfig(output_dir="runs/len", learning_rate=1e-6, num_generations=8)   # TRL's names work
    trainer = SRFTTrainer("testbed", reward_len, args,  # GRPOTrainer's order: model, reward_funcs, args,
                          train_dataset=rows,           #   train_dataset, eval_dataset, processing_class, ...
                          eval_dataset=more_rows)       # scored by the same rewards
    trainer.train()                                     # or train(resume_from_checkpoint=True)
    trainer.model, trainer.state.log_history            # the trained model; every step's metrics
    trainer.save_model("out"); trainer.evaluate()

`SRFTConfig` is srft's config tree (`srft.config.Config`: model, data, rollout, objective, optim,
train, eval), the same fields as the command line's flags and the YAML files, and TRL's flat names
as keywords and attributes (`srft.trl_names`). `GRPOConfig` and `SFTConfig` are the same tree
with the grpo / sft preset, so a TRL script ports by changing its import. A preset given as
`args="grpo"` or set as `cfg.train.preset = "grpo"` applies as on the command line, with the
model kind's defaults under it (`srft.model_kinds`: a real model gets real-model defaults): both
go under the values you set (`srft.config.apply_preset`). The command line (`srft train`) runs
the same trainer. Messages here name Python arguments (`train_dataset=`, `args.train.overwrite`).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from srft.callbacks import Callbacks
from srft.config import Config, TrainConfig, apply_preset, carry_trl_names
from srft.evaluation import eval_metrics
from srft.model_kinds import model_kind
from srft.models import load_model_and_tokenizer
from srft.run_dir import holds_run, refuse_used_output_dir
from srft.run_inputs import prepare_run
from srft.stages import is_staged, run_stages
from srft.trainer import Trainer

SRFTConfig = Config


class GRPOConfig(Config):
    """SRFTConfig with the grpo preset (rollouts only, 8 per prompt), set before TRL's names convert."""

    PRESET = "grpo"


class SFTConfig(Config):
    """SRFTConfig with the sft preset (NLL on demonstrations; no reward needed)."""

    PRESET = "sft"


class TrainResult(dict):
    """What `train()` returns: the run's summary (a dict: steps, final, before, after, history) with
    TRL's TrainOutput fields as attributes: `global_step`, `training_loss` (the mean of
    loss/total over the steps), `metrics` (the last evaluation's scores and train_runtime)."""

    def __init__(self, result: dict, log_history: list[dict]):
        super().__init__(result)
        losses = [r["loss/total"] for r in log_history if isinstance(r.get("loss/total"), (int, float))]
        self.global_step = int(result.get("steps", 0))
        self.training_loss = sum(losses) / len(losses) if losses else float("nan")
        self.metrics = {**eval_metrics(result.get("after") or {}), "train_runtime": result.get("train_seconds")}


class SRFTTrainer:
    def __init__(
        self,
        model: Any = None,
        reward_funcs: Union[str, Callable, Sequence[Union[str, Callable]], None] = None,
        args: Union[Config, str, None] = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Optional[Sequence[Any]] = None,
        optimizers: tuple = (None, None),
        peft_config: Any = None,
        *,
        reward_weights: Optional[Sequence[float]] = None,
        log: Callable[[str], None] = print,
    ):
        """GRPOTrainer's arguments, in its order. model: a model folder, a hub id, "testbed", or a
        transformers model object (then `processing_class`, its tokenizer, or the tokenizer saved
        with it); None: args' model.name_or_path ("testbed" by default). reward_funcs: one reward or
        a list (callables, built-in names, "module:function"), called as TRL calls them; an SFT
        config needs none. args: an SRFTConfig (GRPOConfig, SFTConfig) or a preset name.
        train_dataset / eval_dataset: a list of dicts, a `datasets.Dataset`, or anything
        `data.dataset` takes (a file, a folder, "testbed", "champ"). callbacks:
        transformers.TrainerCallback objects (`srft.callbacks`). peft_config: a peft LoraConfig.
        reward_weights: one weight per reward function (TRL has it in args; `args.reward_weights`
        works too). Every argument is checked here, before anything loads."""
        _check_arguments(model, reward_funcs, args, reward_processing_classes, optimizers, reward_weights)
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
        self.kind = model_kind(cfg.model.name_or_path, processing_class)
        self.args, _ = apply_preset(cfg, self.kind)  # the model kind's and the preset's values, under yours
        if self.args.data.dataset is None:
            raise ValueError(f"train_dataset: no training data given for {self.args.model.name_or_path} (a model "
                             f"other than the testbed's has no default dataset): pass train_dataset= (a list of "
                             f"dicts, a datasets.Dataset, a file, a folder or a hub id), or \"testbed\" to train "
                             f"on the testbed's tasks")
        self.processing_class = processing_class
        self.callbacks = list(callbacks or [])
        Callbacks(self.callbacks)  # each callback has at least one hook (a TypeError here, not mid-run)
        self.log = log
        self._trainer: Optional[Trainer] = None
        self._state = Callbacks((), self.args, self.args.train.max_steps).state

    # ---------------------------------------------------------------- TRL's surface
    @property
    def state(self):
        """A `transformers.TrainerState`: global_step, max_steps, log_history."""
        return self._trainer.callbacks.state if self._trainer is not None else self._state

    def train(self, resume_from_checkpoint: Union[bool, str, None] = None) -> TrainResult:
        """Train; returns the run's summary (`TrainResult`). resume_from_checkpoint: True continues
        args.train.output_dir, a path continues that run folder (or the run of a checkpoint folder
        inside it), with the same checks as `srft train --resume`. The run's inputs (rewards, data,
        evaluation sets) are checked before the model loads (`srft.run_inputs.prepare_run`)."""
        cfg = self._run_config(resume_from_checkpoint)
        if is_staged(cfg):  # (the preset's name decides; run_stages applies its values)
            if self.model is not None or self.callbacks:
                raise ValueError(f"args.train.preset {cfg.train.preset!r} runs in stages, each loading the previous "
                                 f"stage's folder: give the model as a folder (not an object), and no callbacks")
            result = run_stages(cfg, log=self.log)
            self.model, self.processing_class, _ = _load(Path(result["final"]), cfg)
            return TrainResult(result, [])
        if self._trainer is None or self._trainer.step > 0 or cfg.train.resume:
            self._trainer = self._make_trainer(cfg)
        result = self._trainer.train()
        self.model, self.processing_class = self._trainer.unwrapped, self._trainer.tokenizer
        return TrainResult(result, self.state.log_history)

    def evaluate(self) -> dict[str, float]:
        """The evaluation sets' scores now ({"eval/<set>/accuracy" or "/reward": value}); before
        `train()` this loads the model (a later `train()` uses it)."""
        if self._trainer is None:
            self._trainer = self._make_trainer(self._run_config(None))
        scores = eval_metrics(self._trainer.evaluate())
        self._trainer.callbacks.evaluated(self._trainer.step, scores)
        return scores

    def save_model(self, output_dir: Optional[str] = None) -> Path:
        """The model (trained, after `train()`) and its tokenizer as a Hugging Face folder
        (safetensors); default: args.train.output_dir."""
        out = Path(output_dir or self.args.train.output_dir)
        if self.model is None:
            self.model, self.processing_class, _ = _load(self.args.model.name_or_path, self.args)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(out)
        return out

    # ---------------------------------------------------------------- internals
    def _make_trainer(self, cfg: Config) -> Trainer:
        inputs = prepare_run(cfg, model_given=self.model is not None)
        self.args = inputs.cfg
        return Trainer(inputs.cfg, log=self.log, model=self.model, tokenizer=self.processing_class, inputs=inputs,
                       callbacks=self.callbacks)

    def _run_config(self, resume: Union[bool, str, None]) -> Config:
        """The config of this run: resuming a folder, or a new run in a folder that holds none (a
        default folder that does gets the next free name, so a notebook cell runs again)."""
        cfg = self.args
        out = Path(cfg.train.output_dir)
        if resume:
            run = out if resume is True else Path(resume)
            run = run.parent.parent if run.parent.name == "checkpoints" else run
            if not (run / "config.yaml").is_file():
                raise ValueError(f"resume_from_checkpoint: {run} is not a run folder (no config.yaml there)")
            cfg.train.resume = cfg.train.output_dir = str(run)
            return cfg
        if cfg.train.resume:  # srft train --resume DIR (the command line runs this class)
            return cfg
        if holds_run(out) and not cfg.train.overwrite:
            if "output_dir" in cfg.train.__dict__.get("_user_set", set()) or str(out) != TrainConfig.output_dir:
                refuse_used_output_dir(cfg, python=True)
            cfg.train.output_dir = _next_free(out)
            self.log(f"[srft] {out} holds a run; this one writes to {cfg.train.output_dir}")
        return cfg


def _next_free(out: Path) -> str:
    n = 2
    while holds_run(Path(f"{out}-{n}")):
        n += 1
    return f"{out}-{n}"


def _load(path, cfg: Config):
    return load_model_and_tokenizer(str(path), cfg.model, lambda *_: None)


def _check_arguments(model, reward_funcs, args, reward_processing_classes, optimizers, reward_weights) -> None:
    """Each argument of SRFTTrainer is of a kind srft takes, or a TypeError / ValueError naming it."""
    if model is not None and not isinstance(model, str) and not callable(getattr(model, "forward", None)):
        raise TypeError(f"model: expected a folder, a hub id, \"testbed\" or a transformers model, got "
                        f"{type(model).__name__}")
    if args is not None and not isinstance(args, (Config, str)):
        raise TypeError(f"args: expected an SRFTConfig (GRPOConfig, SFTConfig) or a preset name, got "
                        f"{type(args).__name__}" + (" (TRL's config: use srft's SRFTConfig with the same names)"
                                                    if type(args).__name__.endswith("Config") else ""))
    funcs = [reward_funcs] if isinstance(reward_funcs, str) or callable(reward_funcs) else list(reward_funcs or [])
    for f in funcs:
        if not (isinstance(f, str) or callable(f)):
            raise TypeError(f"reward_funcs: expected callables or names, got {type(f).__name__} (reward models are "
                            f"not supported)")
    if reward_processing_classes is not None:
        raise ValueError("reward_processing_classes: srft takes reward functions, not reward models")
    if optimizers not in ((None, None), None) and any(o is not None for o in optimizers):
        raise ValueError("optimizers: srft builds its AdamW and schedule from args.optim (lr, betas, weight_decay, "
                         "warmup_steps, schedule)")
    if reward_weights is not None:
        ws = list(reward_weights)
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in ws):
            raise TypeError(f"reward_weights: expected numbers, got {ws!r}")
        if funcs and len(ws) != len(funcs):
            raise ValueError(f"reward_weights: {len(ws)} weights for {len(funcs)} reward functions")


def _copy_config(cfg: Config) -> Config:
    """A copy of `cfg` whose sections can be changed without touching the caller's (the values,
    in-memory datasets and reward functions included, are shared, not copied); which fields the
    user set, and TRL names given, go with it."""
    sections = {}
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub):
            sub = copy.copy(sub)
            object.__setattr__(sub, "_user_set", set(sub.__dict__.get("_user_set", ())))
        sections[f.name] = sub
    return carry_trl_names(cfg, Config(**sections))


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
