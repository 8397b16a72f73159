"""Math answer verification: check an extracted answer against the ground truth
with `math_verify`, in killable worker processes, and the TRL-style rewards built on it.

What it does
------------
`math_reward(prompts, completions, answer, **columns)` is a TRL-style reward
callable (see `srft.rewards`): for each completion it extracts the final answer
(`srft.answers.extract_prediction`), compares it with the ground truth
(`verify_one`, run in a `MathVerifier` worker pool) and returns 1.0 (correct)
or 0.0 (wrong, missing, too long, timed out or crashed). It can be selected by
import path, ``srft.math_reward:math_reward``. `math_reward_multi_box` (same
signature, ``srft.math_reward:math_reward_multi_box``) also accepts an answer
split over several boxes; `make_math_reward(multi_box)` returns one or the other.

Answer extraction (the last ``\\boxed{}`` after ``</think>``, choice letters,
multi-box answers, normalisation) is `srft.answers`, whose docstring states its
rules; its names are re-exported here (`extract_answer`, `extract_choice`,
`extract_prediction`, `is_choice_letter`, `MULTI_BOX_SEP`).

Verification (`verify_one`)
---------------------------
Both sides go through the same normalisation (`srft.answers.normalise_answer`:
surrounding ``$..$``, ``\\(..\\)``, ``\\[..\\]`` removed, plain scientific notation
such as ``2.55e-10`` rewritten as ``2.55\\times 10^{-10}``) and parsing: the text is
parsed as ``\\boxed{<answer>}`` with `LatexExtractionConfig`; when that yields no
sympy object, ``$<answer>$`` is parsed too, and then with `ExprExtractionConfig`
(plain expressions), whose reading counts only when it is the whole answer: that
extractor finds a number anywhere in a text, so ``3)``, ``3 +``, ``print(3)`` or
``3 # note`` would otherwise be read as 3. An answer that trails off (``3 \\ldots``,
``3 ...``) scores 0 unless the ground truth does too. Credit is for a complete
answer only (`tests/test_math_reward.py::test_pool_incomplete_answers_score_0`).
`math_verify.verify(gold, pred)` then decides (numeric, symbolic, set/interval,
equation ``x=3`` vs ``3``, percent ``50\\%`` vs ``0.5`` and vs ``50`` ...).
Parses are cached per process (LRU), so the G completions of one prompt parse
their gold once.
`verify_one` never raises: any exception scores 0.0.

A multi-box prediction is read as math-verify's ``extract_latex`` reads
several boxes: each part is parsed as above and the first sympy object of each
is put in one ``FiniteSet`` (FiniteSets are flattened, so ``\\boxed{1, 2}`` and
``\\boxed{3}`` give {1, 2, 3}), compared with the ground truth as usual (gold
``1, 2, 3`` or ``\\pm 3`` parse as sets too). When some part has no sympy
reading, the prediction is the plain string of the parts joined by commas, which
can only match the ground truth's string form exactly: that is math-verify's
last resort for bare boxes (it joins them with commas and, when the LaTeX does
not parse, compares strings). The joined string is not parsed again (srft's
expression fallback would read ``1,?`` as 1), and math-verify's ``$..$``-wrapped
path, which keeps only the FIRST part when a later one fails, is not followed
either: both would reward an incomplete answer. Against a choice-letter ground truth only the last part
counts (the last-box rule).

Time-limit design
-----------------
Sympy can take unbounded time, or hang inside a single C call (a power tower
``9^{9^{9^{9}}}`` evaluates a huge integer), where no signal-based timeout
fires. So:
- hard limit: `MathVerifier` runs `verify_one` in worker PROCESSES, each a
  fresh interpreter (see "Worker start" below; no fork of a process holding
  torch/CUDA threads). The parent gives one item to each idle worker and waits
  on all worker sockets with a deadline (a dead worker closes its end); a
  worker that has not answered ``timeout_s`` seconds after it got its item is
  SIGKILLed and replaced, the item scores 0.0 and
  ``stats["timeouts"]`` is incremented. A worker that dies while answering is
  replaced the same way (``stats["crashes"]``). Replacements start in the
  background; the clock of an item only starts once a worker is ready (imports
  done), so start-up time is never charged to an answer.
- soft limit: inside a worker math_verify's own ``signal.alarm`` timeouts
  (``parsing_timeout``/``timeout_seconds``, whole seconds; by default half of
  ``timeout_s`` and at least 1 s, ``soft_timeout_s=0`` disables them) stop slow
  pure-Python work without the cost of a new worker; those are counted in
  ``stats["soft_timeouts"]`` and also score 0.0. In practice they catch most
  pathological inputs (power towers, huge factorials), the kill is the backstop.
- In the calling process `verify_one` uses math_verify's alarms only on the
  main thread (signals cannot be used elsewhere); from other threads it runs
  without a limit, so use a `MathVerifier` whenever the input is untrusted.

Worker start
------------
Each worker is ``subprocess.Popen([sys.executable, "-c", <import
srft.math_reward and call _worker_entry>])``: a fresh interpreter that imports
only this module (with `srft.answers`, its one srft import, and math_verify),
never the user's ``__main__`` script (as multiprocessing's ``spawn`` would), so
plain scripts without an ``if __name__ == "__main__":`` guard, notebooks and
``python -c`` work. Parent and worker talk over a ``socket.socketpair()`` (the
worker's end passed with ``pass_fds``), wrapped in
`multiprocessing.connection.Connection`. The directory holding the ``srft``
package is put first on the worker's ``PYTHONPATH`` (a source tree works
without installing), the rest of the environment is inherited; the current
directory is not on the worker's ``sys.path``. stdin is ``/dev/null``,
stdout/stderr are the parent's (import errors stay visible). A worker that
cannot import math_verify reports it and exits, and the parent raises
``RuntimeError`` at once ("... is math-verify installed?"); a worker that exits
during start-up without a report is retried, and after ``3 * num_workers``
failures in a row the parent raises with the exit code. Ctrl-C is ignored in
workers; workers left running by an unclosed verifier are killed at interpreter
exit.

Deviations / choices worth knowing
----------------------------------
- Predictions longer than ``max_answer_chars`` (2,000; the longest ground truth
  of the bundled benchmarks has 210) score 0 without a worker and are counted
  in ``stats["too_long"]``. Empty predictions count as ``no_answer``.
- The multi-box option (off by default; `math_reward_multi_box`) joins fewer
  boxes than math-verify (a separator is required, prose between boxes ends the
  list, 6 boxes at most) and, when one part does not parse, grades the plain
  comma-joined string instead of math-verify's first part or expression
  fallback; see "Extraction rules" in `srft.answers` and "Verification". On
  the 60 cases of math-verify's ``test_numina_cases`` / ``test_open_thoughts``
  (``scripts/mathverify_agreement.py``) it agrees on 57 (last-box rule: 48),
  with no false positive either way.
- ``SRFT_MATH_WORKERS`` / ``SRFT_MATH_TIMEOUT`` override the defaults (2
  workers, 5 s) of the module-level verifier used by `math_reward`.
- Test hook: when ``SRFT_TEST_CRASH_HOOK=1`` is in the worker's environment,
  the prediction `CRASH_HOOK_PREDICTION` makes the worker ``os._exit(1)`` and
  `HANG_HOOK_PREDICTION` makes it sleep; without the variable they are
  ordinary (wrong) strings.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.connection as mp_connection
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from typing import Any, Iterable, Sequence

from srft.answers import (  # extract_*, is_choice_letter and MULTI_BOX_SEP are re-exported
    MULTI_BOX_SEP,
    choice_score,
    extract_answer,
    extract_choice,
    extract_prediction,
    is_choice_letter,
    multi_box_parts,
    normalise_answer,
)

logger = logging.getLogger(__name__)

__all__ = [
    "extract_answer",
    "extract_choice",
    "extract_prediction",
    "is_choice_letter",
    "verify_one",
    "MathVerifier",
    "math_reward",
    "math_reward_multi_box",
    "make_math_reward",
    "MULTI_BOX_SEP",
    "get_verifier",
    "last_stats",
]

CRASH_HOOK_ENV = "SRFT_TEST_CRASH_HOOK"
CRASH_HOOK_PREDICTION = "__srft_test_crash_worker__"
HANG_HOOK_PREDICTION = "__srft_test_hang_worker__"

MAX_ANSWER_CHARS = 2000
STAT_KEYS = ("total", "correct", "no_answer", "too_long", "timeouts", "soft_timeouts", "crashes", "restarts")

# --------------------------------------------------------------------------- verification

_CONFIGS = None


def _configs():
    global _CONFIGS
    if _CONFIGS is None:
        # heavy (sympy) and optional: deferred until the first verification
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        _CONFIGS = [LatexExtractionConfig(), ExprExtractionConfig()]
    return _CONFIGS


_PARSE_CACHE: OrderedDict[str, tuple] = OrderedDict()
_PARSE_CACHE_SIZE = 4096
_PARSE_CACHE_LOCK = threading.Lock()


def _parse_answer(s: str, op_timeout: int | None) -> tuple:
    """Parsed forms of an answer (sympy objects and/or the raw string), LRU-cached per process.

    Empty results (unparseable, or a soft timeout under load) are not cached, so
    a transient timeout never poisons a ground truth for the rest of a run.
    """
    with _PARSE_CACHE_LOCK:
        hit = _PARSE_CACHE.get(s)
        if hit is not None:
            _PARSE_CACHE.move_to_end(s)
            return hit
    # heavy and optional: math_verify and sympy load on the first parse, not at import
    from math_verify import parse
    from sympy import Basic, MatrixBase

    text = normalise_answer(s)
    if not text:
        return ()
    latex, expr = _configs()
    res = list(parse("\\boxed{" + text + "}", extraction_config=[latex], parsing_timeout=op_timeout))
    if not any(isinstance(r, (Basic, MatrixBase)) for r in res):
        res += [r for r in parse("$" + text + "$", extraction_config=[latex], parsing_timeout=op_timeout)
                if r not in res]
    if not any(isinstance(r, (Basic, MatrixBase)) for r in res):
        # a plain expression (no LaTeX reading): only when it is the whole answer. The expression
        # extractor finds a number anywhere in a text ("3)", "3 +", "print(3)", "3 # note" would read
        # as 3), so an answer that only starts with or contains the right value is never credited
        found = parse("$" + text + "$", extraction_config=[expr], parsing_timeout=op_timeout)
        if any(isinstance(r, str) and _squeeze(r) == _squeeze(text) for r in found):
            res += [r for r in found if r not in res]
    out = tuple(res)
    if out:
        with _PARSE_CACHE_LOCK:
            _PARSE_CACHE[s] = out
            while len(_PARSE_CACHE) > _PARSE_CACHE_SIZE:
                _PARSE_CACHE.popitem(last=False)
    return out


_UNFINISHED = re.compile(r"(\\[lc]?dots|\.\.\.|\u2026)\s*\$?\s*$")


def _squeeze(s: str) -> str:
    return "".join(s.split())


def _parse_multi(parts: list[str], op_timeout: int | None) -> tuple:
    """Parsed forms of a multi-box prediction, as math-verify builds them (`extract_latex`):
    a FiniteSet of the first sympy object of each part (FiniteSets flattened), and the
    parts joined by commas. When a part has no sympy object (or the set cannot be
    built), only the plain comma-joined string is returned: `math_verify.verify`
    then matches it by string equality alone, which is math-verify's own last resort
    for boxes whose joined content does not parse. It is not parsed again: the
    expression fallback would read ``1,?`` as 1 and reward an incomplete answer."""
    from sympy import Basic, FiniteSet, MatrixBase  # heavy: deferred until a multi-box answer is parsed

    joined = ",".join(parts)
    elements: list = []
    for part in parts:
        obj = next((r for r in _parse_answer(part, op_timeout) if isinstance(r, (Basic, MatrixBase))), None)
        if obj is None:
            return (joined,)
        elements.extend(obj.args if isinstance(obj, FiniteSet) else [obj])
    try:
        return (FiniteSet(*elements), joined)
    except Exception:  # e.g. an unhashable (mutable) matrix
        return (joined,)


def verify_one(pred: str | None, gold: str | None, *, op_timeout: int | None = 5) -> float:
    """1.0 when the extracted prediction equals the ground truth, else 0.0. Never raises.

    `pred` is the extracted answer (box content), not the whole completion; a
    multi-box answer (parts joined by `MULTI_BOX_SEP`) is read as the set of its
    parts (`_parse_multi`), except against a choice-letter gold (last part only).
    `op_timeout`: math_verify's per-operation alarm in whole seconds (main thread
    only; it cannot stop a hang inside C code, `MathVerifier` can).
    """
    try:
        if pred is None or gold is None:
            return 0.0
        pred, gold = str(pred), str(gold)
        if not pred.replace(MULTI_BOX_SEP, "").strip() or not gold.strip():
            return 0.0
        if is_choice_letter(gold):
            return choice_score(pred, gold)
        if _UNFINISHED.search(pred) and not _UNFINISHED.search(gold):
            return 0.0  # "3 \\ldots": an answer that trails off is not complete (math-verify reads it as 3)
        if op_timeout is not None and threading.current_thread() is not threading.main_thread():
            op_timeout = None  # signal.alarm only works on the main thread
        from math_verify import verify  # heavy and optional: deferred until the first verification

        g = _parse_answer(gold, op_timeout)
        if not g:
            return 0.0
        parts = multi_box_parts(pred)
        p = _parse_multi(parts, op_timeout) if len(parts) > 1 else _parse_answer(parts[0], op_timeout)
        if not p:
            return 0.0
        return 1.0 if verify(list(g), list(p), timeout_seconds=op_timeout) else 0.0
    except Exception:
        logger.debug("verify_one failed", exc_info=True)
        return 0.0
    except BaseException as e:  # math_verify's TimeoutException derives from BaseException
        if type(e).__name__ == "TimeoutException":
            return 0.0
        raise


# --------------------------------------------------------------------------- worker process


class _TimeoutCounter(logging.Filter):
    """Counts (and silences) math_verify's "Timeout during ..." warnings in a worker."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = str(record.msg)
        except Exception:
            return False
        if msg.startswith("Timeout during"):
            self.count += 1
            return False
        return not msg.startswith("Timeout is disabled")  # expected when soft_timeout_s=0


def _worker_entry(fd: int, op_timeout: int) -> None:
    """Entry point of a worker interpreter (see `_Worker`): `fd` is its end of the socket pair."""
    conn = mp_connection.Connection(fd)
    try:
        _worker_main(conn, op_timeout)
    finally:
        conn.close()


def _worker_main(conn, op_timeout: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    try:
        # optional: imported here so that a worker reports a missing math-verify to its parent
        import math_verify  # noqa: F401
    except BaseException as e:  # ImportError, or anything math_verify's own imports raise
        try:
            conn.send(("error", f"the worker cannot import math_verify ({type(e).__name__}: {e}); "
                                f"is math-verify installed for {sys.executable}?"))
        except Exception:
            pass
        sys.exit(1)
    counter = _TimeoutCounter()
    for name in ("math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).addFilter(counter)
    hooks = os.environ.get(CRASH_HOOK_ENV) == "1"
    op_timeout = op_timeout if op_timeout and op_timeout > 0 else None
    verify_one("1", "1", op_timeout=op_timeout)  # warm up (sympy, parsers) before announcing readiness
    try:
        conn.send(("ready", os.getpid()))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            idx, pred, gold = msg
            if hooks and pred == CRASH_HOOK_PREDICTION:
                os._exit(1)
            if hooks and pred == HANG_HOOK_PREDICTION:
                time.sleep(3600)
            before = counter.count
            score = verify_one(pred, gold, op_timeout=op_timeout)
            conn.send(("res", idx, score, counter.count - before))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # parent gone or closing


# the directory holding the srft package: first on the workers' PYTHONPATH, so that a
# source tree works without installing
_SRFT_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run by each worker interpreter; the current directory ('' with -c) is dropped from
# sys.path so that a user's file named like a dependency (sympy.py ...) cannot shadow it
_WORKER_CODE = (
    "import sys\n"
    "if sys.path and sys.path[0] == '': del sys.path[0]\n"
    "from srft.math_reward import _worker_entry\n"
    "_worker_entry(int(sys.argv[1]), int(sys.argv[2]))\n"
)
# live worker processes -> pid of the process that started them (killed at exit if still running)
_CHILDREN: dict[subprocess.Popen, int] = {}


@atexit.register
def _kill_children() -> None:
    for proc, owner in list(_CHILDREN.items()):
        if owner == os.getpid() and proc.poll() is None:
            try:
                proc.kill()
            except Exception:
                pass


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _SRFT_PARENT + (os.pathsep + old if old else "")
    return env


class _Worker:
    """One worker interpreter running `_worker_entry`, connected by a socket pair."""

    __slots__ = ("proc", "conn", "ready", "task", "deadline", "started", "error")

    def __init__(self, op_timeout: int):
        parent_sock, child_sock = socket.socketpair()
        try:
            fd = child_sock.fileno()
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(fd), str(int(op_timeout))],
                pass_fds=(fd,), stdin=subprocess.DEVNULL, env=_worker_env(),
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        _CHILDREN[self.proc] = os.getpid()
        self.conn = mp_connection.Connection(parent_sock.detach())
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0
        self.started = time.monotonic()
        self.error: str | None = None  # start-up error reported by the worker

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=2)
        except Exception:
            pass
        _CHILDREN.pop(self.proc, None)
        try:
            self.conn.close()
        except Exception:
            pass


class MathVerifier:
    """Pool of worker processes running `verify_one` with a hard per-answer time limit.

    `score(preds, golds)` takes extracted predictions (None = no answer; a
    multi-box answer is one string, its parts joined by `MULTI_BOX_SEP`) and
    returns floats in {0.0, 1.0}. The pool starts on first use; `close()` (or
    the context manager) stops it. `stats` holds cumulative counters,
    `last_stats` those of the last `score` call.
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, *,
                 soft_timeout_s: int | None = None, max_answer_chars: int = MAX_ANSWER_CHARS,
                 startup_timeout_s: float = 120.0):
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.max_answer_chars = int(max_answer_chars)
        self.startup_timeout_s = float(startup_timeout_s)
        # math_verify's in-worker alarm (whole seconds); 0 disables it (hard limit only)
        self.op_timeout = max(1, int(self.timeout_s / 2)) if soft_timeout_s is None else int(soft_timeout_s)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.last_stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self._start_failures = 0

    # -- lifecycle
    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if os.getpid() != self._pid:  # a forked copy: the workers belong to the parent
                self._workers = []
                return
            for w in self._workers:
                try:
                    w.conn.send(None)
                except Exception:
                    pass
            for w in self._workers:
                try:
                    w.proc.wait(timeout=0.5)
                except Exception:
                    pass
                w.kill()
            self._workers = []

    def _ensure_pool(self) -> None:
        if self._closed:
            raise RuntimeError("MathVerifier is closed")
        if os.getpid() != self._pid:  # used after a fork: start our own workers
            self._workers = []
            self._pid = os.getpid()
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self.op_timeout))

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = _Worker(self.op_timeout)

    # -- scoring
    def score(self, preds: Sequence[str | None], golds: Sequence[str]) -> list[float]:
        preds, golds = list(preds), list(golds)
        if len(preds) != len(golds):
            raise ValueError(f"{len(preds)} predictions for {len(golds)} ground truths")
        with self._lock:
            call = dict.fromkeys(STAT_KEYS, 0)
            out = [0.0] * len(preds)
            todo: deque[int] = deque()
            items: list[tuple[str, str]] = []
            for i, (p, g) in enumerate(zip(preds, golds)):
                call["total"] += 1
                g = "" if g is None else str(g)
                p = None if p is None else str(p)
                items.append((p or "", g))
                if p is None or not p.strip():
                    call["no_answer"] += 1
                elif len(p) > self.max_answer_chars:
                    call["too_long"] += 1
                elif not g.strip():
                    pass
                elif is_choice_letter(g):
                    out[i] = choice_score(p, g)
                else:
                    todo.append(i)
            if todo:
                self._run(todo, items, out, call)
            call["correct"] = int(sum(out))
            for k, v in call.items():
                self.stats[k] += v
            self.last_stats = call
            return out

    def _run(self, todo: deque, items: list, out: list, call: dict) -> None:
        self._ensure_pool()
        while True:
            # hand one item to every idle, ready worker
            for k, w in enumerate(self._workers):
                if todo and w.ready and w.task is None:
                    i = todo.popleft()
                    try:
                        w.conn.send((i, *items[i]))
                    except Exception:  # died while idle: not the item's fault
                        todo.appendleft(i)
                        call["restarts"] += 1
                        self._replace(k)
                        continue
                    w.task, w.deadline = i, time.monotonic() + self.timeout_s
            if not todo and all(w.task is None for w in self._workers):
                return
            now = time.monotonic()
            limits = [w.deadline if w.ready else w.started + self.startup_timeout_s for w in self._workers
                      if w.task is not None or not w.ready]
            wait_s = max(0.0, min(limits) - now) if limits else 0.05
            handles = [w.conn for w in self._workers]  # a dead worker's socket reads as EOF
            try:
                mp_connection.wait(handles, timeout=min(wait_s, 1.0) + 0.001)
            except OSError:
                pass
            for k in range(len(self._workers)):
                self._check_worker(k, out, call)

    def _check_worker(self, k: int, out: list, call: dict) -> None:
        w = self._workers[k]
        dead = False
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg[0] == "ready":
                    w.ready = True
                    self._start_failures = 0
                elif msg[0] == "error":
                    w.error = str(msg[1])
                elif msg[0] == "res" and w.task == msg[1]:
                    out[msg[1]] = float(msg[2])
                    call["soft_timeouts"] += int(msg[3])
                    w.task = None
        except (EOFError, OSError):
            dead = True
        if not dead and not w.alive():
            dead = True
        now = time.monotonic()
        if dead:
            if w.task is not None:
                call["crashes"] += 1
                out[w.task] = 0.0
                logger.warning("math verifier worker died on an answer (exit code %s); replaced",
                               self._exit_code(w))
            elif not w.ready:
                self._note_start_failure(w.error or f"worker exited during start-up (exit code {self._exit_code(w)}; "
                                                    "its error, if any, is on stderr above)", fatal=w.error is not None)
            call["restarts"] += 1
            self._replace(k)
        elif w.task is not None and now > w.deadline:
            call["timeouts"] += 1
            out[w.task] = 0.0
            call["restarts"] += 1
            self._replace(k)
        elif not w.ready and now > w.started + self.startup_timeout_s:
            self._note_start_failure(f"worker not ready after {self.startup_timeout_s:.0f} s")
            call["restarts"] += 1
            self._replace(k)

    @staticmethod
    def _exit_code(w: _Worker) -> int | None:
        try:
            return w.proc.wait(timeout=1)  # the socket closes just before the process is reaped
        except Exception:
            return w.proc.returncode

    def _note_start_failure(self, why: str, fatal: bool = False) -> None:
        """A worker failed to start; raise when it said why (`fatal`) or after 3 failures per worker."""
        self._start_failures += 1
        logger.warning("math verifier: %s", why)
        if fatal or self._start_failures >= 3 * self.num_workers:
            for w in self._workers:
                w.kill()
            self._workers = []
            self._start_failures = 0
            raise RuntimeError(f"math verifier workers cannot start: {why}")


# --------------------------------------------------------------------------- TRL-style reward

_VERIFIER: MathVerifier | None = None
_VERIFIER_LOCK = threading.Lock()
_LAST_STATS: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)


def get_verifier() -> MathVerifier:
    """The module-level verifier used by `math_reward` (created on first use, closed at exit)."""
    global _VERIFIER
    with _VERIFIER_LOCK:
        if _VERIFIER is None or _VERIFIER._closed:
            _VERIFIER = MathVerifier(
                num_workers=int(os.environ.get("SRFT_MATH_WORKERS", "2")),
                timeout_s=float(os.environ.get("SRFT_MATH_TIMEOUT", "5")),
            )
            atexit.register(_VERIFIER.close)
        return _VERIFIER


def last_stats() -> dict[str, int]:
    """Counters of the last `math_reward` call (total, correct, no_answer, timeouts, crashes, ...)."""
    return dict(_LAST_STATS)


def _math_reward(completions: Sequence[Any], answer: Sequence[Any] | None, columns: dict,
                 multi_box: bool) -> list[float]:
    global _LAST_STATS
    golds = answer
    if golds is None:
        golds = columns.get("ground_truth")
    if golds is None and columns.get("reward_model") is not None:
        golds = [r.get("ground_truth") if isinstance(r, dict) else r for r in columns["reward_model"]]
    if golds is None:
        raise ValueError("math_reward needs the ground truth in an 'answer' (or 'ground_truth') column")
    golds = ["" if g is None else str(g) for g in golds]
    if len(golds) != len(completions):
        raise ValueError(f"{len(completions)} completions for {len(golds)} ground truths")
    preds = [extract_prediction(c, g, multi_box=multi_box) for c, g in zip(completions, golds)]
    verifier = get_verifier()
    scores = verifier.score(preds, golds)
    _LAST_STATS = dict(verifier.last_stats)
    return scores


def math_reward(prompts: Iterable[Any], completions: Sequence[Any], answer: Sequence[Any] | None = None,
                **columns: Any) -> list[float]:
    """TRL-style reward: 1.0 when the final boxed answer matches the ground truth, else 0.0.

    The ground truth comes from the `answer` column, else `ground_truth`, else a
    verl-style `reward_model` column of ``{"ground_truth": ...}`` dicts.
    """
    return _math_reward(completions, answer, columns, multi_box=False)


def math_reward_multi_box(prompts: Iterable[Any], completions: Sequence[Any], answer: Sequence[Any] | None = None,
                          **columns: Any) -> list[float]:
    """`math_reward` with multi-box answers: ``\\boxed{1}, \\boxed{2}`` is read as the set {1, 2}.

    See "Extraction rules" in `srft.answers`. Import path
    ``srft.math_reward:math_reward_multi_box``.
    """
    return _math_reward(completions, answer, columns, multi_box=True)


def make_math_reward(multi_box: bool = False):
    """The reward callable for a setting: `math_reward_multi_box` or `math_reward`.

    Returns the module-level functions themselves (their ``__name__``, which TRL
    logs, and their import path stay stable); the option is not a keyword of the
    callables because a reward's keywords are dataset columns.
    """
    return math_reward_multi_box if multi_box else math_reward
