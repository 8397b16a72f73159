"""Rollout tokens/s of the HF engine and the vLLM engine on the same prompts and budget, side by
side in one invocation: every response exactly --max-new-tokens long (ignore_eos), sampled at
temperature 1, the mean of --repeats timed runs after one warm-up run. Runs where vLLM is
installed (`bash scripts/setup.sh --vllm`); without vLLM only the HF engine is measured.

    .venv-vllm/bin/python scripts/bench_rollout.py                                   # testbed model
    .venv-vllm/bin/python scripts/bench_rollout.py --model models/smollm2-135m
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="testbed")
    ap.add_argument("--prompts", type=int, default=32, help="responses per batch (one per prompt)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"])
    a = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srft.config import Config
    from srft.rollout import SamplingParams, make_engine
    from srft.rollout.vllm_engine import vllm_available
    from srft.testbed.tasks import build_splits

    if a.model == "testbed":
        from srft.testbed.base_model import ensure_base_model

        a.model = str(ensure_base_model(0, log=lambda *x: None))
    if "vllm" in a.engines and not vllm_available():
        print("vLLM is not installed here (bash scripts/setup.sh --vllm): only the HF engine is measured")
        a.engines = [e for e in a.engines if e != "vllm"]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(a.model)
    rows = build_splits(0).train[: a.prompts]
    prompts = [tok.encode(r["prompt"]) for r in rows]
    params = SamplingParams(max_new_tokens=a.max_new_tokens, temperature=1.0, ignore_eos=True)
    cfg = Config()
    cfg.rollout.vllm_max_model_len = max(len(p) for p in prompts) + a.max_new_tokens + 8
    cfg.rollout.batch_size = a.prompts
    res = {}
    for name in a.engines:
        t0 = time.perf_counter()
        engine = make_engine(name, model, tok, cfg.rollout)
        start = time.perf_counter() - t0
        engine.generate(prompts, params, seed=0)  # warm-up
        times, tokens = [], 0
        for r in range(a.repeats):
            t0 = time.perf_counter()
            out = engine.generate(prompts, params, seed=r + 1)
            times.append(time.perf_counter() - t0)
            tokens = int(out.response_mask.sum())
        engine.close()
        res[name] = (tokens / (sum(times) / len(times)), start, tokens)
    print(f"model {a.model}, {a.dtype}, {a.prompts} responses x exactly {a.max_new_tokens} tokens, temperature 1, "
          f"{torch.get_num_threads()} threads, mean of {a.repeats} runs after a warm-up")
    print("| engine | tokens/s | tokens per run | engine start s | tokens/s / HF's |")
    print("|---|---|---|---|---|")
    for name, (tps, start, tokens) in res.items():
        ratio = f"{tps / res['hf'][0]:.2f}" if "hf" in res else "-"
        print(f"| {name} | {tps:.0f} | {tokens} | {start:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
