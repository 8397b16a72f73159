"""Rollout engines: the interface (`base`), the transformers engine (`hf`), and
the vLLM engine (`vllm_engine`, optional: `pip install srft[vllm]`), and `make_engine`, the one
place where an engine is made (training, evaluation, the analyses and the testbed check)."""

from __future__ import annotations

from typing import Callable, Optional

from srft.rollout.base import RolloutEngine, RolloutOutput, SamplingParams
from srft.rollout.hf import HFRolloutEngine, stop_token_ids


def _hf(model, tokenizer, rollout_cfg, batch_size: Optional[int] = None) -> RolloutEngine:
    size = batch_size if batch_size is not None else rollout_cfg.batch_size
    return HFRolloutEngine(model, tokenizer.pad_token_id, stop_token_ids(model, tokenizer), size)


def _vllm(model, tokenizer, rollout_cfg, batch_size: Optional[int] = None) -> RolloutEngine:
    from srft.rollout.vllm_engine import VLLMRolloutEngine, vllm_available  # optional extra: vllm

    if not vllm_available():
        raise ValueError(VLLM_MISSING)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    probe = tokenizer.encode("Probe: 12 + 30 = 42, so the answer is \\boxed{42}. The quick brown fox jumps.",
                             add_special_tokens=False)
    return VLLMRolloutEngine(base.name_or_path, tokenizer, rollout_cfg, stop_token_ids(model, tokenizer), dtype,
                             probe_ids=probe)


VLLM_MISSING = ("rollout.engine: 'vllm' needs vLLM, which is not installed in this environment. It is an optional "
                "extra: `pip install -e \".[vllm]\"` on a GPU machine, or `bash scripts/setup.sh --vllm` for the CPU "
                "build in .venv-vllm (then run .venv-vllm/bin/srft)")

ENGINES: dict[str, Callable[..., RolloutEngine]] = {"hf": _hf, "vllm": _vllm}


def make_engine(name: str, model, tokenizer, rollout_cfg=None, batch_size: Optional[int] = None) -> RolloutEngine:
    """The engine `name` ("hf", "vllm") sampling from `model`. rollout_cfg: a
    `srft.config.RolloutConfig` (needed by vLLM); batch_size: sequences per generation batch
    (default rollout_cfg.batch_size)."""
    if name not in ENGINES:
        raise ValueError(f"rollout.engine: unknown engine {name!r}; known: {sorted(ENGINES)}")
    return ENGINES[name](model, tokenizer, rollout_cfg, batch_size)


__all__ = ["ENGINES", "RolloutEngine", "RolloutOutput", "SamplingParams", "make_engine"]
