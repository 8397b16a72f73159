"""Tests of srft.math_reward: extraction, math_verify equivalences, the shared
benchmarks' ground truths, the worker pool's time limit and crash recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srft import math_reward as mr
from srft.answers import extract_answer, extract_choice, extract_prediction, is_choice_letter
from srft.math_reward import (
    CRASH_HOOK_ENV,
    CRASH_HOOK_PREDICTION,
    HANG_HOOK_PREDICTION,
    MathVerifier,
    math_reward,
    verify_one,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
MATH_ID = BENCHMARKS / "math_id.parquet"
ARC_C = BENCHMARKS / "arc_c.parquet"


@pytest.fixture(scope="module")
def pool():
    """Shared pool with the 2 s limit of the hostile-input tests."""
    with MathVerifier(num_workers=2, timeout_s=2.0) as v:
        yield v


@pytest.fixture(scope="module", autouse=True)
def _close_module_verifier():
    yield
    if mr._VERIFIER is not None:
        mr._VERIFIER.close()


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("so \\boxed{1} ... </think> final \\boxed{2}", "2"),  # after </think>
        ("\\boxed{9} </think> the answer is 3", None),  # box only inside the thinking
        ("a </think> b \\boxed{5} </think> c \\boxed{6}", "6"),  # after the LAST </think>
        ("first \\boxed{1}, then \\boxed{2}, finally \\boxed{3}.", "3"),  # last box wins
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),  # nested braces kept
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces do not count
        ("\\boxed {  x^{2}+1 }", "x^{2}+1"),  # space before the brace, content stripped
        ("\\fbox{42}", "42"),
        ("\\boxed{1} and \\fbox{7}", "7"),
        ("\\boxed{\\boxed{4}}", "4"),
        ("\\boxed{\\frac{1}{2}", None),  # unbalanced
        ("\\boxed{1} then \\boxed{2", None),  # the last box is unbalanced: no fallback to the first
        ("the answer is 12", None),  # no box, no fallback
        ("", None),
    ],
)
def test_extract_answer_table(completion, expected):
    assert extract_answer(completion) == expected


def test_extract_answer_non_string():
    assert extract_answer(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    ["{" * 100_000, "\\boxed{" + "{" * 100_000, "\\boxed{" * 20_000, "}" * 100_000 + "\\boxed{1"],
)
def test_extract_answer_linear_on_brace_floods(text):
    t0 = time.perf_counter()
    assert extract_answer(text) is None
    assert extract_answer("</think>" + text) is None
    assert time.perf_counter() - t0 < 1.0


def test_extract_answer_large_balanced_is_fast():
    text = "x" * 500_000 + "\\boxed{" + "{a}" * 100_000 + "}"
    t0 = time.perf_counter()
    assert extract_answer(text) == "{a}" * 100_000
    assert time.perf_counter() - t0 < 1.0


def test_choice_letters_and_fallback():
    assert is_choice_letter("C") and is_choice_letter(" (B) ") and is_choice_letter("J")
    assert not is_choice_letter("K") and not is_choice_letter("c") and not is_choice_letter("AB")
    assert not is_choice_letter("12") and not is_choice_letter(None)
    assert extract_choice("reasoning... The answer is (B).") == "B"
    assert extract_choice("Answer: D") == "D"
    assert extract_choice("the answer is: **C**") == "C"
    assert extract_choice("The answer is a bit unclear") is None  # lower-case article, not a letter
    assert extract_choice("Answer: Because it rains") is None
    assert extract_choice("The answer is (A) </think> no decision") is None  # only after </think>
    assert extract_choice("The answer is (A)" + " filler" * 200) is None  # not in the tail
    # the fallback is used for choice golds only, and only when there is no box
    assert extract_prediction("The answer is (B).", "B") == "B"
    assert extract_prediction("The answer is (B).", "12") is None
    assert extract_prediction("The answer is (B). \\boxed{C}", "B") == "C"
    # TRL conversational completions
    assert extract_prediction([{"role": "assistant", "content": "\\boxed{7}"}], "7") == "7"


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("\\frac{1}{2}", "0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{3}{4}", "\\frac34"),
        ("\\dfrac{3}{4}", "0.75"),
        # 50% is exactly 0.5; math-verify also accepts 50% for a gold of 50 (and 50 for
        # a gold of 50%): the usual "what percent ...?" convention, deliberately lenient.
        ("50\\%", "0.5"),
        ("50\\%", "50"),
        ("50", "50\\%"),
        ("\\{1,2\\}", "\\{2,1\\}"),  # sets are unordered
        ("[0,1)", "[0, 1)"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("x=3", "3"),  # an assignment in the prediction is read as its value
        ("180^\\circ", "180"),
        ("3.83e35", "3.83\\times 10^{35}"),  # scientific notation rewriting
        ("2.55\\times10^{-10}", "2.55e-10"),
        ("$\\frac{11}{32}$", "\\frac{11}{32}"),  # surrounding $..$
        ("C", "(C)"),
        ("(C)", "C"),
        ("c", "C"),  # case-insensitive for the single letter
        ("\\text{(B)}", "B"),
        ("\\textbf{D}.", "D"),
    ],
)
def test_equivalent(pred, gold):
    assert verify_one(pred, gold) == 1.0


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("\\frac{1}{3}", "0.5"),
        ("(0,1)", "[0,1]"),  # open vs closed interval
        ("B", "C"),
        ("12", "21"),
        ("", "1"),
        ("   ", "1"),
        (None, "1"),
        ("1", ""),
        ("1", None),
        ("2.55e-10", "3.3\\times 10^{-10}"),  # tiny numbers are not all "0"
        ("x", "y"),
        ("BC", "B"),  # not a single letter
        ("\\text{C. 12 apples}", "C"),
    ],
)
def test_not_equivalent(pred, gold):
    assert verify_one(pred, gold) == 0.0


def test_verify_one_never_raises():
    for pred, gold in [(object(), "1"), ("1", object()), ("\\frac{", "1"), ("1", "\\frac{"), ("}}}{{{", "{")]:
        assert verify_one(pred, gold) in (0.0, 1.0)  # type: ignore[arg-type]


def test_verify_one_in_a_thread():
    """signal-based math_verify timeouts cannot run off the main thread; verify_one must still work."""
    import threading

    res = []
    t = threading.Thread(target=lambda: res.append(verify_one("\\frac{1}{2}", "0.5")))
    t.start()
    t.join(30)
    assert res == [1.0]


# --------------------------------------------------------------------------- shared benchmarks


def _unique_ground_truths(path: Path) -> list[str]:
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(path)
    return sorted({str(r["ground_truth"]) for r in df["reward_model"]})


@pytest.mark.skipif(not MATH_ID.exists(), reason=f"shared benchmark {MATH_ID} not present (see its README)")
def test_math_id_ground_truths_verify_against_themselves():
    gts = _unique_ground_truths(MATH_ID)
    assert len(gts) > 1000
    t0 = time.perf_counter()
    # 10 s: the longest minerva expressions need ~1 s of sympy on an idle core; leave room for a busy machine
    with MathVerifier(num_workers=2, timeout_s=10.0) as v:
        preds = [extract_answer(f"\\boxed{{{gt}}}") for gt in gts]
        scores = v.score(preds, gts)
        stats = dict(v.stats)
    elapsed = time.perf_counter() - t0
    failures = [(gt, p) for gt, p, s in zip(gts, preds, scores) if s != 1.0]
    print(f"\nmath_id: {len(gts)} unique ground truths, {len(failures)} failures, {elapsed:.1f} s, {stats}")
    for gt, p in failures:
        print(f"  FAIL gold={gt!r} extracted={p!r}")
    assert all(s in (0.0, 1.0) for s in scores)
    assert len(failures) <= 1
    assert stats["total"] == len(gts) and stats["crashes"] == 0


@pytest.mark.skipif(not ARC_C.exists(), reason=f"shared benchmark {ARC_C} not present (see its README)")
def test_arc_c_letters(pool):
    gts = _unique_ground_truths(ARC_C)
    assert {"A", "B", "C", "D"} <= set(gts)
    wrong = {g: ("B" if g == "A" else "A") if is_choice_letter(g) else str(int(g) % 4 + 1) for g in gts}
    preds = [extract_prediction(f"</think> so \\boxed{{{g}}}", g) for g in gts]
    preds += [extract_prediction(f"</think> \\boxed{{{wrong[g]}}}", g) for g in gts]
    preds += [extract_prediction(f"</think> The answer is ({g}).", g) for g in gts if is_choice_letter(g)]
    golds = gts + gts + [g for g in gts if is_choice_letter(g)]
    scores = pool.score(preds, golds)
    n = len(gts)
    assert scores[:n] == [1.0] * n
    assert scores[n:2 * n] == [0.0] * n
    assert scores[2 * n:] == [1.0] * (len(scores) - 2 * n)


# --------------------------------------------------------------------------- pool: hostile input


def _timed_score(v: MathVerifier, pred, gold: str) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    [s] = v.score([pred], [gold])
    return s, time.perf_counter() - t0, dict(v.last_stats)


def test_pool_basic(pool):
    scores = pool.score(["\\frac{1}{2}", None, "C", "12", "x=3"], ["0.5", "1", "(C)", "21", "3"])
    assert scores == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert pool.last_stats["total"] == 5 and pool.last_stats["no_answer"] == 1
    assert pool.last_stats["correct"] == 3
    assert pool.score([], []) == []
    with pytest.raises(ValueError):
        pool.score(["1"], [])


def test_pool_hostile_inputs(pool):
    limit = pool.timeout_s + 3.0
    pool.score(["1"], ["1"])  # make sure workers are up so start-up time is not measured

    before = dict(pool.stats)
    s, dt, st_ = _timed_score(pool, extract_answer("\\boxed{9^{9^{9^{9^{9^{9}}}}}}"), "1")
    assert s == 0.0 and dt < limit
    # stopped by math_verify's in-worker alarm or by the kill: either way counted
    assert st_["timeouts"] + st_["soft_timeouts"] == 1

    s, dt, st_ = _timed_score(pool, extract_answer("\\boxed{" + "{" * 100_000), "1")
    assert s == 0.0 and dt < limit and st_["no_answer"] == 1

    s, dt, st_ = _timed_score(pool, extract_answer("\\boxed{" + "1" * 1_000_000 + "}"), "1")
    assert s == 0.0 and dt < limit and st_["too_long"] == 1

    s, dt, st_ = _timed_score(pool, extract_answer("blah " * 200_000), "1")
    assert s == 0.0 and dt < limit and st_["no_answer"] == 1

    for text in ["\x00\\boxed{\x00\x00}\x00", "\\boxed{١٢٣ \U0001d7d9 \u202e \ufdfd \ud800}", "\\boxed{\\frac{\x00}{}}"]:
        s, dt, _ = _timed_score(pool, extract_answer(text), "1")
        assert s == 0.0 and dt < limit

    after = pool.stats
    assert after["total"] - before["total"] == 7
    assert after["crashes"] == before["crashes"]
    # the pool still works
    assert pool.score(["\\sqrt{8}", "2"], ["2\\sqrt{2}", "3"]) == [1.0, 0.0]


# Answers that are not the complete answer (each class scored 0): an expression that only starts with
# or contains the right value, several values of which one is right, code and LaTeX commands inside a
# box, an answer that trails off. The right answer is 3 throughout (`gold`).
INCOMPLETE_ANSWERS = {
    "starts_with_the_value": ["\\boxed{3x}", "\\boxed{34}", "\\boxed{3.5}", "\\boxed{3^2}", "\\boxed{3\\sqrt{2}}",
                              "\\boxed{3 + 1}", "\\boxed{3\\cdot 2}", "\\boxed{3!}"],
    "cut_short_expression": ["\\boxed{3 +}", "\\boxed{3 \\cdot}", "\\boxed{3\\times}", "\\boxed{3-}", "\\boxed{3)}",
                             "\\boxed{(3}", "\\boxed{3\\}}", "\\boxed{3..}"],
    "trails_off": ["\\boxed{3 \\ldots}", "\\boxed{3 ...}", "\\boxed{3, \\dots}", "\\boxed{3\u2026}"],
    "several_values": ["\\boxed{3, 4}", "\\boxed{3,4}", "\\boxed{3;4}", "\\boxed{3 or 4}", "\\boxed{3 \\text{ or } 4}",
                       "\\boxed{3\\\\4}", "\\boxed{3 \\quad 4}", "\\boxed{\\{3, 4\\}}", "\\boxed{(3, 4)}",
                       "\\boxed{x = 3, y = 5}", "\\boxed{3 \\pm 1}"],
    "relation": ["\\boxed{3 < 4}", "\\boxed{3 = 4}", "\\boxed{3 \\neq 3}"],
    "code_in_the_box": ["\\boxed{__import__('os').system('echo 3')}", "\\boxed{print(3)}", "\\boxed{lambda: 3}",
                        "\\boxed{3 if True else 4}", "\\boxed{[3 for _ in ()]}", "\\boxed{3 # comment}",
                        "\\boxed{3; import os}", "\\boxed{```python\nprint(3)\n```}", "\\boxed{`3`}"],
    "latex_commands": ["\\boxed{3 \\input{/etc/passwd}}", "\\boxed{\\input{/etc/passwd}}",
                       "\\boxed{3 \\\\ \\text{rm -rf /}}", "\\boxed{\\begin{cases}3\\\\4\\end{cases}}"],
}


@pytest.mark.parametrize("kind", list(INCOMPLETE_ANSWERS))
def test_pool_incomplete_answers_score_0(pool, kind):
    """Credit only for a complete answer: the expression extractor's fallback (a number found anywhere
    in a box that does not parse as LaTeX) counts only when it is the whole answer."""
    completions = INCOMPLETE_ANSWERS[kind]
    preds = [extract_prediction(c, "3") for c in completions]
    scores = pool.score(preds, ["3"] * len(preds))
    assert [c for c, s in zip(completions, scores) if s != 0.0] == []
    assert pool.score(["3", "\\frac{6}{2}", "3.0", "x = 3", "\\text{3}"], ["3"] * 5) == [1.0] * 5  # complete: credited


def test_hard_timeout_kills_and_replaces_worker():
    """With math_verify's own alarms off, the power tower must be stopped by the kill."""
    with MathVerifier(num_workers=1, timeout_s=1.5, soft_timeout_s=0) as v:
        assert v.score(["1"], ["1"]) == [1.0]
        s, dt, st_ = _timed_score(v, "9^{9^{9^{9^{9^{9}}}}}", "1")
        assert s == 0.0 and dt < v.timeout_s + 3.0
        assert st_["timeouts"] == 1 and st_["restarts"] == 1
        assert v.score(["\\frac{2}{4}", "7"], ["0.5", "8"]) == [1.0, 0.0]  # the replacement answers
        assert v.stats["timeouts"] == 1 and v.stats["crashes"] == 0


def test_crash_and_hang_hooks(monkeypatch):
    monkeypatch.setenv(CRASH_HOOK_ENV, "1")  # read by the workers, which inherit the environment
    with MathVerifier(num_workers=2, timeout_s=2.0) as v:
        t0 = time.perf_counter()
        scores = v.score([CRASH_HOOK_PREDICTION, "\\frac{1}{2}", "3", CRASH_HOOK_PREDICTION, "4"],
                         ["1", "0.5", "3", "1", "5"])
        assert scores == [0.0, 1.0, 1.0, 0.0, 0.0]
        assert v.last_stats["crashes"] == 2
        s, dt, st_ = _timed_score(v, HANG_HOOK_PREDICTION, "1")
        assert s == 0.0 and dt < v.timeout_s + 3.0 and st_["timeouts"] == 1
        assert v.score(["x=3", "B"], ["3", "(B)"]) == [1.0, 1.0]
        assert v.stats["crashes"] == 2 and v.stats["timeouts"] == 1
        assert time.perf_counter() - t0 < 60


def test_hooks_inert_without_env(pool, monkeypatch):
    monkeypatch.delenv(CRASH_HOOK_ENV, raising=False)
    before = dict(pool.stats)
    assert pool.score([CRASH_HOOK_PREDICTION], ["1"]) == [0.0]
    assert pool.stats["crashes"] == before["crashes"]


def test_pool_lazy_start_and_close():
    v = MathVerifier(num_workers=1, timeout_s=5.0)
    assert v._workers == []  # nothing started yet
    assert v.score([None, ""], ["1", "2"]) == [0.0, 0.0]  # no worker needed
    assert v._workers == []
    assert v.score(["2"], ["2"]) == [1.0]
    procs = [w.proc for w in v._workers]
    assert procs and all(p.poll() is None for p in procs)
    v.close()
    assert all(p.poll() is not None for p in procs)
    v.close()  # idempotent
    with pytest.raises(RuntimeError):
        v.score(["2"], ["2"])


def _env_with_pythonpath(*paths) -> dict:
    env = dict(os.environ)
    old = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + old)
    return env


def test_plain_script_without_main_guard(tmp_path):
    """Workers never import the user's script, so a script without `if __name__ == "__main__":` works."""
    script = tmp_path / "plain_script.py"
    script.write_text(
        "from srft.math_reward import math_reward\n"
        "print('RESULT', math_reward(['p'], ['\\\\boxed{1/2}'], answer=['0.5']))\n"
    )
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env_with_pythonpath(REPO_ROOT),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "RESULT [1.0]" in res.stdout, (res.stdout, res.stderr[-3000:])


@pytest.mark.parametrize("fake_init,match,absent", [
    # the worker reports the failed import and the parent raises at once, saying so
    ("raise ImportError('fake broken math_verify')\n", "fake broken math_verify.*is math-verify installed", None),
    # a worker that dies during start-up without a report is retried, then the exit code is reported
    ("import os\nos._exit(3)\n", r"exit code 3", "math-verify"),
])
def test_startup_failures_say_what_happened(tmp_path, monkeypatch, fake_init, match, absent):
    fake = tmp_path / "math_verify"
    fake.mkdir()
    (fake / "__init__.py").write_text(fake_init)
    monkeypatch.setenv("PYTHONPATH", _env_with_pythonpath(tmp_path)["PYTHONPATH"])  # read by the workers
    with MathVerifier(num_workers=1, timeout_s=5.0) as v:
        with pytest.raises(RuntimeError, match=match) as ei:
            v.score(["1"], ["2"])
        assert v._workers == []
        if absent:
            assert absent not in str(ei.value)


_TOKENS = ["\\boxed{", "\\fbox{", "{", "}", "\\", "</think>", "1", "2", "x", "\\frac", "^", "A", "C", "(", ")",
           "$", " ", "answer is ", "\\{", "\\sqrt", "%", ".", "=", "e", "\x00", "é", "\\text{"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(
        st.one_of(
            st.text(max_size=40),
            st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join),
            st.text(max_size=20).map(lambda t: "</think> \\boxed{" + t + "}"),  # reaches the workers
            st.lists(st.sampled_from(_TOKENS[5:]), max_size=12).map(lambda ts: "\\boxed{" + "".join(ts) + "}"),
        ),
        min_size=1, max_size=4,
    ),
    golds=st.lists(st.sampled_from(["1", "0.5", "C", "(A)", "x+1", "\\frac{1}{2}", "[0,1)", "2"]), min_size=4,
                   max_size=4),
)
def test_fuzz_extract_and_score(pool, texts, golds):
    golds = golds[: len(texts)]
    preds, multi = [], []
    for t, g in zip(texts, golds):
        p = extract_prediction(t, g)
        assert p is None or isinstance(p, str)
        if p is not None and not is_choice_letter(g):
            assert p in t.replace(mr.MULTI_BOX_SEP, " ")  # a separator character in a box becomes a space
        preds.append(p)
        # multi-box: an answer exactly when the last-box rule gives one, ending with that box
        pm = extract_prediction(t, g, multi_box=True)
        assert (pm is None) == (p is None)
        assert pm is None or pm.split(mr.MULTI_BOX_SEP)[-1] == p
        multi.append(pm)
    scores = pool.score(preds + multi, golds + golds)
    assert len(scores) == 2 * len(texts)
    assert pool.last_stats["total"] == 2 * len(texts) and pool.last_stats["crashes"] == 0
    assert all(isinstance(s, float) and s in (0.0, 1.0) for s in scores)


# --------------------------------------------------------------------------- TRL-style reward


def test_math_reward_callable():
    completions = [
        "<think> maybe \\boxed{3} </think> The answer is \\boxed{\\frac{1}{2}}.",
        "<think> ... </think> I think it is \\boxed{0.25}",
        "<think> hmm \\boxed{0.5} </think> no box here",
        "</think> The answer is (C).",
        [{"role": "assistant", "content": "</think> \\boxed{x=3}"}],
    ]
    answers = ["0.5", "0.5", "0.5", "C", "3"]
    prompts = ["p"] * len(completions)
    assert math_reward(prompts, completions, answer=answers) == [1.0, 0.0, 0.0, 1.0, 1.0]
    stats = mr.last_stats()
    assert stats["total"] == 5 and stats["no_answer"] == 1 and stats["correct"] == 3
    # ground truth under `ground_truth`, extra columns ignored
    assert math_reward(prompts[:2], completions[:2], ground_truth=answers[:2], other=[1, 2]) == [1.0, 0.0]
    # verl layout
    assert math_reward(prompts[:1], completions[:1], reward_model=[{"ground_truth": "1/2"}]) == [1.0]
    assert mr.get_verifier() is mr.get_verifier()
    with pytest.raises(ValueError):
        math_reward(prompts[:1], completions[:1])
    with pytest.raises(ValueError):
        math_reward(prompts, completions, answer=answers[:2])


def test_math_reward_by_import_path():
    from srft.rewards import get_reward_fn, score_completions

    fn = get_reward_fn("srft.math_reward:math_reward")
    rewards, n_none = score_completions(fn, ["p", "p"], ["\\boxed{204}", "\\boxed{205}"], {"answer": ["204", "204"]})
    assert rewards == [1.0, 0.0] and n_none == 0


# --------------------------------------------------------------------------- multi-box option

SEP = mr.MULTI_BOX_SEP


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("\\boxed{(2, 2)} and \\boxed{(6, 2)}", ["(2, 2)", "(6, 2)"]),
        ("\\boxed{1}, \\boxed{2}", ["1", "2"]),
        ("\\boxed{1},\\boxed{2} , and \\boxed{3}", ["1", "2", "3"]),
        ("\\boxed{1} ,or \\boxed{2}; \\boxed{3}", ["1", "2", "3"]),
        ("$\\boxed{3}$ or $\\boxed{-3}$", ["3", "-3"]),
        ("\\(\\boxed{1}\\) and \\(\\boxed{2}\\).", ["1", "2"]),
        ("\\[\\boxed{1}\\] and \\[\\boxed{2}\\]", ["1", "2"]),
        ("$$\\boxed{1}$$ or $$\\boxed{2}$$", ["1", "2"]),
        ("$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$", ["(2, 2)", "(6, 2)"]),
        ("the roots are \\boxed{1}\n and\n \\boxed{2}.", ["1", "2"]),
        # 7 boxes in a list: the last 6 are kept
        (", ".join(f"\\boxed{{{i}}}" for i in range(1, 8)), ["2", "3", "4", "5", "6", "7"]),
        # prose, no separator, or a long gap between boxes: only the last box
        ("\\boxed{1}. Then we get \\boxed{2}", ["2"]),
        ("\\boxed{1} \\boxed{2}", ["2"]),
        ("\\boxed{1} andy \\boxed{2}", ["2"]),
        ("\\boxed{1} for part (a) and \\boxed{2}", ["2"]),
        ("\\boxed{1}" + " " * 100 + "and \\boxed{2}", ["2"]),
        ("$y_1 = \\boxed{1}$ and $y_2 = \\boxed{2}$", ["2"]),
        # the list stops at prose, an empty box, an enclosing box
        ("\\boxed{0}. So \\boxed{1} and \\boxed{2}", ["1", "2"]),
        ("\\boxed{0}, \\boxed{} and \\boxed{2}", ["2"]),
        ("\\boxed{\\boxed{1}} and \\boxed{2}", ["2"]),
        ("\\boxed{2} and \\boxed{2}", ["2"]),  # consecutive duplicates count once
        ("\\boxed{1} and \\boxed{2", None),  # the last box is not closed: no answer
        ("\\boxed{1} and </think> \\boxed{2}", ["2"]),  # boxes before </think> are ignored
        ("\\boxed{1} and \\boxed{2} </think> no box", None),
        ("<think>\\boxed{0}, </think>\\boxed{1}, \\boxed{2}", ["1", "2"]),
        ("no box", None),
    ],
)
def test_extract_answer_multi_box(completion, expected):
    got = extract_answer(completion, multi_box=True)
    assert got == (None if expected is None else SEP.join(expected))


@pytest.mark.parametrize(
    "completion",
    [
        "so \\boxed{1} ... </think> final \\boxed{2}",
        "first \\boxed{1}, then \\boxed{2}, finally \\boxed{3}.",
        "$\\boxed{\\frac{1}{2}}$",
        "\\boxed{\\{1,2\\}}",
        "\\boxed {  x^{2}+1 }",
        "\\boxed{\\boxed{4}}",
        "\\boxed{1} then \\boxed{2",
        "\\boxed{}",
        "the answer is 12",
    ],
)
def test_multi_box_single_box_unchanged(completion):
    assert extract_answer(completion, multi_box=True) == extract_answer(completion)
    assert extract_prediction(completion, "1", multi_box=True) == extract_prediction(completion, "1")


@pytest.mark.parametrize(
    "completion, gold, with_option, without",
    [
        ("\\boxed{(2, 2)} and \\boxed{(6, 2)}", "(2, 2), (6, 2)", 1.0, 0.0),
        ("\\boxed{1}, \\boxed{2}", "1, 2", 1.0, 0.0),
        # math-verify 0.9.0 also reads both as {-3, 3}
        ("$\\boxed{3}$ or $\\boxed{-3}$", "\\pm 3", 1.0, 0.0),
        ("\\boxed{1, 2} and \\boxed{3}", "1, 2, 3", 1.0, 0.0),  # FiniteSets are flattened
        ("\\boxed{x = 1} or \\boxed{x = 2}", "1, 2", 1.0, 0.0),
        ("\\boxed{1} and \\boxed{2}", "\\{1,2\\}", 1.0, 0.0),
        ("\\boxed{2} and \\boxed{1}", "2", 0.0, 0.0),  # an extra answer is wrong
        ("\\boxed{1}. Then we get \\boxed{2}", "2", 1.0, 1.0),  # prose: the last box alone
        ("\\boxed{1}. Then we get \\boxed{2}", "1, 2", 0.0, 0.0),
        ("\\boxed{2} and \\boxed{2}", "2", 1.0, 1.0),
        ("\\boxed{A} and \\boxed{B}", "B", 1.0, 1.0),  # choice golds keep the last-box rule
        ("\\boxed{B} and \\boxed{A}", "B", 0.0, 0.0),
    ],
)
def test_multi_box_scores(completion, gold, with_option, without):
    pred = extract_prediction(completion, gold, multi_box=True)
    assert verify_one(pred, gold) == with_option
    assert verify_one(extract_prediction(completion, gold), gold) == without


def test_multi_box_unparseable_part_uses_the_joined_string():
    # a part without a sympy reading ("?", "\cdots"): the plain comma-joined string only
    assert mr._parse_multi(["1", "?"], None) == ("1,?",)
    assert mr._parse_multi(["1", "\\cdots", "3"], None) == ("1,\\cdots,3",)
    for bad in ("?", "\\cdots", "\\frac{"):
        assert verify_one(SEP.join(["1", bad]), "1") == 0.0  # never the first part alone
        assert verify_one(SEP.join([bad, "1"]), "1") == 0.0
    assert verify_one(SEP.join(["1", "?"]), "1,?") == 1.0  # string equality still matches
    assert verify_one(SEP, "1") == 0.0


def test_multi_box_through_the_pool(pool):
    preds = [SEP.join(["(2, 2)", "(6, 2)"]), SEP.join(["1", "2"]), SEP.join(["1", "2"]), SEP.join(["A", "C"])]
    golds = ["(2, 2), (6, 2)", "1, 2", "2", "C"]
    assert pool.score(preds, golds) == [1.0, 1.0, 0.0, 1.0]
    assert pool.last_stats["crashes"] == 0 and pool.last_stats["no_answer"] == 0


def test_math_reward_multi_box_callable():
    completions = [
        "<think> \\boxed{9} </think> so \\boxed{(2, 2)} and \\boxed{(6, 2)}",
        "</think> $\\boxed{1}$, $\\boxed{2}$",
        "</think> first \\boxed{1}. Then \\boxed{2}",
        "</think> \\boxed{A} or \\boxed{C}",
        [{"role": "assistant", "content": "</think> \\boxed{3}"}],
    ]
    answers = ["(2, 2), (6, 2)", "1, 2", "1, 2", "C", "3"]
    prompts = ["p"] * len(completions)
    assert mr.math_reward_multi_box(prompts, completions, answer=answers) == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert math_reward(prompts, completions, answer=answers) == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert mr.math_reward_multi_box(prompts[:1], completions[:1], reward_model=[{"ground_truth": answers[0]}]) == [1.0]
    assert mr.make_math_reward(True) is mr.math_reward_multi_box and mr.make_math_reward() is math_reward
    from srft.rewards import get_reward_fn

    assert get_reward_fn("srft.math_reward:math_reward_multi_box") is mr.math_reward_multi_box


@pytest.mark.parametrize(
    "text",
    [
        "{" * 100_000,
        "\\boxed{" + "{" * 100_000,
        "\\boxed{" * 20_000,
        "}" * 100_000 + "\\boxed{1",
        "\\boxed{1}, " * 20_000,  # a very long list: only the last 6 boxes are looked at
        "\\boxed{1}" + " ," * 50_000 + "\\boxed{2}",  # a long gap is not scanned by the separator regex
        ("\\boxed{" + "{" * 20_000 + "} and ") * 5 + "\\boxed{1}",  # deep earlier boxes, each scanned once
        "\\boxed{1} and " + "\\boxed{" * 30_000 + "\\boxed{2}",
    ],
)
def test_extract_answer_multi_box_linear(text):
    t0 = time.perf_counter()
    extract_answer(text, multi_box=True)
    extract_answer("</think>" + text, multi_box=True)
    assert time.perf_counter() - t0 < 1.0


def test_separator_character_inside_a_box_is_a_space():
    for multi in (False, True):
        assert extract_answer("\\boxed{1\x1f2}", multi_box=multi) == "1 2"
        assert extract_answer("\\boxed{\x1f}, \\boxed{3}", multi_box=multi) == "3"
