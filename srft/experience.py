"""Experience making: the samples of one training step, steps 2-5 of the algorithm
(SRFT, arXiv 2506.19767, Sec. 4; docs/architecture.md "The training step"):

2. sample `rollout.n_rollouts` on-policy responses per prompt with the rollout engine
   (seeded per response from (seed, step, global index), so the samples do not depend
   on the number of processes), after syncing the trainer's weights into it;
3. put `rollout.n_demos` demonstrations of the prompt into the same group;
4. score rollouts and demonstrations with the reward function (TRL-style callables,
   `srft.rewards.score_completions`);
5. group advantages and, for methods that have one, the per-prompt gate: both computed by
   the objective (`srft.objective.advantages`, `srft.objective.sample_gate`), so a method
   that changes them does not change this module.

Several processes: the step's prompts are the same on every rank; global group g belongs
to rank g % world (`srft.distributed.Dist.shard`), so no group is split. The step's
statistics (reward, lengths, zero-advantage groups) are global: one all-reduce of sums and
one of maxima. With `train.save_rollouts`, every sample of every rank goes to
rollouts.jsonl, in global group order.

Testable without a model: the engine and the reward are arguments (`tests/test_experience.py`
uses a fake engine and a fake reward).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

from srft import objective
from srft.data import Example, pick_demos
from srft.distributed import Dist
from srft.rewards import RewardError, RewardState, score_completions
from srft.rollout.base import RolloutEngine, SamplingParams, derive_seed
from srft.samples import Sample, ratio


class ExperienceMaker:
    def __init__(self, cfg, examples: list[Example], engine: RolloutEngine, tokenizer, reward_fn: Callable,
                 dist: Dist, out_dir: Optional[Path] = None):
        """cfg: the run's `srft.config.Config`; examples: the prepared training rows
        (`srft.data.prepare_examples`); out_dir: where rollouts.jsonl goes (train.save_rollouts)."""
        self.cfg, self.examples, self.engine, self.tokenizer = cfg, examples, engine, tokenizer
        self.reward_fn, self.dist, self.out_dir = reward_fn, dist, out_dir

    def make(self, step: int, idx: list[int], policy, return_entropy: bool) -> tuple[list[Sample], dict]:
        """This rank's samples of the step's prompts `idx` (the same list on every rank: global
        group g is prompt idx[g]) and the step's metrics. `step`: optimiser steps done so far;
        `policy`: the unwrapped model whose weights the engine samples with."""
        exs = [(g, self.examples[idx[g]]) for g in self.dist.shard(len(idx))]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        gen = self._generate(exs, step, policy, return_entropy, timings) if self.cfg.rollout.n_rollouts > 0 else None
        timings["time/rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        samples, prompts, texts, rows = self._assemble(exs, gen)
        per_fn: dict[str, list] = {}
        reward_stats: dict[str, int] = {}
        n_none, gated = self._score(samples, prompts, texts, rows, step, per_fn, reward_stats)
        timings["time/reward"] = time.perf_counter() - t0
        think = sum("</think>" in t for s, t in zip(samples, texts) if not s.is_demo and isinstance(t, str))
        info = {**timings, **self._statistics(samples, exs, gen["finished"] if gen else [], n_none, gated,
                                              reward_stats.get("timeouts", 0), think),
                **self._reward_statistics(samples, per_fn)}
        if self.cfg.train.save_rollouts:
            self.dump_rollouts(samples, idx, step)
        return samples, info

    def _generate(self, exs, step: int, policy, return_entropy: bool, timings: dict) -> dict[str, list]:
        """K responses per prompt: token ids, entropies (when asked), the sampler's log-probs and
        whether each ended before its token budget."""
        r, K = self.cfg.rollout, self.cfg.rollout.n_rollouts
        t_sync = time.perf_counter()
        self.engine.sync_weights(policy)
        timings["time/weight_sync"] = time.perf_counter() - t_sync
        if math.isfinite(getattr(self.engine, "last_sync_gap", float("nan"))):
            timings["rollout/sync_check_gap"] = self.engine.last_sync_gap
        params = SamplingParams(r.max_new_tokens, r.temperature, r.top_p, ignore_eos=r.ignore_eos,
                                return_entropy=return_entropy)
        seeds = [derive_seed(self.cfg.train.seed, "rollout", step, g * K + k) for g, _ in exs for k in range(K)]
        out = self.engine.generate([ex.prompt_ids for _, ex in exs for _ in range(K)], params, seed=seeds)
        ids = [i[m.bool()].tolist() for i, m in zip(out.response_ids, out.response_mask)]
        return {
            "ids": ids,
            "entropy": ([e[m.bool()] for e, m in zip(out.entropy, out.response_mask)] if out.entropy is not None
                        else [None] * len(ids)),
            "logprobs": [lp[m.bool()] for lp, m in zip(out.logprobs, out.response_mask)],
            "finished": out.finished.tolist(),
        }

    def _assemble(self, exs, gen: Optional[dict]) -> tuple[list[Sample], list, list[str], list[Example]]:
        """Each group: its K rollouts, then its demonstrations; with the prompts, texts and rows
        the reward functions are called with, in the same order."""
        K, D = self.cfg.rollout.n_rollouts, self.cfg.rollout.n_demos
        samples, prompts, texts, rows = [], [], [], []
        for a, (g, ex) in enumerate(exs):
            for k in range(K):
                j = a * K + k
                text = self.tokenizer.decode(gen["ids"][j], skip_special_tokens=True)
                samples.append(Sample(g, ex.prompt_ids, gen["ids"][j], False, entropy=gen["entropy"][j],
                                      sampler_logprobs=gen["logprobs"][j], prompt=ex.prompt, text=text))
                texts.append(text)
            demos = pick_demos(ex, D)
            for j in demos:
                samples.append(Sample(g, ex.prompt_ids, ex.demo_ids[j], True, prompt=ex.prompt, text=ex.demo_texts[j]))
                texts.append(ex.demo_texts[j])
            n = K + len(demos)
            prompts += [ex.prompt] * n
            rows += [ex] * n
        return samples, prompts, texts, rows

    def _score(self, samples: list[Sample], prompts: list, texts: list[str], rows: list[Example],
               step: int, per_fn: dict[str, list], stats: dict | None = None) -> tuple[int, bool]:
        """Rewards, advantages and the objective's gate, set on the samples (each reward function's
        own values into `per_fn`, the count of completions whose reward call timed out into `stats`);
        returns how many rewards were None (scored 0) and whether the objective gates samples."""
        gated = objective.gates_samples(self.cfg.objective)
        if not samples:
            return 0, gated
        keys = sorted({k for ex in rows for k in ex.columns})
        columns = {k: [ex.columns.get(k) for ex in rows] for k in keys}
        state = RewardState(global_step=step, max_steps=self.cfg.train.max_steps)
        rewards, n_none = score_completions(self.reward_fn, prompts, texts, columns,
                                            completion_ids=[s.response_ids for s in samples], state=state,
                                            per_function=per_fn, stats=stats)
        groups, is_demo = [s.group for s in samples], [s.is_demo for s in samples]
        adv = objective.advantages(self.cfg.objective, rewards, groups, is_demo)
        if not bool(adv.isfinite().all()):
            raise RewardError(f"step {step + 1}: the group advantages are not finite: the rewards (from "
                              f"{min(rewards):g} to {max(rewards):g}) are too large to normalise; scale the rewards "
                              f"down (or data.reward_weights)")
        for s, r, a in zip(samples, rewards, adv.tolist()):
            s.reward, s.advantage = r, a
        active = objective.sample_gate(self.cfg.objective, rewards, groups, is_demo)
        for s, on in zip(samples, active or []):
            s.active = on
        return n_none, gated

    def _statistics(self, samples: list[Sample], exs, finished: list[bool], n_none: int,
                    gated: bool, timeouts: int = 0, think: int = 0) -> dict[str, float]:
        """The step's reward, length and group metrics over every rank (docs/metrics.md); with a
        gate, the share of prompts whose demonstrations enter the loss (gate/sft_share)."""
        roll = [s for s in samples if not s.is_demo]
        demo = [s for s in samples if s.is_demo]
        zero_groups = sum(1 for g, _ in exs if len({s.reward for s in samples if s.group == g}) <= 1)
        n_sft_groups = float(len({s.group for s in demo if s.active})) if gated and samples else 0.0
        # global statistics: one all-reduce of sums and counts, one of maxima
        (r_sum, r_n, d_sum, d_n, acc, none, zg, ng, len_sum, clip, dlen, gen_tok, sft_g, timed_out,
         think_n) = self.dist.sum([
            sum(s.reward for s in roll), len(roll), sum(s.reward for s in demo), len(demo),
            sum(float(s.reward >= 1.0) for s in roll), n_none, zero_groups, len(exs),
            sum(len(s.response_ids) for s in roll), sum(0.0 if f else 1.0 for f in finished),
            sum(len(s.response_ids) for s in demo), sum(len(s.response_ids) for s in roll), n_sft_groups, timeouts,
            think])
        (max_len,) = self.dist.max([max([len(s.response_ids) for s in roll], default=0)])
        info = {
            "reward/mean": ratio(r_sum, r_n),
            "reward/demo": ratio(d_sum, d_n),
            "reward/accuracy": ratio(acc, r_n),
            "reward/none": float(none),
            "reward/timeouts": float(timed_out),
            "advantage/zero_groups": zg / max(1.0, ng),
            "response_length/mean": ratio(len_sum, r_n),
            "response_length/max": float(max_len),
            "response_length/clip_ratio": ratio(clip, r_n),
            "response_length/demo": ratio(dlen, d_n),
            "rollout/think_share": ratio(think_n, r_n),
            "_gen_tokens": gen_tok,
        }
        if gated:
            info["gate/sft_share"] = sft_g / max(1.0, ng)
        return info

    def _reward_statistics(self, samples: list[Sample], per_fn: dict[str, list]) -> dict[str, float]:
        """rewards/<function>/mean and /std over the step's rollouts on every rank (TRL's names;
        values a function returned None for are left out; std with Bessel's correction)."""
        names = sorted(per_fn)
        local = []
        for name in names:
            vals = [v for s, v in zip(samples, per_fn[name]) if not s.is_demo and v is not None]
            local += [sum(vals), sum(v * v for v in vals), len(vals)]
        totals = self.dist.sum(local) if local else []
        out = {}
        for i, name in enumerate(names):
            total, squares, n = totals[3 * i : 3 * i + 3]
            mean = ratio(total, n)
            out[f"rewards/{name}/mean"] = mean
            out[f"rewards/{name}/std"] = (math.sqrt(max(0.0, (squares - n * mean * mean) / (n - 1))) if n > 1
                                          else float("nan"))
        return out

    def dump_rollouts(self, samples: list[Sample], idx: list[int], step: int) -> None:
        """rollouts.jsonl: one line per step with every sample of every rank, in global group order."""
        local: list[dict[str, Any]] = [
            {"group": s.group, "prompt_index": self.examples[idx[s.group]].index, "demo": s.is_demo,
             "response_ids": s.response_ids, "reward": s.reward, "advantage": s.advantage} for s in samples]
        rows = sorted(self.dist.gather(local), key=lambda r: r["group"])  # stable: order within a group kept
        if self.dist.is_main and self.out_dir is not None:
            with open(Path(self.out_dir) / "rollouts.jsonl", "a") as f:
                f.write(json.dumps({"step": step + 1, "samples": rows}) + "\n")
