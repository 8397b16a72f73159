"""Rollout engine on a Hugging Face transformers model.

Batched sampling with a KV cache (`transformers.DynamicCache`): prompts are left
padded, position ids follow the attention mask, each step feeds only the new
token. Each response has its own seed: token t of a response is drawn by inverse-CDF
sampling with the t-th uniform of a `torch.Generator` seeded with the response's seed
(`row_uniforms`, `inverse_cdf_sample`), so a response depends on its prompt, its
seed and the weights only, not on the batch it is generated in (up to the last bits
of float rounding, which can differ between batch shapes) nor on the global RNG. Supports
temperature (0 = greedy), top-p, a max-new-tokens budget and stop tokens (EOS by
default).

`lockstep`: a callable(bool) -> bool, set by the trainer when parameters are sharded
(FSDP, ZeRO-3), told whether this rank has finished and answering whether every
rank has; a finished rank keeps running forwards until then, since each forward
is a collective.

The engine shares the trainer's model object, so `sync_weights` is a no-op; the
model is put in eval mode while sampling and its training mode restored after.
"""

from __future__ import annotations

import torch

from srft.rollout.base import RolloutOutput, SamplingParams, Seeds, row_seeds


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the smallest set whose probability >= top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    cum = probs.cumsum(-1)
    remove = (cum - probs) >= top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)


def row_uniforms(seeds: list[int], n_tokens: int, device) -> torch.Tensor:
    """(rows, n_tokens) uniforms in [0, 1): row i's stream, from a generator seeded with seeds[i],
    so token t of a row always gets the same number, whatever batch the row is in."""
    out = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        out.append(torch.rand(n_tokens, generator=g, device=device))
    return torch.stack(out) if out else torch.zeros((0, n_tokens), device=device)


def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row: the first v with cdf_v > u * cdf_V (inverse-CDF sampling; tokens of
    probability 0 are never drawn). probs (rows, V), u (rows,) in [0, 1)."""
    cdf = probs.cumsum(-1)
    target = (u * cdf[:, -1]).unsqueeze(-1).to(cdf.dtype)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


def forward_params(model):
    """Parameters of the model's forward (of the base model under a peft wrapper)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(type(base).forward).parameters


def cache_kwarg_name(model) -> str:
    """Newer transformers name the KV-cache argument `cache`, older ones `past_key_values`."""
    params = forward_params(model)
    return "cache" if "cache" in params else "past_key_values"


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's
    generation_config EOS ids (chat models often end turns with another token)."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    for i in [extra] if isinstance(extra, int) else (extra or []):
        if int(i) not in ids:
            ids.append(int(i))
    return ids


def keep_last_logits_kwarg(model) -> dict:
    """Ask the model for the last position's logits only, where it supports it."""
    params = forward_params(model)
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


class HFRolloutEngine:
    def __init__(self, model, pad_token_id: int, eos_token_id, batch_size: int = 256):
        """eos_token_id: an id, a list of ids (any of them ends a response) or None."""
        self.model = model
        self.pad_token_id = pad_token_id
        if eos_token_id is None:
            self.stop_ids: tuple[int, ...] = ()
        elif isinstance(eos_token_id, int):
            self.stop_ids = (eos_token_id,)
        else:
            self.stop_ids = tuple(int(i) for i in eos_token_id)
        self.batch_size = batch_size
        self.lockstep = None  # see the module docstring
        self._cache_kw = cache_kwarg_name(model)
        self._keep_last = keep_last_logits_kwarg(model)

    def sync_weights(self, model) -> None:  # shares the trainer's model
        self.model = model
        self._cache_kw = cache_kwarg_name(model)

    def close(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seed: Seeds = None) -> RolloutOutput:
        seeds = row_seeds(seed, len(prompt_ids))
        outs = [
            self._generate_batch(prompt_ids[i : i + self.batch_size], params, seeds[i : i + self.batch_size])
            for i in range(0, len(prompt_ids), self.batch_size)
        ]
        if not outs:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return RolloutOutput(empty, empty.clone(), empty.float(), torch.zeros(0, dtype=torch.bool),
                                 empty.float() if params.return_entropy else None)
        width = max(o.response_ids.shape[1] for o in outs)

        def cat(name, fill):
            parts = []
            for o in outs:
                t = getattr(o, name)
                pad = width - t.shape[1]
                parts.append(torch.nn.functional.pad(t, (0, pad), value=fill) if pad else t)
            return torch.cat(parts)

        return RolloutOutput(
            response_ids=cat("response_ids", self.pad_token_id),
            response_mask=cat("response_mask", 0),
            logprobs=cat("logprobs", 0.0),
            finished=torch.cat([o.finished for o in outs]),
            entropy=cat("entropy", 0.0) if params.return_entropy else None,
        )

    # Over 60 lines on purpose: the decode loop in one piece, so that its per-token work (and each
    # host sync) is visible where it runs; the fast-engine work (issue 26) replaces it.
    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]) -> RolloutOutput:
        from transformers import DynamicCache

        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        n = len(prompts)
        plen = max(len(p) for p in prompts)
        input_ids = torch.full((n, plen), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((n, plen), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, plen - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[i, plen - len(p) :] = 1
        input_ids, attn = input_ids.to(device), attn.to(device)
        stops = set() if params.ignore_eos else (set(params.stop_token_ids) or set(self.stop_ids))
        stop_t = torch.tensor(sorted(stops), dtype=torch.long, device=device)
        sampling = bool(params.temperature and params.temperature > 0)
        uniforms = row_uniforms(seeds, params.max_new_tokens, device) if sampling else None

        cache = DynamicCache()
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        tokens, logps, masks, ents = [], [], [], []
        alive = torch.ones(n, dtype=torch.bool, device=device)
        finished = torch.zeros(n, dtype=torch.bool, device=device)
        step_ids, step_pos = input_ids, position_ids
        try:
            for t in range(params.max_new_tokens):
                out = model(
                    input_ids=step_ids,
                    attention_mask=attn,
                    position_ids=step_pos,
                    **{self._cache_kw: cache},
                    use_cache=True,
                    **self._keep_last,
                )
                logits = out.logits[:, -1, :].float()
                if sampling:
                    scaled = logits / params.temperature
                    logprob_all = torch.log_softmax(scaled, dim=-1)
                    probs = torch.softmax(_top_p_filter(scaled, params.top_p), dim=-1)
                    nxt = inverse_cdf_sample(probs, uniforms[:, t])
                else:
                    logprob_all = torch.log_softmax(logits, dim=-1)
                    nxt = logits.argmax(-1)
                lp = logprob_all.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
                if params.return_entropy:
                    p_all = logprob_all.exp()
                    ent = -torch.where(p_all > 0, p_all * logprob_all, torch.zeros_like(p_all)).sum(-1)
                    ents.append(torch.where(alive, ent, torch.zeros_like(ent)))
                nxt = torch.where(alive, nxt, torch.full_like(nxt, self.pad_token_id))
                tokens.append(nxt)
                logps.append(torch.where(alive, lp, torch.zeros_like(lp)))
                masks.append(alive.long())
                hit = alive & torch.isin(nxt, stop_t)
                finished |= hit
                alive = alive & ~hit
                done = not bool(alive.any())
                if self.lockstep is not None:
                    done = self.lockstep(done)
                if done:
                    break
                step_ids = nxt.unsqueeze(-1)
                step_pos = step_pos[:, -1:] + 1
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
        finally:
            model.train(was_training)
        if not tokens:
            empty = torch.zeros((n, 0), dtype=torch.long)
            return RolloutOutput(empty, empty.clone(), empty.float(), finished.cpu(),
                                 empty.float() if params.return_entropy else None)
        return RolloutOutput(
            response_ids=torch.stack(tokens, 1).cpu(),
            response_mask=torch.stack(masks, 1).cpu(),
            logprobs=torch.stack(logps, 1).float().cpu(),
            finished=finished.cpu(),
            entropy=torch.stack(ents, 1).float().cpu() if params.return_entropy else None,
        )
