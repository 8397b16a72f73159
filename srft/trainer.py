"""The training loop: one rollout batch per step, on accelerate.

Each step reads like the algorithm (SRFT, arXiv 2506.19767, Sec. 4):

1. take `train.prompts_per_step` prompts;
2. sample `rollout.n_rollouts` on-policy responses per prompt (rollout engine);
3. put `rollout.n_demos` demonstrations of the prompt into the same group;
4. score rollouts and demonstrations with the reward function;
5. group advantages over each augmented group (`srft.losses.group_advantages`);
6. pi_old (the policy before this step's update) and the token entropies (the H of
   the entropy weights and of the metrics): on-policy (one mini-batch, one epoch) the
   update's own forward, detached, and the sampler's entropies; otherwise a no-grad
   pass before the update (`Trainer._pi_old_mode`, docs/memory.md);
7. `train.mini_batches` optimiser steps, each over its share of the groups, with
   gradient accumulation over micro-batches; the loss is `srft.objective.compute_loss`
   normalised by mini-batch token counts, so micro-batching does not change it.

Several processes (`torchrun` / `accelerate launch`; docs/scaling.md): the step's
prompts are the same on every rank; global group g belongs to rank g % world, so no
group is split and each mini-batch has an equal share on each rank. Rewards and
advantages are computed where the group lives; every response is seeded from its
global index (group, sample) and the step, so a run samples the same responses
whatever its number of processes. Token and sequence counts of the normalisation,
the batch entropy, the metrics and the non-finite checks are global (all-reduced);
the loss is multiplied by the number of processes to undo the engines' gradient
averaging. Only the main process writes files and prints; rank-awareness lives in
`srft.distributed`, checkpoint I/O in `srft.checkpoint`.

Reliability (docs/reliability.md): checkpoints go through accelerate's `save_state`
into a .tmp folder renamed into place by the main process; `train.resume`
(`srft train --resume DIR`) restores the newest complete one (weights, optimiser,
schedule, prompt order, step, eval history, every rank's random states) so a
resumed run ends as the uninterrupted one would; a step with a non-finite loss or
gradient is skipped, `train.max_nonfinite_steps` in a row raise `TrainingError`,
and non-finite weights are never saved.

Deviations and notes:
- pi_old is the trainer's forward (the update's own, or a separate pass), never the
  sampler's log-probs, which can differ from the trainer's by float rounding.
- Log-probs and entropies come from the hidden states in chunks (`srft.policy`,
  `srft.chunked_logprobs`) where the model allows it, else from the full logits.
- Logits are divided by the rollout temperature before log-probs and entropies
  (also for demonstration rows), so pi is the distribution rollouts were drawn from.
- `train.prompts_per_step` counts prompts over all processes (TRL's and HF's batch
  sizes are per device); it must be divisible by `train.mini_batches` x processes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch

from srft import checkpoint as ckpt
from srft import losses as L
from srft.checkpoint import latest_checkpoint
from srft.config import Config, apply_preset, flatten, save_config, to_dict
from srft.data import PromptSampler, load_rows, pick_demos, prepare_examples
from srft.distributed import Dist
from srft.metrics import MetricsWriter, truncate_metrics
from srft.models import check_model_folder, load_model_and_tokenizer, resolve_model_path  # noqa: F401 (re-exported)
from srft.objective import LossInputs, Normalizers, compute_loss
from srft.policy import PolicyScorer
from srft.preflight import preflight
from srft.rewards import RewardState, needs_answer, score_completions
from srft.run_log import CompletionLog, ProgressLog
from srft.rollout.base import SamplingParams, derive_seed


RUN_MARKERS = ("metrics.jsonl", "final", "checkpoints", "eval.json")


def refuse_used_output_dir(cfg: Config) -> None:
    """A new run (no train.resume, no train.overwrite) never writes into a folder that holds a run."""
    out = Path(cfg.train.output_dir)
    if not cfg.train.resume and not cfg.train.overwrite and any((out / n).exists() for n in RUN_MARKERS):
        raise FileExistsError(f"train.output_dir {out} already holds a run; pass --output-dir NEW_DIR, "
                              f"--resume {out} to continue it, or --train.overwrite true to replace it")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite training, nothing to resume); the message says why
    and what is intact. `srft train` reports it and exits with status 2."""


@dataclass
class Sample:
    group: int  # global group index within the step (0 .. prompts_per_step - 1)
    prompt_ids: list[int]
    response_ids: list[int]
    is_demo: bool
    reward: float = 0.0
    advantage: float = 0.0
    old_logprobs: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None
    sampler_logprobs: Optional[torch.Tensor] = None  # the rollout engine's own log-probs (rollouts only)
    prompt: Any = None  # the row's prompt (text or messages) and the response text, for completions.jsonl
    text: str = ""
    active: bool = True  # enters the loss (HPT's switch may leave a prompt's rollouts or demonstrations out)


def collate(samples: list[Sample], pad_id: int, with_old: bool = True) -> dict[str, torch.Tensor]:
    """Prompts left-padded, responses right-padded, response-aligned tensors (B, T)."""
    lp = max(len(s.prompt_ids) for s in samples)
    lr = max(1, max(len(s.response_ids) for s in samples))
    n = len(samples)
    input_ids = torch.full((n, lp + lr), pad_id, dtype=torch.long)
    attn = torch.zeros((n, lp + lr), dtype=torch.long)
    resp = torch.full((n, lr), pad_id, dtype=torch.long)
    mask = torch.zeros((n, lr))
    old = torch.zeros((n, lr))
    sampler = torch.zeros((n, lr))
    for i, s in enumerate(samples):
        p, r = s.prompt_ids, s.response_ids
        input_ids[i, lp - len(p) : lp] = torch.tensor(p, dtype=torch.long)
        attn[i, lp - len(p) : lp + len(r)] = 1
        if r:
            input_ids[i, lp : lp + len(r)] = torch.tensor(r, dtype=torch.long)
            resp[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
            if with_old and s.old_logprobs is not None:
                old[i, : len(r)] = s.old_logprobs
            if s.sampler_logprobs is not None:
                sampler[i, : len(r)] = s.sampler_logprobs
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids, "attention_mask": attn, "position_ids": position_ids,
        "response_ids": resp, "mask": mask, "old_logprobs": old, "sampler_logprobs": sampler,
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        "is_demo": torch.tensor([s.is_demo for s in samples], dtype=torch.bool),
        "active": torch.tensor([s.active for s in samples], dtype=torch.bool),
    }


def lr_lambda(optim_cfg, total_steps: int):
    def fn(step: int) -> float:
        warm = optim_cfg.warmup_steps
        if warm and step < warm:
            return (step + 1) / warm
        if optim_cfg.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total_steps - warm)
        progress = min(max(progress, 0.0), 1.0)
        if optim_cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


class Trainer:
    def __init__(self, cfg: Config, log=print, model=None, tokenizer=None):
        """`model` / `tokenizer`: objects to train instead of loading cfg.model.name_or_path (the
        Python API, `srft.SRFTTrainer`); the tokenizer is then loaded from the model's folder when
        not given."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg, _ = apply_preset(cfg)  # a preset set in Python trains what it says (see apply_preset)
        # fields, choices, reward imports, tracker packages, model folder: before the data and the model
        self.reward_fn = preflight(cfg, model_given=model is not None)
        self.cfg = cfg
        if cfg.train.resume:
            cfg.train.output_dir = cfg.train.resume
        self.out = Path(cfg.train.output_dir)
        self.resume_from, resume_state = self._resume_checkpoint() if cfg.train.resume else (None, None)
        refuse_used_output_dir(cfg)
        _keep_matplotlib_cache_in(self.out)  # before anything imports matplotlib (reasoning-gym does)
        d = cfg.data
        self.need_answer = needs_answer(self.reward_fn)
        rows = load_rows(d.dataset, cfg.train.seed, columns={  # file errors before the model is loaded
            "prompt": d.prompt_column, "demonstration": d.demonstration_column, "answer": d.answer_column},
            need_answer=self.need_answer)
        set_seed(cfg.train.seed)
        log_with = None if cfg.train.report_to == "none" else cfg.train.report_to
        # step_scheduler_with_optimizer=False: accelerate would otherwise step the schedule once per
        # process at every optimiser step; srft's schedule counts optimiser steps, whatever the world size
        self.accelerator = Accelerator(log_with=log_with, project_dir=str(self.out),
                                       step_scheduler_with_optimizer=False)
        self.dist = Dist(self.accelerator)
        self.dist.barrier()  # every rank has checked the output folder before the main process writes to it
        self.log = log if self.dist.is_main else _silent
        self._check_world_size()
        self.log(f"[srft] {self.dist.describe()}")
        if model is None:
            with self.dist.main_first():  # the testbed base model is built (and cached) once
                model, self.tokenizer, self.model_path = load_model_and_tokenizer(cfg.model.name_or_path, cfg.model,
                                                                                  self.log)
        else:
            self.model_path = getattr(model, "name_or_path", "") or "<in-memory model>"
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            self.tokenizer = tokenizer
        model = self._adapt_model(model)
        if self.resume_from:
            self.model_path = resume_state["model"]
        need_demos = cfg.rollout.n_demos > 0
        self.examples = prepare_examples(rows, self.tokenizer, cfg.data, need_demos, log=self.log,
                                         n_demos=cfg.rollout.n_demos, need_answer=self.need_answer)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.eval_settings: dict[str, dict] = {}
        self.eval_sets = self._eval_sets()
        o = cfg.optim
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        self.total_optim_steps = cfg.train.max_steps * cfg.train.mini_batches * cfg.train.epochs_per_batch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, self.total_optim_steps))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, opt, sched)
        ex = self.examples[0]
        self.scorer = PolicyScorer(self.model, self.unwrapped, cfg.rollout.temperature,
                                   cfg.train.logprob_chunk_size, self.dist.kind,
                                   probe_ids=ex.prompt_ids + (ex.demo_ids[0] if ex.demo_ids else []),
                                   path=cfg.train.logprob_path)
        self.log(f"[srft] {self.scorer.describe()}")
        self.one_pass, why = self._pi_old_mode()
        self.log("[srft] on-policy: pi_old is the update's own forward, detached, and the batch entropy comes from "
                 "the sampler (no separate pi_old pass)" if self.one_pass else
                 f"[srft] pi_old from a separate no-grad pass before the update ({why})")
        from srft.rollout import make_engine

        self.engine = make_engine(cfg.rollout.engine, self.unwrapped, self.tokenizer, cfg.rollout)
        corr = cfg.rollout.is_correction
        self.is_correction = corr == "tis" or (corr == "auto" and cfg.rollout.engine != "hf")
        if self.is_correction:
            self.log(f"[srft] on-policy term corrected for the sampler/trainer gap: truncated importance weights "
                     f"min(pi_old / mu, {cfg.rollout.is_cap:g}) (rollout.is_correction)")
        if self.dist.lockstep_generation and hasattr(self.engine, "lockstep"):
            self.engine.lockstep = self.dist.all
        self.sampler = PromptSampler(len(self.examples), cfg.train.seed)
        self.step = 0
        self.nonfinite_streak = 0  # consecutive steps whose updates were skipped (non-finite)
        self.eval_before: dict = {}
        self.eval_history: list[dict] = []
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", self.accelerator, use_trackers=log_with is not None,
                                     enabled=self.dist.is_main)
        if self.resume_from:
            self._restore(self.resume_from, resume_state)

    def _pi_old_mode(self) -> tuple[bool, str]:
        """Whether the separate pi_old pass can be skipped (one optimiser step per rollout batch, on
        the weights that sampled it), and why not."""
        t, o, r = self.cfg.train, self.cfg.objective, self.cfg.rollout
        if t.old_logprob_pass == "always":
            return False, "train.old_logprob_pass is always"
        if t.mini_batches > 1 or t.epochs_per_batch > 1:
            return False, "train.mini_batches or train.epochs_per_batch > 1: several updates per rollout batch"
        if r.engine == "vllm":
            return False, "the vllm engine returns no entropies, and its log-probs are another engine's"
        needs_batch_h = o.entropy_granularity == "batch" and ((o.sft_demo and o.w_sft == "entropy") or
                                                              (o.rl_self and o.w_rl == "entropy"))
        if needs_batch_h and r.n_rollouts == 0:
            return False, "the entropy weights' batch entropy comes from the demonstrations"
        return True, ""

    def _check_world_size(self) -> None:
        t, world = self.cfg.train, self.dist.world
        if t.prompts_per_step % (t.mini_batches * world):
            raise ValueError(f"train.prompts_per_step ({t.prompts_per_step}) must be divisible by train.mini_batches "
                             f"({t.mini_batches}) x the number of processes ({world}), so that every process gets "
                             f"the same number of whole groups in each mini-batch")

    # ------------------------------------------------------------------ resume
    def _resume_checkpoint(self) -> tuple[Path, dict]:
        """The newest complete checkpoint of the run folder and its trainer state; a
        TrainingError when there is none or the run is already complete."""
        ck = latest_checkpoint(self.out)
        if ck is None:
            raise TrainingError(
                f"--resume {self.out}: no complete checkpoint in {self.out / 'checkpoints'} (one is written every "
                f"train.save_every steps); nothing to resume. To start the run over: srft train --config "
                f"{self.out / 'config.yaml'} --output-dir {self.out} --train.overwrite true")
        state = ckpt.read_state(ck)
        if state["step"] >= self.cfg.train.max_steps:
            raise TrainingError(f"--resume {self.out}: checkpoint {ck.name} is at step {state['step']} and "
                                f"train.max_steps is {self.cfg.train.max_steps}: nothing left to train (pass "
                                f"--max-steps N with N > {state['step']} to train further)")
        return ck, state

    def _restore(self, ck: Path, state: dict) -> None:
        """Weights, optimiser, scheduler, every rank's random states (accelerate's load_state),
        prompt order, step and eval history of checkpoint `ck`."""
        if state["sampler"]["n"] != len(self.examples):
            raise TrainingError(f"--resume {self.out}: checkpoint {ck.name} was trained on {state['sampler']['n']} "
                                f"rows, the data now has {len(self.examples)} (data.* settings changed?)")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world:
            raise TrainingError(f"--resume {self.out}: checkpoint {ck.name} was written by {saved_world} process(es), "
                                f"this run has {self.dist.world}; resume with {saved_world} (the random states and "
                                f"any sharded optimiser state are per process)")
        ckpt.load_checkpoint(self.accelerator, ck)
        self._reapply_schedule()
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.eval_before = state.get("eval_before", {})
        self.eval_history = state.get("eval_history", [])
        if self.dist.is_main:
            ckpt.remove_partial_saves(self.out)
        self.dist.barrier()
        self.log(f"[srft] resuming {self.out} from checkpoint {ck.name} (step {self.step} of "
                 f"{self.cfg.train.max_steps})")

    def _reapply_schedule(self) -> None:
        """The learning rate of the next optimiser step under this run's schedule. A run resumed with
        an extended train.max_steps has another decay than the checkpoint's: without this, the first
        step after resuming would take the rate the old schedule left in the optimiser (0 at its end)."""
        sched = getattr(self.scheduler, "scheduler", self.scheduler)  # accelerate wraps the LambdaLR
        for group, base, fn in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(sched.last_epoch)
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _adapt_model(self, model):
        """Gradient checkpointing and LoRA (peft), as configured."""
        m = self.cfg.model
        if m.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if m.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            targets = m.lora_target_modules
            targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
            model = get_peft_model(model, LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                                                     target_modules=targets, task_type="CAUSAL_LM"))
            if m.gradient_checkpointing:
                model.enable_input_require_grads()
        return model

    @property
    def is_peft(self) -> bool:
        return hasattr(self.unwrapped, "peft_config")

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _eval_sets(self) -> dict[str, tuple[list[dict], Any]]:
        """{set name: (rows, reward)}: eval.dataset (scored by the run's reward), eval.benchmark (each
        data_source a set, scored by the math verifier), or the testbed's sets on the testbed."""
        e = self.cfg.eval
        if e.limit == 0:
            return {}
        sets: dict[str, tuple[list[dict], Any]] = {}
        if e.dataset is not None:
            d = self.cfg.data  # read with the training data's column names
            rows = load_rows(e.dataset, self.cfg.train.seed, need_answer=self.need_answer, columns={
                "prompt": d.prompt_column, "demonstration": d.demonstration_column, "answer": d.answer_column})
            sets["eval"] = (rows[: e.limit] if e.limit else rows, self.reward_fn)
        if e.benchmark is not None:
            from srft.benchmarks import by_source, load_problems
            from srft.math_reward import make_math_reward
            from srft.preflight import benchmark_files

            if e.protocol != "none":
                from srft.protocol import get_protocol, load_protocol_sets

                proto = get_protocol(e.protocol)
                # options shuffled with seed 0 whatever the training seed: every run sees the same prompts
                rows_by, _ = load_protocol_sets(benchmark_files(e.benchmark), proto, e.limit, seed=0)
                reward = make_math_reward(proto.multi_box)
                for s, rows in rows_by.items():
                    sets[s] = (rows, reward)
                    self.eval_settings[s] = {"k": proto.k_for(s), "temperature": proto.temperature,
                                             "top_p": proto.top_p}
            else:
                math_fn = make_math_reward(False)
                for f in benchmark_files(e.benchmark):
                    for s, ps in by_source(load_problems(f, e.limit, seed=self.cfg.train.seed)).items():
                        sets.setdefault(s, ([], math_fn))[0].extend({"prompt": p["prompt"], "answer": p["answer"]}
                                                                    for p in ps)
        if not sets and self.cfg.data.dataset == "testbed":
            from srft.evaluation import testbed_eval_sets

            sets = {k: (v, self.reward_fn) for k, v in testbed_eval_sets(e.limit).items()}
        return sets

    # ------------------------------------------------------------------ steps
    def _sample_groups(self) -> tuple[list[Sample], dict]:
        """This rank's groups of the step: global groups g with g % world == rank."""
        cfg, dist = self.cfg, self.dist
        K, D = cfg.rollout.n_rollouts, cfg.rollout.n_demos
        idx = self.sampler.next(cfg.train.prompts_per_step)  # the same on every rank
        mine = dist.shard(len(idx))
        exs = [(g, self.examples[idx[g]]) for g in mine]
        timings = {}
        t0 = time.perf_counter()
        roll_ids, roll_ent, roll_lp, finished = [], [], [], []
        if K > 0:
            t_sync = time.perf_counter()
            self.engine.sync_weights(self.unwrapped)
            timings["time/weight_sync"] = time.perf_counter() - t_sync
            if math.isfinite(getattr(self.engine, "last_sync_gap", float("nan"))):
                timings["rollout/sync_check_gap"] = self.engine.last_sync_gap
            params = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p,
                                    ignore_eos=cfg.rollout.ignore_eos, return_entropy=self.one_pass)
            seeds = [derive_seed(cfg.train.seed, "rollout", self.step, g * K + k) for g, _ in exs for k in range(K)]
            out = self.engine.generate([ex.prompt_ids for _, ex in exs for _ in range(K)], params, seed=seeds)
            roll_ids = [ids[m.bool()].tolist() for ids, m in zip(out.response_ids, out.response_mask)]
            roll_ent = ([e[m.bool()] for e, m in zip(out.entropy, out.response_mask)] if out.entropy is not None
                        else [None] * len(roll_ids))
            roll_lp = [lp[m.bool()] for lp, m in zip(out.logprobs, out.response_mask)]
            finished = out.finished.tolist()
        timings["time/rollout"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        samples, prompts, texts, col_rows = [], [], [], []
        for a, (g, ex) in enumerate(exs):
            for k in range(K):
                ids = roll_ids[a * K + k]
                texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
                samples.append(Sample(g, ex.prompt_ids, ids, False, entropy=roll_ent[a * K + k],
                                      sampler_logprobs=roll_lp[a * K + k], prompt=ex.prompt, text=texts[-1]))
                prompts.append(ex.prompt)
                col_rows.append(ex)
            for j in pick_demos(ex, D):
                samples.append(Sample(g, ex.prompt_ids, ex.demo_ids[j], True, prompt=ex.prompt, text=ex.demo_texts[j]))
                texts.append(ex.demo_texts[j])
                prompts.append(ex.prompt)
                col_rows.append(ex)
        keys = sorted({k for _, ex in exs for k in ex.columns})
        columns = {k: [ex.columns.get(k) for ex in col_rows] for k in keys}
        state = RewardState(global_step=self.step, max_steps=cfg.train.max_steps)
        rewards, n_none = (score_completions(self.reward_fn, prompts, texts, columns,
                                             completion_ids=[s.response_ids for s in samples], state=state)
                           if samples else ([], 0))
        group_ids = [s.group if (cfg.objective.demos_in_group or not s.is_demo) else -1 - i
                     for i, s in enumerate(samples)]  # demonstrations kept out: groups of one, A = 0
        adv = L.group_advantages(torch.tensor(rewards, dtype=torch.float32), torch.tensor(group_ids, dtype=torch.long),
                                 cfg.objective.adv_std_norm) if samples else torch.zeros(0)
        for s, r, a in zip(samples, rewards, adv.tolist()):
            s.reward, s.advantage = r, a
        n_sft_groups = 0.0
        if cfg.objective.sft_gate is not None and samples:  # HPT: SFT or RL per prompt
            active = L.gate_groups(torch.tensor([s.reward >= 1.0 for s in samples]),
                                   torch.tensor([s.group for s in samples]),
                                   torch.tensor([s.is_demo for s in samples]), cfg.objective.sft_gate)
            for s, on in zip(samples, active.tolist()):
                s.active = on
            n_sft_groups = float(len({s.group for s in samples if s.is_demo and s.active}))
        timings["time/reward"] = time.perf_counter() - t0

        roll = [s for s in samples if not s.is_demo]
        demo = [s for s in samples if s.is_demo]
        zero_groups = sum(1 for g, _ in exs if len({s.reward for s in samples if s.group == g}) <= 1)
        # global statistics: one all-reduce of sums and counts, one of maxima
        (r_sum, r_n, d_sum, d_n, acc, none, zg, ng, len_sum, clip, dlen, gen_tok, sft_g) = dist.sum([
            sum(s.reward for s in roll), len(roll), sum(s.reward for s in demo), len(demo),
            sum(float(s.reward >= 1.0) for s in roll), n_none, zero_groups, len(exs),
            sum(len(s.response_ids) for s in roll), sum(0.0 if f else 1.0 for f in finished),
            sum(len(s.response_ids) for s in demo), sum(len(s.response_ids) for s in roll), n_sft_groups])
        (max_len,) = dist.max([max([len(s.response_ids) for s in roll], default=0)])
        info = {
            **timings,
            "reward/mean": _ratio(r_sum, r_n),
            "reward/demo": _ratio(d_sum, d_n),
            "reward/accuracy": _ratio(acc, r_n),
            "reward/none": float(none),
            "advantage/zero_groups": zg / max(1.0, ng),
            "response_length/mean": _ratio(len_sum, r_n),
            "response_length/max": float(max_len),
            "response_length/clip_ratio": _ratio(clip, r_n),
            "response_length/demo": _ratio(dlen, d_n),
            "_gen_tokens": gen_tok,
        }
        if cfg.objective.sft_gate is not None:
            info["gate/sft_share"] = sft_g / max(1.0, ng)
        if cfg.train.save_rollouts:
            self._dump_rollouts(samples, idx)
        return samples, info

    def _dump_rollouts(self, samples: list[Sample], idx: list[int]) -> None:
        """rollouts.jsonl: one line per step with every sample of every rank, in global group order."""
        local = [{"group": s.group, "prompt_index": self.examples[idx[s.group]].index, "demo": s.is_demo,
                  "response_ids": s.response_ids, "reward": s.reward, "advantage": s.advantage}
                 for s in samples]
        rows = sorted(self.dist.gather(local), key=lambda r: r["group"])  # stable: order within a group kept
        if self.dist.is_main:
            with open(self.out / "rollouts.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step + 1, "samples": rows}) + "\n")

    def _micro_batches(self, samples: list[Sample]):
        """Chunks of train.micro_batch_size samples; with train.micro_batch_grouping "length", of
        samples of similar lengths (sorted by response, then prompt length), so that little of each
        padded (B, T) batch is padding. As many chunks as before on every rank, whatever the lengths."""
        mb = self.cfg.train.micro_batch_size
        if self.cfg.train.micro_batch_grouping == "length":
            samples = sorted(samples, key=lambda s: (len(s.response_ids), len(s.prompt_ids)))
        for i in range(0, len(samples), mb):
            yield samples[i : i + mb]

    @torch.no_grad()
    def _old_logprobs(self, samples: list[Sample]) -> dict:
        """pi_old and entropies of every sample, before the update."""
        t0 = time.perf_counter()
        pad = self.tokenizer.pad_token_id
        sums = {"roll": [0.0, 0.0], "demo": [0.0, 0.0]}
        for chunk in self._micro_batches(samples):
            batch = collate(chunk, pad, with_old=False)
            lp, ent = self.scorer(batch)
            for i, s in enumerate(chunk):
                n = len(s.response_ids)
                s.old_logprobs = lp[i, :n].detach().cpu()
                s.entropy = ent[i, :n].detach().cpu()
                key = "demo" if s.is_demo else "roll"
                sums[key][0] += float(s.entropy.sum())
                sums[key][1] += n
        totals = self.dist.sum([sums["roll"][0], sums["roll"][1], sums["demo"][0], sums["demo"][1]])
        return {"entropy/rollout": _ratio(totals[0], totals[1]), "entropy/demo": _ratio(totals[2], totals[3]),
                "time/old_logprob": time.perf_counter() - t0}

    def _sampler_entropy(self, samples: list[Sample]) -> dict:
        """One-pass mode: the rollouts' mean token entropy as the sampler saw it (the same weights)."""
        roll = [s for s in samples if not s.is_demo]
        tot, n = self.dist.sum([sum(float(s.entropy.sum()) for s in roll), sum(len(s.response_ids) for s in roll)])
        return {"entropy/rollout": _ratio(tot, n), "time/old_logprob": 0.0}

    def _update(self, samples: list[Sample], batch_entropy: Optional[float], one_pass: bool = False) -> dict:
        """The optimiser steps of one rollout batch. one_pass: pi_old is the forward's own detached
        log-prob (on-policy, one update), and the demonstrations' entropy is measured here."""
        cfg, acc = self.cfg, self.accelerator
        t0 = time.perf_counter()
        pad = self.tokenizer.pad_token_id
        groups = sorted({s.group for s in samples})  # this rank's share of every mini-batch is contiguous here
        per_mb = len(groups) // cfg.train.mini_batches
        sums: dict[str, float] = {}
        n_updates, grad_norms, skipped, trained_tokens, padded_tokens = 0, [], 0, 0, 0
        demo_h = [0.0, 0.0]  # entropy sum and token count over demonstrations (one-pass mode)
        gap = [0.0, 0.0, 0.0]  # sampler/trainer: sum |log pi_old - log mu|, tokens, max ratio (first epoch)
        entropy_grad = cfg.objective.entropy_bonus > 0
        max_len = cfg.objective.max_len_norm or max(cfg.rollout.max_new_tokens, cfg.data.max_demo_tokens)
        scale = float(self.dist.world)  # the engines average gradients over ranks; the loss is a global sum
        sft_mix = self.sft_mix_weight()  # CHORD's mu (None for other objectives)
        for epoch in range(cfg.train.epochs_per_batch):
            for m in range(cfg.train.mini_batches):
                chosen = set(groups[m * per_mb : (m + 1) * per_mb])
                mini = [s for s in samples if s.group in chosen]
                on = [s for s in mini if s.active]  # the counts of what enters the loss
                demo_tok = sum(len(s.response_ids) for s in on if s.is_demo)
                demo_seq = sum(1 for s in on if s.is_demo and s.response_ids)
                roll_tok = sum(len(s.response_ids) for s in on if not s.is_demo)
                roll_seq = sum(1 for s in on if not s.is_demo and s.response_ids)
                counts = self.dist.sum([demo_tok, demo_seq, roll_tok, roll_seq])
                norms = Normalizers(*counts, max_len=max_len, batch_entropy=batch_entropy)
                self.optimizer.zero_grad(set_to_none=True)
                local: dict[str, float] = {}
                chunks = list(self._micro_batches(mini))  # as many on every rank: equal shares of equal groups
                for c, chunk in enumerate(chunks):
                    batch = collate(chunk, pad)
                    with self.dist.micro_step(self.model, last=c == len(chunks) - 1):
                        lp, ent = self.scorer(batch, entropy_grad=entropy_grad)
                        dev = lp.device
                        old = lp.detach() if one_pass else batch["old_logprobs"].to(dev)
                        mask, is_demo = batch["mask"].to(dev), batch["is_demo"].to(dev)
                        mu = batch["sampler_logprobs"].to(dev)
                        if epoch == 0:
                            roll = mask * (~is_demo).to(mask.dtype).unsqueeze(-1)
                            g_sum, g_n, g_max = L.logprob_gap(old, mu, roll)
                            gap[0], gap[1], gap[2] = gap[0] + float(g_sum), gap[1] + float(g_n), max(gap[2], float(g_max))
                        w_is = L.truncated_is_weight(old, mu, cfg.rollout.is_cap) if self.is_correction else None
                        active = batch["active"].to(dev) if cfg.objective.sft_gate is not None else None
                        x = LossInputs(lp, ent, old, batch["advantages"].to(dev), mask, is_demo, w_is, active)
                        loss, mets = compute_loss(x, norms, cfg.objective, sft_mix)
                        acc.backward(loss * scale)
                    trained_tokens += int(batch["attention_mask"].sum())
                    padded_tokens += batch["attention_mask"].numel()
                    if one_pass:
                        dmask = batch["mask"].to(ent.device) * batch["is_demo"].to(ent.device).unsqueeze(-1)
                        demo_h[0] += float((ent.detach() * dmask).sum())
                        demo_h[1] += float(dmask.sum())
                    for k, v in mets.items():
                        local[k] = local.get(k, 0.0) + float(v)
                keys = sorted(local)
                step_metrics = dict(zip(keys, self.dist.sum([local[k] for k in keys])))  # additive over ranks
                gn = acc.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                gn = float(gn) if gn is not None else 0.0  # DeepSpeed clips (and steps) in its own engine
                if not math.isfinite(gn) or not math.isfinite(step_metrics.get("loss/total", 0.0)):
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    self.log(f"[srft] step {self.step + 1}: non-finite loss or gradient (loss/total "
                             f"{step_metrics.get('loss/total', float('nan')):.4g}, grad norm {gn:.4g}), update skipped")
                else:
                    self.optimizer.step()
                self.scheduler.step()
                grad_norms.append(gn)
                n_updates += 1
                for k, v in step_metrics.items():
                    sums[k] = sums.get(k, 0.0) + v
        out = {k: v / max(1, n_updates) for k, v in sums.items()}
        out["policy/grad_norm"] = _mean(grad_norms)
        if sft_mix is not None:
            out["weight/mu"] = sft_mix
        out["optim/skipped_updates"] = float(skipped)
        out["time/update"] = time.perf_counter() - t0
        tokens, padded, h_sum, h_n, g_sum, g_n = self.dist.sum([trained_tokens, padded_tokens, *demo_h, *gap[:2]])
        (g_max,) = self.dist.max([gap[2]])
        if g_n:
            out["rollout/logprob_gap"] = g_sum / g_n
            out["rollout/max_ratio"] = g_max
        out["_train_tokens"] = tokens
        out["train/pad_fraction"] = 1.0 - _ratio(tokens, padded) if padded else 0.0
        out["_demo_entropy"] = _ratio(h_sum, h_n)
        return out

    def sft_mix_weight(self) -> Optional[float]:
        """CHORD's mu at this step (objective.mix_schedule "chord"), else None. Its warm-up and decay
        are shares of train.max_steps."""
        o, n = self.cfg.objective, self.cfg.train.max_steps
        if o.mix_schedule != "chord":
            return None
        return L.chord_mu(self.step, int(round(o.mu_warmup * n)), int(round(o.mu_decay * n)), o.mu_peak, o.mu_valley)

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        lr = self.scheduler.get_last_lr()[0]
        samples, info = self._sample_groups()
        self.last_samples = samples
        one_pass = self.one_pass and all(s.entropy is not None for s in samples if not s.is_demo)
        ent = self._sampler_entropy(samples) if one_pass else self._old_logprobs(samples)
        batch_entropy = (ent["entropy/rollout"] if math.isfinite(ent["entropy/rollout"])
                         else ent.get("entropy/demo", float("nan")))  # one-pass mode: never needed from demos
        upd = self._update(samples, batch_entropy if math.isfinite(batch_entropy) else None, one_pass)
        if one_pass:
            ent["entropy/demo"] = upd.pop("_demo_entropy")
        upd.pop("_demo_entropy", None)
        self.step += 1
        m = {**info, **ent, **upd}
        m["time/step"] = time.perf_counter() - t0
        gen, trn = m.pop("_gen_tokens"), m.pop("_train_tokens")
        m["throughput/rollout_tokens_per_s"] = gen / max(m["time/rollout"], 1e-9)
        m["throughput/train_tokens_per_s"] = trn / max(m["time/update"], 1e-9)
        m["throughput/tokens_per_s"] = (gen + trn) / max(m["time/step"], 1e-9)
        m["optim/lr"] = lr
        m["dist/world_size"] = float(self.dist.world)
        if torch.cuda.is_available():
            m["memory/peak_allocated_gib"] = self.dist.max([torch.cuda.max_memory_allocated() / 2**30])[0]
        return m

    def _stop_if_nonfinite(self) -> None:
        """train.max_nonfinite_steps steps in a row with skipped updates stop the run."""
        limit = self.cfg.train.max_nonfinite_steps
        if self.nonfinite_streak >= limit:
            last = latest_checkpoint(self.out)
            raise TrainingError(
                f"step {self.step}: the loss or gradient was not finite for {self.nonfinite_streak} steps in a row "
                f"(train.max_nonfinite_steps={limit}); the run stopped. Last good checkpoint: "
                f"{last if last else 'none (train.save_every)'}; lower optim.lr or check the data, then "
                f"srft train --resume {self.out}")

    # ------------------------------------------------------------------ eval, save
    def evaluate(self) -> dict:
        from srft.evaluation import evaluate

        if not self.eval_sets:
            return {}
        self.engine.sync_weights(self.unwrapped)
        out = {}
        for name, (rows, reward) in self.eval_sets.items():
            cfg = replace(self.cfg.eval, **self.eval_settings.get(name, {}))  # a protocol's per-source k
            out.update(evaluate(self.unwrapped, self.tokenizer, {name: rows}, reward, cfg,
                                engine=self.engine, seed=self.cfg.train.seed, dist=self.dist,
                                system_prompt=self.cfg.data.system_prompt, chat=self.cfg.data.chat_template,
                                state=RewardState(global_step=self.step, max_steps=self.cfg.train.max_steps)))
        return out

    def _check_finite(self, what: str) -> None:
        """Refuse to save non-finite weights (the previous checkpoint stays as it is); every rank
        checks its own parameters (its shard, when sharded) and all learn the answer."""
        bad = next((name for name, p in self.unwrapped.named_parameters() if not torch.isfinite(p).all()), None)
        if self.dist.any(bad is not None):
            last = latest_checkpoint(self.out)
            raise TrainingError(f"step {self.step}: parameter {bad or '(on another process)'} is not finite; the "
                                f"{what} was not saved (last good checkpoint: {last or 'none'})")

    def trainer_state(self) -> dict:
        return {"step": self.step, "sampler": self.sampler.state_dict(), "model": self.model_path,
                "nonfinite_streak": self.nonfinite_streak, "eval_before": self.eval_before,
                "eval_history": self.eval_history, "world_size": self.dist.world}

    def save_checkpoint(self) -> Path:
        """checkpoints/step-NNNNNN (see srft.checkpoint): every rank's state through accelerate,
        then trainer_state.json; written in a .tmp folder and renamed into place, so a crash
        mid-save leaves the previous checkpoints as they were. The newest train.save_total_limit
        checkpoints are kept."""
        self._check_finite("checkpoint")
        return ckpt.save_checkpoint(self.accelerator, self.dist, self.out, self.step, self.trainer_state(),
                                    self.tokenizer, self.unwrapped, self.cfg.train.save_total_limit)

    def save_final(self) -> Path:
        """The trained model as a plain Hugging Face folder (safetensors), whatever the sharding.
        With LoRA: the adapter in final/adapter and the merged model in final/ (so final/ loads
        with AutoModelForCausalLM either way)."""
        self._check_finite("final model")
        return ckpt.save_final_model(self.accelerator, self.dist, self.model, self.unwrapped, self.tokenizer,
                                     self.out)

    def train(self) -> dict:
        from tqdm.auto import tqdm

        cfg, dist = self.cfg, self.dist
        if dist.is_main:
            save_config(cfg, self.out / "config.yaml")
        if self.metrics.use_trackers:
            hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(to_dict(cfg)).items()}
            self.accelerator.init_trackers("srft", config=hp)
        t_start = time.perf_counter()
        completions = CompletionLog(self.out / "completions.jsonl", cfg.train.log_completions, cfg.train.log_every,
                                    cfg.train.seed, enabled=dist.is_main)
        if self.resume_from:  # the "before" evaluation and the history come from the checkpoint
            if dist.is_main:
                truncate_metrics(self.out / "metrics.jsonl", self.step)
                if (self.out / "rollouts.jsonl").exists():
                    truncate_metrics(self.out / "rollouts.jsonl", self.step)
                if (self.out / "completions.jsonl").exists():
                    truncate_metrics(self.out / "completions.jsonl", self.step, one_row_per_step=False)
            before, history = self.eval_before, self.eval_history
        else:
            if dist.is_main:
                (self.out / "metrics.jsonl").write_text("")
                if cfg.train.save_rollouts:
                    (self.out / "rollouts.jsonl").write_text("")
                completions.start(fresh=True)
            before = self.evaluate()
            history = [{"step": 0, **{k: v["accuracy"] for k, v in before.items()}}] if before else []
        self.eval_before, self.eval_history = before, history
        self.log(f"[srft] preset={cfg.train.preset} model={self.model_path} steps={cfg.train.max_steps} "
                 f"prompts/step={cfg.train.prompts_per_step} group={cfg.rollout.n_rollouts}+{cfg.rollout.n_demos} "
                 f"processes={dist.world}")
        bar = tqdm(range(self.step, cfg.train.max_steps), desc=f"train {cfg.train.preset}",
                   disable=None if dist.is_main else True)
        after = before
        progress = ProgressLog(self.log, cfg.train.max_steps, cfg.train.log_every, self.step, time.perf_counter())
        for _ in bar:
            m = self.train_step()
            self.nonfinite_streak = self.nonfinite_streak + 1 if m["optim/skipped_updates"] else 0
            last = self.step >= cfg.train.max_steps
            if last or (cfg.train.eval_every and self.step % cfg.train.eval_every == 0):
                res = self.evaluate()
                for k, v in res.items():
                    m[f"eval/{k}/accuracy"] = v["accuracy"]
                if res:
                    history.append({"step": self.step, **{k: v["accuracy"] for k, v in res.items()}})
                if last:
                    after = res
            self.metrics.write(self.step, m)
            completions.write(self.step, self.last_samples, cfg.train.max_steps)
            progress.step(self.step, m, time.perf_counter())
            self._stop_if_nonfinite()
            bar.set_postfix(reward=f"{m['reward/mean']:.2f}" if math.isfinite(m["reward/mean"]) else "-",
                            H=f"{m['entropy/rollout']:.2f}" if math.isfinite(m["entropy/rollout"]) else "-")
            if cfg.train.save_every and self.step % cfg.train.save_every == 0:
                self.save_checkpoint()
        final = self.save_final()
        elapsed = time.perf_counter() - t_start
        result = {"preset": cfg.train.preset, "steps": self.step, "model": self.model_path, "final": str(final),
                  "train_seconds": round(elapsed, 1), "world_size": dist.world, "before": before, "after": after,
                  "history": history}
        if _uses_testbed(cfg):
            from srft.testbed.tasks import TESTBED_VERSION

            result["testbed_version"] = TESTBED_VERSION  # its tasks, splits and base model change between versions
        if dist.is_main:
            (self.out / "eval.json").write_text(json.dumps(result, indent=2))
            from srft.plots import make_plots

            make_plots(self.out)
            if cfg.train.push_to_hub:
                from srft.hub import push_to_hub

                result["hub"] = push_to_hub(self.out, cfg.train.hub_model_id or self.out.resolve().name,
                                            private=cfg.train.hub_private, log=self.log)
        if self.metrics.use_trackers:
            self.accelerator.end_training()
        dist.barrier()
        return result


def _uses_testbed(cfg: Config) -> bool:
    data, model = cfg.data.dataset, cfg.model.name_or_path
    return (isinstance(data, str) and data.split(":")[0] == "testbed") or model == "testbed"


def _keep_matplotlib_cache_in(run_dir: Path) -> None:
    """matplotlib (plots; also imported by reasoning-gym) writes its font cache to ~/.cache/matplotlib
    unless MPLCONFIGDIR says otherwise; a run keeps it in its own folder (run_dir/.matplotlib), unless
    MPLCONFIGDIR is set or matplotlib is already loaded in this process."""
    import sys

    if "matplotlib" not in sys.modules:
        os.environ.setdefault("MPLCONFIGDIR", str(Path(run_dir).resolve() / ".matplotlib"))


def _silent(*_args, **_kwargs) -> None:
    """The log of processes other than the main one."""


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")
