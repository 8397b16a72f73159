"""Write a randomly initialised causal LM of a real model's shape (layers, widths, vocabulary)
with the testbed's tokenizer, for speed and memory measurements only: no weights are
downloaded, and its outputs are noise.

A model's step time and memory depend on its shape and on how many tokens it reads and
writes, not on its weights; with a fixed response length (`--rollout.ignore_eos true`) a
random model of Qwen2.5-0.5B's shape does the work of Qwen2.5-0.5B. The testbed tokenizer
has 260 tokens; the model's vocabulary is the real one (151,936 for Qwen2.5), and sampled
ids past the tokenizer's are dropped when responses are decoded (rewards are then 0).

    .venv/bin/python scripts/make_shape_model.py --shape qwen2.5-0.5b --output-dir runs/shape-qwen0.5b
"""

from __future__ import annotations

import argparse

# the published configs' shapes (config.json of each model on the hub)
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         tie_word_embeddings=True, rope_theta=1_000_000.0, max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         tie_word_embeddings=True, rope_theta=1_000_000.0, max_position_embeddings=32768),
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from srft.testbed.tokenizer import EOS, PAD, build_tokenizer

    tok = build_tokenizer()
    shape = dict(SHAPES[a.shape])
    cfg = AutoConfig.for_model(shape.pop("model_type"), **shape, bos_token_id=tok.convert_tokens_to_ids(EOS),
                               eos_token_id=tok.convert_tokens_to_ids(EOS),
                               pad_token_id=tok.convert_tokens_to_ids(PAD))
    torch.manual_seed(a.seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(a.output_dir)
    tok.save_pretrained(a.output_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.output_dir}: random {a.shape} shape, {n / 1e6:.0f}M parameters, vocabulary {cfg.vocab_size}, "
          f"tokenizer of {len(tok)} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
