"""TRL's flat config names (GRPOConfig, SFTConfig, HF TrainingArguments) as srft settings.

`SRFTConfig(learning_rate=1e-6, num_generations=8, per_device_train_batch_size=8)`, the same
names as command-line flags (`--learning_rate 1e-6`) and as top-level keys of a YAML file, set
srft's sectioned fields. This module is the one table that maps them (`python -m
srft.trl_names` prints it for docs/coming-from-trl.md) and the function that converts
values (`to_srft`). Names with no meaning here are refused with the reason
(NO_EQUIVALENT), never accepted and ignored.

Where TRL's two configs differ, srft follows GRPOConfig and says so:
- `per_device_train_batch_size` counts **completions** per device and optimiser micro-step
  (GRPOConfig), with `gradient_accumulation_steps` and `steps_per_generation` (default: the
  accumulation steps) giving the completions of one rollout batch:
  per_device_train_batch_size x steps_per_generation = train.prompts_per_step x group. In
  SFT presets a group is one demonstration, so it counts examples, as SFTConfig does.
  srft counts a rollout batch over all processes (TRL per process): with N processes,
  multiply per_device_train_batch_size by N for TRL's total.
- `num_generations` is the whole group, a demonstration included for presets that put one in
  the group: 8 = 7 rollouts + 1 demonstration under srft and luffy, 8 rollouts under grpo.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

# TRL name -> srft field, the value carried over as it is (after the field's own type check)
SAME: dict[str, str] = {
    "learning_rate": "optim.lr",
    "max_steps": "train.max_steps",
    "seed": "train.seed",
    "output_dir": "train.output_dir",
    "overwrite_output_dir": "train.overwrite",
    "max_completion_length": "rollout.max_new_tokens",
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "logging_steps": "train.log_every",
    "save_steps": "train.save_every",
    "save_total_limit": "train.save_total_limit",
    "eval_steps": "train.eval_every",
    "warmup_steps": "optim.warmup_steps",
    "weight_decay": "optim.weight_decay",
    "adam_beta1": "optim.beta1",
    "adam_beta2": "optim.beta2",
    "max_grad_norm": "optim.max_grad_norm",
    "epsilon": "objective.clip_eps",
    "epsilon_high": "objective.clip_eps_high",
    "max_prompt_length": "data.max_prompt_tokens",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "push_to_hub": "train.push_to_hub",
    "hub_model_id": "train.hub_model_id",
    "hub_private_repo": "train.hub_private",
    "num_iterations": "train.epochs_per_batch",
    "num_train_epochs": "train.epochs",
    "num_generations_eval": "eval.k",
    "vllm_gpu_memory_utilization": "rollout.vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size": "rollout.vllm_tensor_parallel_size",
    "vllm_enable_sleep_mode": "rollout.vllm_enable_sleep_mode",
    "vllm_max_model_length": "rollout.vllm_max_model_len",
    "vllm_importance_sampling_cap": "rollout.is_cap",
    "vllm_importance_sampling_clip_max": "rollout.is_cap",
}

# the batch shape: converted together (`_batch_shape`), since each depends on the group size
BATCH = ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
         "generation_batch_size")
TRL_DEFAULT_PER_DEVICE = 8  # GRPOConfig's and SFTConfig's per_device_train_batch_size


def _bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("1", "true", "yes", "on"):
        return True
    if str(v).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}: expected true or false, got {v!r}")


def _words(name: str, v: Any, table: dict[str, Any]) -> Any:
    key = str(v).lower() if not isinstance(v, bool) else ("true" if v else "false")
    if key not in table:
        raise ValueError(f"{name}={v!r} has no equivalent in srft; it takes {sorted(table)}")
    out = table[key]
    if isinstance(out, str) and out.startswith("!"):
        raise ValueError(f"{name}={v!r} has no equivalent in srft: {out[1:]}")
    return out


def _list_text(v: Any) -> str:
    return ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)


# TRL name -> (a function of the value giving {srft field: value}, what the table says)
CONVERTED: dict[str, tuple[Callable[[str, Any], dict[str, Any]], str]] = {
    "report_to": (lambda n, v: {"train.report_to": _list_text(v) if v not in ("all", ["all"]) else
                                _words(n, "all", {"all": "!name the trackers (tensorboard, wandb)"})},
                  "`train.report_to` (a list or comma-separated; \"all\" is refused: name them)"),
    "reward_weights": (lambda n, v: {"data.reward_weights": _list_text(v)}, "`data.reward_weights`"),
    "lr_scheduler_type": (lambda n, v: {"optim.schedule": _words(n, v, {
        "linear": "linear", "constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine"})},
        "`optim.schedule` (linear, constant, constant_with_warmup = constant, cosine)"),
    "scale_rewards": (lambda n, v: {"objective.adv_std_norm": _words(n, v, {
        "group": True, "true": True, "none": False, "false": False,
        "batch": "!advantages are scaled by the group's std (group) or not at all (none)"})},
        "`objective.adv_std_norm` (group/true: true; none/false: false; batch: refused)"),
    "loss_type": (lambda n, v: {"objective.aggregation": _words(n, v, {
        "dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean", "dr_grpo": "token-sum-norm",
        "nll": "token-mean"})},
        "`objective.aggregation` (dapo, bnpo, nll: token-mean; grpo: seq-mean-token-mean; dr_grpo: token-sum-norm)"),
    "beta": (lambda n, v: {} if float(v) == 0.0 else
             _refuse(n, v, "srft has no KL term and no reference model (the paper has none); beta must be 0"),
             "none: 0 is accepted (srft has no KL term); any other value is refused"),
    "bf16": (lambda n, v: {"model.dtype": "bfloat16"} if _bool(n, v) else {},
             "`model.dtype: bfloat16` (the weights' dtype; no autocast)"),
    "fp16": (lambda n, v: {"model.dtype": "float16"} if _bool(n, v) else {}, "`model.dtype: float16`"),
    "use_vllm": (lambda n, v: {"rollout.engine": "vllm" if _bool(n, v) else "hf"}, "`rollout.engine: vllm`"),
    "vllm_mode": (lambda n, v: {} if str(v) == "colocate" else
                  _refuse(n, v, "srft runs vLLM in the trainer's process only (colocate)"),
                  "colocate only (vLLM in the trainer's process)"),
    "log_completions": (lambda n, v: {} if _bool(n, v) else {"train.log_completions": 0},
                        "`train.log_completions` (false: 0; completions.jsonl has whole groups)"),
    "eval_strategy": (lambda n, v: _words(n, v, {"no": {"eval.limit": 0}, "steps": {},
                                                 "epoch": "!srft evaluates every train.eval_every steps"}),
                      "no: `eval.limit: 0`; steps: `eval_steps`; epoch: refused"),
    "save_strategy": (lambda n, v: _words(n, v, {"no": {"train.save_every": 0}, "steps": {},
                                                 "epoch": "!srft saves every train.save_every steps",
                                                 "best": "!srft keeps the newest checkpoints"}),
                      "no: `train.save_every: 0`; steps: `save_steps`; epoch, best: refused"),
    "completion_only_loss": (lambda n, v: {} if v is None or _bool(n, v) else
                             _refuse(n, v, "srft's losses never cover prompt tokens"),
                             "always (true or None accepted; false refused)"),
    "shuffle_dataset": (lambda n, v: {} if _bool(n, v) else
                        _refuse(n, v, "prompts are always drawn in seeded shuffled epochs"),
                        "always (true accepted)"),
}

NO_EQUIVALENT: dict[str, str] = {
    "top_k": "rollouts sample with temperature and top-p only",
    "min_p": "rollouts sample with temperature and top-p only",
    "repetition_penalty": "rollouts sample with temperature and top-p only",
    "generation_kwargs": "rollouts sample with temperature and top-p only (rollout.ignore_eos for benchmarks)",
    "delta": "the surrogate is standard PPO clipping per token",
    "importance_sampling_level": "the ratio is per token",
    "mask_truncated_completions": "truncated rollouts are scored and counted (response_length/clip_ratio)",
    "top_entropy_quantile": "every response token is trained",
    "multi_objective_aggregation": "rewards are summed with data.reward_weights, then normalised per group",
    "warmup_ratio": "give optim.warmup_steps (steps, not a ratio)",
    "max_length": "srft limits prompts (data.max_prompt_tokens) and demonstrations (data.max_demo_tokens) apart",
    "packing": "micro-batches are grouped by length instead (train.micro_batch_grouping)",
    "padding_free": "micro-batches are grouped by length instead (train.micro_batch_grouping)",
    "dataset_text_field": "every row needs a prompt; plain text datasets are not read",
    "assistant_only_loss": "the last assistant turn of a messages row is the demonstration; only it is trained",
    "model_init_kwargs": "set model.dtype, model.trust_remote_code",
    "use_liger_kernel": "srft computes log-probs from the hidden states in chunks (train.logprob_path)",
    "per_device_eval_batch_size": "eval.batch_size counts the sequences generated at once",
    "chat_template_kwargs": "use data.chat_template and data.system_prompt",
    "cast_lm_head_to_fp32": "the weights' dtype is model.dtype",
    "vllm_importance_sampling_mode": "the correction is always per-token truncation (rollout.is_correction)",
}


def _refuse(name: str, value: Any, why: str) -> dict:
    raise ValueError(f"{name}={value!r} has no equivalent in srft: {why}")


def is_trl_name(name: str) -> bool:
    return name in SAME or name in CONVERTED or name in BATCH or name in NO_EQUIVALENT


def targets(name: str) -> tuple[str, ...]:
    """The srft fields TRL's `name` may set (for "given twice" checks and reading back)."""
    if name in SAME:
        return (SAME[name],)
    if name == "num_generations":
        return ("rollout.n_rollouts",)
    if name in BATCH:
        return ("train.prompts_per_step", "train.micro_batch_size", "train.mini_batches")
    return ()


def to_srft(values: dict[str, Any], group: tuple[int, int]) -> dict[str, Any]:
    """{srft field: value} for TRL's flat `values`. `group`: (rollout.n_rollouts, rollout.n_demos)
    of the config they apply to (a preset decides whether a demonstration is in the group).
    Raises ValueError naming the TRL name for a value with no meaning here."""
    out: dict[str, Any] = {}
    for name, v in values.items():
        if name in NO_EQUIVALENT:
            raise ValueError(f"{name} has no equivalent in srft: {NO_EQUIVALENT[name]}")
        if name in SAME:
            out[SAME[name]] = v
        elif name in CONVERTED:
            out.update(CONVERTED[name][0](name, v))
        elif name not in BATCH:
            raise ValueError(f"{name} is not a TRL setting srft knows")
    out.update(_batch_shape({k: values[k] for k in BATCH if k in values}, group))
    return out


def _int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, str) and v.strip().isdigit())):
        raise ValueError(f"{name}: expected a whole number, got {v!r}")
    if int(v) < 1:
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return int(v)


def _batch_shape(b: dict[str, Any], group: tuple[int, int]) -> dict[str, Any]:
    """num_generations and the batch sizes as srft's group and batch (see the module docstring)."""
    out: dict[str, Any] = {}
    b = {k: _int(k, v) for k, v in b.items()}
    n_rollouts, n_demos = group
    size = n_rollouts + n_demos
    if "num_generations" in b:
        if n_rollouts == 0:
            raise ValueError(f"num_generations={b['num_generations']}: this preset generates no rollouts "
                             f"(a group is {n_demos} demonstration(s))")
        if b["num_generations"] - n_demos < 1:
            raise ValueError(f"num_generations={b['num_generations']} leaves no rollouts: the group includes "
                             f"{n_demos} demonstration(s), so it must be >= {n_demos + 1}")
        out["rollout.n_rollouts"] = b["num_generations"] - n_demos
        size = b["num_generations"]
    if not set(b) - {"num_generations"}:
        return out
    per_device = b.get("per_device_train_batch_size", TRL_DEFAULT_PER_DEVICE)
    accum = b.get("gradient_accumulation_steps", 1)
    per_gen = b.get("steps_per_generation", accum)
    completions = b.get("generation_batch_size", per_device * per_gen)
    if completions % size:
        raise ValueError(f"per_device_train_batch_size x steps_per_generation (or generation_batch_size) = "
                         f"{completions} completions must be a multiple of the group size {size} "
                         f"(num_generations)")
    if per_gen % accum:
        raise ValueError(f"steps_per_generation ({per_gen}) must be a multiple of gradient_accumulation_steps "
                         f"({accum})")
    out.update({"train.prompts_per_step": completions // size, "train.micro_batch_size": per_device,
                "train.mini_batches": per_gen // accum})
    return out


def table() -> str:
    """The mapping as a markdown table (docs/coming-from-trl.md)."""
    rows = ["| TRL name | srft |", "|---|---|"]
    rows += [f"| `{n}` | `{k}` |" for n, k in SAME.items()]
    rows += [f"| `{n}` | {why} |" for n, (_, why) in CONVERTED.items()]
    rows += [f"| `{n}` | the group and batch shape (see above) |" for n in BATCH]
    rows += [f"| `{n}` | refused: {why} |" for n, why in NO_EQUIVALENT.items()]
    return "\n".join(rows)


def read_back(name: str, get: Callable[[str], Any], given: Optional[dict] = None) -> Any:
    """The value of TRL's `name` in a config (`get("section.field")`): what was given for the batch
    names, else the field it maps to."""
    if given and name in given:
        return given[name]
    if name in SAME:
        return get(SAME[name])
    raise AttributeError(name)


if __name__ == "__main__":
    print(table())
