"""How far a multi-process run drifts from the single-process run of the same config.

Runs the same SRFT config with 1 process, 2 processes (torchrun, DDP on gloo) and, with
--fsdp, 2 processes under FSDP2 (tests/fsdp_cpu_launch.py), saving a checkpoint and the
sampled responses at every step; then prints, per step, the largest weight difference
to the 1-process run and whether every sampled response is the same.

    .venv/bin/python scripts/bench_world_size.py                      # testbed base model, 10 steps
    .venv/bin/python scripts/bench_world_size.py --steps 20 --fsdp --out runs/world_size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="testbed")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--fsdp", action="store_true", help="also 2 processes under FSDP2")
    ap.add_argument("--out", default="runs/world_size")
    args = ap.parse_args()
    out = Path(args.out)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if args.model == "testbed":  # build the base model once, before processes race for it
        subprocess.run([sys.executable, "-m", "srft.cli", "build-testbed"], check=True, env=env, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    common = ["train", "--model", args.model, "--max-steps", str(args.steps), "--train.prompts_per_step",
              str(args.prompts_per_step), "--train.eval_every", "0", "--train.save_every", "1",
              "--train.save_total_limit", str(args.steps), "--train.save_rollouts", "true", "--train.overwrite", "true"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    runs = {"1 process": [sys.executable, "-m", "srft.cli"], "2 processes (DDP)": [*torchrun, "-m", "srft.cli"]}
    if args.fsdp:
        runs["2 processes (FSDP2)"] = [*torchrun, str(REPO / "tests" / "fsdp_cpu_launch.py")]
    folders = {}
    for name, cmd in runs.items():
        folder = out / name.split(" (")[-1].strip(")").replace(" ", "-")
        t0 = time.time()
        subprocess.run([*cmd, *common, "--output-dir", str(folder)], check=True, env=env, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        folders[name] = folder

    import torch
    from safetensors.torch import load_file

    def weights(folder: Path, step: int) -> dict:
        ck = folder / "checkpoints" / f"step-{step:06d}"
        if (ck / "model.safetensors").exists():
            return load_file(ck / "model.safetensors")
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # FSDP2's sharded checkpoint

        tmp = folder / f".bench-step-{step}.pt"
        dcp_to_torch_save(str(ck / "pytorch_model_fsdp_0"), str(tmp))
        try:
            sd = torch.load(tmp, weights_only=True)
            return sd.get("model", sd)
        finally:
            tmp.unlink()

    def responses(folder: Path) -> list[list]:
        return [[s["response_ids"] for s in json.loads(line)["samples"]]
                for line in (folder / "rollouts.jsonl").read_text().splitlines()]

    base = folders["1 process"]
    base_resp = responses(base)
    print(f"\nmodel {args.model}, {args.prompts_per_step} prompts per step; difference to the 1-process run:")
    print("| step | " + " | ".join(f"{n}: max abs weight diff | {n}: same responses" for n in list(runs)[1:]) + " |")
    print("|---|" + "---|---|" * (len(runs) - 1))
    for step in range(1, args.steps + 1):
        wa = weights(base, step)
        cells = []
        for name in list(runs)[1:]:
            wb = weights(folders[name], step)
            diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if k in wb)
            same = base_resp[step - 1] == responses(folders[name])[step - 1]
            n_diff = sum(a != b for a, b in zip(base_resp[step - 1], responses(folders[name])[step - 1]))
            cells += [f"{diff:.2e}", "yes" if same else f"no ({n_diff} of {len(base_resp[step - 1])} differ)"]
        print(f"| {step} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
