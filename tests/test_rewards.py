"""Rewards are called as TRL calls them: keyword arguments, lists of functions with weights, None
for "does not apply", and a clear error naming the function when one returns the wrong thing.
The reward functions below are copies, written here, of the signatures in TRL's documentation."""

from __future__ import annotations

import re

import pytest

from srft.rewards import RewardState, resolve_rewards, score_completions


# TRL's quickstart (GRPOTrainer docs): a reward that only takes completions and **kwargs
def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


# TRL docs, "format" reward
def format_reward_func(completions, **kwargs):
    pattern = r"^<think>.*?</think>.*$"
    return [1.0 if re.match(pattern, c) else 0.0 for c in completions]


# TRL docs: a dataset column passed by name (ground_truth)
def reward_func(completions, ground_truth, **kwargs):
    return [1.0 if c.endswith(gt) else 0.0 for c, gt in zip(completions, ground_truth)]


# TRL docs: None where the function does not apply
def only_for_math(completions, task, **kwargs):
    return [1.0 if "4" in c else 0.0 if t == "math" else None for c, t in zip(completions, task)]


def no_kwargs(prompts, completions):  # srft's older positional signature, no **kwargs
    return [float(len(p) < len(c)) for p, c in zip(prompts, completions)]


PROMPTS = ["2+2?", "capital of France?", "2+2?"]
COMPLETIONS = ["<think>easy</think> 4", "Paris", "<think>hmm</think> 5"]
COLUMNS = {"ground_truth": ["4", "Paris", "4"], "task": ["math", "geo", "math"]}


def test_trl_quickstart_signatures_work_unchanged():
    r, n_none = score_completions(reward_len, PROMPTS, COMPLETIONS, COLUMNS)
    assert r == [-abs(20 - len(c)) for c in COMPLETIONS] and n_none == 0
    assert score_completions(format_reward_func, PROMPTS, COMPLETIONS, COLUMNS)[0] == [1.0, 0.0, 1.0]
    assert score_completions(reward_func, PROMPTS, COMPLETIONS, COLUMNS)[0] == [1.0, 1.0, 0.0]
    assert score_completions(no_kwargs, PROMPTS, COMPLETIONS, COLUMNS)[0] == [1.0, 0.0, 1.0]


def test_every_keyword_trl_passes_is_there():
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        return [0.0] * len(kwargs["completions"])

    ids = [[1, 2], [3], [4, 5, 6]]
    score_completions(spy, PROMPTS, COMPLETIONS, COLUMNS, completion_ids=ids, state=RewardState(7, 10))
    assert set(seen) == {"prompts", "completions", "completion_ids", "trainer_state", "ground_truth", "task"}
    assert seen["completion_ids"] == ids and seen["trainer_state"].global_step == 7


def test_several_functions_are_summed_with_weights_and_none_skipped():
    fns = resolve_rewards([format_reward_func, only_for_math], weights=[0.5, 2.0])
    r, n_none = score_completions(fns, PROMPTS, COMPLETIONS, COLUMNS)
    # sample 0: 0.5*1 + 2*1; sample 1: 0.5*0 + (None: skipped); sample 2: 0.5*1 + 2*0
    assert r == [2.5, 0.0, 0.5] and n_none == 0
    r, n_none = score_completions(resolve_rewards([only_for_math]), PROMPTS, COMPLETIONS, COLUMNS)
    assert r == [1.0, 0.0, 0.0] and n_none == 1  # no function gave sample 1 a number
    by_name = resolve_rewards("tests.test_rewards:reward_len, tests.test_rewards:format_reward_func", weights="1,3")
    assert [(x.name, x.weight) for x in by_name] == [("tests.test_rewards:reward_len", 1.0),
                                                      ("tests.test_rewards:format_reward_func", 3.0)]


@pytest.mark.parametrize("bad, needle", [
    (lambda completions, **k: [1.0], "returned 1 values for 3 completions"),
    (lambda completions, **k: 1.0, "returned float; expected a list of 3 numbers"),
    (lambda completions, **k: ["yes", 1, 2], "returned 'yes' (a str) for completion 0"),
])
def test_wrong_output_names_the_function(bad, needle):
    bad.__name__ = "my_reward"
    with pytest.raises(ValueError, match=re.escape(f"reward function 'my_reward' {needle}")):
        score_completions(bad, PROMPTS, COMPLETIONS, COLUMNS)


def test_bad_specs_are_clear():
    with pytest.raises(ValueError, match="2 weights for 1 reward functions"):
        resolve_rewards([reward_len], weights="1,2")
    with pytest.raises(ValueError, match="cannot import reward function 'nope.module:f'"):
        resolve_rewards("nope.module:f")


# TRL docs, conversational format reward: completions are message lists
def conversational_format_reward(completions, **kwargs):
    pattern = r"^<think>.*?</think>.*$"
    return [1.0 if re.match(pattern, c[0]["content"]) else 0.0 for c in completions]


def test_conversational_prompts_get_message_completions_as_in_trl():
    chat = [[{"role": "user", "content": p}] for p in PROMPTS]
    seen = {}

    def spy(completions, **kwargs):
        seen["c"] = completions
        return [0.0] * len(completions)

    score_completions(spy, chat[:1] + PROMPTS[1:], COMPLETIONS, COLUMNS)
    assert seen["c"] == [[{"role": "assistant", "content": COMPLETIONS[0]}], COMPLETIONS[1], COMPLETIONS[2]]
    assert score_completions(conversational_format_reward, chat, COMPLETIONS, COLUMNS)[0] == [1.0, 0.0, 1.0]
    from srft.math_reward import math_reward  # the built-in math reward reads both forms

    assert score_completions(math_reward, chat[:1], ["\\boxed{4}"], {"answer": ["4"]})[0] == [1.0]


def test_async_reward_functions_are_awaited():
    async def async_len(completions, **kwargs):
        return [float(len(c)) for c in completions]

    assert score_completions(async_len, PROMPTS, COMPLETIONS, COLUMNS)[0] == [float(len(c)) for c in COMPLETIONS]


def test_async_reward_inside_a_running_event_loop():
    """A notebook's thread runs an event loop; asyncio.run would refuse there."""
    import asyncio

    async def async_one(completions, **kwargs):
        await asyncio.sleep(0)
        return [1.0] * len(completions)

    async def main():
        return score_completions(async_one, PROMPTS, COMPLETIONS, COLUMNS)[0]

    assert asyncio.run(main()) == [1.0, 1.0, 1.0]


def test_a_hub_reward_model_is_named_as_not_supported():
    from srft.rewards import resolve_rewards

    with pytest.raises(ValueError, match=r"'Org/reward-model' looks like a hub reward model: reward models are not "
                                         r"supported"):
        resolve_rewards("Org/reward-model")


# ------------------------------------------------------------------ time limit, non-finite values
def sleeps_forever(completions, **kwargs):
    import threading

    threading.Event().wait()  # never returns


async def awaits_forever(completions, **kwargs):
    import asyncio

    await asyncio.Event().wait()


@pytest.mark.parametrize("fn", [sleeps_forever, awaits_forever], ids=["sync", "async"])
def test_a_reward_that_never_returns_scores_0_after_its_time_limit(fn, capsys):
    """data.reward_timeout: a call that overruns scores its completions 0 and is counted, as the
    math verifier's timeouts are; the other function of the batch still counts."""
    import time

    rewards = resolve_rewards([fn, reward_len], timeout=0.3)
    stats, per_fn = {}, {}
    t0 = time.monotonic()
    total, n_none = score_completions(rewards, PROMPTS, COMPLETIONS, COLUMNS, state=RewardState(4, 10),
                                      per_function=per_fn, stats=stats)
    assert time.monotonic() - t0 < 3
    assert per_fn[fn.__name__] == [0.0, 0.0, 0.0] and stats == {"timeouts": 3} and n_none == 0
    assert total == reward_len(COMPLETIONS)
    err = capsys.readouterr().err
    assert (f"reward function {fn.__name__!r} did not return within data.reward_timeout=0.3 s at step 5; its 3 "
            f"completions score 0 (counted in reward/timeouts)") in err


def test_built_in_rewards_run_without_the_limit_and_custom_ones_with_it():
    testbed, custom, by_path = resolve_rewards("testbed," + __name__ + ":reward_len,math", timeout=7)[:3]
    assert (testbed.timeout, custom.timeout, by_path.timeout) == (None, 7, None)
    assert resolve_rewards([reward_len], timeout=7)[0].timeout == 7


def test_a_reward_that_needs_the_main_thread_runs_there():
    """math-verify's parse/verify use signal.alarm by default (as TRL's accuracy_reward calls them),
    which only works on the main thread: such a function is called there (without the limit)."""
    import signal

    def uses_alarm(completions, **kwargs):
        old = signal.signal(signal.SIGALRM, lambda *_: None)  # ValueError off the main thread
        signal.signal(signal.SIGALRM, old)
        return [1.0] * len(completions)

    def math_verify_style(completions, answer, **kwargs):
        from math_verify import parse, verify

        return [float(verify(parse(a), parse(c))) for c, a in zip(completions, answer)]

    [r, mv] = resolve_rewards([uses_alarm, math_verify_style], timeout=5)
    assert score_completions([r], PROMPTS, COMPLETIONS, COLUMNS)[0] == [1.0, 1.0, 1.0] and r.main_thread
    assert score_completions([mv], ["q"], ["$4$"], {"answer": ["$4$"]})[0] == [1.0] and mv.main_thread


def test_a_process_with_an_abandoned_reward_call_exits():
    """The overrunning call's thread is a daemon: the process exits at once when it is done."""
    import subprocess
    import sys
    import time

    code = ("import threading\nfrom srft.rewards import resolve_rewards, score_completions\n"
            "def hang(completions, **kw):\n    threading.Event().wait()\n"
            "print(score_completions(resolve_rewards([hang], timeout=0.2), ['p'], ['c'], {}, stats={})[0])\n")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "[0.0]" and time.monotonic() - t0 < 30, r.stderr[-2000:]


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_non_finite_rewards_are_named_as_such(value):
    def bad(completions, **kwargs):
        return [1.0, value, 0.0]

    with pytest.raises(ValueError, match=re.escape(f"reward function 'bad' returned a non-finite reward, {value}, "
                                                   f"for completion 1 at step 3 (prompt 'capital of France?')")):
        score_completions(resolve_rewards([bad]), PROMPTS, COMPLETIONS, COLUMNS, state=RewardState(2, 10))
    # NaN stays "no reward" (TRL's convention), and a weighted sum that overflows is named too
    nan = resolve_rewards([lambda completions, **k: [float("nan")] * 3])
    assert score_completions(nan, PROMPTS, COMPLETIONS, COLUMNS)[1] == 3
    big = resolve_rewards([lambda completions, **k: [1e308] * 3, lambda completions, **k: [1e308] * 3])
    with pytest.raises(ValueError, match=r"weighted reward of completion 0 is not finite .*a non-finite reward"):
        score_completions(big, PROMPTS, COMPLETIONS, COLUMNS)
