"""srft.policy: the hidden-state path gives the model's own log-probs, entropies and
gradients; models whose logits are not their output layer applied to their hidden
states, sharded engines and non-linear heads fall back to the logits path."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from srft.policy import PolicyScorer
from srft.samples import Sample, collate


def batch_of(pad: int = 0) -> dict:
    g = torch.Generator().manual_seed(0)
    samples = [Sample(0, torch.randint(3, 250, (n,), generator=g).tolist(),
                      torch.randint(3, 250, (m,), generator=g).tolist(), False) for n, m in [(5, 7), (9, 3), (2, 6)]]
    return collate(samples, pad)


def scores_and_grads(model, scorer, batch):
    model.zero_grad(set_to_none=True)
    lp, ent = scorer(batch)
    mask = batch["mask"]
    ((lp * mask).sum() * 0.7 + (ent * mask).sum() * 0.3).backward()
    return lp.detach() * mask, ent.detach() * mask, {n: p.grad.clone() for n, p in model.named_parameters()
                                                     if p.requires_grad}


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_hidden_path_equals_the_logits_path(tiny_model_dir, temperature):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    hidden = PolicyScorer(model, model, temperature, chunk_size=4)
    assert hidden.path == "hidden", hidden.reason
    assert "from hidden states, 4 positions per chunk" in hidden.describe()
    logits = PolicyScorer(model, model, temperature, engine_kind="FSDP")
    assert logits.path == "logits" and "FSDP shards the output layer" in logits.describe()
    batch = batch_of()
    a, b = scores_and_grads(model, hidden, batch), scores_and_grads(model, logits, batch)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], atol=1e-5, rtol=1e-5, msg=name)
    assert "forward" not in model.lm_head.__dict__  # the output layer is itself again
    assert PolicyScorer(model, model, temperature, path="logits").reason == "train.logprob_path is logits"


def test_lora_model_takes_the_hidden_path(tiny_model_dir):
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    hidden = PolicyScorer(model, model, 1.0)
    assert hidden.path == "hidden", hidden.reason
    logits = PolicyScorer(model, model, 1.0, engine_kind="DEEPSPEED")
    batch = batch_of()
    a, b = scores_and_grads(model, hidden, batch), scores_and_grads(model, logits, batch)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    for name, g in a[2].items():
        torch.testing.assert_close(g, b[2][name], atol=1e-5, rtol=1e-5, msg=name)


def test_soft_capped_logits_fall_back_to_the_logits_path(tiny_model_dir):
    """A model that transforms its logits after the output layer (Gemma-2-style soft capping)
    fails the start-up check and is scored from its own logits."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    forward = model.forward

    def capped(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = 0.5 * torch.tanh(out.logits / 0.5)
        return out

    model.forward = capped
    scorer = PolicyScorer(model, model, 1.0)
    assert scorer.path == "logits" and "not its output layer applied to its hidden states" in scorer.reason
