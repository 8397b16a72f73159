"""Compare the run folders that scripts/same_results.sh wrote for the old and the new tree.

    python scripts/compare_runs.py WORK_DIR JOB [JOB ...] [--allow-new-metrics]

For each job, WORK_DIR/old-JOB and WORK_DIR/new-JOB must have byte-identical
final/model.safetensors, metrics.jsonl rows equal field by field apart from time/ and
throughput/ fields (wall-clock measurements), and the same accuracies in eval.json.
With --allow-new-metrics, fields that only the new run logs (a metric added since the old
commit) are listed instead of failing the match; every field both log must still be equal.
Prints one line per job and exits 0 only if all match.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

VOLATILE = ("time/", "throughput/")


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _accuracies(path: Path) -> dict:
    res = json.loads(path.read_text())
    out = {}
    for when in ("before", "after"):
        for name, v in (res.get(when) or {}).items():
            out[f"{when}/{name}"] = v["accuracy"]
    for h in res.get("history", []):
        out.update({f"history/{h['step']}/{k}": v for k, v in h.items() if k != "step"})
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(old: Path, new: Path, allow_new: bool = False, added: set | None = None) -> list[str]:
    """What differs between two run folders (empty: they match); `added` collects the fields only
    the new run logs when `allow_new`."""
    problems = []
    wo, wn = old / "final" / "model.safetensors", new / "final" / "model.safetensors"
    if not wo.exists() or not wn.exists():
        return [f"final/model.safetensors missing ({wo.exists()=}, {wn.exists()=})"]
    if _sha(wo) != _sha(wn):
        problems.append("final/model.safetensors differs")
    ro, rn = _rows(old / "metrics.jsonl"), _rows(new / "metrics.jsonl")
    if len(ro) != len(rn):
        problems.append(f"metrics.jsonl: {len(ro)} rows vs {len(rn)}")
    for a, b in zip(ro, rn):
        if allow_new:
            extra = set(b) - set(a)
            if added is not None:
                added.update(extra)
            b = {k: v for k, v in b.items() if k not in extra}
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            problems.append(f"metrics.jsonl step {a.get('step')}: {', '.join(keys[:6])} differ "
                            f"(e.g. {keys[0]}: {a.get(keys[0])!r} vs {b.get(keys[0])!r})")
            break
    ao, an = _accuracies(old / "eval.json"), _accuracies(new / "eval.json")
    if ao != an:
        problems.append(f"eval.json accuracies differ: {ao} vs {an}")
    return problems


def main(argv: list[str]) -> int:
    allow_new = "--allow-new-metrics" in argv
    argv = [a for a in argv if a != "--allow-new-metrics"]
    work, jobs = Path(argv[0]), argv[1:]
    bad, added = 0, set()
    for job in jobs:
        old, new = work / f"old-{job}", work / f"new-{job}"
        problems = compare(old, new, allow_new, added)
        n = len(_rows(new / "metrics.jsonl")) if (new / "metrics.jsonl").exists() else 0
        if problems:
            bad += 1
            print(f"DIFFER  {job}: " + "; ".join(problems))
        else:
            print(f"SAME    {job}: final weights byte-identical, {n} metrics rows equal (time/ and throughput/ "
                  f"aside), eval.json accuracies equal")
    if added:
        print(f"fields only the new runs log (--allow-new-metrics): {', '.join(sorted(added))}")
    print(f"same_results: {len(jobs) - bad} of {len(jobs)} runs identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
