"""Token-probability shift (the paper's analysis 1; docs/SRFT-METHOD.md, "Analyses").

For each tuned model: generate greedily with it on the prompts, teacher-force the same
tokens through the tuned and the base model, and take per response token

    dp_t = p_tuned(y_t | x, y_<t) - p_base(y_t | x, y_<t)                 (`prob_shift`)

Reported: the histogram of dp over all response tokens, the share of tokens with
|dp| > tau for tau in THRESHOLDS (`shift_shares`), the mean |dp|, and a per-token heat map
of example responses. The paper's claim is that SFT shifts most tokens and RL very few
(">50% vs <2%"); it does not say at which tau, so `paper_pattern` checks the pattern at
each tau of THRESHOLDS and the table says at which (if any) it holds.

Choices of ours: greedy responses (the paper does not say how it sampled); probabilities
of the untempered policy; the base model's tokenizer must be the tuned model's (checked).

    srft analyze token-shift --experiment runs/experiment      # sft, grpo, srft seed 0 vs the base
    srft analyze token-shift --base testbed --tuned sft=PATH --tuned srft=PATH

writes OUT/token_shift.json, OUT/token_shift_hist.png, OUT/token_shift_examples.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from srft.analyses.common import (encode_prompts, generate_responses, load_model, load_prompt_rows, pad_rows,
                                  response_logprobs)

THRESHOLDS = (0.01, 0.1, 0.5)


# ---------------------------------------------------------------------------- pure functions
def prob_shift(lp_tuned: torch.Tensor, lp_base: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """dp = exp(lp_tuned) - exp(lp_base) on masked positions, 0 elsewhere. (B, T) each."""
    return (lp_tuned.exp() - lp_base.exp()) * mask


def shift_shares(dp: torch.Tensor, mask: torch.Tensor, thresholds=THRESHOLDS) -> dict[float, float]:
    """Share of masked tokens with |dp| > tau, for each tau."""
    n = float(mask.sum())
    return {t: (float(((dp.abs() > t).to(mask.dtype) * mask).sum()) / n if n else float("nan")) for t in thresholds}


def shift_histogram(dp: torch.Tensor, mask: torch.Tensor, bins: int = 40) -> tuple[list[int], list[float]]:
    """Counts of masked dp values in `bins` equal bins over [-1, 1], and the bin edges."""
    vals = dp[mask.bool()]
    counts = torch.histc(vals, bins=bins, min=-1.0, max=1.0) if vals.numel() else torch.zeros(bins)
    edges = torch.linspace(-1.0, 1.0, bins + 1)
    return [int(c) for c in counts.tolist()], [round(float(e), 6) for e in edges]


def paper_pattern(shares: dict[str, dict[float, float]], sft: str = "sft", rl: str = "grpo",
                  sft_min: float = 0.5, rl_max: float = 0.02) -> dict[float, Optional[bool]]:
    """At each tau: does SFT shift more than `sft_min` of the tokens while RL shifts fewer than
    `rl_max` (the paper's ">50% vs <2%")? None where one of the two models is missing."""
    if sft not in shares or rl not in shares:
        return {t: None for t in next(iter(shares.values()), {})}
    return {t: shares[sft][t] > sft_min and shares[rl][t] < rl_max for t in shares[sft]}


# ---------------------------------------------------------------------------- the command
def run_token_shift(base: str, tuned: dict[str, str], prompts: str = "testbed:id_chain4", limit: Optional[int] = 200,
                    max_new_tokens: int = 48, output_dir: str = "runs/analysis/token-shift", examples: int = 4,
                    log=print) -> dict:
    if not tuned:
        raise ValueError("token-shift: give at least one tuned model (--tuned NAME=PATH or --experiment DIR)")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_prompt_rows(prompts, limit)
    base_model, base_tok, base_path = load_model(base, log=log)
    prompt_ids = encode_prompts(base_tok, rows)
    result = {"base": str(base_path), "prompts": prompts, "n_prompts": len(rows), "max_new_tokens": max_new_tokens,
              "thresholds": list(THRESHOLDS), "models": {}}
    shown = {}
    for name, path in tuned.items():
        model, tok, resolved = load_model(path, log=log)
        if tok.get_vocab() != base_tok.get_vocab():
            raise ValueError(f"token-shift: {name} ({path}) has another tokenizer than the base model {base}")
        responses = generate_responses(model, tok, prompt_ids, max_new_tokens)
        lp_t, mask = pad_rows(response_logprobs(model, tok, prompt_ids, responses))
        lp_b, _ = pad_rows(response_logprobs(base_model, base_tok, prompt_ids, responses))
        dp = prob_shift(lp_t, lp_b, mask)
        counts, edges = shift_histogram(dp, mask)
        n_tok = int(mask.sum())
        result["models"][name] = {
            "path": str(resolved), "tokens": n_tok,
            "share_above": {f"{t:g}": v for t, v in shift_shares(dp, mask).items()},
            "mean_abs_dp": float(dp.abs().sum() / max(n_tok, 1)), "mean_dp": float(dp.sum() / max(n_tok, 1)),
            "histogram": {"counts": counts, "edges": edges},
        }
        shown[name] = [([tok.decode([t]) for t in responses[i]], dp[i, : len(responses[i])].tolist())
                       for i in range(min(examples, len(responses)))]
        log(f"[srft] token-shift: {name}: {n_tok} tokens, share |dp| > " + ", ".join(
            f"{t:g}: {100 * v:.1f}%" for t, v in shift_shares(dp, mask).items()))
        del model
    shares = {m: {float(t): v for t, v in r["share_above"].items()} for m, r in result["models"].items()}
    result["paper_pattern"] = {f"{t:g}": v for t, v in paper_pattern(shares).items()}
    (out / "token_shift.json").write_text(json.dumps(result, indent=2))
    _plot_histograms(result, out / "token_shift_hist.png")
    _plot_examples(shown, out / "token_shift_examples.png")
    result["table"] = format_table(result)
    return result


def format_table(result: dict) -> str:
    ts = result["thresholds"]
    lines = ["| model | tokens | " + " | ".join(f"share abs(dp) > {t:g}" for t in ts) + " | mean abs(dp) |",
             "|---|---|" + "---|" * (len(ts) + 1)]
    for m, r in result["models"].items():
        lines.append(f"| {m} | {r['tokens']} | " + " | ".join(f"{100 * r['share_above'][f'{t:g}']:.1f}%" for t in ts)
                     + f" | {r['mean_abs_dp']:.3f} |")
    pat = result.get("paper_pattern", {})
    if any(v is not None for v in pat.values()):
        held = [t for t, v in pat.items() if v]
        lines.append("")
        lines.append("The paper's pattern (SFT shifts > 50% of tokens, GRPO < 2%): "
                     + (f"holds at threshold {', '.join(held)}" if held else "holds at none of the thresholds")
                     + ".")
    return "\n".join(lines)


def _plot_histograms(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for m, r in result["models"].items():
        edges, counts = r["histogram"]["edges"], r["histogram"]["counts"]
        total = max(1, sum(counts))
        ax.step(edges[:-1], [c / total for c in counts], where="post", label=m)
    ax.set_yscale("log")
    ax.set_xlabel("dp = p_tuned(y_t) - p_base(y_t)")
    ax.set_ylabel("share of response tokens")
    ax.set_title(f"Token-probability shift against the base model ({result['prompts']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_examples(shown: dict, path: Path, max_tokens: int = 60) -> None:
    """One row per example response, one cell per token coloured by dp (blue up, red down)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{m} #{i + 1}", toks[:max_tokens], dps[:max_tokens]) for m, ex in shown.items()
            for i, (toks, dps) in enumerate(ex)]
    width = max([len(t) for _, t, _ in rows], default=1)
    grid = torch.full((max(1, len(rows)), max(1, width)), float("nan"))
    for i, (_, _, dps) in enumerate(rows):
        grid[i, : len(dps)] = torch.tensor(dps)
    fig, ax = plt.subplots(figsize=(min(24, 2 + 0.32 * width), 1 + 0.4 * len(rows)))
    im = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for i, (_, toks, _) in enumerate(rows):
        for j, t in enumerate(toks):
            ax.text(j, i, t.replace("\n", "\\n").replace("$", r"\$")[:4], ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.set_xticks([])
    ax.set_title("dp per token of example responses (blue: more likely after tuning, red: less)")
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
