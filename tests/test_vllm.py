"""The vLLM rollout engine (srft.rollout.vllm_engine), in the environment that has vLLM's CPU build:

    bash scripts/setup.sh --vllm && .venv-vllm/bin/python -m pytest -q tests/test_vllm.py

Skipped, with that command as the reason, where vLLM is not installed (the default .venv and
CI's). A model of head size 32 (hidden 128, 4 heads), since vLLM's CPU attention does not take
the tiny test model's head size of 8.
"""

from __future__ import annotations


import pytest
import torch

from tests.conftest import requires_vllm

pytestmark = requires_vllm


@pytest.fixture(scope="module")
def hf_model(vllm_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(vllm_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(vllm_model_dir)


@pytest.fixture(scope="module")
def engine(vllm_model_dir, hf_model):
    from srft.config import Config
    from srft.rollout import make_engine

    model, tok = hf_model
    cfg = Config()
    cfg.rollout.vllm_max_model_len = 256
    eng = make_engine("vllm", model, tok, cfg.rollout)
    yield eng
    eng.close()


def prompts(tok, n=6):
    from srft.testbed.tasks import format_prompt

    exprs = ["1 + 2 + 3 + 4", "9 - 3 + 2 - 1", "5 + 5 - 2 + 7", "8 - 1 - 1 + 3", "2 + 4 + 6 + 8", "7 - 2 + 1 - 3"]
    return [tok.encode(format_prompt(e)) for e in exprs[:n]]


def test_greedy_decoding_equals_the_hf_engine(engine, hf_model):
    from srft.rollout import SamplingParams
    from srft.rollout.hf import HFRolloutEngine, stop_token_ids

    model, tok = hf_model
    ps = prompts(tok)
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    a = engine.generate(ps, params, seed=0)
    b = HFRolloutEngine(model, tok.pad_token_id, stop_token_ids(model, tok)).generate(ps, params, seed=0)
    for i in range(len(ps)):
        va, vb = a.response_ids[i][a.response_mask[i].bool()], b.response_ids[i][b.response_mask[i].bool()]
        assert va.tolist() == vb.tolist(), i
        torch.testing.assert_close(a.logprobs[i][a.response_mask[i].bool()], b.logprobs[i][b.response_mask[i].bool()],
                                   atol=1e-3, rtol=0)


def test_sampling_is_seeded_per_response(engine, hf_model):
    from srft.rollout import SamplingParams

    _, tok = hf_model
    ps = prompts(tok, 4)
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    a = engine.generate(ps, params, seed=[11, 12, 13, 14])
    b = engine.generate(ps[::-1], params, seed=[14, 13, 12, 11])  # other order, same per-response seeds
    assert a.response_ids[0].tolist() == b.response_ids[3].tolist()
    assert a.response_ids[2].tolist() == b.response_ids[1].tolist()
    assert (a.logprobs <= 0).all()
    every = tuple(range(len(tok)))  # every token a stop token
    short = engine.generate(ps, SamplingParams(max_new_tokens=9, temperature=1.0, stop_token_ids=every), seed=0)
    assert short.response_mask.sum(-1).tolist() == [1] * 4 and short.finished.all()
    exact = engine.generate(ps, SamplingParams(max_new_tokens=9, temperature=1.0, stop_token_ids=every,
                                               ignore_eos=True), seed=0)
    assert exact.response_mask.sum(-1).tolist() == [9] * 4 and not exact.finished.any()


def test_weight_sync_moves_vllm_to_the_trainer_weights(engine, hf_model):
    from srft.rollout.vllm_engine import trainer_logprobs

    model, tok = hf_model
    ids = prompts(tok, 1)[0] + tok.encode(" 10</think> 10")
    before_vllm = engine.prompt_logprobs(ids)
    torch.testing.assert_close(before_vllm, trainer_logprobs(model, ids), atol=1e-3, rtol=0)
    with torch.no_grad():  # a training step's worth of change, made large enough to see
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after_trainer = trainer_logprobs(model, ids)
    assert (after_trainer - before_vllm).abs().max() > 0.05  # the weights really moved
    engine.sync_weights(model)
    assert engine.last_sync_s > 0 and engine.last_sync_gap < 1e-3
    torch.testing.assert_close(engine.prompt_logprobs(ids), after_trainer, atol=1e-3, rtol=0)


def test_a_failed_sync_raises_instead_of_going_on(engine, hf_model):
    from srft.rollout.vllm_engine import WeightSyncError

    model, _ = hf_model

    class Broken(torch.nn.Module):  # state dict with a name vLLM's model does not have
        def state_dict(self, *a, **k):
            return {"model.no_such_layer.weight": torch.zeros(3)}

    with pytest.raises(WeightSyncError, match="weight sync"):
        engine.sync_weights(Broken())
    engine.sync_weights(model)  # and a good sync works again afterwards


def test_lora_weights_are_merged_into_the_sync(engine, vllm_model_dir, hf_model):
    """With LoRA the trainer's weights are the base plus the adapters: vLLM gets them merged, and
    the trainer's model keeps its adapters unmerged afterwards."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from srft.rollout.vllm_engine import trainer_logprobs

    _, tok = hf_model
    base = AutoModelForCausalLM.from_pretrained(vllm_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ids = prompts(tok, 1)[0] + tok.encode(" 10</think> 10")
    want = trainer_logprobs(peft_model, ids)
    engine.sync_weights(peft_model)
    torch.testing.assert_close(engine.prompt_logprobs(ids), want, atol=1e-3, rtol=0)
    torch.testing.assert_close(trainer_logprobs(peft_model, ids), want)  # adapters unmerged again
    with peft_model.disable_adapter():
        without = trainer_logprobs(peft_model, ids)
    assert (want - without).abs().max() > 0.01  # the adapters really change the model vLLM now holds


def test_protocol_evaluation_through_vllm_equals_the_hf_engine(vllm_model_dir, tmp_path):
    """`srft eval --protocol srft --engine vllm`: greedy, so both engines give the same answers and
    the same per-source numbers."""
    import json
    import subprocess
    import sys

    from tests.test_protocol import bench_files

    files = [str(f) for f in bench_files(tmp_path)]
    results = {}
    for engine in ("hf", "vllm"):
        r = subprocess.run([sys.executable, "-m", "srft.cli", "eval", "--model", str(vllm_model_dir), "--protocol",
                            "srft", "--benchmark", *files, "--temperature", "0", "--max-new-tokens", "12",
                            "--engine", engine, "--output-dir", str(tmp_path / engine)],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        results[engine] = json.loads((tmp_path / engine / "protocol.json").read_text())
    assert results["vllm"]["engine"] == "vllm"
    for s, res in results["hf"]["sources"].items():
        for key in ("accuracy", "n", "k", "mean_length", "truncated"):
            assert results["vllm"]["sources"][s][key] == pytest.approx(res[key]), (s, key)
