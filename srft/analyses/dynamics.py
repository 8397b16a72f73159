"""Learning dynamics (the paper's analysis 2; docs/SRFT-METHOD.md, "Analyses").

Every checkpoint of a run (and the base model it started from) becomes a point whose
coordinates are its mean per-token negative log-likelihood on reference response sets:

    NLL_ref(theta) = - sum_{i,t} log p_theta(y_{i,t} | x_i, y_{i,<t}) / sum_i |y_i|   (`mean_token_nll`)

over the responses y_i that a reference policy wrote for prompts x_i. The paper uses
responses of DeepSeek-R1, QwQ-32B and the base model; the defaults here are the teacher's
demonstrations (`teacher`), the base model's own responses (`base`) and, when the
experiment has one, a GRPO-trained model's responses (`grpo`). A run's points joined in
step order are its trajectory: moving left on the `teacher` axis is moving towards the
teacher, moving down on the `base` axis staying close to the base model.

Choices of ours: reference responses sampled at temperature 1 with fixed seeds (the
policy's own distribution, not only its mode); held-out prompts (`testbed:val` by
default, never trained on); the plot shows two axes (`--axes`, default the first two
references) and the JSON every reference. A two-stage run's checkpoints are placed at
their global step (stage 2's steps follow stage 1's).

Checkpoints: `srft experiment --keep-checkpoints` keeps one every evaluation
(`train.eval_every`); a run without them has two points, its base and its final model.

    srft analyze dynamics --experiment runs/experiment
    srft analyze dynamics --run runs/a --run runs/b --ref teacher=demonstrations --ref grpo=PATH

writes OUT/dynamics.json and OUT/dynamics.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch

from srft.analyses.common import (encode_prompts, generate_responses, load_model, load_prompt_rows, pad_rows,
    response_logprobs)

STEP_DIR = re.compile(r"step-(\d+)$")


# ---------------------------------------------------------------------------- pure functions
def mean_token_nll(logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """-sum(log p * mask) / sum(mask): the mean NLL per response token over a whole set."""
    n = float(mask.sum())
    return float(-(logprobs * mask).sum() / n) if n else float("nan")


def trajectory_length(points: list[tuple[float, float]]) -> float:
    """Total Euclidean length of a trajectory through 2-D points, in order."""
    return sum(((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5 for (x1, y1), (x2, y2) in zip(points, points[1:]))


# ---------------------------------------------------------------------------- finding checkpoints
def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def run_points(run_dir: Path) -> list[tuple[int, str]]:
    """(global step, model folder) of a run: its base model at step 0, every checkpoint that loads
    as a model folder, and final/ at its last step; a two-stage run's stages in order."""
    run_dir = Path(run_dir)
    cfg = _read_yaml(run_dir / "config.yaml")
    if not cfg:
        raise FileNotFoundError(f"dynamics: {run_dir} has no config.yaml (not an srft run folder)")
    base = cfg.get("model", {}).get("name_or_path", "testbed")
    points = [(0, base)]
    stages = sorted((p for p in run_dir.glob("stage*-*") if p.is_dir()), key=lambda p: int(p.name[5:].split("-")[0]))
    offset = 0
    for i, folder in enumerate(stages or [run_dir]):
        for ck in sorted((folder / "checkpoints").glob("step-*")):
            m = STEP_DIR.search(ck.name)
            if m and (ck / "config.json").is_file():
                points.append((offset + int(m.group(1)), str(ck)))
        offset += int(_read_yaml(folder / "config.yaml").get("train", {}).get("max_steps", 0))
        if stages and i < len(stages) - 1 and (folder / "final" / "config.json").is_file():
            points.append((offset, str(folder / "final")))  # an earlier stage's end (the last one's is final/)
    if (run_dir / "final" / "config.json").is_file():
        points.append((offset, str(run_dir / "final")))
    seen, out = set(), []
    for step, path in sorted(points, key=lambda p: p[0]):
        if step not in seen:  # a checkpoint at the last step and final/ are the same model
            seen.add(step)
            out.append((step, path))
    return out


# ---------------------------------------------------------------------------- the command
def reference_responses(refs: dict[str, str], rows: list[dict], prompt_ids, tok, max_new_tokens: int,
                        log=print) -> dict[str, list[list[int]]]:
    """Each reference set's responses: "demonstrations" (the rows' demonstration column,
    tokenized as in training) or a model (sampled at temperature 1, seed 0)."""
    out = {}
    for name, spec in refs.items():
        if spec == "demonstrations":
            missing = [i for i, r in enumerate(rows) if not r.get("demonstration")]
            if missing:
                raise ValueError(f"dynamics: reference {name}: row {missing[0]} of the prompts has no demonstration")
            demo = [r["demonstration"] if isinstance(r["demonstration"], str) else r["demonstration"][0] for r in rows]
            out[name] = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in demo]
        else:
            model, rtok, _ = load_model(spec, log=log)
            if rtok.get_vocab() != tok.get_vocab():
                raise ValueError(f"dynamics: reference {name} ({spec}) has another tokenizer than the runs' base model")
            out[name] = generate_responses(model, rtok, prompt_ids, max_new_tokens, temperature=1.0, seed=0)
            del model
        log(f"[srft] dynamics: reference {name}: {len(out[name])} responses")
    return out


def run_dynamics(runs: dict[str, str], refs: dict[str, str], prompts: str = "testbed:val", limit: Optional[int] = 100,
                 max_new_tokens: int = 48, output_dir: str = "runs/analysis/dynamics",
                 axes: Optional[tuple[str, str]] = None, log=print) -> dict:
    if not runs:
        raise ValueError("dynamics: give at least one run folder (--run DIR or --experiment DIR)")
    axes = tuple(axes or list(refs)[:2])
    if len(axes) != 2 or any(a not in refs for a in axes):
        raise ValueError(f"dynamics: --axes must name two of the references ({', '.join(refs)}), got {axes}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_prompt_rows(prompts, limit)
    points = {name: run_points(Path(d)) for name, d in runs.items()}
    _, tok, _ = load_model(points[next(iter(points))][0][1], log=log)
    prompt_ids = encode_prompts(tok, rows)
    responses = reference_responses(refs, rows, prompt_ids, tok, max_new_tokens, log=log)
    cache: dict[str, dict[str, float]] = {}
    result = {"prompts": prompts, "n_prompts": len(rows), "references": refs, "axes": list(axes), "runs": {}}
    for name, pts in points.items():
        traj = []
        for step, path in pts:
            if path not in cache:
                model, mtok, _ = load_model(path, log=lambda *a: None)
                cache[path] = {}
                for ref, resp in responses.items():
                    lp, mask = pad_rows(response_logprobs(model, mtok, prompt_ids, resp))
                    cache[path][ref] = mean_token_nll(lp, mask)
                del model
            traj.append({"step": step, "model": path, "nll": dict(cache[path])})
        result["runs"][name] = traj
        log(f"[srft] dynamics: {name}: {len(traj)} points, " + "; ".join(
            f"step {p['step']}: " + ", ".join(f"{r} {v:.2f}" for r, v in p["nll"].items()) for p in (traj[0], traj[-1])))
    for name, traj in result["runs"].items():
        xy = [(p["nll"][axes[0]], p["nll"][axes[1]]) for p in traj]
        result["runs"][name] = {"points": traj, "length_2d": trajectory_length(xy)}
    (out / "dynamics.json").write_text(json.dumps(result, indent=2))
    _plot(result, out / "dynamics.png")
    return result


def format_table(result: dict) -> str:
    refs = list(result["references"])
    lines = ["| run | step | " + " | ".join(f"NLL on {r}" for r in refs) + " |", "|---|---|" + "---|" * len(refs)]
    for name, r in result["runs"].items():
        for p in r["points"]:
            lines.append(f"| {name} | {p['step']} | " + " | ".join(f"{p['nll'][x]:.3f}" for x in refs) + " |")
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax_x, ax_y = result["axes"]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, r in result["runs"].items():
        xs = [p["nll"][ax_x] for p in r["points"]]
        ys = [p["nll"][ax_y] for p in r["points"]]
        line, = ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.annotate("", xy=(xs[-1], ys[-1]), xytext=(xs[-2], ys[-2]) if len(xs) > 1 else (xs[-1], ys[-1]),
                    arrowprops=dict(arrowstyle="->", color=line.get_color()))
        ax.annotate(str(r["points"][-1]["step"]), (xs[-1], ys[-1]), fontsize=7, color=line.get_color())
    first = next(iter(result["runs"].values()))["points"][0]
    ax.scatter([first["nll"][ax_x]], [first["nll"][ax_y]], marker="*", s=120, color="black", zorder=5, label="base")
    ax.set_xlabel(f"NLL per token on {ax_x}'s responses ({result['references'][ax_x]})")
    ax.set_ylabel(f"NLL per token on {ax_y}'s responses ({result['references'][ax_y]})")
    ax.set_title(f"Learning dynamics ({result['prompts']}, {result['n_prompts']} prompts)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
