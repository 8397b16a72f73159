"""Callbacks and trainer state, as transformers' Trainer has them (and TRL's trainers with it).

`SRFTTrainer(callbacks=[...])` takes `transformers.TrainerCallback` objects, or any object with
some of the methods; srft calls, with transformers' signature `(args, state, control, **kwargs)`:

- `on_train_begin` before the first step (after the evaluation before training);
- `on_log(logs=...)` after each step with the step's metrics (metrics.jsonl's row; docs/metrics.md);
- `on_evaluate(metrics=...)` after each evaluation, the one before training included, with
  {"eval/<set>/accuracy" or "eval/<set>/reward": value};
- `on_step_end` after each step; setting `control.should_training_stop = True` there (or in
  `on_log` / `on_evaluate`) ends the run after that step: the final model, eval.json and the plots
  are written as for a run that reached train.max_steps;
- `on_train_end` after the final model is written.

`state` is a `transformers.TrainerState`: `global_step`, `max_steps`, `log_history` (one dict per
step and per evaluation, with "step"). `args` is the run's SRFTConfig.
"""

from __future__ import annotations

from typing import Any, Iterable

from transformers import TrainerControl, TrainerState

HOOKS = ("on_train_begin", "on_log", "on_evaluate", "on_step_end", "on_train_end")


class Callbacks:
    """The run's callbacks and its `TrainerState`; only the main process calls them."""

    def __init__(self, callbacks: Iterable[Any] = (), args: Any = None, max_steps: int = 0, enabled: bool = True):
        self.callbacks = [c() if isinstance(c, type) else c for c in callbacks or ()]
        for c in self.callbacks:
            if not any(callable(getattr(c, h, None)) for h in HOOKS):
                raise TypeError(f"callbacks: {type(c).__name__} has none of {', '.join(HOOKS)} (a "
                                f"transformers.TrainerCallback, or an object with some of these methods)")
        self.args, self.enabled = args, enabled
        self.state = TrainerState(max_steps=max_steps)
        self.control = TrainerControl()

    def _call(self, hook: str, **kwargs) -> None:
        if not self.enabled:
            return
        for c in self.callbacks:
            fn = getattr(c, hook, None)
            if callable(fn):
                out = fn(self.args, self.state, self.control, **kwargs)
                if isinstance(out, TrainerControl):
                    self.control = out

    def train_begin(self, step: int) -> None:
        self.state.global_step = step
        self._call("on_train_begin")

    def evaluated(self, step: int, metrics: dict) -> None:
        if metrics:
            self.state.log_history.append({**metrics, "step": step})
            self._call("on_evaluate", metrics=dict(metrics))

    def step_end(self, step: int, logs: dict) -> bool:
        """After a step: on_log, then on_step_end; whether a callback asked the run to stop."""
        self.state.global_step = step
        row = {k: v for k, v in logs.items() if not k.startswith("_")}
        self.state.log_history.append({**row, "step": step})
        self._call("on_log", logs=row)
        self._call("on_step_end")
        return bool(self.control.should_training_stop)

    def train_end(self) -> None:
        self._call("on_train_end")
