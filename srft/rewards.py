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

Time limit (`data.reward_timeout`, seconds per call of a function on a batch): every function
other than the built-ins (which have their own limits: the math verifier's per-answer kill)
runs in a daemon thread that is waited for that long. A call that has not returned by then is
abandoned (a thread cannot be stopped; being a daemon it never keeps the process from exiting)
and its completions score 0, counted (`reward/timeouts`) and said on stderr, as the math
verifier's timeouts are. A function that only works on the main thread (math-verify's
`parse`/`verify` with their default signal-based timeouts, as TRL's `accuracy_reward` calls
them) is detected by its error and from then on called on the calling thread, under its own
time limits.

Values: None or NaN mean "no reward" (above); an infinite value, or a weighted sum that
overflows, stops the run with a `RewardError` naming the function and the completion (a
non-finite reward would make every advantage of its group NaN).
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
import threading
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
    timeout: float | None = None
    """seconds a call may take (data.reward_timeout); None: no limit (the built-ins)"""
    main_thread: bool = False
    """called on the calling thread (the function refused to run on another one)"""

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
    if path.startswith("__main__:"):
        raise ValueError(f"reward function {path!r} was defined in the script or notebook that started the run, "
                         f"which another process cannot import: put it in a module and give 'module:function'")
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
                    weights: Union[None, str, Sequence[float]] = None, timeout: float | None = None) -> list[Reward]:
    """The reward functions of `data.reward` (a name, an import path, a callable, a comma-separated
    string or a list of those) with `data.reward_weights`; a ValueError naming what is wrong.
    `timeout`: data.reward_timeout, for every function but the built-ins."""
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
    for r, x in zip(fns, items):
        builtin = isinstance(x, str) and (x in BUILTIN_REWARDS or x == "auto")
        r.timeout = None if builtin else timeout
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


def _run(fn: Callable, kwargs: dict[str, Any]):
    out = fn(**kwargs)
    if inspect.isawaitable(out):  # an async reward function (TRL accepts them too)
        out = _run_coroutine(out)
    return out


class _TimedOut(Exception):
    """A reward call that did not return within its time limit."""


def _invoke(reward: Reward, kwargs: dict[str, Any]):
    """reward.fn(**kwargs), run to completion, under reward.timeout (see the module docstring);
    raises _TimedOut when the call overruns. The function's own exceptions propagate."""
    if reward.timeout is None or reward.main_thread:
        return _run(reward.fn, kwargs)
    box: dict[str, Any] = {}

    def target():
        try:
            box["out"] = _run(reward.fn, kwargs)
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            box["error"] = e

    worker = threading.Thread(target=target, name=f"srft-reward-{reward.name}", daemon=True)
    worker.start()
    worker.join(reward.timeout)
    if worker.is_alive():
        raise _TimedOut
    if "error" in box:
        if not _needs_main_thread(box["error"]):
            raise box["error"]
        reward.main_thread = True
        print(f"[srft] reward function {reward.name!r} only runs on the main thread (it uses signals, as "
              f"math-verify's default timeouts do): it is called there from now on, without data.reward_timeout",
              file=sys.stderr, flush=True)
        return _run(reward.fn, kwargs)
    return box["out"]


def _needs_main_thread(e: BaseException) -> bool:
    """An error of a function that tried to use signals off the main thread (math-verify wraps it)."""
    while e is not None:
        text = str(e)
        if "signal only works in main thread" in text or "doesn't support threaded environment" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def _call(reward: Reward, n: int, kwargs: dict[str, Any], stats: dict | None = None) -> list[Optional[float]]:
    fn, state = reward.fn, kwargs.get("trainer_state")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    try:
        out = _invoke(reward, kwargs)
    except _TimedOut:
        step = f" at step {state.global_step + 1}" if isinstance(state, RewardState) else ""
        print(f"[srft] warning: reward function {reward.name!r} did not return within data.reward_timeout="
              f"{reward.timeout:g} s{step}; its {n} completions score 0 (counted in reward/timeouts); the call is "
              f"left running in the background", file=sys.stderr, flush=True)
        if stats is not None:
            stats["timeouts"] = stats.get("timeouts", 0) + n
        return [0.0] * n
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
        if r is None:
            vals.append(None)
            continue
        try:
            v = float(r)
        except (TypeError, ValueError):
            raise ValueError(f"reward function {reward.name!r} returned {r!r} (a {type(r).__name__}) for completion "
                             f"{i}; expected a number or None") from None
        if math.isinf(v):
            step = f" at step {state.global_step + 1}" if isinstance(state, RewardState) else ""
            prompt = str((kwargs.get("prompts") or [None] * n)[i])[:120]
            raise RewardError(f"reward function {reward.name!r} returned a non-finite reward, {v}, for completion {i}"
                              f"{step} (prompt {prompt!r}): rewards must be finite numbers (None or NaN: no reward); "
                              f"the run stopped before training on it")
        vals.append(None if math.isnan(v) else v)
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
            _invoke(reward, one)
        except _TimedOut:
            continue
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
    per_function: Optional[dict[str, list[Optional[float]]]] = None, stats: dict | None = None,
) -> tuple[list[float], int]:
    """Call the reward function(s) as TRL does (keyword arguments); returns (the weighted sum per
    completion, 0 where no function gave a number, and the number of such completions).
    per_function: filled with each function's own values, by name (a repeated name gets "_2", ...).
    stats: gets "timeouts", the completions scored 0 because a call overran data.reward_timeout."""
    rewards = [Reward(getattr(fn, "__name__", "reward"), fn)] if callable(fn) else list(fn)
    n = len(completions)
    # TRL's convention: a completion of a conversational prompt (a message list) is a message list
    completions = [c if isinstance(p, str) or not isinstance(c, str) else [{"role": "assistant", "content": c}]
                   for p, c in zip(prompts, completions)]
    kwargs = {"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
              "trainer_state": state or RewardState(), **columns}
    per_fn = [_call(r, n, dict(kwargs), stats) for r in rewards]
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
            if not math.isfinite(total[-1]):
                values = ", ".join(f"{r.name} {v[i]} x {r.weight:g}" for r, v in zip(rewards, per_fn))
                raise RewardError(f"the weighted reward of completion {i} is not finite ({values}): a non-finite "
                                  f"reward; lower the rewards or data.reward_weights")
    return total, n_none
