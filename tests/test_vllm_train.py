"""A 5-step SRFT run on the vLLM engine (see tests/test_vllm.py for the environment). In a module
of its own: vLLM's CPU backend counts an earlier engine's memory in the same process as used, so
test_vllm.py's engine is closed (at the end of that module) before this one starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import requires_vllm

pytestmark = requires_vllm


SMOL = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m"


@pytest.mark.skipif(not (SMOL / "config.json").exists(),
                    reason=f"no SmolLM2-135M at {SMOL}: srft prepare-model smollm2-135m --output-dir models/smollm2-135m")
def test_greedy_decoding_of_smollm2_equals_the_hf_engine():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srft.config import Config
    from srft.rollout import SamplingParams, make_engine

    model = AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(SMOL)
    ps = [tok.encode(q) for q in ("What is 12 + 30?", "Name a prime number larger than 10.", "2, 4, 8, 16, next:")]
    params = SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True)  # the instruct model ends at once
    cfg = Config()
    cfg.rollout.vllm_max_model_len = 256
    hf, vl = make_engine("hf", model, tok, cfg.rollout), make_engine("vllm", model, tok, cfg.rollout)
    try:
        a, b = vl.generate(ps, params, seed=0), hf.generate(ps, params, seed=0)
    finally:
        vl.close()
    for i in range(len(ps)):
        ta, tb = a.response_ids[i][a.response_mask[i].bool()], b.response_ids[i][b.response_mask[i].bool()]
        # kernels differ in the last bits: the same tokens until the first near-tie, and at least 8
        same = next((j for j, (x, y) in enumerate(zip(ta.tolist(), tb.tolist())) if x != y), min(len(ta), len(tb)))
        assert same >= 8, (i, ta.tolist(), tb.tolist())
        torch.testing.assert_close(a.logprobs[i][:same], b.logprobs[i][:same], atol=2e-3, rtol=0)


def test_five_srft_steps_with_the_vllm_engine(vllm_model_dir, tmp_path):
    from srft.config import Config, apply_overrides
    from srft.metrics import read_metrics
    from srft.trainer import Trainer

    cfg = apply_overrides(Config(), {
        "model.name_or_path": str(vllm_model_dir), "train.output_dir": str(tmp_path / "run"), "train.max_steps": 5,
        "train.prompts_per_step": 4, "train.micro_batch_size": 16, "train.eval_every": 0, "train.save_every": 0,
        "rollout.max_new_tokens": 12, "rollout.engine": "vllm", "rollout.vllm_max_model_len": 256,
        "eval.limit": 0, "optim.lr": 1e-3}, "test")
    logs = []
    Trainer(cfg, log=logs.append).train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        assert r["time/weight_sync"] > 0
        assert 0 <= r["rollout/logprob_gap"] < 0.01  # float32 on both sides: the engines agree closely
        assert r["rollout/sync_check_gap"] < cfg.rollout.vllm_sync_tol
        assert 0 < r["rollout/is_weight_mean"] <= cfg.rollout.is_cap
    assert any("truncated importance weights" in str(x) for x in logs)
    assert any("the vllm engine returns no entropies" in str(x) for x in logs)
