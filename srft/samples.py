"""One training sample and how samples become tensors.

A `Sample` is a response to one prompt of the step: an on-policy rollout or a
demonstration, with its reward, its group advantage and, once measured, its pi_old
log-probs and token entropies. `collate` turns a list of them into the padded,
response-aligned (B, T) tensors that `srft.policy.PolicyScorer` and
`srft.objective.compute_loss` read; `micro_batches` cuts a step's samples into the
micro-batches of the update (grouped by length, so little of each batch is padding).
Used by the experience maker, the update and the analyses alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch


@dataclass
class Sample:
    group: int  # global group index within the step (0 .. prompts_per_step - 1)
    prompt_ids: list[int]
    response_ids: list[int]
    is_demo: bool
    reward: float = 0.0
    advantage: float = 0.0
    old_logprobs: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None
    sampler_logprobs: Optional[torch.Tensor] = None  # the rollout engine's own log-probs (rollouts only)
    prompt: Any = None  # the row's prompt (text or messages) and the response text, for completions.jsonl
    text: str = ""
    active: bool = True  # enters the loss (HPT's switch may leave a prompt's rollouts or demonstrations out)


def collate(samples: list[Sample], pad_id: int, with_old: bool = True) -> dict[str, torch.Tensor]:
    """Prompts left-padded, responses right-padded, response-aligned tensors (B, T)."""
    lp = max(len(s.prompt_ids) for s in samples)
    lr = max(1, max(len(s.response_ids) for s in samples))
    n = len(samples)
    input_ids = torch.full((n, lp + lr), pad_id, dtype=torch.long)
    attn = torch.zeros((n, lp + lr), dtype=torch.long)
    resp = torch.full((n, lr), pad_id, dtype=torch.long)
    mask = torch.zeros((n, lr))
    old = torch.zeros((n, lr))
    sampler = torch.zeros((n, lr))
    for i, s in enumerate(samples):
        p, r = s.prompt_ids, s.response_ids
        input_ids[i, lp - len(p) : lp] = torch.tensor(p, dtype=torch.long)
        attn[i, lp - len(p) : lp + len(r)] = 1
        if r:
            input_ids[i, lp : lp + len(r)] = torch.tensor(r, dtype=torch.long)
            resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
            if with_old and s.old_logprobs is not None:
                old[i, : len(r)] = s.old_logprobs
            if s.sampler_logprobs is not None:
                sampler[i, : len(r)] = s.sampler_logprobs
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids, "attention_mask": attn, "position_ids": position_ids,
        "response_ids": resp, "mask": mask, "old_logprobs": old, "sampler_logprobs": sampler,
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        "is_demo": torch.tensor([s.is_demo for s in samples], dtype=torch.bool),
        "active": torch.tensor([s.active for s in samples], dtype=torch.bool),
    }


def micro_batches(samples: list[Sample], size: int, grouping: str = "length") -> Iterator[list[Sample]]:
    """Chunks of `size` samples; with grouping "length" (`train.micro_batch_grouping`), of samples
    of similar lengths (sorted by response, then prompt length), so that little of each padded
    (B, T) batch is padding. As many chunks on every rank, whatever the lengths."""
    if grouping == "length":
        samples = sorted(samples, key=lambda s: (len(s.response_ids), len(s.prompt_ids)))
    for i in range(0, len(samples), size):
        yield samples[i : i + size]


def ratio(num: float, den: float) -> float:
    """num / den, NaN when den is 0 (a metric with nothing to average)."""
    return float(num / den) if den > 0 else float("nan")


def mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")
