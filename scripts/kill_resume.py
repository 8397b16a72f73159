"""Kill the main job at seeded random moments, resume it each time, and check that it ends as the
uninterrupted run does.

    python scripts/kill_resume.py [--seed 0] [--kills 10] [--work DIR] [--keep]

The job: the main job (`srft train`: SRFT on the built-in testbed, its base model built once under
$SRFT_CACHE), shortened with `SHORT` below (6 steps of 8 prompts, a checkpoint every 2 steps, an
evaluation every 3 on 40 problems of each set), on one CPU thread (OMP_NUM_THREADS=1: the runs
being compared do the same float operations in the same order).

1. The reference: the job run once, uninterrupted (WORK/reference).
2. The killed run (WORK/killed): started, then killed with SIGKILL at `--kills` moments in a row,
   each followed by `srft train --resume WORK/killed` (or, when no checkpoint was written yet, the
   first command again with --train.overwrite true, as the refusal says). The moments are drawn
   from a seeded RNG as (event, delay): the process start, or the N-th step logged in metrics.jsonl
   by this attempt (N uniform in 1..steps-1), then a delay uniform in [0, 1 s); sorted, so the run
   moves forward between kills (a kill may land anywhere: start-up, a step, an evaluation, a
   checkpoint write). The last moment is always "as soon as the checkpoint of the last step is in
   place": between the last checkpoint and the end of the run (final/, eval.json, plots), the
   window issue 24 found unresumable. A kill that finds the process already gone fails the script.
3. After the last kill the resume runs to the end, and `scripts/compare_runs.py`'s comparison
   decides: byte-identical final/model.safetensors, metrics.jsonl rows equal apart from time/ and
   throughput/ fields, the same accuracies in eval.json; plus the same file list in plots/.

Prints one line per kill (when, and what the folder held at that moment) and exits 0 only if
every kill happened and the killed run matches the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from compare_runs import compare  # (scripts/ is not a package)

SHORT = ["--max-steps", "6", "--train.save_every", "2", "--train.eval_every", "3", "--eval.limit", "40",
         "--train.prompts_per_step", "8"]
STEPS = 6


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def srft(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "srft.cli", *args], stdout=open(log, "a"), stderr=subprocess.STDOUT,
                            env=env(), cwd=REPO, start_new_session=True)


def last_logged_step(out: Path, since: float) -> int:
    """The newest step in metrics.jsonl, counted only when the file was written by this attempt."""
    f = out / "metrics.jsonl"
    try:
        if f.stat().st_mtime < since:
            return -1
        lines = [line for line in f.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError, IndexError):
        return -1


def checkpoint_step(out: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*")
             if (p / "trainer_state.json").is_file()]
    return max(steps, default=0)


def held(out: Path) -> str:
    """What the folder holds, for the log line of a kill."""
    end = [name for name in ("final", "eval.json", "plots") if (out / name).exists()]
    return (f"checkpoint {checkpoint_step(out)}, metrics up to step {max(last_logged_step(out, 0), 0)}, "
            f"end written: {', '.join(end) if end else 'nothing'}")


def moments(seed: int, kills: int) -> list[tuple[int, float]]:
    """(event, delay): event 0 is the process start, N the N-th step logged, STEPS + 1 the checkpoint of the
    last step in place (delay 0)."""
    rng = random.Random(seed)
    drawn = sorted((rng.randrange(0, STEPS), round(rng.uniform(0.0, 1.0), 2)) for _ in range(kills - 1))
    return drawn + [(STEPS + 1, 0.0)]


def wait_for(event: int, out: Path, since: float, proc: subprocess.Popen, timeout: float = 900) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if event == 0:
            return True
        if event <= STEPS and last_logged_step(out, since) >= event:
            return True
        ck = out / "checkpoints" / f"step-{STEPS:06d}" / "trainer_state.json"
        if event == STEPS + 1 and ck.is_file() and ck.stat().st_mtime >= since:
            return True
        time.sleep(0.005)
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="the seed of the kill moments")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--work", type=Path, default=None, help="folder for the two runs (default: a new temporary one)")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="srft-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    ref, out = work / "reference", work / "killed"
    first = ["train", "--output-dir", str(out), *SHORT]
    print(f"[kill_resume] job: srft train {' '.join(SHORT)} (the main job, shortened); work folder {work}", flush=True)

    if not (ref / "eval.json").is_file():
        t0 = time.monotonic()
        rc = srft(["train", "--output-dir", str(ref), *SHORT], work / "reference.log").wait()
        if rc != 0:
            print(f"[kill_resume] the reference run failed (exit {rc}); log: {work / 'reference.log'}")
            return 1
        print(f"[kill_resume] reference: {time.monotonic() - t0:.0f} s", flush=True)

    log = work / "killed.log"
    shutil.rmtree(out, ignore_errors=True)
    log.write_text("")
    for i, (event, delay) in enumerate(moments(a.seed, a.kills), 1):
        args = (["train", "--resume", str(out)] if checkpoint_step(out) else
                first + (["--train.overwrite", "true"] if out.exists() else []))
        since = time.time() - 0.01
        proc = srft(args, log)
        reached = wait_for(event, out, since, proc)
        if reached:
            time.sleep(delay)
        if not reached or proc.poll() is not None:
            print(f"[kill_resume] kill {i}: the run ended (exit {proc.poll()}) before the moment "
                  f"(event {event}, +{delay} s); log: {log}")
            return 1
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        when = ("at the process start" if event == 0 else f"after step {event} was logged" if event <= STEPS
                else f"as soon as the step-{STEPS} checkpoint was in place")
        window = " (between the last checkpoint and the end)" if checkpoint_step(out) == STEPS and not all(
            (out / name).exists() for name in ("final", "eval.json", "plots/accuracy.png")) else ""
        print(f"[kill_resume] kill {i:2d}: {when} + {delay:.2f} s ({' '.join(args[:2])}): {held(out)}{window}",
              flush=True)

    rc = srft(["train", "--resume", str(out)], log).wait()
    stale = log.read_text().count("ended without releasing the folder")
    print(f"[kill_resume] last resume: exit {rc}; stale locks recognised on the way: {stale}", flush=True)
    if rc != 0:
        print(f"[kill_resume] log: {log}")
        return 1
    problems = compare(ref, out)
    plots = [sorted(q.name for q in (d / "plots").iterdir()) for d in (ref, out)]
    if plots[0] != plots[1]:
        problems.append(f"plots differ: {plots}")
    ends = [name for name in ("final/model.safetensors", "eval.json", "plots") if not (out / name).exists()]
    problems += [f"missing {name}" for name in ends]
    if problems:
        print("[kill_resume] DIFFERS from the uninterrupted run: " + "; ".join(problems))
        return 1
    print(f"[kill_resume] {a.kills} kills, resumed each time: the same as the uninterrupted run "
          f"(final/model.safetensors byte-identical, metrics.jsonl rows and eval.json accuracies equal, "
          f"the same plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
