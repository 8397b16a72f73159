"""Step time of the testbed's default SRFT run in its current mode (log-probs from hidden states
in chunks, one pass on-policy) against the earlier behaviour (full logits, a separate pi_old
pass), side by side in one invocation, same seed and steps.

    .venv/bin/python scripts/bench_passes.py [--steps 30] [--model testbed] [-- extra srft train flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {
    "hidden + one pass (default)": [],
    "logits + pi_old pass": ["--train.logprob_path", "logits", "--train.old_logprob_pass", "always"],
}
KEYS = ("time/rollout", "time/old_logprob", "time/update", "time/step")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--model", default="testbed")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    means = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in MODES.items():
            out = Path(tmp) / name.split()[0]
            cmd = [sys.executable, "-m", "srft.cli", "train", "--model", a.model, "--max-steps", str(a.steps),
                   "--train.eval_every", "0", "--train.save_every", "0", "--eval.limit", "1", "--output-dir",
                   str(out), *flags, *a.extra]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]  # step 1: warm-up
            means[name] = {k: sum(r[k] for r in rows) / len(rows) for k in KEYS}
    print(f"mean over steps 2..{a.steps} (seconds)")
    print("| mode | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for name, m in means.items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in KEYS) + " |")
    new, old = (means[n]["time/step"] for n in MODES)
    print(f"step time, default / earlier: {new / old:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
