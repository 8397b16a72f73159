"""Rollout engines: the interface (`base`), the transformers engine (`hf`), and
`make_engine`, the one place the trainer gets an engine from (a vLLM engine
registers itself in ENGINES without any change to the trainer)."""

from __future__ import annotations

from typing import Callable

from srft.rollout.base import RolloutEngine, RolloutOutput, SamplingParams


def _hf(model, tokenizer, rollout_cfg) -> RolloutEngine:
    from srft.rollout.hf import HFRolloutEngine, stop_token_ids

    return HFRolloutEngine(model, tokenizer.pad_token_id, stop_token_ids(model, tokenizer), rollout_cfg.batch_size)


ENGINES: dict[str, Callable[..., RolloutEngine]] = {"hf": _hf}


def make_engine(name: str, model, tokenizer, rollout_cfg) -> RolloutEngine:
    if name not in ENGINES:
        raise ValueError(f"rollout.engine: unknown engine {name!r}; known: {sorted(ENGINES)}")
    return ENGINES[name](model, tokenizer, rollout_cfg)


__all__ = ["ENGINES", "RolloutEngine", "RolloutOutput", "SamplingParams", "make_engine"]
