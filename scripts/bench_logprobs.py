"""Peak extra memory and time of log-probs + entropy, forward and backward, for one sequence
over a large vocabulary: srft's chunked path from hidden states (srft.chunked_logprobs)
against the naive path (full logits, log_softmax, entropy), and TRL's chunked path
(trl.kernels.ChunkedLogProbFunction, as TRL's trainers call it) when trl is installed.

Each (path, dtype, T) runs in a fresh process: inputs h (T, D) and W (V, D) are made,
then forward + backward of sum(logp) + sum(H) runs twice; the table gives the second
run's time and the process's peak memory above what it held once the inputs existed
(resident memory on CPU, torch's allocator statistics on a GPU). The gradients of h and
W that every path returns are counted in that peak.

    .venv/bin/python scripts/bench_logprobs.py                       # the issue's table: T 1k/4k/8k, V 152k, D 896
    .venv/bin/python scripts/bench_logprobs.py --T 1024 --dtypes float32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def child(path: str, dtype: str, T: int, V: int, D: int, device: str) -> dict:
    import torch

    torch.manual_seed(0)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    h = torch.randn(T, D, device=device).to(dt).requires_grad_()
    w = (torch.randn(V, D, device=device) * 0.02).to(dt).requires_grad_()
    y = torch.randint(0, V, (T,), device=device)

    def run():
        h.grad = w.grad = None
        if path == "srft":
            from srft.chunked_logprobs import chunked_logprobs_and_entropy

            lp, ent = chunked_logprobs_and_entropy(h, w, y)
        elif path == "naive":
            z = (h @ w.t()).float()
            logp_all = torch.log_softmax(z, -1)
            lp = logp_all.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            p = logp_all.exp()
            ent = -(p * logp_all).sum(-1)
        elif path == "trl":
            # TRL's chunked path as its trainers call it (trl.trainer.utils, fused_lm_head): the
            # function ChunkedLogProbFunction over (hidden, weight) with its default vocabulary tile
            from trl.kernels import ChunkedLogProbFunction
            from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

            lp, ent, *_ = ChunkedLogProbFunction.apply(h, w, None, y, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                                       ("entropy",))
        else:
            raise SystemExit(f"unknown path {path}")
        (lp.sum() + ent.sum()).backward()

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_bytes()
    run()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"path": path, "dtype": dtype, "T": T, "seconds": seconds, "peak_gib": peak / 2**30}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--V", type=int, default=152_000)
    ap.add_argument("--D", type=int, default=896)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--paths", nargs="+", default=["srft", "naive"])
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    ap.add_argument("--child", nargs=4, metavar=("PATH", "DTYPE", "T", "DEVICE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], int(a.child[2]), a.V, a.D, a.child[3])))
        return 0
    if "trl" not in a.paths:
        try:
            from trl.kernels import ChunkedLogProbFunction  # noqa: F401

            a.paths.append("trl")
            import trl

            print(f"trl {trl.__version__}: its chunked path (trl.kernels.ChunkedLogProbFunction) measured too")
        except ImportError:
            print("trl (>= 1.16, with trl.kernels) is not installed: TRL's chunked path not measured")
    print(f"V = {a.V}, D = {a.D}, B = 1, device {a.device}; forward + backward of sum(log p) + sum(H)")
    print("| dtype | T | path | peak extra GiB | seconds | seconds / naive |")
    print("|---|---|---|---|---|---|")
    for dtype in a.dtypes:
        for T in a.T:
            res = {}
            for path in a.paths:
                # the naive path holds about 3.4 T x V float32 values at its peak (measured: 13.9 GiB at
                # T 4,096, V 152k): not started where it cannot fit
                need = 3.4 * T * a.V * 4
                if path == "naive" and a.device == "cpu" and need > 0.9 * available_bytes():
                    print(f"| {dtype} | {T} | {path} | not run: needs about {need / 2**30:.0f} GiB, "
                          f"{available_bytes() / 2**30:.0f} GiB available | | |", flush=True)
                    continue
                r = subprocess.run([sys.executable, __file__, "--V", str(a.V), "--D", str(a.D), "--child", path,
                                    dtype, str(T), a.device], capture_output=True, text=True)
                if r.returncode != 0:
                    last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1][:80]
                    print(f"| {dtype} | {T} | {path} | failed: {last} | | |", flush=True)
                    continue
                res[path] = json.loads(r.stdout.strip().splitlines()[-1])
            for path, x in res.items():
                ratio = f"{x['seconds'] / res['naive']['seconds']:.2f}" if "naive" in res else "-"
                print(f"| {dtype} | {T} | {path} | {x['peak_gib']:.2f} | {x['seconds']:.3f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
