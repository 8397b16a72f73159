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
- question/answer pairs for 2- to 4-term chains, most answered directly
  "Q:4-1-7\\nA:-4", some worked in the corpus's style
  "Q:4-1-7\\nA:4-1=3; 3-7=-4; result -4" (`frac_qa_worked`);
- multiple-choice questions on 2- and 3-term chains, answered with the letter
  "Q:4-1\\n(A)2 (B)3 (C)5 (D)4\\nA:B" (the test sets' multiple-choice
  questions have 4 and 5 terms);
never any expression of the test or validation sets, and never the '<think>' format.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from srft.testbed.tasks import (TESTBED_VERSION, build_splits, direct_answer, format_mc_prompt, format_prompt,
                                mc_options, worked_answer, worked_calculation)
from srft.testbed.tokenizer import build_tokenizer


@dataclass
class BasePretrainConfig:
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 30
    seq_len: int = 96
    """Documents are packed, separated by EOS, into rows of this many tokens."""
    frac_facts: float = 0.22
    frac_qa2: float = 0.06
    frac_qa3: float = 0.12
    frac_qa4: float = 0.06
    frac_calc: float = 0.28
    frac_qa_worked: float = 0.06
    frac_mc: float = 0.20
    worked_max_terms: int = 4
    """Worked calculations (calc and worked answers) cover chains of 2 to this many terms."""
    worked_slip_rate: float = 0.15
    """Share of the corpus's worked calculations with one step wrong (by 1 or 2, carried on): the
    base model's own reasoning is unreliable, the teacher's demonstrations are not."""
    worked_flaw_rate: float = 1.0
    """Share of the corpus's worked calculations with its systematic mistake: a subtraction going
    below zero loses its sign ('3-7=4'; tasks.chain_steps(drop_sign=True)). Version 3: all of them
    (at 0.6, version 2, zero-RL simply selected the correct worked answers and reached 99%,
    far above SFT and SRFT; the paper's zero-RL improves, but is bounded by what the base
    model can already do)."""


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


def _qa_pool(n_terms: int, exclude: set[str], seed: int, worked: bool = False, style: str = "direct",
             slip_rate: float = 0.0, flaw_rate: float = 0.0) -> list[str]:
    """Documents on n_terms-chains: "calc" worked calculations (worked=True), or questions with a
    "direct" answer, a "worked" answer in the corpus's style, or "mc" (multiple choice). A share
    `slip_rate` of the worked ones has one step off by 1 or 2 (carried on to the result)."""
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
        rng = random.Random(f"slip:{seed}:{expr}")
        slip = ((rng.randrange(n_terms - 1), rng.choice((-2, -1, 1, 2))) if rng.random() < slip_rate else None)
        flaw = rng.random() < flaw_rate
        if worked:
            docs.append(worked_calculation(expr, slip, flaw))
        elif style == "mc":
            opts, letter = mc_options(expr, int(e["answer"]))
            docs.append(format_mc_prompt(expr, opts) + letter)
        else:
            docs.append(format_prompt(expr) + (worked_answer(expr, slip, flaw) if style == "worked"
                                               else direct_answer(e["answer"])))
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


def pretraining_corpus(seed: int = 0, worked_max_terms: int = 4, slip_rate: float = 0.0,
                       flaw_rate: float = 0.0) -> dict[str, list[str]]:
    exclude = build_splits(seed).pretrain_exclude
    worked_terms = range(2, worked_max_terms + 1)
    calc = [d for k in worked_terms for d in _qa_pool(k, exclude, seed + 7, worked=True, slip_rate=slip_rate,
                                                      flaw_rate=flaw_rate)]
    qa_worked = [d for k in worked_terms for d in _qa_pool(k, exclude, seed + 11, style="worked",
                                                           slip_rate=slip_rate, flaw_rate=flaw_rate)]
    mc = [d for k in (2, 3) for d in _qa_pool(k, exclude, seed + 13, style="mc")]
    return {"facts": _facts(), **{f"qa{k}": _qa_pool(k, exclude, seed) for k in (2, 3, 4)}, "calc": calc,
            "qa_worked": qa_worked, "mc": mc}


def _new_model(cfg: BasePretrainConfig, tok):
    """A freshly initialised Qwen2 causal LM of cfg's size for the tokenizer `tok`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

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
    return Qwen2ForCausalLM(mconf)


def _optimizer(model, cfg: BasePretrainConfig):
    """AdamW and its warm-up + cosine learning-rate schedule, as (opt, sched)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * max(0.05, 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    )
    return opt, sched


def _pretrain_loop(model, tok, corpus, kinds, weights, rng, opt, sched, cfg: BasePretrainConfig,
                   log=print) -> None:
    """Run cfg.steps optimiser steps, each on a batch of packed documents drawn from the corpus with `rng`.
    A progress bar on a terminal; elsewhere (a log file, CI) a line every `PROGRESS_EVERY` steps."""
    import torch
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc="pretrain base", disable=None)
    t0 = time.perf_counter()
    for step in bar:
        if bar.disable and step and step % PROGRESS_EVERY == 0:
            _log_progress(log, step, cfg.steps, time.perf_counter() - t0)
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


PROGRESS_EVERY = 100


def _log_progress(log, step: int, steps: int, elapsed: float) -> None:
    left = elapsed / step * (steps - step)
    log(f"[srft] pretraining the testbed base model: step {step}/{steps}, {elapsed / 60:.1f} min elapsed, "
        f"~{left / 60:.1f} min left")


def _save_base_model(out_dir: Path, model, tok, cfg: BasePretrainConfig, n_params: int, t0: float) -> None:
    """Write model, tokenizer and srft_testbed.json to a temporary folder, then rename it to `out_dir`."""
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


def build_base_model(
    out_dir: Optional[Path] = None, cfg: Optional[BasePretrainConfig] = None, log=print
) -> Path:
    """Pretrain the base model and save it (safetensors) to `out_dir`."""
    import torch

    cfg = cfg or BasePretrainConfig()
    out_dir = Path(out_dir) if out_dir else base_model_dir(cfg.seed)
    t0 = time.time()
    tok = build_tokenizer()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = _new_model(cfg, tok)
    n_params = sum(p.numel() for p in model.parameters())
    corpus = pretraining_corpus(cfg.seed, cfg.worked_max_terms, cfg.worked_slip_rate, cfg.worked_flaw_rate)
    kinds = ["facts", "qa2", "qa3", "qa4", "calc", "qa_worked", "mc"]
    weights = [cfg.frac_facts, cfg.frac_qa2, cfg.frac_qa3, cfg.frac_qa4, cfg.frac_calc, cfg.frac_qa_worked,
               cfg.frac_mc]
    opt, sched = _optimizer(model, cfg)
    model.train()
    log(f"[srft] pretraining the testbed base model ({n_params / 1e6:.2f}M params, {cfg.steps} steps)")
    _pretrain_loop(model, tok, corpus, kinds, weights, rng, opt, sched, cfg, log)
    model.eval()
    _save_base_model(out_dir, model, tok, cfg, n_params, t0)
    log(f"[srft] base model saved to {out_dir} ({time.time() - t0:.0f}s)")
    return out_dir


def _is_built(path: Path) -> bool:
    return (path / "model.safetensors").exists() and (path / "srft_testbed.json").exists()


def ensure_base_model(seed: int = 0, log=print) -> Path:
    """Path of the cached base model, building it first if needed. One process builds it: others
    asking for the same model at the same time (two first runs, several launches on one machine)
    wait on a lock file beside it and then use the one built."""
    path = base_model_dir(seed)
    if _is_built(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[srft] another process is building the testbed base model {path}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_built(path):  # built by the process we waited for
            return path
        return build_base_model(path, BasePretrainConfig(seed=seed), log=log)
