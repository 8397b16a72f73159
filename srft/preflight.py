"""Checks that need neither the data nor the model, run before either loads.

`preflight(cfg)` is called by `srft train` before anything heavy starts and again by
`srft.trainer.Trainer` (so the Python API gets the same checks). Each failure is a
`ValueError` naming the config field; the command line prints it and exits with 2.

What is checked (the rows of docs/reliability.md "Early validation"):

- every field's range and allowed values (`Config.validate`, `srft.config.CHOICES`), including
  `rollout.engine vllm` without vLLM installed;
- `data.reward`: every reward function imports (or is a callable) and `data.reward_weights` has
  one weight per function;
- `train.report_to`: the tracker's package is installed (tensorboard or tensorboardX; wandb);
- `model.name_or_path`: a local-looking path exists and is a model folder with safetensors
  weights (hub ids are looked up when the model loads);
- `eval.benchmark`: the files exist and have a benchmark file's suffix; `eval.protocol` has files;
- `train.push_to_hub`: `huggingface_hub` is importable.

srft has no device field: accelerate places the run (CUDA when visible, else the CPU), so there
is no device value to check.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from srft.config import Config, report_targets
from srft.models import check_model_folder
from srft.rewards import resolve_rewards

TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_trackers(report_to) -> None:
    """train.report_to names trackers whose packages are installed."""
    for name in report_targets(report_to):
        pkgs = TRACKER_PACKAGES.get(name, ())
        if pkgs and not any(importlib.util.find_spec(p) for p in pkgs):
            raise ValueError(f"train.report_to: {name!r} needs the {pkgs[0]} package, which is not installed "
                             f"(pip install {pkgs[0]}, or the extra srft[{name}]); or drop --train.report_to")


def check_model_path(name_or_path: str, allow_pickle: bool) -> None:
    """A local model folder exists and has loadable weights (srft.models.check_model_folder)."""
    if not isinstance(name_or_path, str) or name_or_path in ("testbed", "<in-memory model>"):
        return

    try:
        check_model_folder(name_or_path, allow_pickle, log=lambda *_: None)
    except FileNotFoundError as e:
        msg = str(e)
        raise ValueError("model.name_or_path: " + (msg[len("model: "):] if msg.startswith("model: ") else msg)) from None


def benchmark_files(value) -> list[str]:
    """eval.benchmark as a list of paths (a comma-separated string, or a list in Python)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(x).strip() for x in items if str(x).strip()]


def check_benchmark(value, protocol: str = "none") -> None:
    for path in benchmark_files(value):
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"eval.benchmark: no such file {p}")
        if p.suffix.lower() not in (".parquet", ".pq", ".csv", ".jsonl", ".json"):
            raise ValueError(f"eval.benchmark: expected a .parquet (verl or MMLU-Pro layout), .csv (GPQA) or .jsonl "
                             f"file, got {p.name}")
    if protocol != "none" and not benchmark_files(value):
        raise ValueError(f"eval.protocol: {protocol!r} evaluates benchmark files; set eval.benchmark too")


def preflight(cfg: Config, model_given: bool = False) -> list:
    """Run every check; returns the resolved reward functions (srft.rewards.Reward list).
    `model_given`: the model is an object (the Python API), so no path to check."""
    cfg.validate()
    try:
        rewards = resolve_rewards(cfg.data.reward, cfg.data.dataset, cfg.data.reward_weights,
                                  timeout=cfg.data.reward_timeout)
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith("data.reward") else f"data.reward: {e}") from None
    check_trackers(cfg.train.report_to)
    if not model_given:
        check_model_path(cfg.model.name_or_path, cfg.model.allow_pickle)
    check_benchmark(cfg.eval.benchmark, cfg.eval.protocol)
    if cfg.train.push_to_hub and importlib.util.find_spec("huggingface_hub") is None:
        raise ValueError("train.push_to_hub: needs the huggingface_hub package (pip install huggingface_hub)")
    return rewards
