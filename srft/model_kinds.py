"""Defaults by model kind: the testbed's small base model, or any other (a "real") model.

srft's dataclass defaults (`srft.config`) are sized for the built-in testbed: a 2M-parameter
model, answers of a few tokens, lr 1e-3. A real model trained with them would train at
1000x TRL's GRPO rate and cut every answer at 40 tokens. So the config is built in layers
(`srft.config.layer_config`, `srft.config.apply_preset`):

    dataclass defaults < model-kind defaults < preset < YAML < flags (or, in Python, what you set)

and this module holds the model-kind layer. A model is of the testbed's kind when it is
"testbed", the testbed's base model folder, or any folder whose tokenizer is the testbed's
(a run's final/ trained from it, the tests' tiny random models): those keep the dataclass
defaults. Every other model gets REAL_MODEL_DEFAULTS, taken from the paper (arXiv
2506.19767, Sec. 5: lr 1e-6 constant, 500 steps, 7 rollouts + 1 demonstration, temperature
1.0) and TRL (GRPOConfig: per-device batch 8, gradient checkpointing off by default here),
scaled to one machine (16 prompts a step, 1,024-token responses instead of 8,192). The paper's
SFT baseline trains at 5e-6 (PRESET_REAL_DEFAULTS).

A real model has no default dataset: `data.dataset` is None until given, and the run is
refused before the model loads (`srft.preflight`), naming the flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

TESTBED, REAL = "testbed", "real"

REAL_MODEL_DEFAULTS: dict[str, Any] = {
    "optim.lr": 1e-6,               # the paper (constant); TRL GRPOConfig's default too
    "optim.schedule": "constant",   # the paper
    "train.max_steps": 500,         # the paper
    "train.prompts_per_step": 16,   # the paper: 128 on 64 GPUs
    "train.micro_batch_size": 8,    # TRL's per_device_train_batch_size
    "rollout.max_new_tokens": 1024,  # the paper: 8,192; TRL: 256 (which truncates most reasoning)
    "rollout.batch_size": 64,
    "eval.max_new_tokens": 1024,
    "eval.batch_size": 64,
    "data.max_demo_tokens": 4096,   # the paper's demonstrations are at most 8,192 tokens
    "data.dataset": None,           # refused until given (srft.preflight)
}

PRESET_REAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "sft": {"optim.lr": 5e-6},      # the paper's SFT baseline
}

_TESTBED_TOKENS = {"<|pad|>", "<|endoftext|>", "<think>", "</think>"}


def kind_defaults(kind: str, preset: str) -> dict[str, Any]:
    """The model-kind layer for `preset`: {} for the testbed's kind (the dataclass defaults are its)."""
    if kind == TESTBED:
        return {}
    return {**REAL_MODEL_DEFAULTS, **PRESET_REAL_DEFAULTS.get(preset, {})}


def model_kind(name_or_path: Any, tokenizer: Any = None) -> str:
    """TESTBED or REAL for a model name, folder, or (with `tokenizer`) an in-memory model."""
    if tokenizer is not None and _is_testbed_tokenizer(tokenizer):
        return TESTBED
    if not isinstance(name_or_path, str) or not name_or_path:
        return REAL
    if name_or_path == "testbed":
        return TESTBED
    folder = Path(name_or_path).expanduser()
    if (folder / "srft_testbed.json").is_file() or _has_testbed_tokenizer(folder):
        return TESTBED
    return REAL


def _has_testbed_tokenizer(folder: Path) -> bool:
    """The testbed's tokenizer (srft.testbed.tokenizer): byte-level BPE with no merges, and its pad,
    EOS and think tokens."""
    path = folder / "tokenizer.json"
    if not path.is_file() or path.stat().st_size > 2_000_000:
        return False
    try:
        tok = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    model = tok.get("model") or {}
    added = {t.get("content") for t in tok.get("added_tokens") or [] if isinstance(t, dict)}
    return model.get("type") == "BPE" and not model.get("merges") and _TESTBED_TOKENS <= added


def _is_testbed_tokenizer(tok: Any) -> bool:
    try:
        vocab = tok.get_vocab()
    except Exception:  # noqa: BLE001 (any tokenizer-like object: not the testbed's)
        return False
    return _TESTBED_TOKENS <= set(vocab) and len(vocab) <= 300


def describe(kind: str, name: Optional[str]) -> str:
    return ("the testbed's defaults" if kind == TESTBED else
            f"real-model defaults (srft.model_kinds.REAL_MODEL_DEFAULTS) for {name}")
