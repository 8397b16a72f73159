"""Measure the testbed's main claim: SRFT raises in-distribution accuracy.

Runs `srft train` (the default config, any extra flags appended) once per seed,
one after the other, and prints base vs trained accuracy per test set and seed,
the mean change, and the wall time of each run (and of the base model build,
when the cache is empty).

    .venv/bin/python scripts/bench_testbed.py --seeds 0 1 2 [--out runs/bench] [-- --max-steps 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/bench")
    ap.add_argument("extra", nargs="*", help="flags passed to srft train (after --)")
    a = ap.parse_args()
    rows = []
    for seed in a.seeds:
        out = Path(a.out) / f"seed{seed}"
        t0 = time.time()
        cmd = [sys.executable, "-m", "srft.cli", "train", "--seed", str(seed), "--output-dir", str(out),
               "--train.overwrite", "true", *a.extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return r.returncode
        ev = json.loads((out / "eval.json").read_text())
        rows.append((seed, ev, time.time() - t0))
        print(f"seed {seed}: {time.time() - t0:.0f}s", flush=True)
    sets = list(rows[0][1]["before"])
    print("\n| seed | " + " | ".join(f"{s} base | {s} trained" for s in sets) + " | seconds |")
    print("|---|" + "---|---|" * len(sets) + "---|")
    for seed, ev, secs in rows:
        cells = " | ".join(f"{100 * ev['before'][s]['accuracy']:.1f} | {100 * ev['after'][s]['accuracy']:.1f}"
                           for s in sets)
        print(f"| {seed} | {cells} | {secs:.0f} |")
    for s in sets:
        d = [100 * (ev["after"][s]["accuracy"] - ev["before"][s]["accuracy"]) for _, ev, _ in rows]
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        print(f"{s}: change {statistics.mean(d):+.1f} +- {sd:.1f} points (min {min(d):+.1f}) over {len(d)} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
