"""Rollout engine on vLLM, colocated in the trainer's process (`vllm.LLM`).

The trainer sees the same three calls as with the transformers engine (`srft.rollout.base`):

- `generate(prompt_ids, params, seed)`: one vLLM request per response, each with its own seed
  (the same per-response seeds as the HF engine: `derive_seed(seed, "rollout", step, index)`),
  so a response depends on its prompt, its seed and the weights, not on the batch. The
  sampler's log-prob of every sampled token is returned (`RolloutOutput.logprobs`: vLLM's
  `logprobs=0`, the log-prob of the sampled token under the tempered distribution); vLLM gives
  no full-vocabulary entropy, so `RolloutOutput.entropy` is None and the trainer takes the
  batch entropy from its own pi_old pass.
- `sync_weights(model)`: the trainer's current weights are loaded into vLLM's model in memory,
  never through disk (`collective_rpc("reload_weights", weights_iterator=...)`; with LoRA the
  adapter is merged into a copy of each adapted weight first). The time goes to the metric
  `time/weight_sync`. Each sync is then checked: vLLM's log-probs of a fixed probe sequence must
  match the trainer's within `rollout.vllm_sync_tol`, else `WeightSyncError` names the probe's gap;
  a sync never goes on silently with stale or half-loaded weights (seen on vLLM's CPU build:
  `load_weights` on a repacked model changes some weights and then fails).
- `close()`: frees the engine.

vLLM runs in the calling process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set here unless the user
set it), which in-memory weight updates need. With `rollout.vllm_enable_sleep_mode` the KV cache
is released during the update (`LLM.sleep(level=1)`) and taken back before generating.

Deviation from the HF engine: vLLM draws tokens with its own sampler from a per-request seed,
not by srft's inverse-CDF draw, so the same seed gives different responses in the two engines
(greedy decoding gives the same tokens where the kernels agree: `tests/test_vllm.py`).
Where tensor parallelism is on, `reload_weights` runs on every worker and each loads its shard
from the full tensors of the main process.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import torch

from srft.rollout.base import RolloutOutput, SamplingParams, Seeds, row_seeds


class WeightSyncError(RuntimeError):
    """The trainer's weights could not be loaded into vLLM, or did not arrive intact."""


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def trainer_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights vLLM should hold, under the names of the model's own checkpoint: the plain
    state dict, or for a peft (LoRA) model the base weights with each adapter merged in."""
    if not hasattr(model, "peft_config"):
        return {k: v.detach() for k, v in model.state_dict().items()}
    model.merge_adapter()
    try:
        out = {}
        for k, v in model.state_dict().items():
            if "lora_" in k or "original_module" in k:  # adapter factors, and the copies modules_to_save keeps
                continue
            name = k.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(
                ".modules_to_save.default.", ".")
            out[name] = v.detach().clone()
        return out
    finally:
        model.unmerge_adapter()


@torch.no_grad()
def trainer_logprobs(model, ids: list[int]) -> torch.Tensor:
    """The trainer model's log-probs of ids[1:] given their prefixes (len(ids) - 1,), float32, CPU."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0, :-1].float()
    finally:
        model.train(was)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:], device=device)[:, None])[:, 0].cpu()


class VLLMRolloutEngine:
    def __init__(self, model_path: str, tokenizer, rollout_cfg, stop_ids: list[int], dtype: str = "auto",
                 probe_ids: Optional[list[int]] = None, seed: int = 0):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        r = rollout_cfg
        kwargs = dict(model=model_path, tokenizer=model_path, dtype=r.vllm_dtype if r.vllm_dtype != "auto" else dtype,
                      seed=seed, enforce_eager=r.vllm_enforce_eager, tensor_parallel_size=r.vllm_tensor_parallel_size,
                      enable_sleep_mode=r.vllm_enable_sleep_mode, trust_remote_code=False)
        if r.vllm_max_model_len:
            kwargs["max_model_len"] = r.vllm_max_model_len
        util = r.vllm_gpu_memory_utilization
        kwargs["gpu_memory_utilization"] = util if util is not None else (0.5 if torch.cuda.is_available() else 0.3)
        try:  # the sampler's log-probs after temperature, as the trainer scores them (newer vLLM)
            self.llm = LLM(**kwargs, logprobs_mode="processed_logprobs")
        except TypeError:
            self.llm = LLM(**kwargs)
        self.pad_token_id = tokenizer.pad_token_id
        self.stop_ids = tuple(stop_ids)
        self.sleep_mode = r.vllm_enable_sleep_mode
        self.sync_tol = r.vllm_sync_tol
        self.probe_ids = list(probe_ids or [])[-48:]
        self.last_sync_s = 0.0
        self.last_sync_gap = float("nan")
        self._asleep = False

    # --------------------------------------------------------------- weights
    def sync_weights(self, model) -> None:
        t0 = time.perf_counter()
        self._wake()
        weights = trainer_state_dict(model)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(weights.items()))})
        except Exception as e:  # noqa: BLE001 - re-raised with what failed
            raise WeightSyncError(f"vLLM weight sync failed while loading {len(weights)} tensors into vLLM's model: "
                                  f"{type(e).__name__}: {e}") from e
        self.last_sync_s = time.perf_counter() - t0
        self._check_sync(model)

    def _check_sync(self, model) -> None:
        """vLLM's log-probs of the probe sequence against the trainer's: a sync that left stale or
        half-loaded weights gives another distribution."""
        if len(self.probe_ids) < 2:
            return
        theirs = self.prompt_logprobs(self.probe_ids)
        ours = trainer_logprobs(model, self.probe_ids)
        gap = float((theirs - ours).abs().max())
        self.last_sync_gap = gap
        if not gap <= self.sync_tol:
            raise WeightSyncError(f"vLLM weight sync check failed: after loading the trainer's weights, vLLM's log-probs "
                                  f"of a {len(self.probe_ids)}-token probe differ from the trainer's by up to {gap:.4g} "
                                  f"(rollout.vllm_sync_tol = {self.sync_tol}); vLLM is not sampling from the trainer's "
                                  f"weights, so training stops here")

    def prompt_logprobs(self, ids: list[int]) -> torch.Tensor:
        """vLLM's log-probs of ids[1:] given their prefixes (len(ids) - 1,)."""
        from vllm import SamplingParams as VSP

        out = self.llm.generate([{"prompt_token_ids": list(ids)}], VSP(max_tokens=1, temperature=0.0, prompt_logprobs=0),
                                use_tqdm=False)[0]
        vals = []
        for tok, entry in zip(ids[1:], out.prompt_logprobs[1:]):
            vals.append(float(entry[tok].logprob))
        return torch.tensor(vals)

    # --------------------------------------------------------------- sampling
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seed: Seeds = None) -> RolloutOutput:
        from vllm import SamplingParams as VSP

        self._wake()
        seeds = row_seeds(seed, len(prompt_ids))
        greedy = not (params.temperature and params.temperature > 0)
        stops = [] if params.ignore_eos else list(params.stop_token_ids or self.stop_ids)
        reqs = [VSP(n=1, temperature=0.0 if greedy else params.temperature, top_p=params.top_p,
                    max_tokens=params.max_new_tokens, stop_token_ids=stops, ignore_eos=params.ignore_eos,
                    logprobs=0, seed=int(s) % (2**31), detokenize=False, skip_special_tokens=False)
                for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], reqs, use_tqdm=False)
        n = len(prompt_ids)
        width = max([len(o.outputs[0].token_ids) for o in outs], default=0)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        logps = torch.zeros((n, width), dtype=torch.float32)
        finished = torch.zeros(n, dtype=torch.bool)
        for i, o in enumerate(outs):
            c = o.outputs[0]
            toks = list(c.token_ids)
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            mask[i, : len(toks)] = 1
            if c.logprobs:
                logps[i, : len(toks)] = torch.tensor([float(step[t].logprob) for t, step in zip(toks, c.logprobs)])
            finished[i] = c.finish_reason == "stop"
        if self.sleep_mode:
            self.llm.sleep(level=1)
            self._asleep = True
        return RolloutOutput(ids, mask, logps, finished, None)

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def close(self) -> None:
        """Shut vLLM's engine down and drop it, so that its KV cache is freed (a second engine in the
        same process counts the first one's memory as used)."""
        if self.llm is None:
            return
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort: the reference is dropped either way
            pass
        self.llm = None
        import gc

        gc.collect()
