"""The training loop: one rollout batch per step, on accelerate.

Each step reads like the algorithm (SRFT, arXiv 2506.19767, Sec. 4), one module a stage
(docs/architecture.md "The training step"):

1. take `train.prompts_per_step` prompts (`srft.data.PromptSampler`);
2-5. rollouts, demonstrations in the same group, rewards, advantages: `srft.experience`;
6-7. pi_old and entropies, then `train.mini_batches` optimiser steps on
   `srft.objective.compute_loss`: `srft.update`;
8. metrics, evaluation (`srft.evaluation`), checkpoints (`srft.checkpoint`), and at the end
   final/, eval.json and the plots (`srft.run_dir`).

What the run needs before the model loads (config with its preset, rewards, data, evaluation
sets, the resume point) comes ready-made from `srft.run_inputs.prepare_run`. This class wires
the stages together and owns the loop's state: the step, the prompt order, the evaluation
history and the count of non-finite steps.

Several processes (`torchrun` / `accelerate launch`; docs/scaling.md): rank-awareness lives in
`srft.distributed`; only the main process writes files and prints.

Reliability (docs/reliability.md): checkpoints are atomic (`srft.checkpoint`); `train.resume`
(`srft train --resume DIR`) restores the newest complete one (weights, optimiser, schedule,
prompt order, step, eval history, every rank's random states) so a resumed run ends as the
uninterrupted one would; a step with a non-finite loss or gradient is skipped,
`train.max_nonfinite_steps` in a row raise `TrainingError`, and non-finite weights are never
saved.

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

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from srft import checkpoint as ckpt
from srft.checkpoint import latest_checkpoint  # noqa: F401 (re-exported: tests and scripts import it from here)
from srft.config import Config, flatten, report_targets, to_dict
from srft.data import PromptSampler, prepare_examples
from srft.distributed import Dist
from srft.errors import TrainingError
from srft.callbacks import Callbacks
from srft.evaluation import eval_metrics, eval_score, evaluate
from srft.experience import ExperienceMaker
from srft.metrics import MetricsWriter
from srft.models import adapt_model, load_model_and_tokenizer, tokenizer_for
from srft.models import check_model_folder, resolve_model_path  # noqa: F401 (re-exported)
from srft.policy import PolicyScorer
from srft.rewards import RewardState
from srft.rollout import make_engine
from srft.run_dir import finish_run, refuse_used_output_dir, start_step_logs  # noqa: F401 (re-exported)
from srft.run_dir import hold_run_folder, holding_run_folder, releasing_run_folder_on_error, save_run_config
from srft.run_inputs import RunInputs, prepare_run
from srft.resume_rules import record_resume
from srft.run_log import CompletionLog, ProgressLog
from srft.run_summary import check_context, dropped_warning, settings_lines
from srft.samples import Sample, collate  # noqa: F401 (re-exported)
from srft.update import Updater, make_optimizer, old_logprobs, pi_old_mode, reapply_schedule, sampler_entropy


class Trainer:
    @releasing_run_folder_on_error
    def __init__(self, cfg: Config, log=print, model=None, tokenizer=None, inputs: Optional[RunInputs] = None,
                 callbacks=()):
        """`model` / `tokenizer`: objects to train instead of loading cfg.model.name_or_path (the
        Python API, `srft.SRFTTrainer`); the tokenizer is then loaded from the model's folder when
        not given. `inputs`: the run's inputs when already built (`srft.run_inputs.prepare_run`).
        `callbacks`: transformers-style callbacks (`srft.callbacks`)."""
        inputs = inputs or prepare_run(cfg, model_given=model is not None)
        # the run folder's one owner (main process), before anything is written or loaded (srft.run_dir)
        self.run_lock = hold_run_folder(inputs, log)
        self.cfg = cfg = inputs.cfg
        self.reward_fn, self.out = inputs.reward_fn, Path(cfg.train.output_dir)
        self.resume_from, self.resume_changes = inputs.resume_from, inputs.resume_changes
        self.train_rows = inputs.rows
        set_seed(cfg.train.seed)
        log_with = report_targets(cfg.train.report_to) or None
        # step_scheduler_with_optimizer=False: accelerate would otherwise step the schedule once per
        # process at every optimiser step; srft's schedule counts optimiser steps, whatever the world size
        self.accelerator = Accelerator(log_with=log_with, project_dir=str(self.out),
                                       step_scheduler_with_optimizer=False)
        self.dist = Dist(self.accelerator)
        self.dist.barrier()  # every rank has checked the output folder before the main process writes to it
        self.log = log if self.dist.is_main else _silent
        self._check_world_size()
        self.log(f"[srft] {self.dist.describe()}")
        model = adapt_model(self._load_model(model, tokenizer), cfg.model)
        for line in settings_lines(cfg, self.reward_fn, len(inputs.rows), str(cfg.model.name_or_path),
                                   self.tokenizer):
            self.log(line)
        if self.resume_from:
            self.model_path = inputs.resume_state["model"]
        self.examples = prepare_examples(inputs.rows, self.tokenizer, cfg.data, cfg.rollout.n_demos > 0, log=self.log,
                                         n_demos=cfg.rollout.n_demos, need_answer=inputs.need_answer)
        warning = dropped_warning(cfg, len(inputs.rows), len(self.examples))
        if warning:
            self.log(warning)
        check_context(self.examples, cfg, model)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.eval_sets, self.eval_settings, self.eval_kinds = inputs.eval.sets, inputs.eval.settings, inputs.eval.metrics
        self._build_stages(model)
        self.sampler = PromptSampler(len(self.examples), cfg.train.seed)
        self.step = 0
        self.nonfinite_streak = 0  # consecutive steps whose updates were skipped (non-finite)
        self.eval_before: dict = {}
        self.eval_after: dict | None = None  # the last step's evaluation (kept in its checkpoint)
        self.eval_history: list[dict] = []
        self.last_eval: tuple[int, dict] = (-1, {})  # the step of the newest evaluation, and its results
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", self.accelerator, use_trackers=log_with is not None,
                                     enabled=self.dist.is_main)
        self.callbacks = Callbacks(callbacks, cfg, cfg.train.max_steps, enabled=self.dist.is_main)
        if self.resume_from:
            self._restore(self.resume_from, inputs.resume_state)

    def _load_model(self, model, tokenizer):
        """The model and tokenizer: loaded from cfg.model.name_or_path (the testbed base model is
        built and cached once, by the main process), or the objects given."""
        if model is None:
            with self.dist.main_first():
                model, self.tokenizer, self.model_path = load_model_and_tokenizer(self.cfg.model.name_or_path,
                                                                                  self.cfg.model, self.log)
        else:
            self.tokenizer, self.model_path = tokenizer_for(model, tokenizer)
        return model

    def _build_stages(self, model) -> None:
        """Optimiser and schedule, accelerate's wrapping, the scorer, the engine, and the two stages
        of the step (experience making, the update)."""
        cfg = self.cfg
        self.total_optim_steps = cfg.train.max_steps * cfg.train.mini_batches * cfg.train.epochs_per_batch
        opt, sched = make_optimizer(model, cfg.optim, self.total_optim_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, opt, sched)
        ex = self.examples[0]
        self.scorer = PolicyScorer(self.model, self.unwrapped, cfg.rollout.temperature,
                                   cfg.train.logprob_chunk_size, self.dist.kind,
                                   probe_ids=ex.prompt_ids + (ex.demo_ids[0] if ex.demo_ids else []),
                                   path=cfg.train.logprob_path)
        self.log(f"[srft] {self.scorer.describe()}")
        self.one_pass, why = pi_old_mode(cfg)
        self.log("[srft] on-policy: pi_old is the update's own forward, detached, and the batch entropy comes from "
                 "the sampler (no separate pi_old pass)" if self.one_pass else
                 f"[srft] pi_old from a separate no-grad pass before the update ({why})")
        self.engine = make_engine(cfg.rollout.engine, self.unwrapped, self.tokenizer, cfg.rollout)
        self.updater = Updater(cfg, self.accelerator, self.model, self.optimizer, self.scheduler, self.scorer,
                               self.dist, self.tokenizer.pad_token_id, self.log)
        if self.updater.is_cap is not None:
            self.log(f"[srft] on-policy term corrected for the sampler/trainer gap: truncated importance weights "
                     f"min(pi_old / mu, {cfg.rollout.is_cap:g}) (rollout.is_correction)")
        if self.dist.lockstep_generation and hasattr(self.engine, "lockstep"):
            self.engine.lockstep = self.dist.all
        self.experience = ExperienceMaker(cfg, self.examples, self.engine, self.tokenizer, self.reward_fn, self.dist,
                                          self.out)

    def _check_world_size(self) -> None:
        t, world = self.cfg.train, self.dist.world
        if t.prompts_per_step % (t.mini_batches * world):
            raise ValueError(f"train.prompts_per_step ({t.prompts_per_step}) must be divisible by train.mini_batches "
                             f"({t.mini_batches}) x the number of processes ({world}), so that every process gets "
                             f"the same number of whole groups in each mini-batch")

    def _restore(self, ck: Path, state: dict) -> None:
        """Weights, optimiser, scheduler, every rank's random states (accelerate's load_state),
        prompt order, step and eval history of checkpoint `ck`."""
        ckpt.check_resumable(self.out, ck, state, len(self.examples), self.dist.world)
        ckpt.load_checkpoint(self.accelerator, ck)
        reapply_schedule(self.optimizer, self.scheduler)
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.eval_before = state.get("eval_before", {})
        self.eval_history = state.get("eval_history", [])
        self.eval_after = state.get("eval_after")
        damaged = ckpt.remove_partial_saves(self.out, ck) if self.dist.is_main else []
        self.dist.barrier()
        for line in damaged:
            self.log(line)
        self.log(ckpt.resume_message(self.out, ck, self.step, self.cfg.train.max_steps))

    @property
    def is_peft(self) -> bool:
        return hasattr(self.unwrapped, "peft_config")

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ the step
    def make_experience(self) -> tuple[list[Sample], dict]:
        """Steps 1-5: the step's prompts, then this rank's samples (`srft.experience`)."""
        idx = self.sampler.next(self.cfg.train.prompts_per_step)  # the same on every rank
        return self.experience.make(self.step, idx, self.unwrapped, return_entropy=self.one_pass)

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        lr = self.scheduler.get_last_lr()[0]
        samples, info = self.make_experience()
        self.last_samples = samples
        one_pass = self.one_pass and all(s.entropy is not None for s in samples if not s.is_demo)
        pad = self.tokenizer.pad_token_id
        ent = (sampler_entropy(samples, self.dist) if one_pass else
               old_logprobs(self.scorer, samples, pad, self.dist, self.cfg.train))
        batch_entropy = (ent["entropy/rollout"] if math.isfinite(ent["entropy/rollout"])
                         else ent.get("entropy/demo", float("nan")))  # one-pass mode: never needed from demos
        upd = self.updater.update(samples, batch_entropy if math.isfinite(batch_entropy) else None, one_pass,
                                  self.step)
        if one_pass:
            ent["entropy/demo"] = upd.pop("_demo_entropy")
        upd.pop("_demo_entropy", None)
        self.step += 1
        return self._step_metrics({**info, **ent, **upd}, t0, lr)

    def _step_metrics(self, m: dict, t0: float, lr: float) -> dict:
        """Time, throughput, learning rate, world size and GPU memory of the step."""
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
        if not self.eval_sets:
            return {}
        self.engine.sync_weights(self.unwrapped)
        out = {}
        for name, (rows, reward) in self.eval_sets.items():
            cfg = replace(self.cfg.eval, **self.eval_settings.get(name, {}))  # a protocol's per-source k
            out.update(evaluate(self.unwrapped, self.tokenizer, {name: rows}, reward, cfg,
                                engine=self.engine, seed=self.cfg.train.seed, dist=self.dist,
                                system_prompt=self.cfg.data.system_prompt, chat=self.cfg.data.chat_template,
                                state=RewardState(global_step=self.step, max_steps=self.cfg.train.max_steps),
                                metric=self.eval_kinds.get(name, "accuracy")))
        return out

    def trainer_state(self) -> dict:
        return ckpt.trainer_state(self.step, self.sampler.state_dict(), self.model_path, self.nonfinite_streak,
                                  self.eval_before, self.eval_history, self.dist.world,
                                  eval_after=self.eval_after if self.step >= self.cfg.train.max_steps else None)

    def save_checkpoint(self) -> Path:
        """checkpoints/step-NNNNNN (see srft.checkpoint): every rank's state through accelerate,
        then trainer_state.json; written in a .tmp folder and renamed into place, so a crash
        mid-save leaves the previous checkpoints as they were. The newest train.save_total_limit
        checkpoints are kept."""
        ckpt.check_finite(self.unwrapped, self.dist, self.out, self.step, "checkpoint")
        return ckpt.save_checkpoint(self.accelerator, self.dist, self.out, self.step, self.trainer_state(),
                                    self.tokenizer, self.unwrapped, self.cfg.train.save_total_limit)

    def save_final(self) -> Path:
        """The trained model as a plain Hugging Face folder (safetensors), whatever the sharding.
        With LoRA: the adapter in final/adapter and the merged model in final/ (so final/ loads
        with AutoModelForCausalLM either way)."""
        ckpt.check_finite(self.unwrapped, self.dist, self.out, self.step, "final model")
        return ckpt.save_final_model(self.accelerator, self.dist, self.model, self.unwrapped, self.tokenizer,
                                     self.out)

    # ------------------------------------------------------------------ the loop
    def _start(self) -> CompletionLog:
        """The run's files before its first step: config.yaml, trackers, the step logs (new or cut
        back to the checkpoint), and the evaluation before training (a resumed run has it)."""
        cfg, dist = self.cfg, self.dist
        if dist.is_main:  # (in-memory datasets written beside it, so that it re-runs)
            save_run_config(cfg, self.out, self.train_rows, self.eval_sets.get("eval", (None,))[0])
        if self.metrics.use_trackers:
            hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(to_dict(cfg)).items()}
            self.accelerator.init_trackers("srft", config=hp)
        completions = CompletionLog(self.out / "completions.jsonl", cfg.train.log_completions, cfg.train.log_every,
                                    cfg.train.seed, enabled=dist.is_main)
        if dist.is_main:
            start_step_logs(self.out, self.step, bool(self.resume_from), cfg.train.save_rollouts)
            if self.resume_from:
                record_resume(self.out, self.step, self.resume_changes)
            if not self.resume_from:
                completions.start(fresh=True)
        if not self.resume_from:  # a resumed run's "before" evaluation and history come from the checkpoint
            self.eval_before = self.evaluate()
            self.eval_history = ([{"step": 0, **{k: eval_score(v)[1] for k, v in self.eval_before.items()}}]
                                 if self.eval_before else [])
            scores = eval_metrics(self.eval_before)
            self.metrics.log_trackers(0, scores)  # the evaluation before training, at step 0
            self.callbacks.evaluated(0, scores)
        self.log(f"[srft] preset={cfg.train.preset} model={self.model_path} steps={cfg.train.max_steps} "
                 f"prompts/step={cfg.train.prompts_per_step} group={cfg.rollout.n_rollouts}+{cfg.rollout.n_demos} "
                 f"processes={dist.world}")
        return completions

    def _after_step(self, m: dict, force: bool = False) -> Optional[dict]:
        """Evaluation when due (its scores join the step's metrics and the history); returns
        the results at the last step."""
        t, last = self.cfg.train, self.step >= self.cfg.train.max_steps
        if not (force or last or (t.eval_every and self.step % t.eval_every == 0)):
            return None
        res = self.evaluate()
        self.last_eval = (self.step, res)
        m.update(eval_metrics(res))
        if res:
            self.eval_history.append({"step": self.step, **{k: eval_score(v)[1] for k, v in res.items()}})
            self.callbacks.evaluated(self.step, eval_metrics(res))
        return res if last else None

    @holding_run_folder
    def train(self) -> dict:
        cfg, dist = self.cfg, self.dist
        t_start = time.perf_counter()
        completions = self._start()
        bar = tqdm(range(self.step, cfg.train.max_steps), desc=f"train {cfg.train.preset}",
                   disable=None if dist.is_main else True)
        after = self.eval_before
        if self.step >= cfg.train.max_steps:  # resumed after its last step: only the run's end is left to write
            after = self.eval_after if self.eval_after is not None else self.evaluate()
        progress = ProgressLog(self.log, cfg.train.max_steps, cfg.train.log_every, self.step, time.perf_counter())
        self.callbacks.train_begin(self.step)
        for _ in bar:
            m = self.train_step()
            self.nonfinite_streak = self.nonfinite_streak + 1 if m["optim/skipped_updates"] else 0
            res = self._after_step(m)
            after = self.eval_after = res if res is not None else after
            self.metrics.write(self.step, m)
            completions.write(self.step, self.last_samples, cfg.train.max_steps)
            progress.step(self.step, m, time.perf_counter())
            self._stop_if_nonfinite()
            bar.set_postfix(reward=f"{m['reward/mean']:.2f}" if math.isfinite(m["reward/mean"]) else "-",
                            H=f"{m['entropy/rollout']:.2f}" if math.isfinite(m["entropy/rollout"]) else "-")
            if cfg.train.save_every and self.step % cfg.train.save_every == 0:
                self.save_checkpoint()
            if self._callbacks_stop(m):
                after = self._evaluate_at_stop(after)
                break
        final = self.save_final()
        result = {"preset": cfg.train.preset, "steps": self.step, "model": self.model_path, "final": str(final),
                  "train_seconds": round(time.perf_counter() - t_start, 1), "world_size": dist.world,
                  "before": self.eval_before, "after": after, "history": self.eval_history}
        if dist.is_main:
            result = finish_run(self.out, result, cfg, self.log)
        if self.metrics.use_trackers:
            self.accelerator.end_training()
        self.callbacks.train_end()
        dist.barrier()
        return result

    def _callbacks_stop(self, m: dict) -> bool:
        """The step's callbacks (main process); whether one asked to stop, agreed by every process."""
        stop = self.callbacks.step_end(self.step, m)
        return self.step < self.cfg.train.max_steps and bool(self.dist.max([float(stop)])[0])

    def _evaluate_at_stop(self, after: dict) -> dict:
        """A run stopped by a callback ends as one at its last step: evaluated (unless this step was)."""
        if self.last_eval[0] != self.step:
            self._after_step({}, force=True)
        return self.last_eval[1] or after


def _silent(*_args, **_kwargs) -> None:
    """The log of processes other than the main one."""
