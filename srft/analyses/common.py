"""Shared by the analyses: prompts, models, greedy responses and teacher-forced log-probs.

Log-probs are those of the untempered policy, log softmax(logits)[y_t], computed by the
same scorer as training (`srft.policy.PolicyScorer`) on the same collation
(`srft.samples.collate`), in batches, without gradients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from srft.config import ModelConfig
from srft.data import encode_prompt, load_rows
from srft.models import load_model_and_tokenizer
from srft.policy import PolicyScorer
from srft.rollout import make_engine
from srft.rollout.base import SamplingParams, derive_seed
from srft.samples import Sample, collate
from srft.testbed.tasks import build_splits


def load_prompt_rows(spec: str, limit: Optional[int] = None) -> list[dict]:
    """Rows with a `prompt` (and a `demonstration` where the data has one). `spec`:
    "testbed:SET" for a testbed set (id_chain4, ood_mc4, ood_mc5, val, train), or anything
    `srft.data.load_rows` reads (a file, a datasets folder, a hub id)."""
    if spec.startswith("testbed:"):
        name = spec.split(":", 1)[1]
        splits = build_splits(0)
        sets = {**splits.test, "val": splits.val, "train": splits.train}
        if name not in sets:
            raise ValueError(f"--prompts: the testbed has no set {name!r} (known: {', '.join(sets)})")
        rows = sets[name]
    else:
        rows = load_rows(spec, need_answer=False)
    return rows[:limit] if limit else rows


def load_model(path: str, log=print):
    """(model in eval mode, tokenizer, resolved path) for a model folder, a hub id or "testbed"."""
    model, tok, resolved = load_model_and_tokenizer(path, ModelConfig(), log=log)
    model.eval()
    return model, tok, resolved


def encode_prompts(tok, rows: list[dict]) -> list[list[int]]:
    return [encode_prompt(tok, r["prompt"]) for r in rows]


@torch.no_grad()
def generate_responses(model, tok, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                       seed: int = 0, batch_size: int = 256) -> list[list[int]]:
    """Each prompt's response (token ids, up to and including the stop token): greedy at
    temperature 0, else sampled with one derived seed per prompt (reproducible)."""
    engine = make_engine("hf", model, tok, batch_size=batch_size)
    seeds = [derive_seed(seed, "analysis", i) for i in range(len(prompt_ids))]
    out = engine.generate(prompt_ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature),
                          seed=seeds)
    return [ids[m.bool()].tolist() for ids, m in zip(out.response_ids, out.response_mask)]


@torch.no_grad()
def response_logprobs(model, tok, prompt_ids: list[list[int]], responses: list[list[int]],
                      batch_size: int = 64) -> list[torch.Tensor]:
    """log p(y_t | prompt, y_<t) of every response token under `model`, one 1-D tensor per response."""
    scorer = PolicyScorer(model, model, temperature=1.0)
    out: list[torch.Tensor] = []
    for i in range(0, len(responses), batch_size):
        chunk = [Sample(0, p, r, False) for p, r in zip(prompt_ids[i:i + batch_size], responses[i:i + batch_size])]
        batch = collate(chunk, tok.pad_token_id, with_old=False)
        lp, _ = scorer(batch, with_entropy=False)
        out += [lp[j, : len(s.response_ids)].float().cpu() for j, s in enumerate(chunk)]
    return out


def pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors into (B, T) values and a (B, T) 0/1 mask."""
    n, t = len(rows), max([len(r) for r in rows], default=0)
    values, mask = torch.zeros(n, max(t, 1)), torch.zeros(n, max(t, 1))
    for i, r in enumerate(rows):
        values[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return values, mask


def experiment_model(root: Path, preset: str, seed: int = 0) -> Path:
    """The final model of one run of an `srft experiment` folder."""
    path = Path(root) / "runs" / preset / f"seed-{seed}" / "final"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no final model of {preset} seed {seed} in the experiment {root}")
    return path
