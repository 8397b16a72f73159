"""Log-probs and entropies of response tokens under the model being trained.

`PolicyScorer` runs the model's forward on a collated batch (prompts left-padded,
responses right-padded; see `srft.trainer.collate`) and returns, for every response
position, log pi(y_t) and the full-vocabulary entropy H_t of the tempered policy
softmax(logits / temperature), the distribution rollouts are sampled from.

Two paths, chosen once when the scorer is made:

- **hidden** (the default where it applies): the model's output layer is bypassed
  for the forward, which then returns the last hidden states, and
  `srft.chunked_logprobs` computes log-probs and entropies chunk by chunk with the
  logits recomputed in the backward pass: the (B, T, V) logits are never
  materialised. It applies when the output layer (`get_output_embeddings()`) is a
  plain `torch.nn.Linear`, the run is single-process or DDP (FSDP and DeepSpeed
  reshard or partition the output layer's weight outside the forward), and a check at
  start-up finds the same log-probs as the model's own logits (a model that scales or
  caps its logits after the output layer fails it).
- **logits**: the model's own logits (only the response positions, through
  `logits_to_keep` where the model takes it), then `srft.losses.token_logprobs_and_entropy`.

The forward always goes through the (possibly DDP-wrapped) model, so gradient
synchronisation is the engine's as usual; only the output layer's `forward` is
swapped for the identity during the call.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from srft import losses as L
from srft.chunked_logprobs import chunked_logprobs_and_entropy, default_chunk_size
from srft.rollout.hf import forward_params

HIDDEN_OK_ENGINES = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_XPU", "MULTI_MLU")


def _identity(x, *args, **kwargs):
    return x


@contextlib.contextmanager
def output_layer_bypassed(head: torch.nn.Module):
    """The model's forward returns hidden states in place of logits: `head.forward` is the
    identity for the duration (an instance attribute, removed after; the weights are untouched)."""
    had = "forward" in head.__dict__
    saved = head.__dict__.get("forward")
    head.forward = _identity
    try:
        yield
    finally:
        if had:
            head.forward = saved
        else:
            del head.forward


def _base(model):
    """The transformers model under DDP (.module) and peft (get_base_model) wrappers."""
    m = getattr(model, "module", model)
    return m.get_base_model() if hasattr(m, "get_base_model") else m


class PolicyScorer:
    def __init__(self, model, unwrapped, temperature: float, chunk_size: int = 0, engine_kind: str = "NO",
                 probe_ids: Optional[list[int]] = None, path: str = "auto"):
        """model: what the forward is called on (wrapped by accelerate); unwrapped: the same model
        without the engine's wrapper; chunk_size: positions per chunk, 0 = about 32M logits;
        path: "auto" (hidden where it applies) or "logits"."""
        self.model, self.temperature = model, temperature
        base = _base(unwrapped)
        self.keeps_logits = "logits_to_keep" in forward_params(base)
        self.head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        vocab = getattr(getattr(base, "config", None), "vocab_size", None) or 32000
        self.chunk_size = chunk_size if chunk_size and chunk_size > 0 else default_chunk_size(vocab)
        self.path, self.reason = "logits", ""
        if path == "logits":
            self.reason = "train.logprob_path is logits"
        elif type(self.head) is not torch.nn.Linear:
            self.reason = f"the output layer is {type(self.head).__name__}, not torch.nn.Linear"
        elif engine_kind not in HIDDEN_OK_ENGINES:
            self.reason = f"{engine_kind} shards the output layer's weight"
        else:
            self.path = "hidden"
            try:
                diff = self._probe(probe_ids or list(range(1, 9)))
            except Exception as e:  # e.g. a model that post-processes its logits in a way the bypass breaks
                diff = float("nan")
                self.reason = f"the hidden-state path failed on a probe ({type(e).__name__}: {e})"
            if self.reason:
                self.path = "logits"
            elif not diff < 1e-3 * (10 if self.head.weight.dtype != torch.float32 else 1):
                self.path, self.reason = "logits", (f"the model's logits are not its output layer applied to its "
                                                    f"hidden states (log-probs differ by {diff:.3g})")

    def describe(self) -> str:
        if self.path == "hidden":
            return (f"log-probs and entropies from hidden states, {self.chunk_size} positions per chunk, logits "
                    f"recomputed in backward")
        return f"log-probs and entropies from the model's full logits ({self.reason})"

    @torch.no_grad()
    def _probe(self, ids: list[int]) -> float:
        """Largest |log-prob difference| between the two paths on one short sequence."""
        ids = ids[-32:] if len(ids) >= 2 else [1, 2]
        n = len(ids)
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, n, dtype=torch.long),
                 "position_ids": torch.arange(n).unsqueeze(0), "response_ids": torch.tensor([ids[n // 2:]])}
        was = self.model.training
        self.model.eval()
        try:
            a, _ = self._hidden(batch, True)
            b, _ = self._logits(batch, True)
        finally:
            self.model.train(was)
        return float((a - b).abs().max())

    def __call__(self, batch: dict, with_entropy: bool = True,
                 entropy_grad: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Log-probs and entropies (B, T) of batch["response_ids"], float32. entropy_grad=False: the
        entropy is not differentiated (no backward work or memory for it)."""
        if self.path == "hidden":
            lp, ent = self._hidden(batch, with_entropy)
        else:
            lp, ent = self._logits(batch, with_entropy, entropy_grad)
        return lp, (ent.detach() if ent is not None and not entropy_grad else ent)

    def _forward(self, batch: dict, lr: int):
        device = next(self.model.parameters()).device
        kwargs = {"logits_to_keep": lr + 1} if self.keeps_logits else {}
        out = self.model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                         position_ids=batch["position_ids"].to(device), use_cache=False, **kwargs)
        return out.logits[:, -(lr + 1) : -1, :], device

    def _logits(self, batch: dict, with_entropy: bool, entropy_grad: bool = True):
        lr = batch["response_ids"].shape[1]
        logits, device = self._forward(batch, lr)
        if self.temperature and self.temperature != 1.0:
            logits = logits / self.temperature
        return L.token_logprobs_and_entropy(logits, batch["response_ids"].to(device), self.chunk_size, with_entropy,
                                            entropy_grad=entropy_grad)

    def _hidden(self, batch: dict, with_entropy: bool):
        lr = batch["response_ids"].shape[1]
        with output_layer_bypassed(self.head):
            hidden, device = self._forward(batch, lr)
        return chunked_logprobs_and_entropy(hidden, self.head.weight, batch["response_ids"].to(device),
                                            bias=self.head.bias, temperature=self.temperature or 1.0,
                                            chunk_size=self.chunk_size, with_entropy=with_entropy)
