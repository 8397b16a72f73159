"""Plots of a run folder (PNG, matplotlib): reward, accuracy, entropy and the
two entropy weights per step, from `metrics.jsonl` and `eval.json`."""

from __future__ import annotations

import json
from pathlib import Path

from srft.metrics import read_metrics

def _series(rows, key):
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v is not None and isinstance(v, (int, float)):
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def make_plots(run_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []

    def plot(name, title, keys, ylabel):
        series = [(xs, ys, label, "." if len(xs) < 30 else None) for key, label in keys
                  for xs, ys in [_series(rows, key)] if xs]
        written.append(_line_plot(plt, out / f"{name}.png", title, ylabel, series, "not logged by this preset"))

    plot("reward", "Training reward", [("reward/mean", "rollouts"), ("reward/demo", "demonstrations")], "reward")
    plot("entropy", "Policy entropy (before each update)",
         [("entropy/rollout", "rollout tokens"), ("entropy/demo", "demonstration tokens")], "nats / token")
    plot("weights", "Entropy-based weights", [("weight/sft", "w_SFT"), ("weight/rl", "w_RL")], "weight")
    plot("response_length", "Response length", [("response_length/mean", "rollouts"),
                                                 ("response_length/demo", "demonstrations")], "tokens")
    written += _evaluation_plots(plt, run_dir, out)
    return written


def _evaluation_plots(plt, run_dir: Path, out: Path) -> list[Path]:
    """accuracy.png (a verifier's sets, in %) and eval_reward.png (sets scored by another reward, as
    a mean reward), from eval.json's history (the step-0 evaluation included)."""
    written = []
    history, kinds = [], {}
    ev = run_dir / "eval.json"
    if ev.exists():
        res = json.loads(ev.read_text())
        history = res.get("history", [])
        kinds = {k: v.get("metric", "accuracy") for k, v in (res.get("after") or res.get("before") or {}).items()
                 if isinstance(v, dict)}
    names = [k for k in (history[0] if history else {}) if k != "step"]
    rewards = [n for n in names if kinds.get(n) == "reward"]
    for file, title, label, scale, sets in (
            ("accuracy.png", "Evaluation accuracy", "accuracy (%)", 100, [n for n in names if n not in rewards]),
            ("eval_reward.png", "Evaluation mean reward", "mean reward", 1, rewards)):
        if file == "eval_reward.png" and not sets:
            continue
        series = [([h["step"] for h in history], [scale * h[n] for h in history], n, "o") for n in sets]
        written.append(_line_plot(plt, out / file, title, label, series))
    return written


def _line_plot(plt, path: Path, title: str, ylabel: str, series: list, empty: str = "") -> Path:
    """One PNG of lines over the step: each (xs, ys, label, marker) of `series`; `empty` written on
    the axes when there is none."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for xs, ys, label, marker in series:
        ax.plot(xs, ys, label=label, marker=marker)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    elif empty:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
