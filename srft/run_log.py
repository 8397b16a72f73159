"""What a run shows while it trains, besides metrics.jsonl: progress lines and completions.

- `ProgressLog`: with stdout not a terminal (a log file, a batch job), the progress bar is off
  (tqdm turns itself off there) and one plain line is printed every `train.log_every` steps:

      [srft] step 20/150 (13%) | reward 0.41 acc 0.39 | H 0.52 | 8,123 tok/s | rollout 61% reward 4%
      update 35% | 0:42 elapsed, ~4:33 left | eval id_chain4 31.0

  (on one line). The shares are of the step time (time/rollout, time/reward, time/update, the rest
  is pi_old passes and logging); "left" extrapolates the mean step time so far.
- `CompletionLog`: every `train.log_every` steps, `train.log_completions` samples of the main
  process's groups go to `completions.jsonl` in the run folder, one JSON object per sample:
  `{"step", "group", "prompt", "completion", "reward", "advantage", "demo"}`. Whole groups are
  written (the groups are drawn at random, seeded by the step) so that the advantages read
  against their group; `demo` marks a demonstration. TRL logs completions with their rewards the
  same way (its `log_completions`).
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any, Callable, Optional


def _clock(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def progress_line(step: int, max_steps: int, m: dict, elapsed: float, steps_done: int) -> str:
    """The one-line summary of step `step` (metrics `m`), `elapsed` seconds after `steps_done`
    steps of this process's run."""
    t = m.get("time/step", float("nan"))
    share = " ".join(f"{k} {100 * m[f'time/{k}'] / t:.0f}%" for k in ("rollout", "reward", "update")
                     if isinstance(m.get(f"time/{k}"), float) and t and math.isfinite(t) and t > 0)
    left = elapsed / max(1, steps_done) * (max_steps - step)
    parts = [f"[srft] step {step}/{max_steps} ({100 * step / max(1, max_steps):.0f}%)",
             f"reward {_num(m.get('reward/mean'), '.2f')} acc {_num(m.get('reward/accuracy'), '.2f')}",
             f"H {_num(m.get('entropy/rollout'), '.2f')}",
             f"{_num(m.get('throughput/tokens_per_s'), ',.0f')} tok/s"]
    if share:
        parts.append(share)
    parts.append(f"{_clock(elapsed)} elapsed, ~{_clock(left)} left")
    evals = [f"{k[len('eval/'):-len('/accuracy')]} {100 * v:.1f}" for k, v in m.items()
             if k.startswith("eval/") and k.endswith("/accuracy")]
    evals += [f"{k[len('eval/'):-len('/reward')]} reward {v:.3f}" for k, v in m.items()
              if k.startswith("eval/") and k.endswith("/reward")]
    if evals:
        parts.append("eval " + ", ".join(evals))
    return " | ".join(parts)


class ProgressLog:
    """Prints `progress_line` every `every` steps (and at the last step) when `enabled`; by
    default enabled when stdout is not a terminal."""

    def __init__(self, log: Callable[[str], None], max_steps: int, every: int, start_step: int,
                 start_time: float, enabled: Optional[bool] = None):
        self.log, self.max_steps, self.every = log, max_steps, every
        self.start_step, self.start_time = start_step, start_time
        self.enabled = (not sys.stdout.isatty()) if enabled is None else enabled

    def step(self, step: int, m: dict, now: float) -> None:
        if not (self.enabled and self.every) or (step % self.every and step != self.max_steps):
            return
        self.log(progress_line(step, self.max_steps, m, now - self.start_time, step - self.start_step))


def pick_groups(groups: list[int], n_samples: int, group_size: int, seed: int) -> list[int]:
    """Whole groups, drawn at random (seeded), whose samples add up to at least `n_samples`
    (all of them when there are fewer); returned in their original order."""
    if n_samples <= 0 or not groups:
        return []
    k = min(len(groups), max(1, math.ceil(n_samples / max(1, group_size))))
    chosen = set(random.Random(seed).sample(groups, k))
    return [g for g in groups if g in chosen]


class CompletionLog:
    """Appends sampled completions to `path` (completions.jsonl)."""

    def __init__(self, path: Path, n: int, every: int, seed: int, enabled: bool = True):
        self.path, self.n, self.every, self.seed = Path(path), n, every, seed
        self.enabled = enabled and n > 0 and every > 0

    def start(self, fresh: bool) -> None:
        """A new run empties the file; a resumed one keeps it (see `truncate`)."""
        if self.enabled and fresh:
            self.path.write_text("")

    def write(self, step: int, samples: list, max_steps: int) -> None:
        """`samples`: objects with group, prompt, text, reward, advantage, is_demo."""
        if not self.enabled or (step % self.every and step != max_steps) or not samples:
            return
        groups = list(dict.fromkeys(s.group for s in samples))
        size = max(1, len(samples) // len(groups))
        keep = set(pick_groups(groups, self.n, size, self.seed * 1_000_003 + step))
        with open(self.path, "a") as f:
            for s in samples:
                if s.group in keep:
                    f.write(json.dumps({"step": step, "group": s.group, "prompt": s.prompt, "completion": s.text,
                                        "reward": s.reward, "advantage": round(float(s.advantage), 6),
                                        "demo": bool(s.is_demo)}) + "\n")
