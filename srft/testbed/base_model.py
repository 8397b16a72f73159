"""The testbed's base model: a small Qwen2-architecture LM pretrained on CPU.

Built deterministically from a seed the first time it is needed and cached in
Hugging Face format (safetensors + tokenizer) under
`$SRFT_CACHE/testbed/base-v{TESTBED_VERSION}-seed{seed}` (SRFT_CACHE defaults to
`~/.cache/srft`). The folder is written to a temporary name and renamed when
complete, so an interrupted build never leaves a half-written model behind.

The pretraining corpus is the testbed's "web text" (see `srft.testbed.tasks`):
- arithmetic facts "a+d=c" / "a-d=c" for a in [-60, 60], d in [0, 9];
- worked calculations in the corpus's own style, "calc 4-1-7: 4-1=3; 3-7=-4;
  result -4", for 2- to 4-term chains;
- direct question/answer pairs "Q:4-1-7\\nA:-4" for 2- to 4-term chains;
never any expression of the test sets, and never the '<think>' format.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from srft.testbed.tasks import TESTBED_VERSION, build_splits, direct_answer, format_prompt, worked_calculation


@dataclass
class BasePretrainConfig:
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    steps: int = 800
    batch_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 30
    seq_len: int = 96
    """Documents are packed, separated by EOS, into rows of this many tokens."""
    frac_facts: float = 0.35
    frac_qa2: float = 0.10
    frac_qa3: float = 0.20
    frac_qa4: float = 0.08
    frac_calc: float = 0.27


def cache_root() -> Path:
    return Path(os.environ.get("SRFT_CACHE", Path.home() / ".cache" / "srft"))


def base_model_dir(seed: int = 0) -> Path:
    return cache_root() / "testbed" / f"base-v{TESTBED_VERSION}-seed{seed}"


def _facts() -> list[str]:
    out = []
    for a in range(-60, 61):
        for d in range(10):
            out.append(f"{a}+{d}={a + d}")
            out.append(f"{a}-{d}={a - d}")
    return out


def _qa_pool(n_terms: int, exclude: set[str], seed: int, worked: bool = False) -> list[str]:
    import reasoning_gym as rg

    ds = rg.create_dataset(
        "chain_sum", size=6000, seed=3000 + n_terms + seed, min_terms=n_terms, max_terms=n_terms,
        min_digits=1, max_digits=1,
    )
    seen, docs = set(), []
    for e in ds:
        expr = e["metadata"]["expression"]
        if expr in exclude or expr in seen:
            continue
        seen.add(expr)
        docs.append(worked_calculation(expr) if worked else format_prompt(expr) + direct_answer(e["answer"]))
    return docs


def _pack(stream: list[int], seq_len: int, pad_id: int):
    """Cut a token stream into rows of seq_len (the last one padded)."""
    import torch

    n_rows = (len(stream) + seq_len - 1) // seq_len
    ids = torch.full((n_rows, seq_len), pad_id, dtype=torch.long)
    attn = torch.zeros((n_rows, seq_len), dtype=torch.long)
    flat = torch.tensor(stream, dtype=torch.long)
    ids.view(-1)[: len(stream)] = flat
    attn.view(-1)[: len(stream)] = 1
    return ids, attn


def pretraining_corpus(seed: int = 0) -> dict[str, list[str]]:
    exclude = build_splits(seed).pretrain_exclude
    calc = [d for k in (2, 3, 4) for d in _qa_pool(k, exclude, seed + 7, worked=True)]
    return {"facts": _facts(), **{f"qa{k}": _qa_pool(k, exclude, seed) for k in (2, 3, 4)}, "calc": calc}


def build_base_model(
    out_dir: Optional[Path] = None, cfg: Optional[BasePretrainConfig] = None, log=print
) -> Path:
    """Pretrain the base model and save it (safetensors) to `out_dir`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from srft.testbed.tokenizer import build_tokenizer

    cfg = cfg or BasePretrainConfig()
    out_dir = Path(out_dir) if out_dir else base_model_dir(cfg.seed)
    t0 = time.time()
    tok = build_tokenizer()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    mconf = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(mconf)
    n_params = sum(p.numel() for p in model.parameters())
    corpus = pretraining_corpus(cfg.seed)
    kinds = ["facts", "qa2", "qa3", "qa4", "calc"]
    weights = [cfg.frac_facts, cfg.frac_qa2, cfg.frac_qa3, cfg.frac_qa4, cfg.frac_calc]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * max(0.05, 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    )
    model.train()
    log(f"[srft] pretraining the testbed base model ({n_params / 1e6:.2f}M params, {cfg.steps} steps)")
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc="pretrain base", disable=None)
    for step in bar:
        docs = [rng.choice(corpus[k]) for k in rng.choices(kinds, weights, k=cfg.batch_size)]
        ids, attn = _pack([t for d in docs for t in tok(d)["input_ids"] + [tok.eos_token_id]],
                          cfg.seq_len, tok.pad_token_id)
        labels = ids.masked_fill(attn == 0, -100)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "srft_testbed.json").write_text(
        json.dumps({"testbed_version": TESTBED_VERSION, "pretrain": asdict(cfg), "params": n_params,
                    "build_seconds": round(time.time() - t0, 1)}, indent=2)
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log(f"[srft] base model saved to {out_dir} ({time.time() - t0:.0f}s)")
    return out_dir


def ensure_base_model(seed: int = 0, log=print) -> Path:
    """Path of the cached base model, building it first if needed."""
    path = base_model_dir(seed)
    if (path / "model.safetensors").exists() and (path / "srft_testbed.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_base_model(path, BasePretrainConfig(seed=seed), log=log)
