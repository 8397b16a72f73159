"""Cost of per-response sampling (each row its own generator: srft.rollout.hf.row_uniforms, drawn
once per batch, and inverse_cdf_sample per token) against one shared generator (torch.multinomial
over the batch), per generated token, side by side in one process. Per-row streams are what make a response independent of its batch and of
the number of processes (docs/scaling.md).

    .venv/bin/python scripts/bench_sampler.py
"""

from __future__ import annotations

import time

import torch

from srft.rollout.hf import inverse_cdf_sample, row_uniforms


def per_token_ms(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    torch.manual_seed(0)
    print("| rows | vocab | shared generator (multinomial), ms/token | per-row generators (inverse CDF), ms/token | ratio |")
    print("|---|---|---|---|---|")
    # vocabularies: the testbed's (260), SmolLM2's (49,152), Qwen2.5's (151,936)
    for rows, vocab in [(224, 260), (512, 260), (128, 49152), (128, 151936)]:
        probs = torch.softmax(torch.randn(rows, vocab) * 3, dim=-1)
        shared = torch.Generator().manual_seed(0)
        reps = 64 if vocab < 10000 else 8

        def per_row():  # a batch of `reps` tokens: the uniforms once, then one draw per token
            u = row_uniforms(list(range(rows)), reps, "cpu")
            for t in range(reps):
                inverse_cdf_sample(probs, u[:, t])

        def shared_gen():
            for _ in range(reps):
                torch.multinomial(probs, 1, generator=shared)

        a = per_token_ms(shared_gen, 1) / reps
        b = per_token_ms(per_row, 1) / reps
        print(f"| {rows} | {vocab} | {a:.3f} | {b:.3f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
