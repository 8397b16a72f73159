"""Rollout engine interface.

A rollout engine turns prompt token ids into sampled responses. It knows nothing
about rewards, demonstrations or losses. The trainer talks to it through three
calls only, so that a vLLM engine can replace the Hugging Face one without any
change to the trainer:

- `generate(prompt_ids, params, seed)` -> `RolloutOutput`; `seed` is one seed per
  prompt (a list), or one int from which row i's seed is derived (`row_seeds`). A
  response depends only on its prompt, its own seed and the weights, never on the
  other prompts of the batch, its position in it, or the process that generates it:
  this is what makes a run sample the same responses whatever its number of processes
- `sync_weights(model)`: make the engine sample from the trainer's current weights
  (a no-op for an engine that shares the trainer's model object)
- `close()`
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, Union

import torch


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    """Generate exactly max_new_tokens per response, stop tokens included (vLLM's ignore_eos):
    for benchmarks that must do equal work, never for training a real run."""
    return_entropy: bool = False
    """Also return each generated token's entropy (RolloutOutput.entropy); costs one pass over the
    vocabulary per token, so only the trainer's one-pass mode asks for it."""


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
    entropy: (N, T) float32 entropy of that same distribution at each generated
        token, 0 on padding; None unless SamplingParams.return_entropy (or from an
        engine that does not give it).
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    finished: torch.Tensor
    entropy: Optional[torch.Tensor] = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    @classmethod
    def concat(cls, parts: Sequence["RolloutOutput"], pad_token_id: int) -> "RolloutOutput":
        """The outputs of several generate calls, in order, right-padded to the widest."""
        width = max(p.response_ids.shape[1] for p in parts)

        def cat(ts, value):
            return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in ts])

        ent = None if any(p.entropy is None for p in parts) else cat([p.entropy for p in parts], 0.0)
        return cls(cat([p.response_ids for p in parts], pad_token_id), cat([p.response_mask for p in parts], 0),
                   cat([p.logprobs for p in parts], 0.0), torch.cat([p.finished for p in parts]), ent)


Seeds = Union[int, Sequence[int], None]


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints / strings (stable across processes and runs,
    unlike Python's hash)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def row_seeds(seed: Seeds, n: int) -> list[int]:
    """One seed per prompt: a list is taken as it is; an int s (or None, as 0) gives row i
    the seed derive_seed(s, i)."""
    if seed is None or isinstance(seed, int):
        base = 0 if seed is None else int(seed)
        return [derive_seed(base, i) for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"generate: {len(seeds)} seeds for {n} prompts")
    return seeds


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seed: Seeds = None) -> RolloutOutput: ...

    def sync_weights(self, model) -> None: ...

    def close(self) -> None: ...
