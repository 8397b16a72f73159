"""Rewards: verifiers and TRL-style reward callables.

A reward function is a plain callable, called as TRL calls it, with keyword arguments:

    reward_fn(prompts=[...], completions=[...], completion_ids=[[...], ...],
              trainer_state=RewardState(global_step, max_steps), **columns) -> list[float | None]

where `columns` holds every other dataset column as a list aligned with `completions` (e.g.
`answer=[...]`). As in TRL, a completion is a string when its prompt is a string, and a message
list `[{"role": "assistant", "content": text}]` when its prompt is a message list (conversational
data); a function may be `async` (it is run to completion). A function that takes `**kwargs` gets all of them; one that does not gets only
the arguments it names (TRL passes them all and such a function fails there). So TRL's
quickstart rewards, e.g. `def reward_len(completions, **kwargs)`, work unchanged, and so do
srft's own `(prompts, completions, answer, **_)`. Rewards know nothing about models. `None`
means "no reward for this sample" (TRL's convention for a function that does not apply).

Several functions: `data.reward` "a,b" (or a list in Python) with `data.reward_weights`
"1.0,0.5" (default all 1). A sample's reward is the weighted sum over the functions that gave
it a number; when none did it is None, which scores 0 and is counted (`reward/none`).

Built-in rewards are selected by name ("testbed", "math"); any other function by import
path, "package.module:function" (or "package.module.function"), or passed as a callable.
"""

from __future__ import annotations

import importlib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

RewardFn = Callable[..., list]


@dataclass
class RewardState:
    """What a reward sees of the run (TRL passes its TrainerState as `trainer_state`)."""

    global_step: int = 0
    max_steps: int = 0


@dataclass
class Reward:
    name: str
    fn: RewardFn
    weight: float = 1.0

BUILTIN_REWARDS = {
    "testbed": "srft.testbed.tasks:chain_sum_reward",
    "math": "srft.math_reward:math_reward",
}


def get_reward_fn(name: Union[str, Callable], dataset: str = "testbed") -> RewardFn:
    """The reward callable for `name`; "auto" picks the testbed's verifier for the
    testbed and the math verifier for any other dataset."""
    if callable(name):
        return name
    if name == "auto":
        name = "testbed" if dataset == "testbed" else "math"
    path = BUILTIN_REWARDS.get(name, name)
    if "/" in path and ":" not in path:
        raise ValueError(f"reward {name!r} looks like a hub reward model: reward models are not supported; srft "
                         f"takes reward functions (one of {sorted(BUILTIN_REWARDS)}, 'module:function' or a callable)")
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


def resolve_rewards(spec: Union[str, Callable, Sequence[Union[str, Callable]]], dataset: str = "testbed",
                    weights: Union[None, str, Sequence[float]] = None) -> list[Reward]:
    """The reward functions of `data.reward` (a name, an import path, a callable, a comma-separated
    string or a list of those) with `data.reward_weights`; a ValueError naming what is wrong."""
    if isinstance(spec, str):
        items: list = [x.strip() for x in spec.split(",") if x.strip()]
    elif callable(spec):
        items = [spec]
    else:
        items = list(spec)
    if not items:
        raise ValueError("data.reward: no reward function given")
    fns = [Reward(getattr(x, "__name__", repr(x)), x) if callable(x) else Reward(_builtin_name(x, dataset),
                                                                                get_reward_fn(x, dataset))
           for x in items]
    if weights is not None:
        ws = [float(w) for w in (weights.split(",") if isinstance(weights, str) else weights)]
        if len(ws) != len(fns):
            raise ValueError(f"data.reward_weights: {len(ws)} weights for {len(fns)} reward functions "
                             f"({', '.join(r.name for r in fns)})")
        for r, w in zip(fns, ws):
            r.weight = w
    return fns


def _builtin_name(spec: str, dataset) -> str:
    """The name a reward given by name is known by in logs and metrics ("auto" says which it chose)."""
    if spec == "auto":
        return "testbed" if dataset == "testbed" else "math"
    return spec


def needs_answer(rewards: Sequence[Reward]) -> bool:
    """Whether the data must have an `answer` column: some reward function names an `answer`
    parameter (decided from the signatures; a function taking only `**kwargs` needs none)."""
    for r in rewards:
        try:
            params = inspect.signature(r.fn).parameters
        except (TypeError, ValueError):
            return True  # cannot tell: ask for it
        if "answer" in params:
            return True
    return False


def _run_coroutine(coro):
    """Run an awaitable to completion; in a thread of its own when this thread already runs an
    event loop (a Jupyter notebook does), where asyncio.run would refuse."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _call(reward: Reward, n: int, kwargs: dict[str, Any]) -> list[Optional[float]]:
    fn, state = reward.fn, kwargs.get("trainer_state")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    try:
        out = fn(**kwargs)
        if inspect.isawaitable(out):  # an async reward function (TRL accepts them too)
            out = _run_coroutine(out)
    except Exception as e:
        raise RewardError(_raised_message(reward, kwargs, n, e, state)) from e
    if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
        raise ValueError(f"reward function {reward.name!r} returned {type(out).__name__}; expected a list of "
                         f"{n} numbers (or None)")
    out = list(out)
    if len(out) != n:
        raise ValueError(f"reward function {reward.name!r} returned {len(out)} values for {n} completions")
    vals: list[Optional[float]] = []
    for i, r in enumerate(out):
        if r is None or (isinstance(r, float) and math.isnan(r)):
            vals.append(None)
            continue
        try:
            vals.append(float(r))
        except (TypeError, ValueError):
            raise ValueError(f"reward function {reward.name!r} returned {r!r} (a {type(r).__name__}) for completion "
                             f"{i}; expected a number or None") from None
    return vals


class RewardError(ValueError):
    """A reward function raised: the message names the function, the step and the first row that
    makes it raise. `srft train` reports it and exits with status 2."""


def _raised_message(reward: Reward, kwargs: dict[str, Any], n: int, error: Exception, state: Any) -> str:
    """What a raising reward function is told with: its name, the step, and the first completion
    that makes it raise on its own (each row is tried alone), with that row's prompt."""
    step = f" at step {state.global_step + 1}" if isinstance(state, RewardState) else ""
    row = None
    for i in range(n):
        one = {k: ([v[i]] if isinstance(v, list) and len(v) == n else v) for k, v in kwargs.items()}
        try:
            out = reward.fn(**one)
            if inspect.isawaitable(out):
                _run_coroutine(out)
        except Exception:
            row = i
            break
    where = ""
    if row is not None:
        prompt = str(kwargs.get("prompts", [None] * n)[row])
        where = f"; completion {row} of the batch (prompt {prompt[:120]!r}) raises on its own"
    return f"reward function {reward.name!r} raised {type(error).__name__}: {error}{step}{where}"


def score_completions(
    fn: Union[RewardFn, Sequence[Reward]], prompts: list, completions: list[str], columns: dict[str, list[Any]],
    completion_ids: Optional[list[list[int]]] = None, state: Optional[RewardState] = None,
    per_function: Optional[dict[str, list[Optional[float]]]] = None,
) -> tuple[list[float], int]:
    """Call the reward function(s) as TRL does (keyword arguments); returns (the weighted sum per
    completion, 0 where no function gave a number, and the number of such completions).
    per_function: filled with each function's own values, by name (a repeated name gets "_2", ...)."""
    rewards = [Reward(getattr(fn, "__name__", "reward"), fn)] if callable(fn) else list(fn)
    n = len(completions)
    # TRL's convention: a completion of a conversational prompt (a message list) is a message list
    completions = [c if isinstance(p, str) or not isinstance(c, str) else [{"role": "assistant", "content": c}]
                   for p, c in zip(prompts, completions)]
    kwargs = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
              "trainer_state": state or RewardState(), **columns}
    per_fn = [_call(r, n, dict(kwargs)) for r in rewards]
    if per_function is not None:
        for r, v in zip(rewards, per_fn):
            name, k = r.name, 1
            while name in per_function:
                k += 1
                name = f"{r.name}_{k}"
            per_function[name] = v
    total, n_none = [], 0
    for i in range(n):
        got = [(r.weight, v[i]) for r, v in zip(rewards, per_fn) if v[i] is not None]
        if not got:
            n_none += 1
            total.append(0.0)
        else:
            total.append(sum(w * x for w, x in got))
    return total, n_none
