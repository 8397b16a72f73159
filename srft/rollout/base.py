"""Rollout engine interface.

A rollout engine turns prompt token ids into sampled responses. It knows nothing
about rewards, demonstrations or losses. The trainer talks to it through three
calls only, so that a vLLM engine can replace the Hugging Face one without any
change to the trainer:

- `generate(prompt_ids, params, seed)` -> `RolloutOutput`
- `sync_weights(model)`: make the engine sample from the trainer's current weights
  (a no-op for an engine that shares the trainer's model object)
- `close()`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class RolloutOutput:
    """Sampled responses, right-padded.

    response_ids: (N, T) int64, pad_token_id after the end of each response.
    response_mask: (N, T) 1 on generated tokens (the EOS token included, when one
        was generated), 0 on padding.
    logprobs: (N, T) float32 log-probs of the sampled tokens under the sampling
        distribution softmax(logits / temperature) (before top-p truncation); 0 on
        padding. For greedy decoding, the log-probs of the untempered distribution.
    finished: (N,) bool, True where a stop token was generated within the budget.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    finished: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


class RolloutEngine(Protocol):
    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, seed: Optional[int] = None
    ) -> RolloutOutput: ...

    def sync_weights(self, model) -> None: ...

    def close(self) -> None: ...
