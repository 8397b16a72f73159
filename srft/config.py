"""Configuration: one dataclass tree.

Precedence: dataclass defaults < model kind (`srft.model_kinds`: the testbed's defaults, or
real-model defaults for any other model) < preset (`--preset`, see `srft.presets.PRESETS`)
< YAML file (`--config`) < command-line flags (`layer_config`; in Python, `apply_preset`
puts the same layers under what the user set). Every field is a flag,
`--section.field VALUE` (dashes and underscores both accepted), plus the short
forms `--preset`, `--output-dir`, `--max-steps`, `--seed`, `--model`, and TRL's flat
names (`srft.trl_names`). Sections refuse unknown names with the closest ones, and every
number is checked against its domain (`DOMAINS`).
The resolved config is saved as `config.yaml` in the run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from srft.data import DEFAULT_SYSTEM_PROMPT
from srft.model_kinds import TESTBED, kind_defaults, model_kind
from srft.presets import PRESETS, get_preset
from srft.trl_names import BATCH, CONVERTED, NO_EQUIVALENT, SAME, is_trl_name, read_back, targets, to_srft


@dataclass
class ModelConfig:
    name_or_path: str = "testbed"
    """A local folder or a hub id; "testbed" is the built-in base model (built and cached on first use)."""
    dtype: str = "float32"
    """Weights dtype for training: float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Run custom modelling code shipped with a model. Off unless asked for."""
    allow_pickle: bool = False
    """Load a model folder that only has pickle weights (pytorch_model.bin), which can run code when
    unpickled. Off: only *.safetensors weights load."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% more compute)."""
    lora_r: int = 0
    """LoRA rank through peft; 0 trains every weight."""
    lora_alpha: int = 32
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch."""
    lora_target_modules: str = "all-linear"
    """peft target_modules: "all-linear" or a comma-separated list of module names."""


@dataclass
class DataConfig:
    dataset: Optional[str] = "testbed"
    """Training data: "testbed" (built-in), "champ" (CHAMP math, from the champ-dataset package), a
    .jsonl/.json/.csv/.tsv/.parquet file (verl/LUFFY parquet is detected by its reward_model column),
    a datasets folder, or a hub id; NAME:SPLIT picks the split (default train). A real model
    (srft.model_kinds) has none by default: a run without one is refused."""
    prompt_column: Optional[str] = None
    """Column holding the prompt (a string or a list of chat messages). None: "prompt"."""
    demonstration_column: Optional[str] = None
    """Column holding the demonstration(s): a string, a list of strings or assistant messages.
    None: "demonstration" ("target" in verl/LUFFY parquet); may be absent when rollout.n_demos = 0."""
    answer_column: Optional[str] = None
    """Column holding the answer; "a.b" reads key b of mapping column a. None: "answer"
    ("reward_model.ground_truth" in verl/LUFFY parquet)."""
    system_prompt: Optional[str] = "default"
    """System prompt put before string prompts when the tokenizer has a chat template; "default" is the
    paper-style <think> ... </think> + \\boxed{} instruction (srft.data.DEFAULT_SYSTEM_PROMPT); none for no system turn."""
    chat_template: str = "auto"
    """"auto": use the tokenizer's chat template when it has one; "none": never."""
    reward: str = "auto"
    """Reward function: "auto" (the testbed's verifier on the testbed, else "math"), a built-in name
    ("testbed", "math": last \\boxed{} + math-verify, letters for multiple choice) or an import path
    "module:function" (a TRL-style callable, called with keyword arguments as TRL calls it); several,
    comma-separated, are summed with data.reward_weights. In Python also a callable or a list."""
    reward_weights: Optional[str] = None
    """Weights of the reward functions when data.reward names several ("a,b"): "1.0,0.5"; None: all 1."""
    reward_timeout: float = 300.0
    """Seconds one call of a reward function (on a batch of completions) may take; a call that overruns
    scores its completions 0, counted in reward/timeouts. Not for the built-in rewards, which have their own."""
    max_prompt_tokens: int = 1024
    """Prompts longer than this are an error."""
    max_demo_tokens: int = 64
    """Demonstrations longer than this follow `long_demo_policy`."""
    long_demo_policy: str = "drop"
    """"drop" the row or "truncate" the demonstration (counted in the logs either way)."""

    def __post_init__(self):
        if self.system_prompt == "default":
            self.system_prompt = DEFAULT_SYSTEM_PROMPT


@dataclass
class RolloutConfig:
    engine: str = "hf"
    """Rollout engine: "hf" (transformers, KV cache, the trainer's own model) or "vllm" (vllm.LLM in
    the trainer's process, weights synced in memory every step; the optional extra srft[vllm])."""
    n_rollouts: int = 7
    """On-policy samples per prompt (the paper's script: 7, plus 1 demonstration)."""
    n_demos: int = 1
    """Demonstrations per prompt placed in the same group (0 for pure RL)."""
    temperature: float = 1.0
    """Sampling temperature for rollouts (the paper: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling for rollouts (1.0: off, as in the paper)."""
    max_new_tokens: int = 40
    """Response budget in tokens."""
    batch_size: int = 512
    """Sequences generated at once (in each process)."""
    ignore_eos: bool = False
    """Generate exactly max_new_tokens per response, past EOS (vLLM's ignore_eos; TRL's
    generation_kwargs min_new_tokens): for speed benchmarks on equal work only."""
    is_correction: str = "auto"
    """Sampler/trainer mismatch correction of the on-policy term: "tis" multiplies each rollout
    token's term by min(exp(log pi_old - log mu), rollout.is_cap) (srft.losses.truncated_is_weight,
    mu: the sampler's log-prob); "none"; "auto": tis for the vllm engine, none for hf (which samples
    from the trainer's own model). The gap is logged either way (rollout/logprob_gap)."""
    is_cap: float = 2.0
    """C of the truncated importance weight (verl's tis_imp_ratio_cap: 2; TRL: 3)."""
    vllm_gpu_memory_utilization: Optional[float] = None
    """vllm engine: share of the GPU's memory vLLM may take (weights + KV cache); the rest is the trainer's.
    None: 0.5 on a GPU; on a CPU, where vLLM reads it as the share of RAM its process may use (model,
    trainer and KV cache together), 0.3."""
    vllm_tensor_parallel_size: int = 1
    """vllm engine: GPUs one vLLM engine spans (tensor parallelism; untested in srft)."""
    vllm_enable_sleep_mode: bool = False
    """vllm engine: release the KV cache during the update (LLM.sleep(level=1)), take it back to generate."""
    vllm_max_model_len: Optional[int] = None
    """vllm engine: longest prompt + response; None: the model's."""
    vllm_dtype: str = "auto"
    """vllm engine: "auto" = the trainer's model dtype, or float32 / bfloat16 / float16."""
    vllm_enforce_eager: bool = True
    """vllm engine: no CUDA graphs (slower decoding, faster start-up and less memory)."""
    vllm_sync_tol: float = 0.05
    """vllm engine: after each weight sync, vLLM's log-probs of a fixed probe sequence must match the
    trainer model's within this (max absolute difference, nats), else the run stops with an error."""


@dataclass
class ObjectiveConfig:
    """Which terms enter the loss and how (see srft.objective for the formulas)."""

    sft_demo: bool = True
    """L_SFT_demo: NLL on demonstration tokens, weighted by w_SFT."""
    w_sft: str = "entropy"
    """"entropy": w_SFT = w_sft_coef * sg(exp(w_sft_sign * H)) (Eq. 8); "constant": w_SFT = w_sft_coef."""
    w_sft_coef: float = 0.5
    """Coefficient of w_SFT (the paper: 0.5)."""
    w_sft_sign: float = -1.0
    """-1 as in the paper (less SFT when uncertain); +1 as in the released script."""
    rl_demo: bool = True
    """L_RL_demo: off-policy term -A f(p) on demonstration tokens (Eq. 9-10)."""
    demo_shaping_gamma: Optional[float] = None
    """None: f(p) = p (paper); a number g: f(p) = p / (p + g) (LUFFY, g = 0.1)."""
    rl_self: bool = True
    """L_RL_self: clipped surrogate on on-policy rollout tokens (Eq. 11-12)."""
    w_rl: str = "entropy"
    """Weight on tokens of rollouts with A > 0. "entropy": w_rl_coef * sg(exp(w_rl_sign * H)); "constant": w_rl_coef."""
    w_rl_coef: float = 0.1
    """Coefficient of w_RL (the paper: 0.1)."""
    w_rl_sign: float = 1.0
    """+1 as in the paper (more weight when uncertain)."""
    clip_eps: Optional[float] = 0.2
    """PPO clip range; None disables clipping (LUFFY's on-policy term)."""
    clip_eps_high: Optional[float] = None
    """Upper clip range; None means equal to clip_eps."""
    entropy_granularity: str = "batch"
    """At which level H enters the weights: "token", "sequence" or "batch" (rollout-batch mean)."""
    aggregation: str = "token-mean"
    """"token-mean", "seq-mean-token-mean" or "token-sum-norm" (sum / (n_seqs * L_max))."""
    normalize_over: str = "term"
    """"term": each term is normalised by the counts of its own tokens (demo or rollout);
    "batch": every term by the counts of the whole batch (verl / LUFFY)."""
    max_len_norm: Optional[int] = None
    """L_max for token-sum-norm; None uses the longest response budget."""
    entropy_bonus: float = 0.0
    """Coefficient c of the bonus -c * agg(H) over all response tokens, aggregated like the policy loss
    (a token mean under token-mean; LUFFY's script: 0.001)."""
    adv_std_norm: bool = True
    """Divide group advantages by the group std (paper) or not (LUFFY)."""
    rollout_advantage: str = "group"
    """Advantages of the on-policy rollouts: "group" (the group's, as the demonstrations'); "signed": +1
    for a correct rollout (reward >= 1), -1 for a wrong one, no baseline or normalisation (the paper's
    L_RL_self with rewards in {+1, -1}; `losses.signed_rewards`). Demonstrations keep the group advantage."""
    rl_self_form: str = "surrogate"
    """L_RL_self per token: "surrogate" (-min(r A, clip(r) A), `losses.clipped_surrogate`) or "reinforce"
    (-A log pi, no ratio and no clipping; `losses.reinforce_term`)."""
    demos_in_group: bool = True
    """Demonstrations join their prompt's group for the advantages (SRFT, LUFFY: G_aug); False keeps them
    out (RL with an SFT loss: GRPO advantages over the rollouts only, demonstrations get A = 0)."""
    sft_token_weight: str = "none"
    """Per-token weight on L_SFT_demo's NLL: "none", or "phi": sg(p (1 - p)) (CHORD-phi, `losses.phi_weight`)."""
    sft_gate: Optional[int] = None
    """HPT's switch (`losses.gate_groups`): a prompt whose rollouts have at most this many correct answers
    (reward >= 1) trains by SFT on its demonstrations only, any other by RL on its rollouts only. None: off."""
    demo_filter: bool = False
    """Leave out of the loss the demonstrations the reward does not credit (reward < 1): SFT on
    verifier-filtered demonstrations (`losses.filter_demos`, the preset `sft_filtered`)."""
    mix_schedule: str = "none"
    """"none", or "chord": L = (1 - mu) L_RL_self + mu L_SFT_demo with mu scheduled over training
    (`losses.chord_mu`: linear warm-up to mu_peak, cosine decay to mu_valley)."""
    mu_peak: float = 0.1
    """CHORD: mu after warm-up."""
    mu_valley: float = 0.1
    """CHORD: mu at the end of the decay and after it."""
    mu_warmup: float = 0.0
    """CHORD: warm-up length as a share of train.max_steps (0: none)."""
    mu_decay: float = 0.0
    """CHORD: cosine-decay length as a share of train.max_steps (0: mu is mu_valley after warm-up)."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """AdamW learning rate (the testbed's default; the paper uses 1e-6 for 7B models)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.99
    """AdamW beta2."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up from 0."""
    schedule: str = "linear"
    """"constant", "linear" or "cosine" decay after warm-up (linear to 0 by the last step, as TRL's default;
    on the testbed a constant rate leaves SFT's final accuracy 55-74% across seeds, linear decay 90-93%)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclass
class TrainConfig:
    preset: str = "srft"
    """Loss composition: see `srft presets` (srft, grpo, sft)."""
    output_dir: str = "runs/srft"
    """The run folder: config.yaml, metrics.jsonl, completions.jsonl, eval.json, plots/, checkpoints/, final/."""
    overwrite: bool = False
    """Allow training into an output_dir that already holds a run (its files are replaced)."""
    max_steps: int = 150
    """Training steps; one step = one rollout batch (train.mini_batches x train.epochs_per_batch optimiser steps)."""
    epochs: Optional[float] = None
    """Passes over the training prompts (TRL's num_train_epochs): when set, train.max_steps is
    ceil(epochs x rows / train.prompts_per_step), counted once the data is loaded; giving both is refused."""
    prompts_per_step: int = 32
    """Prompts per rollout batch over all processes (each gives one group; with N processes each
    takes prompts_per_step / N whole groups, so the run does the same work whatever N is)."""
    mini_batches: int = 1
    """Optimiser steps per rollout batch (the paper: 1)."""
    epochs_per_batch: int = 1
    """Passes over each rollout batch."""
    micro_batch_size: int = 128
    """Sequences per forward/backward in each process (gradient accumulation inside a mini-batch)."""
    micro_batch_grouping: str = "length"
    """How samples are put into micro-batches: "length" sorts them by response then prompt length
    first, so short rollouts are not padded to the longest demonstration (the loss is unchanged: its
    normalisers are counts over the whole batch); "none" keeps the order of the groups."""
    seed: int = 0
    """Seeds the prompt order, the rollouts (per sample) and the evaluation's samples."""
    eval_every: int = 25
    """Evaluate every N steps (0: only before and after)."""
    save_every: int = 50
    """Checkpoint every N steps (0: only the final model)."""
    save_total_limit: int = 2
    """Checkpoints kept (the newest ones); older ones are deleted after each save."""
    resume: str = ""
    """A run folder to continue from its newest complete checkpoint (`srft train --resume DIR`): its
    config.yaml is the config (flags still override, e.g. --max-steps to extend), output_dir is DIR."""
    max_nonfinite_steps: int = 3
    """Consecutive steps with a non-finite loss or gradient (their updates skipped) before the run stops."""
    report_to: str = "none"
    """"none", "tensorboard" or "wandb", or several comma-separated ("tensorboard,wandb"; in Python also a
    list, as TRL takes it). JSONL metrics are always written."""
    log_every: int = 10
    """Every N steps: a one-line progress log when stdout is not a terminal (in place of the progress
    bar), and a sample of the step's completions in completions.jsonl. 0: neither."""
    log_completions: int = 8
    """Completions written to completions.jsonl at each logged step (prompt, completion, reward,
    advantage, whether it is a demonstration; whole groups of the main process); 0: none."""
    push_to_hub: bool = False
    """After training, push final/ to the Hugging Face Hub with a model card (srft.hub)."""
    hub_model_id: Optional[str] = None
    """The hub repository for train.push_to_hub ("user/name"); None: the run folder's name."""
    hub_private: bool = False
    """Create the hub repository as private."""
    stage_split: Optional[float] = None
    """Multi-stage presets (sft_then_grpo): the share of train.max_steps given to the first stage, in
    (0, 1); the other stages share the rest as the preset does. None: the preset's split (half and half)."""
    first_stage_lr: Optional[float] = None
    """Multi-stage presets: the first stage's learning rate (e.g. SFT's own best rate); None: optim.lr,
    as every other stage."""
    save_rollouts: bool = False
    """Write every step's samples (token ids, reward, advantage, global group index) to rollouts.jsonl."""
    old_logprob_pass: str = "auto"
    """"auto": on-policy runs (one mini-batch, one epoch) take pi_old from the update's own forward and
    the batch entropy from the sampler, with no separate pass; "always": a no-grad pass before the update."""
    logprob_path: str = "auto"
    """How log-probs and entropies are computed (srft.policy): "auto" from the hidden states in chunks
    where the model allows it (its log line says which), "logits" from the model's full logits."""
    logprob_chunk_size: int = 0
    """Positions per chunk when computing log-probs / entropies (srft.policy); 0: about 32M logits
    per chunk (e.g. 220 positions for a 152k vocabulary)."""


@dataclass
class EvalConfig:
    temperature: float = 0.0
    """0 = greedy (the testbed default, low noise); the paper's protocol uses 0.6."""
    top_p: float = 1.0
    """Nucleus sampling for evaluation (used when temperature > 0)."""
    k: int = 1
    """Samples per problem (avg@k)."""
    max_new_tokens: int = 48
    """Response budget for evaluation (the paper's protocol: 8,192 on 7B models)."""
    batch_size: int = 512
    """Sequences generated at once when evaluating."""
    limit: Optional[int] = None
    """Evaluate on the first N problems of each set; 0: no evaluation before or after training."""
    dataset: Optional[str] = None
    """An evaluation set for any run (the same forms as data.dataset; in Python also a list of dicts or a
    datasets.Dataset), scored by the run's reward: its mean reward is eval/eval/accuracy, before,
    every train.eval_every steps and after. None: the testbed's sets on the testbed, else none."""
    benchmark: Optional[str] = None
    """Benchmark files, comma-separated (verl parquet such as math_id.parquet, GPQA's csv, MMLU-Pro's
    parquet; srft.benchmarks): each data_source is an evaluation set (its unique problems), scored by the
    math verifier, avg@k with eval.k samples, before, every train.eval_every steps and after
    (eval/SOURCE/accuracy, eval.json, the accuracy plot)."""
    protocol: str = "none"
    """With eval.benchmark: evaluate its sources on a protocol (srft.protocol): srft (avg@32 on AIME24 and
    AMC, pass@1 elsewhere) or srft-fast (avg@4); its temperature, top-p, option shuffling and multi-box
    answers, while the token budget stays eval.max_new_tokens. none: eval.k and eval.temperature."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    preset_applied: Optional[str] = field(default=None, repr=False, compare=False)
    """Not a setting (never saved, no flag): the preset whose values are in this config already, under
    the user's. Set by `layer_config` and `apply_preset` (and for each stage by `srft.stages`), so
    that applying a preset is done once, whichever way the config was made."""
    kind_applied: Optional[str] = field(default=None, repr=False, compare=False)
    """Not a setting: the model kind (`srft.model_kinds`) whose defaults are in this config already."""

    def __getattr__(self, name: str) -> Any:  # TRL's flat names read back (`args.learning_rate`)
        if name.startswith("_") or not is_trl_name(name):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}{suggest(name)}")
        return read_back(name, lambda key: _get(self, key), self.__dict__.get("_trl"))

    def validate(self) -> None:
        """Each field inside its domain (`DOMAINS`), then cross-field checks; raises ValueError naming the field."""
        check_types(self)
        check_domains(self)
        r, t = self.rollout, self.train
        group = r.n_rollouts + r.n_demos
        if r.n_rollouts < 0 or r.n_demos < 0:
            raise ValueError("rollout.n_rollouts and rollout.n_demos must be >= 0")
        if group < 1:
            raise ValueError("rollout.n_rollouts + rollout.n_demos must be >= 1")
        if self.objective.rl_self and r.n_rollouts + r.n_demos < 2:
            raise ValueError(f"a group needs at least 2 samples for advantages, got rollout.n_rollouts + "
                             f"rollout.n_demos = {group}")
        if (self.objective.sft_demo or self.objective.rl_demo) and r.n_demos < 1:
            raise ValueError("objective.sft_demo / objective.rl_demo need rollout.n_demos >= 1")
        if self.objective.rl_self and r.n_rollouts < 1:
            raise ValueError("objective.rl_self needs rollout.n_rollouts >= 1")
        o = self.objective
        if o.sft_gate is not None and (o.sft_gate < 0 or r.n_rollouts < 1 or r.n_demos < 1):
            raise ValueError(f"objective.sft_gate ({o.sft_gate}) must be >= 0 and needs rollout.n_rollouts >= 1 and "
                             f"rollout.n_demos >= 1 (each prompt trains on one or the other)")
        for name in ("mu_peak", "mu_valley", "mu_warmup", "mu_decay"):
            if not 0.0 <= getattr(o, name) <= 1.0:
                raise ValueError(f"objective.{name} must be in [0, 1], got {getattr(o, name)}")
        if t.prompts_per_step < 1 or t.max_steps < 0:
            raise ValueError("train.prompts_per_step must be >= 1 and train.max_steps >= 0")
        for name in ("train.mini_batches", "train.epochs_per_batch", "train.save_total_limit",
                     "train.max_nonfinite_steps", "rollout.batch_size",
                     "rollout.max_new_tokens", "eval.k", "eval.batch_size", "eval.max_new_tokens",
                     "data.max_prompt_tokens", "data.max_demo_tokens"):
            section, attr = name.split(".")
            if getattr(getattr(self, section), attr) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(getattr(self, section), attr)}")
        if t.logprob_chunk_size < 0:
            raise ValueError(f"train.logprob_chunk_size must be >= 0 (0: automatic), got {t.logprob_chunk_size}")
        if t.stage_split is not None and not 0.0 < t.stage_split < 1.0:
            raise ValueError(f"train.stage_split must be in (0, 1), got {t.stage_split}")
        if t.first_stage_lr is not None and t.first_stage_lr <= 0:
            raise ValueError(f"train.first_stage_lr must be > 0, got {t.first_stage_lr}")
        for name in ("train.save_every", "train.eval_every", "train.log_every", "train.log_completions"):
            if getattr(t, name.split(".")[1]) < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {getattr(t, name.split('.')[1])}")
        if t.prompts_per_step % t.mini_batches != 0:
            raise ValueError(f"train.mini_batches ({t.mini_batches}) must divide train.prompts_per_step "
                             f"({t.prompts_per_step})")
        if t.micro_batch_size < 1:
            raise ValueError("train.micro_batch_size must be >= 1")
        if self.data.dataset is None:
            raise ValueError(f"data.dataset: no training data given for {self.model.name_or_path} (a model other "
                             f"than the testbed's has no default dataset): give --data.dataset (in Python "
                             f"train_dataset=): a file, a folder or a hub id; `testbed` trains on the testbed's tasks")
        check_choices(self)
        if r.engine == "vllm":
            # deferred: the engines import torch and transformers, which the flag parser and --help do without
            from srft.rollout import VLLM_MISSING
            from srft.rollout.vllm_engine import vllm_available

            if not vllm_available():
                raise ValueError(VLLM_MISSING)
        if not r.is_cap > 0:
            raise ValueError(f"rollout.is_cap must be > 0, got {r.is_cap}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _finite(v) and v > 0


def _non_negative(v: Any) -> bool:
    return _finite(v) and v >= 0


def _count(minimum: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _optional(check):
    return lambda v: v is None or check(v)


# The meaning of each number, checked for configs from flags, YAML and Python alike: a value
# outside it (a negative clipping norm, a NaN rate, a negative limit) is an error naming the field,
# never a run that trains on something else.
DOMAINS: dict[str, tuple[Any, str]] = {
    "optim.lr": (_positive, "a finite number > 0"),
    "optim.weight_decay": (_non_negative, "a finite number >= 0"),
    "optim.beta1": (lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    "optim.beta2": (lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    "optim.warmup_steps": (_non_negative, ">= 0"),
    "optim.max_grad_norm": (_positive, "a finite number > 0 (the clipping norm)"),
    "data.reward_timeout": (_positive, "a finite number > 0 (seconds per call of a reward function)"),
    "rollout.temperature": (_positive, "a finite number > 0 (training divides the logits by it)"),
    "rollout.top_p": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    "rollout.is_cap": (_positive, "a finite number > 0"),
    "rollout.vllm_sync_tol": (_non_negative, "a finite number >= 0"),
    "rollout.vllm_gpu_memory_utilization": (_optional(lambda v: _finite(v) and 0 < v <= 1), "None or in (0, 1]"),
    "model.lora_r": (_non_negative, ">= 0 (0: no LoRA)"),
    "model.lora_alpha": (_positive, "> 0"),
    "model.lora_dropout": (lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    "objective.w_sft_coef": (_finite, "a finite number"),
    "objective.w_rl_coef": (_finite, "a finite number"),
    "objective.w_sft_sign": (_finite, "a finite number"),
    "objective.w_rl_sign": (_finite, "a finite number"),
    "objective.clip_eps": (_optional(_positive), "None (no clipping) or a finite number > 0"),
    "objective.clip_eps_high": (_optional(_positive), "None or a finite number > 0"),
    "objective.demo_shaping_gamma": (_optional(_positive), "None (f(p) = p) or a finite number > 0"),
    "objective.max_len_norm": (_optional(lambda v: _finite(v) and v >= 1), "None or >= 1"),
    "objective.entropy_bonus": (_non_negative, "a finite number >= 0"),
    "train.seed": (_non_negative, ">= 0"),
    "train.first_stage_lr": (_optional(_positive), "None or a finite number > 0"),
    "train.output_dir": (lambda v: isinstance(v, str) and bool(v.strip()), "a folder name (not empty)"),
    "eval.temperature": (_non_negative, "a finite number >= 0 (0: greedy)"),
    "eval.top_p": (lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    "eval.limit": (_optional(_non_negative), "None (all) or >= 0 (0: no evaluation)"),
    "train.epochs": (_optional(_positive), "None (train.max_steps decides) or a finite number > 0"),
    "train.stage_split": (_optional(lambda v: _finite(v) and 0 < v < 1), "None or in (0, 1)"),
    "objective.mu_peak": (lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1]"),
    "objective.mu_valley": (lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1]"),
    "objective.mu_warmup": (lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1] (a share of train.max_steps)"),
    "objective.mu_decay": (lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1] (a share of train.max_steps)"),
    # counts: whole numbers (a float or a bool given in Python is refused, not rounded)
    **{k: (_count(1), ">= 1 (a whole number)") for k in (
        "data.max_prompt_tokens", "data.max_demo_tokens", "rollout.max_new_tokens", "rollout.batch_size",
        "rollout.vllm_tensor_parallel_size", "train.prompts_per_step", "train.mini_batches", "train.epochs_per_batch",
        "train.micro_batch_size", "train.save_total_limit", "train.max_nonfinite_steps", "eval.k",
        "eval.max_new_tokens", "eval.batch_size")},
    **{k: (_count(0), ">= 0 (a whole number)") for k in (
        "rollout.n_rollouts", "rollout.n_demos", "train.max_steps", "train.eval_every", "train.save_every",
        "train.log_every", "train.log_completions", "train.logprob_chunk_size")},
    "rollout.vllm_max_model_len": (_optional(_count(1)), "None (the model's) or a whole number >= 1"),
    "objective.sft_gate": (_optional(_count(0)), "None (off) or a whole number >= 0"),
}


def domains_markdown() -> str:
    """DOMAINS as a markdown table (docs/reliability.md, between its domains markers)."""
    return "\n".join(["| field | allowed |", "|---|---|"] + [f"| `{k}` | {what} |" for k, (_, what) in DOMAINS.items()])


def numeric_fields() -> list[str]:
    """Every field whose type is a number (int, float or Optional of one): each has a DOMAINS entry."""
    out = []
    for s in SECTIONS:
        sub_cls = type(getattr(Config(), s))
        for f in dataclasses.fields(sub_cls):
            tp = _field_type(sub_cls, f.name)
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if (args[0] if args else tp) in (int, float):
                out.append(f"{s}.{f.name}")
    return out


def check_types(cfg: "Config") -> None:
    """Every true/false field holds a bool and every text field text (a Python user can assign
    anything; "yes" is not True): a ValueError naming the field. Numbers are DOMAINS'; the fields
    that take Python objects too (datasets, reward functions, trackers) are checked where used."""
    objects = {"data.dataset", "eval.dataset", "data.reward", "train.report_to", "eval.benchmark",
               "model.lora_target_modules"}
    for s in SECTIONS:
        sub = getattr(cfg, s)
        for f in dataclasses.fields(sub):
            key, value = f"{s}.{f.name}", getattr(sub, f.name)
            tp = _field_type(type(sub), f.name)
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            base, optional = (args[0], True) if args else (tp, False)
            if key in objects or base not in (bool, str) or (optional and value is None):
                continue
            if not isinstance(value, base):
                raise ValueError(f"{key} must be {'true or false' if base is bool else 'text'}, got "
                                 f"{type(value).__name__} {value!r}")


def check_domains(cfg: "Config") -> None:
    """Every number of DOMAINS inside its meaning; a ValueError naming the field and its domain."""
    for key, (ok, what) in DOMAINS.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            raise ValueError(f"{key} must be {what}, got {value!r}")


HIDDEN = ("preset_applied", "kind_applied")  # Config fields that are markers, not settings
SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name not in HIDDEN]

# Names users bring from TRL's GRPOConfig / SFTConfig (and HF TrainingArguments), and the field that
# holds the same setting here: used to say where a setting lives when a name is given where srft
# expects its own (`cfg.optim.learning_rate`); at the top level they work (`srft.trl_names`).
TRL_NAMES = {
    **SAME, "lr": "optim.lr", "max_step": "train.max_steps", "num_generations": "rollout.n_rollouts",
    "max_new_tokens": "rollout.max_new_tokens", "per_device_train_batch_size": "train.micro_batch_size",
    "lr_scheduler_type": "optim.schedule", "max_length": "data.max_demo_tokens", "report_to": "train.report_to",
    "model_name_or_path": "model.name_or_path", "model": "model.name_or_path", "dataset": "data.dataset",
    "reward": "data.reward", "reward_weights": "data.reward_weights", "scale_rewards": "objective.adv_std_norm",
    "loss_type": "objective.aggregation", "bf16": "model.dtype", "use_vllm": "rollout.engine",
}


def all_keys() -> list[str]:
    """Every setting, as "section.field"."""
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(type(getattr(Config(), s)))]


def trl_setting(name: str) -> Optional[str]:
    """The setting here that TRL's `name` (or a near spelling of it) sets, if any."""
    match = difflib.get_close_matches(name, list(TRL_NAMES), n=1, cutoff=0.8)
    return TRL_NAMES[match[0]] if match else None


def did_you_mean(hits: list[str]) -> str:
    return f" (did you mean {' or '.join(hits)}?)" if hits else ""


def suggest(name: str, section: Optional[str] = None) -> str:
    """" (did you mean ...?)" for an unknown setting `name` (a field of `section`, or "section.field"
    or a flat name when section is None): where TRL's name for a setting lives here, then the
    closest known names."""
    trl = trl_setting(name.split(".")[-1])
    hits = [trl] if trl else []
    keys = all_keys()
    if section:
        candidates, query = {k.split(".", 1)[1]: k for k in keys if k.startswith(section + ".")}, name.split(".")[-1]
    else:
        candidates, query = {**{k.split(".", 1)[1]: k for k in keys}, **{k: k for k in keys}}, name
    for h in difflib.get_close_matches(query, list(candidates), n=3, cutoff=0.6):
        if candidates[h] not in hits:
            hits.append(candidates[h])
    return did_you_mean(hits)


def _refuse_unknown(cls, section: Optional[str]):
    """Make the dataclass `cls` refuse attributes and keywords that are not its fields, naming the
    closest ones: `cfg.optim.learning_rate = 1e-6` or `OptimConfig(learning_rate=...)` is an error,
    never a setting that is silently not used. The top level (`Config`, section None) takes TRL's
    flat names (`Config(learning_rate=1e-6)`, `cfg.num_generations = 8`; `srft.trl_names`).
    Each section records the fields set after it was made, or given as keywords (`_user_set`): a
    preset or the model-kind defaults never replace them (`apply_preset`)."""
    names = frozenset(f.name for f in dataclasses.fields(cls))
    where = f"{section}" if section else "the config"
    init = cls.__init__

    def __setattr__(self, key, value):
        if key not in names and not key.startswith("_"):
            if section is None and is_trl_name(key):
                set_trl_names(self, {key: value})
                return
            raise AttributeError(f"{where} has no setting {key!r}{suggest(key, section)}")
        object.__setattr__(self, key, value)
        if key in names and not self.__dict__.get("_initialising"):
            self.__dict__.setdefault("_user_set", set()).add(key)

    def __init__(self, *args, **kwargs):
        trl = {k: kwargs.pop(k) for k in list(kwargs) if section is None and k not in names and is_trl_name(k)}
        for key in kwargs:
            if key not in names:
                raise TypeError(f"{cls.__name__}: unknown setting {key!r}{suggest(key, section)}; "
                                f"{where} has {sorted(names - set(HIDDEN))}")
        object.__setattr__(self, "_initialising", True)
        init(self, *args, **kwargs)
        object.__setattr__(self, "_initialising", False)
        object.__setattr__(self, "_user_set", set(kwargs))
        if getattr(type(self), "PRESET", None):  # GRPOConfig, SFTConfig (srft.api): their preset, first
            self.train.preset = type(self).PRESET
        if trl:
            set_trl_names(self, trl)

    cls.__setattr__, cls.__init__ = __setattr__, __init__
    return cls


def set_trl_names(cfg: "Config", values: dict[str, Any]) -> None:
    """Set TRL's flat names on a config made in Python (`srft.trl_names.to_srft`): each field they
    map to is set as if by hand. The batch names are kept (`_trl`) and converted again when a
    preset changes the group (`apply_preset`): num_generations counts a demonstration in the
    group only for presets that put one there."""
    given = {**cfg.__dict__.get("_trl", {}), **values}
    object.__setattr__(cfg, "_trl", given)
    batch = {k: v for k, v in given.items() if k in BATCH}
    over = to_srft({**{k: v for k, v in values.items() if k not in BATCH}, **batch}, preset_group(cfg))
    for key, value in over.items():
        section, name = key.split(".")
        trl = next((n for n in values if key in targets(n)), None) or key
        try:
            parsed = _parse_value(value, _field_type(type(getattr(cfg, section)), name))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{trl} (sets {key}): bad value {value!r}: {e}") from None
        setattr(getattr(cfg, section), name, parsed)
    object.__setattr__(cfg, "_trl_set", {**cfg.__dict__.get("_trl_set", {}),
                                         **{k: _get(cfg, k) for k in over if k in _batch_targets()}})


def preset_group(cfg: "Config") -> tuple[int, int]:
    """(n_rollouts, n_demos) the config will train with once its preset is applied: the preset's,
    unless set by hand."""
    over, mine = get_preset(cfg.train.preset).overrides, user_set(cfg)
    return tuple(_get(cfg, k) if k in mine or k not in over else over[k]  # type: ignore[return-value]
                 for k in ("rollout.n_rollouts", "rollout.n_demos"))


def _batch_targets() -> set[str]:
    return {t for n in BATCH for t in targets(n)}


def user_set(cfg: "Config") -> set[str]:
    """The "section.field" keys set by hand or by a YAML / flag layer (not by a preset or defaults)."""
    return {f"{s}.{k}" for s in SECTIONS for k in getattr(cfg, s).__dict__.get("_user_set", ())}


_refuse_unknown(Config, None)
for _section in SECTIONS:
    _refuse_unknown(type(getattr(Config(), _section)), _section)


def _presets() -> tuple[str, ...]:
    return tuple(PRESETS)


def _aggregations() -> tuple[str, ...]:
    from srft.losses import AGGREGATION_MODES  # deferred: srft.losses imports torch (--help does without)

    return tuple(AGGREGATION_MODES)


def _granularities() -> tuple[str, ...]:
    from srft.losses import ENTROPY_GRANULARITIES  # deferred: srft.losses imports torch

    return tuple(ENTROPY_GRANULARITIES)


# The allowed values of every field that takes one of a few words: `--help` lists them, and
# `Config.validate` (run on every config, however it was made) refuses anything else, naming the field.
CHOICES: dict[str, Any] = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.chat_template": ("auto", "none"),
    "data.long_demo_policy": ("drop", "truncate"),
    "rollout.engine": ("hf", "vllm"),
    "rollout.is_correction": ("auto", "none", "tis"),
    "rollout.vllm_dtype": ("auto", "float32", "bfloat16", "float16"),
    "objective.w_sft": ("entropy", "constant"),
    "objective.w_rl": ("entropy", "constant"),
    "objective.entropy_granularity": _granularities,
    "objective.aggregation": _aggregations,
    "objective.normalize_over": ("term", "batch"),
    "objective.sft_token_weight": ("none", "phi"),
    "objective.mix_schedule": ("none", "chord"),
    "objective.rollout_advantage": ("group", "signed"),
    "objective.rl_self_form": ("surrogate", "reinforce"),
    "optim.schedule": ("constant", "linear", "cosine"),
    "train.preset": _presets,
    "train.micro_batch_grouping": ("length", "none"),
    "train.report_to": ("none", "tensorboard", "wandb"),
    "train.old_logprob_pass": ("auto", "always"),
    "train.logprob_path": ("auto", "logits"),
    "eval.protocol": ("none", "srft", "srft-fast"),
}


def choices(key: str) -> Optional[tuple[str, ...]]:
    """The allowed values of field `key` ("section.field"), or None when any value of its type goes."""
    c = CHOICES.get(key)
    return tuple(c()) if callable(c) else c


LIST_VALUED = ("train.report_to",)
"""Fields that take several of their CHOICES at once: comma-separated, or a list in Python."""


def report_targets(value) -> list[str]:
    """The trackers of train.report_to ("tensorboard,wandb", ["tensorboard"], "none"), "none" left out."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [x.strip() for x in items if str(x).strip() and str(x).strip() != "none"]


def check_choices(cfg: "Config") -> None:
    """A ValueError naming the first field whose value is not one of its CHOICES."""
    for key in CHOICES:
        allowed = choices(key)
        value = _get(cfg, key)
        if key in LIST_VALUED and isinstance(value, (str, list, tuple)):
            bad = [x for x in report_targets(value) if x not in allowed]
            if bad:
                raise ValueError(f"{key}: {bad[0]!r} is not one of {list(allowed)}")
        elif value not in allowed:
            raise ValueError(f"{key}: {value!r} is not one of {list(allowed)}")


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (the string literal that follows it in the
    source), as one line; the text `--help` shows."""
    import ast
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            docs[a.target.id] = " ".join(b.value.value.split())
    return docs
SHORT_FLAGS = {
    "preset": "train.preset",
    "output_dir": "train.output_dir",
    "max_steps": "train.max_steps",
    "seed": "train.seed",
    "model": "model.name_or_path",
    "resume": "train.resume",
}


def _field_type(cls, name):
    hints = typing.get_type_hints(cls)
    return hints[name]


def _parse_value(text: Any, tp) -> Any:
    """Convert a YAML / command-line value to the field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text is None or (isinstance(text, str) and text.lower() in ("none", "null", "")):
            return None
        return _parse_value(text, args[0])
    if tp is bool:
        if isinstance(text, bool):
            return text
        if str(text).lower() in ("1", "true", "yes", "on"):
            return True
        if str(text).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if tp is int:
        if isinstance(text, float) and not text.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(text)
    if tp is float:
        return float(text)
    return str(text) if text is not None else None


def apply_overrides(cfg: Config, overrides: dict[str, Any], source: str, mark: bool = True) -> Config:
    """Apply {"section.field": value} overrides; unknown keys raise naming the key. The result keeps
    which fields the user set (and TRL names given in Python); `mark`: the overrides are the user's
    (a YAML file, flags), not a preset's or the model kind's defaults."""
    values = {s: dataclasses.asdict(getattr(cfg, s)) for s in SECTIONS}
    marked = user_set(cfg)
    for key, raw in overrides.items():
        key = key.replace("-", "_")
        if "." not in key:
            raise ValueError(f"{source}: unknown config key {key!r} (expected section.field){suggest(key)}")
        section, name = key.split(".", 1)
        if section not in values:
            raise ValueError(f"{source}: unknown config section {section!r} in {key!r}; known: {SECTIONS}"
                             f"{suggest(key)}")
        sub_cls = type(getattr(cfg, section))
        known = [f.name for f in dataclasses.fields(sub_cls)]
        if name not in known:
            raise ValueError(f"{source}: unknown config field {key!r}{suggest(name, section)}; {section} has {known}")
        try:
            values[section][name] = _parse_value(raw, _field_type(sub_cls, name))
        except ValueError as e:
            raise ValueError(f"{source}: bad value for {key}: {e}") from None
        except TypeError:  # a list or a mapping where a number goes (YAML)
            raise ValueError(f"{source}: bad value for {key}: expected {_type_word(_field_type(sub_cls, name))}, "
                             f"got {type(raw).__name__} {raw!r}") from None
        if mark:
            marked.add(f"{section}.{name}")
    return carry_trl_names(cfg, from_dict(values, marked))


def carry_trl_names(src: "Config", dst: "Config") -> "Config":
    """`dst` with the TRL names given to `src` in Python (copied), so a preset can convert them again."""
    for attr in ("_trl", "_trl_set"):
        if attr in src.__dict__:
            object.__setattr__(dst, attr, dict(src.__dict__[attr]))
    return dst


def from_dict(values: dict, marked: frozenset[str] = frozenset()) -> Config:
    """A config from {section: {field: value}}; `marked`: the "section.field" keys the user set."""
    parts = {}
    for s in SECTIONS:
        sub_cls = type(getattr(Config(), s))
        parts[s] = sub_cls(**values.get(s, {}))
        object.__setattr__(parts[s], "_user_set", {k.split(".", 1)[1] for k in marked if k.startswith(s + ".")})
    return Config(**parts)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def to_dict(cfg: Config) -> dict:
    """The settings, section by section (what config.yaml holds)."""
    return {s: dataclasses.asdict(getattr(cfg, s)) for s in SECTIONS}


def reward_spec_text(spec: Any) -> str:
    """data.reward as text: reward functions given as Python objects become "module:qualname"
    (re-importable when the function lives in an importable module)."""
    if isinstance(spec, str):
        return spec
    items = [spec] if callable(spec) else list(spec)
    return ",".join(x if isinstance(x, str) else f"{getattr(x, '__module__', '?')}:{getattr(x, '__qualname__', repr(x))}"
                    for x in items)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically); `train.resume` is left out (saved empty) so that
    `--config config.yaml` re-runs the run rather than resuming it."""
    d = saved_dict(cfg)
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(yaml.safe_dump(d, sort_keys=False))
    tmp.replace(path)


def saved_dict(cfg: Config) -> dict:
    """The config as config.yaml holds it (reward functions as import paths, in-memory data described)."""
    d = to_dict(cfg)
    d["train"]["resume"] = ""
    d["data"]["reward"] = reward_spec_text(cfg.data.reward)
    d["train"]["report_to"] = ",".join(report_targets(cfg.train.report_to)) or "none"
    for section, key in (("data", "dataset"), ("eval", "dataset")):  # in-memory data: described, not copied
        v = d[section][key]
        if v is not None and not isinstance(v, str):
            d[section][key] = f"<in memory: {len(v)} rows>" if hasattr(v, "__len__") else "<in memory>"
    return d


def load_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config: no such file {path}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of sections")
    return flatten(data)


def _resume_overrides(flag_over: dict[str, Any], config_file: Optional[str]) -> dict[str, Any]:
    """--resume DIR: DIR/config.yaml is the config (in place of --config) and DIR the output folder."""
    run = Path(str(flag_over["train.resume"]))
    if config_file:
        raise ValueError(f"--resume {run}: the run's own config.yaml is used; drop --config {config_file}")
    out = flag_over.get("train.output_dir")
    if out is not None and Path(str(out)).resolve() != run.resolve():
        raise ValueError(f"--resume {run}: a resumed run writes to its own folder; drop --output-dir {out}")
    if not (run / "config.yaml").is_file():
        raise ValueError(f"--resume {run}: no config.yaml there (not a run folder, or the run never started)")
    flag_over["train.output_dir"] = str(run)
    return load_yaml(str(run / "config.yaml"))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (--section.field) plus the short forms."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with config sections (overrides the preset; "
                        "flags override it)")
    for short, key in SHORT_FLAGS.items():
        allowed = choices(key)
        parser.add_argument(f"--{short.replace('_', '-')}", dest=f"short__{short}", default=None, choices=allowed,
                            metavar=("{" + ",".join(allowed) + "}") if allowed else
                            ("DIR" if short in ("output_dir", "resume") else
                             _type_word(_field_type(type(getattr(Config(), key.split(".")[0])), key.split(".")[1]))),
                            help=f"same as --{key}")
    for s in SECTIONS:
        add_section_flags(parser, s)
    add_trl_flags(parser)


def add_trl_flags(parser: argparse.ArgumentParser) -> None:
    """TRL's flat names as flags (`--learning_rate 1e-6`, `--num_generations 8`; `srft.trl_names`),
    each with the field it sets; names with no equivalent are taken so that their message says why."""
    group = parser.add_argument_group("TRL names", "TRL's GRPOConfig / SFTConfig names, converted as the table in "
                                      "docs/coming-from-trl.md says (srft.trl_names)")
    taken = {a for action in parser._actions for a in action.option_strings}
    for name in [*SAME, *CONVERTED, *BATCH, *NO_EQUIVALENT]:
        flags = [f for f in dict.fromkeys((f"--{name}", f"--{name.replace('_', '-')}")) if f not in taken]
        if not flags:
            continue
        listed = name not in NO_EQUIVALENT and f"--{name.replace('_', '-')}" not in taken
        help_text = (f"TRL's {name}: sets {SAME[name]}" if name in SAME else
                     f"TRL's {name}: {CONVERTED[name][1]}" if name in CONVERTED else
                     f"TRL's {name}: the group and batch shape (docs/coming-from-trl.md)")
        for i, flag in enumerate(flags):
            group.add_argument(flag, dest=f"trl__{name}", default=None, metavar="VALUE",
                               help=help_text.replace("%", "%%") if listed and i == 0 else argparse.SUPPRESS)
            taken.add(flag)


def add_section_flags(parser: argparse.ArgumentParser, s: str) -> None:
    """A group of flags --s.field, one per field of section `s`, with the field's docstring, its
    allowed values and its default as help. --s.field-name (dashes) is accepted too, unlisted."""
    sub = getattr(Config(), s)
    docs = field_docs(type(sub))
    doc = " ".join((type(sub).__doc__ or "").split())
    group = parser.add_argument_group(s, None if doc.startswith(type(sub).__name__ + "(") else doc)
    for f in dataclasses.fields(sub):
        flag, alt = f"--{s}.{f.name}", f"--{s}.{f.name.replace('_', '-')}"
        allowed = choices(f"{s}.{f.name}")
        metavar = ("{" + ",".join(allowed) + "}") if allowed else _type_word(_field_type(type(sub), f.name))
        default = getattr(sub, f.name)
        if s == "data" and f.name == "system_prompt" and default:
            default = "default"  # the paper-style instruction (srft.data.DEFAULT_SYSTEM_PROMPT)
        help_text = (docs[f.name] + " " if docs.get(f.name) else "") + f"(default: {default!r})"
        kwargs = dict(dest=f"cfg__{s}.{f.name}", default=None, metavar=metavar,
                      choices=None if f"{s}.{f.name}" in LIST_VALUED else allowed)  # (checked by validate)
        group.add_argument(flag, help=help_text.replace("%", "%%"), **kwargs)
        if alt != flag:  # the dashed spelling, accepted but not listed twice in --help
            group.add_argument(alt, help=argparse.SUPPRESS, **kwargs)


def _type_word(tp) -> str:
    """INT, FLOAT, BOOL or TEXT for a field's type (Optional[...] taken as its inner type)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and args else tp
    return {int: "INT", float: "FLOAT", bool: "BOOL"}.get(tp, "TEXT")


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The {"section.field": value} overrides given on the command line (short forms included)."""
    over = {k[len("cfg__"):]: v for k, v in vars(args).items() if k.startswith("cfg__") and v is not None}
    over.update({k[len("trl__"):]: v for k, v in vars(args).items() if k.startswith("trl__") and v is not None})
    for short, key in SHORT_FLAGS.items():
        v = getattr(args, f"short__{short}", None)
        if v is not None:
            over[key] = v
    return over


def layer_config(preset_name: str, layers: list[tuple[str, dict[str, Any]]], kind: Optional[str] = None) -> Config:
    """The one place where a config's layers are applied, in order: the defaults, the model kind's
    defaults (`srft.model_kinds`: the testbed's, or a real model's, from the model the layers name),
    the preset's values, then each of `layers` ((source, {"section.field" or TRL name: value}), e.g.
    the YAML file, then the command line). TRL's flat names (`learning_rate`, `num_generations`)
    are converted with the group the whole config ends with (`srft.trl_names`)."""
    preset = get_preset(preset_name)
    model = next((over[k] for _, over in reversed(layers) for k in over
                  if k.replace("-", "_") == "model.name_or_path"), "testbed")
    kind = kind or model_kind(model)
    cfg = apply_overrides(Config(), {**kind_defaults(kind, preset_name), **preset.overrides,
                                     "train.preset": preset_name}, f"preset {preset_name}", mark=False)
    split = [(source, *_split_trl(over)) for source, over in layers]
    context = cfg
    for source, sec, _ in split:
        context = apply_overrides(context, sec, source)
    group = (context.rollout.n_rollouts, context.rollout.n_demos)
    for source, sec, trl in split:
        try:
            converted = to_srft(trl, group)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        for key in sorted(set(converted) & {k.replace("-", "_") for k in sec}):
            raise ValueError(f"{source}: {key} is given twice, by its name and by a TRL name ({', '.join(trl)})")
        cfg = apply_overrides(cfg, {**sec, **converted}, source)
    cfg.preset_applied, cfg.kind_applied = preset_name, kind  # under the other layers
    return cfg


def _split_trl(over: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A layer's {"section.field": value} settings and its TRL names (no section), apart."""
    sec, trl = {}, {}
    for k, v in over.items():
        flat = k.replace("-", "_")
        if "." not in flat and is_trl_name(flat):
            trl[flat] = v
        else:
            sec[k] = v
    return sec, trl


def resolve_config(args: argparse.Namespace) -> Config:
    """defaults < model kind < preset < YAML < flags (`layer_config`)."""
    flag_over = flag_overrides(args)
    yaml_over = load_yaml(args.config) if getattr(args, "config", None) else {}
    if flag_over.get("train.resume"):
        yaml_over = _resume_overrides(flag_over, getattr(args, "config", None))
    preset_name = flag_over.get("train.preset", yaml_over.get("train.preset", TrainConfig.preset))
    cfg = layer_config(preset_name, [(f"--config {getattr(args, 'config', '')}", yaml_over),
                                     ("command line", flag_over)])
    cfg.validate()
    return cfg


def _get(cfg: Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def apply_preset(cfg: Config, kind: Optional[str] = None) -> tuple[Config, list[str]]:
    """Make `cfg` train what `cfg.train.preset` says, on the defaults of its model's kind
    (`srft.model_kinds`; `kind` when the model is an object), whichever way the config was made.
    A config from `layer_config` (flags, YAML) has both layers applied already. A config built in
    Python (`cfg.train.preset = "grpo"`) gets the model kind's and the preset's values for every
    field the user did not set (`user_set`), as a YAML file or a flag would leave them; fields
    an earlier preset or kind set follow the new ones. TRL's batch names are converted again for the
    preset's group. Returns the config (a new one when a value changed) and the keys it set."""
    name = cfg.train.preset
    kind = kind or cfg.kind_applied or model_kind(cfg.model.name_or_path)
    if cfg.preset_applied == name and cfg.kind_applied == kind:
        return cfg, []
    new = {**kind_defaults(kind, name), **get_preset(name).overrides}  # a ValueError naming an unknown preset
    before = cfg.preset_applied
    prev = {**kind_defaults(cfg.kind_applied or TESTBED, before), **get_preset(before).overrides} if before else {}
    defaults, mine = Config(), user_set(cfg)
    changed = {}
    for key, val in new.items():
        cur = _get(cfg, key)
        if key not in mine and (cur == _get(defaults, key) or (key in prev and cur == prev[key])):
            changed[key] = val
    for key, val in prev.items():  # what the earlier layers set and these leave at the default
        if key not in new and key not in mine and _get(cfg, key) == val:
            changed[key] = _get(defaults, key)
    cfg = apply_overrides(cfg, changed, f"preset {name}", mark=False) if changed else cfg
    changed.update(_reconvert_batch(cfg))
    cfg.preset_applied, cfg.kind_applied = name, kind
    return cfg, sorted(changed)


def _reconvert_batch(cfg: Config) -> dict[str, Any]:
    """TRL's batch names given in Python, converted again for the group the preset gave; fields
    changed by hand since they were set keep the hand's value."""
    given = {k: v for k, v in cfg.__dict__.get("_trl", {}).items() if k in BATCH}
    if not given:
        return {}
    done = cfg.__dict__.get("_trl_set", {})
    over = {k: v for k, v in to_srft(given, (cfg.rollout.n_rollouts, cfg.rollout.n_demos)).items()
            if k not in done or _get(cfg, k) == done[k]}
    for key, value in over.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    object.__setattr__(cfg, "_trl_set", {**done, **over})
    return over
