"""Rewards: verifiers and TRL-style reward callables.

A reward function is a plain callable, as in TRL:

    reward_fn(prompts, completions, **columns) -> list[float | None]

where `columns` holds every other dataset column as a list aligned with
`completions` (e.g. `answer=[...]`). Rewards know nothing about models.
`None` means "no reward for this sample"; it scores 0 and is counted.

Built-in rewards are selected by name ("testbed"); any other function by import
path, "package.module:function" (or "package.module.function").
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

RewardFn = Callable[..., list]

BUILTIN_REWARDS = {
    "testbed": "srft.testbed.tasks:chain_sum_reward",
    "math": "srft.math_reward:math_reward",
}


def get_reward_fn(name: str, dataset: str = "testbed") -> RewardFn:
    """The reward callable for `name`; "auto" picks the testbed's verifier for the
    testbed and the math verifier for any other dataset."""
    if name == "auto":
        name = "testbed" if dataset == "testbed" else "math"
    path = BUILTIN_REWARDS.get(name, name)
    if ":" in path:
        module, attr = path.split(":", 1)
    elif "." in path:
        module, attr = path.rsplit(".", 1)
    else:
        raise ValueError(f"unknown reward {name!r}: use one of {sorted(BUILTIN_REWARDS)} or 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import reward function {path!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward {path!r} is not callable")
    return fn


def score_completions(
    fn: RewardFn, prompts: list, completions: list[str], columns: dict[str, list[Any]]
) -> tuple[list[float], int]:
    """Call the reward function; returns (rewards as floats, number of None)."""
    out = fn(prompts, completions, **columns)
    if len(out) != len(completions):
        raise ValueError(f"reward function returned {len(out)} values for {len(completions)} completions")
    n_none = sum(r is None for r in out)
    return [0.0 if r is None else float(r) for r in out], n_none
