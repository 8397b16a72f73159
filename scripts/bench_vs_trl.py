"""Side by side on equal work: TRL's GRPOTrainer, `srft train --preset grpo` and `srft train
--preset srft`, one after the other in one invocation, on the same model folder, prompts, group
size, response length and temperature.

Equal work means the same number of generated tokens: every response is exactly
--max-new-tokens long in all three (TRL: `generation_kwargs={"min_new_tokens": L}`; srft:
`--rollout.ignore_eos true`). Both get the same prompt text (the testbed's training rows written to
one JSONL file, no chat template, no system prompt), the testbed's reward, one optimiser step per
rollout batch, no KL term and no reference model, the same micro-batch size (--micro-batch;
TRL accumulates gradients over P x K / micro-batch of them), dtype, seed and learning rate. SRFT's group is K - 1 rollouts + 1
demonstration, so it generates (K - 1)/K of the tokens and trains on the demonstrations too: it
is compared with srft-grpo per trained token.

Each run is a fresh process; the numbers are means over the steps after the first (warm-up).
TRL's time split comes from timing its `_generate` (rollout) and `_calculate_rewards` (reward)
methods; its update is the rest of the step.

TRL is a benchmark dependency only: `.venv/bin/pip install trl` (measured with trl 1.16.0).

    .venv/bin/python scripts/bench_vs_trl.py                                  # the testbed model
    .venv/bin/python scripts/bench_vs_trl.py --model models/smollm2-135m      # after srft prepare-model
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def trl_child(a, data: Path, out: Path) -> None:
    """One TRL GRPOTrainer run; writes one JSON row per step to `out`."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from srft.testbed.tasks import chain_sum_reward

    rows = [json.loads(x) for x in data.read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    cuda = torch.cuda.is_available()
    cfg = GRPOConfig(
        output_dir=str(out.parent / "trl-out"), max_steps=a.steps, learning_rate=a.lr, seed=0,
        per_device_train_batch_size=a.micro_batch, gradient_accumulation_steps=a.prompts * a.group // a.micro_batch,
        num_generations=a.group, max_completion_length=a.max_new_tokens, temperature=a.temperature, top_p=1.0,
        generation_kwargs={"min_new_tokens": a.max_new_tokens}, beta=0.0, num_iterations=1,
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=not cuda,
        bf16=a.dtype == "bfloat16", dataloader_num_workers=0, disable_dropout=True,
        model_init_kwargs={"dtype": {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]},
    )
    trainer = GRPOTrainer(model=a.model, reward_funcs=chain_sum_reward, args=cfg, train_dataset=ds)
    clock = {"rollout": 0.0, "reward": 0.0, "tokens": 0}

    def timed(name, fn, count=False):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            res = fn(*args, **kw)
            clock[name] += time.perf_counter() - t0
            if count:
                clock["tokens"] += sum(len(c) for c in res[1])  # completion_ids
            return res
        return wrapper

    trainer._generate = timed("rollout", trainer._generate, count=True)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    steps = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.update(rollout=0.0, reward=0.0, tokens=0, t0=time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            steps.append({"time/step": time.perf_counter() - clock["t0"], "time/rollout": clock["rollout"],
                          "time/reward": clock["reward"], "generated": clock["tokens"]})

    trainer.add_callback(Clock())
    trainer.train()
    out.write_text("\n".join(json.dumps(s) for s in steps))


def srft_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out = []
    for r in rows:
        trained = r["throughput/train_tokens_per_s"] * r["time/update"]
        out.append({"time/step": r["time/step"], "time/rollout": r["time/rollout"], "time/reward": r["time/reward"],
                    "time/old_logprob": r["time/old_logprob"],
                    "generated": r["throughput/rollout_tokens_per_s"] * r["time/rollout"], "trained": trained})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="testbed", help="a model folder, or 'testbed' (the built-in base model)")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per step (P; the main job: 32)")
    ap.add_argument("--group", type=int, default=8, help="responses per prompt (K)")
    ap.add_argument("--max-new-tokens", type=int, default=40, help="every response's length (L; the main job: at most 40)")
    ap.add_argument("--micro-batch", type=int, default=0,
                    help="sequences per forward/backward (0: all P x K at once); TRL accumulates P x K / this")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--runs", nargs="+", default=["trl", "srft-grpo", "srft"])
    ap.add_argument("--trl-child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.micro_batch = a.micro_batch or a.prompts * a.group
    if (a.prompts * a.group) % a.micro_batch:
        ap.error("--micro-batch must divide prompts x group")
    if a.model == "testbed":
        from srft.testbed.base_model import ensure_base_model

        a.model = str(ensure_base_model(0, log=lambda *x: None))
    if a.trl_child:
        trl_child(a, Path(a.trl_child[0]), Path(a.trl_child[1]))
        return 0
    if "trl" in a.runs:
        try:
            import trl  # noqa: F401 (only whether it is installed)
        except ImportError:
            print("trl is not installed (.venv/bin/pip install trl): TRL's GRPOTrainer not run")
            a.runs = [r for r in a.runs if r != "trl"]
    import torch

    from srft.testbed.tasks import build_splits

    P, K, L = a.prompts, a.group, a.max_new_tokens
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.jsonl"
        rows = [dict(r) for r in build_splits(0).train]
        data.write_text("\n".join(json.dumps({k: r[k] for k in ("prompt", "demonstration", "answer")}) for r in rows))
        common = ["--model", a.model, "--data.dataset", str(data), "--data.reward", "testbed",
                  "--data.chat_template", "none", "--data.system_prompt", "none", "--max-steps", str(a.steps),
                  "--train.prompts_per_step", str(P), "--rollout.max_new_tokens", str(L), "--rollout.ignore_eos",
                  "true", "--rollout.temperature", str(a.temperature), "--rollout.top_p", "1.0",
                  "--train.micro_batch_size", str(a.micro_batch), "--optim.lr", str(a.lr), "--model.dtype", a.dtype,
                  "--eval.limit", "0", "--train.save_every", "0", "--train.eval_every", "0", "--train.overwrite", "true"]
        for run in a.runs:
            t0 = time.time()
            if run == "trl":
                out = Path(tmp) / "trl.jsonl"
                cmd = [sys.executable, __file__, "--model", a.model, "--prompts", str(P), "--group", str(K),
                       "--max-new-tokens", str(L), "--steps", str(a.steps), "--temperature", str(a.temperature),
                       "--lr", str(a.lr), "--dtype", a.dtype, "--micro-batch", str(a.micro_batch),
                       "--trl-child", str(data), str(out)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"trl run failed:\n{r.stderr[-3000:]}")
                    return 1
                steps = [json.loads(x) for x in out.read_text().splitlines()]
            else:
                preset = "grpo" if run == "srft-grpo" else "srft"
                n_roll = K if preset == "grpo" else K - 1
                out_dir = Path(tmp) / run
                cmd = [sys.executable, "-m", "srft.cli", "train", "--preset", preset, *common,
                       "--rollout.n_rollouts", str(n_roll), "--output-dir", str(out_dir)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"{run} run failed:\n{r.stderr[-3000:]}")
                    return 1
                steps = srft_rows(out_dir)
            rest = steps[1:] or steps
            mean = {k: sum(s.get(k, 0.0) for s in rest) / len(rest) for k in rest[0]}
            mean["wall"] = time.time() - t0
            results[run] = mean
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"model {a.model}; {P} prompts x {K} responses of exactly {L} tokens per step, micro-batches of "
          f"{a.micro_batch}, temperature {a.temperature}, {a.dtype}, {dev}, {torch.get_num_threads()} threads; "
          f"mean of steps 2..{a.steps}")
    print("| run | step s | rollout s | reward s | pi_old s | update s | generated tok/step | trained tok/step | "
          "step / TRL's |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = results.get("trl", {}).get("time/step")
    for run, m in results.items():
        update = m["time/step"] - m["time/rollout"] - m["time/reward"] - m.get("time/old_logprob", 0.0)
        trained = f"{m['trained']:.0f}" if "trained" in m else "-"
        ratio = f"{m['time/step'] / base:.2f}" if base else "-"
        print(f"| {run} | {m['time/step']:.2f} | {m['time/rollout']:.2f} | {m['time/reward']:.3f} | "
              f"{m.get('time/old_logprob', 0.0):.2f} | {update:.2f} | {m['generated']:.0f} | {trained} | {ratio} |")
    if "srft" in results and "srft-grpo" in results:
        s, g = results["srft"], results["srft-grpo"]
        per = (s["time/step"] / s["trained"]) / (g["time/step"] / g["trained"])
        print(f"srft / srft-grpo step time per trained token: {per:.2f}")
    if base and "srft-grpo" in results:
        print(f"srft-grpo / TRL step time: {results['srft-grpo']['time/step'] / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
