"""The update: steps 6-7 of the algorithm (SRFT, arXiv 2506.19767, Sec. 4;
docs/architecture.md "The training step"), from a step's samples to optimiser steps.

6. pi_old (the policy before this step's update) and the token entropies (the H of the
   entropy weights and of the metrics). On-policy (one mini-batch, one epoch, the trainer's
   own engine: `pi_old_mode`) pi_old is the update's own forward, detached, and the batch
   entropy is the sampler's (`sampler_entropy`); otherwise a no-grad pass before the update
   (`old_logprobs`; docs/memory.md).
7. `train.mini_batches` optimiser steps per epoch, each over its share of the groups, with
   gradient accumulation over length-grouped micro-batches (`srft.samples.micro_batches`).
   The loss is `srft.objective.compute_loss` on `srft.objective.loss_inputs`, normalised by
   the mini-batch's global token and sequence counts, so micro-batching and the number of
   processes do not change it; the loss is multiplied by the number of processes to undo the
   engines' gradient averaging. Gradients are clipped (`optim.max_grad_norm`); a non-finite
   loss or gradient skips the optimiser step (logged as optim/skipped_updates). The schedule
   (`lr_lambda`: warm-up, then constant, linear or cosine decay) steps once per optimiser step.

Also measured here: the sampler/trainer log-prob gap of the rollouts (`rollout/logprob_gap`,
`rollout/max_ratio`), trained and padded tokens, and in one-pass mode the demonstrations'
entropy. What a method changes in the loss (CHORD's mu, the gate's mask, the importance
weights) comes from `srft.objective`; this module does not know which method runs.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from srft import losses as L
from srft import objective
from srft.distributed import Dist
from srft.objective import Normalizers, compute_loss
from srft.samples import Sample, collate, mean, micro_batches, ratio


def pi_old_mode(cfg) -> tuple[bool, str]:
    """Whether the separate pi_old pass can be skipped (one optimiser step per rollout batch, on
    the weights that sampled it), and why not."""
    t, r = cfg.train, cfg.rollout
    if t.old_logprob_pass == "always":
        return False, "train.old_logprob_pass is always"
    if t.mini_batches > 1 or t.epochs_per_batch > 1:
        return False, "train.mini_batches or train.epochs_per_batch > 1: several updates per rollout batch"
    if r.engine == "vllm":
        return False, "the vllm engine returns no entropies, and its log-probs are another engine's"
    if objective.needs_batch_entropy(cfg.objective) and r.n_rollouts == 0:
        return False, "the entropy weights' batch entropy comes from the demonstrations"
    return True, ""


def lr_lambda(optim_cfg, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at an optimiser step: linear warm-up over optim.warmup_steps, then
    optim.schedule (constant, linear or cosine decay to 0 at total_steps)."""
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


def make_optimizer(model, optim_cfg, total_steps: int):
    """AdamW over the trainable parameters and its LambdaLR schedule (`lr_lambda`)."""
    o = optim_cfg
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, total_steps))


def reapply_schedule(optimizer, scheduler) -> None:
    """Set the learning rate of the next optimiser step under this run's schedule. A run resumed
    with an extended train.max_steps has another decay than the checkpoint's: without this, the
    first step after resuming would take the rate the old schedule left in the optimiser (0 at
    its end)."""
    sched = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the LambdaLR
    for group, base, fn in zip(optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in optimizer.param_groups]


@torch.no_grad()
def old_logprobs(scorer, samples: list[Sample], pad_id: int, dist: Dist, train_cfg) -> dict:
    """pi_old and entropies of every sample, before the update (set on the samples); returns the
    global mean entropies of rollouts and demonstrations."""
    t0 = time.perf_counter()
    sums = {"roll": [0.0, 0.0], "demo": [0.0, 0.0]}
    for chunk in micro_batches(samples, train_cfg.micro_batch_size, train_cfg.micro_batch_grouping):
        batch = collate(chunk, pad_id, with_old=False)
        lp, ent = scorer(batch)
        for i, s in enumerate(chunk):
            n = len(s.response_ids)
            s.old_logprobs = lp[i, :n].detach().cpu()
            s.entropy = ent[i, :n].detach().cpu()
            key = "demo" if s.is_demo else "roll"
            sums[key][0] += float(s.entropy.sum())
            sums[key][1] += n
    totals = dist.sum([sums["roll"][0], sums["roll"][1], sums["demo"][0], sums["demo"][1]])
    return {"entropy/rollout": ratio(totals[0], totals[1]), "entropy/demo": ratio(totals[2], totals[3]),
            "time/old_logprob": time.perf_counter() - t0}


def sampler_entropy(samples: list[Sample], dist: Dist) -> dict:
    """One-pass mode: the rollouts' mean token entropy as the sampler saw it (the same weights)."""
    roll = [s for s in samples if not s.is_demo]
    tot, n = dist.sum([sum(float(s.entropy.sum()) for s in roll), sum(len(s.response_ids) for s in roll)])
    return {"entropy/rollout": ratio(tot, n), "time/old_logprob": 0.0}


class _Totals:
    """What the optimiser steps of one rollout batch add up (this rank's share)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.grad_norms: list[float] = []
        self.n_updates = self.skipped = self.trained_tokens = self.padded_tokens = 0
        self.demo_h = [0.0, 0.0]  # entropy sum and token count over demonstrations (one-pass mode)
        self.gap = [0.0, 0.0, 0.0]  # sampler/trainer: sum |log pi_old - log mu|, tokens, max ratio (first epoch)


class Updater:
    """The optimiser steps of a rollout batch on an accelerate-prepared model, optimiser and schedule."""

    def __init__(self, cfg, accelerator, model, optimizer, scheduler, scorer, dist: Dist, pad_id: int,
                 log: Callable[[str], None]):
        self.cfg, self.accelerator, self.model = cfg, accelerator, model
        self.optimizer, self.scheduler, self.scorer = optimizer, scheduler, scorer
        self.dist, self.pad_id, self.log = dist, pad_id, log
        self.is_cap = objective.is_correction_cap(cfg.rollout)

    def update(self, samples: list[Sample], batch_entropy: Optional[float], one_pass: bool, step: int) -> dict:
        """The optimiser steps of one rollout batch at `step` (optimiser steps done so far).
        one_pass: pi_old is the forward's own detached log-prob (on-policy, one update), and the
        demonstrations' entropy is measured here (returned as `_demo_entropy`)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        groups = sorted({s.group for s in samples})  # this rank's share of every mini-batch is contiguous here
        per_mb = len(groups) // cfg.train.mini_batches
        tot = _Totals()
        mu = objective.mix_weight(cfg.objective, step, cfg.train.max_steps)  # CHORD's mu (None for other objectives)
        for epoch in range(cfg.train.epochs_per_batch):
            for m in range(cfg.train.mini_batches):
                chosen = set(groups[m * per_mb : (m + 1) * per_mb])
                self._mini_batch([s for s in samples if s.group in chosen], batch_entropy, one_pass, epoch == 0,
                                 mu, step, tot)
        return self._summary(tot, mu, t0)

    def _normalizers(self, mini: list[Sample], batch_entropy: Optional[float]) -> Normalizers:
        """Global counts of what enters the loss in this mini-batch (every rank's share)."""
        cfg = self.cfg
        on = [s for s in mini if s.active]
        demo_tok = sum(len(s.response_ids) for s in on if s.is_demo)
        demo_seq = sum(1 for s in on if s.is_demo and s.response_ids)
        roll_tok = sum(len(s.response_ids) for s in on if not s.is_demo)
        roll_seq = sum(1 for s in on if not s.is_demo and s.response_ids)
        counts = self.dist.sum([demo_tok, demo_seq, roll_tok, roll_seq])
        max_len = cfg.objective.max_len_norm or max(cfg.rollout.max_new_tokens, cfg.data.max_demo_tokens)
        return Normalizers(*counts, max_len=max_len, batch_entropy=batch_entropy)

    def _mini_batch(self, mini: list[Sample], batch_entropy, one_pass: bool, first_epoch: bool, mu, step: int,
                    tot: _Totals) -> None:
        """Gradient accumulation over the mini-batch's micro-batches, then one optimiser step
        (skipped when the loss or the gradient is not finite)."""
        norms = self._normalizers(mini, batch_entropy)
        self.optimizer.zero_grad(set_to_none=True)
        local: dict[str, float] = {}
        t = self.cfg.train
        chunks = list(micro_batches(mini, t.micro_batch_size, t.micro_batch_grouping))  # as many on every rank
        for c, chunk in enumerate(chunks):
            mets = self._micro_batch(chunk, norms, one_pass, first_epoch, mu, c == len(chunks) - 1, tot)
            for k, v in mets.items():
                local[k] = local.get(k, 0.0) + float(v)
        keys = sorted(local)
        step_metrics = dict(zip(keys, self.dist.sum([local[k] for k in keys])))  # additive over ranks
        gn = self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.optim.max_grad_norm)
        gn = float(gn) if gn is not None else 0.0  # DeepSpeed clips (and steps) in its own engine
        if not math.isfinite(gn) or not math.isfinite(step_metrics.get("loss/total", 0.0)):
            self.optimizer.zero_grad(set_to_none=True)
            tot.skipped += 1
            self.log(f"[srft] step {step + 1}: non-finite loss or gradient (loss/total "
                     f"{step_metrics.get('loss/total', float('nan')):.4g}, grad norm {gn:.4g}), update skipped")
        else:
            self.optimizer.step()
        self.scheduler.step()
        tot.grad_norms.append(gn)
        tot.n_updates += 1
        for k, v in step_metrics.items():
            tot.sums[k] = tot.sums.get(k, 0.0) + v

    def _micro_batch(self, chunk: list[Sample], norms: Normalizers, one_pass: bool, first_epoch: bool, mu,
                     last: bool, tot: _Totals) -> dict:
        """Forward, loss and backward of one micro-batch; returns its (additive) loss metrics."""
        batch = collate(chunk, self.pad_id)
        with self.dist.micro_step(self.model, last=last):
            lp, ent = self.scorer(batch, entropy_grad=self.cfg.objective.entropy_bonus > 0)
            old = lp.detach() if one_pass else batch["old_logprobs"].to(lp.device)
            x = objective.loss_inputs(self.cfg.objective, lp, ent, old, batch, self.is_cap)
            if first_epoch:
                roll = x.mask * (~x.is_demo).to(x.mask.dtype).unsqueeze(-1)
                g_sum, g_n, g_max = L.logprob_gap(old, batch["sampler_logprobs"].to(lp.device), roll)
                gap = tot.gap
                gap[0], gap[1], gap[2] = gap[0] + float(g_sum), gap[1] + float(g_n), max(gap[2], float(g_max))
            loss, mets = compute_loss(x, norms, self.cfg.objective, mu)
            self.accelerator.backward(loss * float(self.dist.world))  # the engines average over ranks
        tot.trained_tokens += int(batch["attention_mask"].sum())
        tot.padded_tokens += batch["attention_mask"].numel()
        if one_pass:
            dmask = batch["mask"].to(ent.device) * batch["is_demo"].to(ent.device).unsqueeze(-1)
            tot.demo_h[0] += float((ent.detach() * dmask).sum())
            tot.demo_h[1] += float(dmask.sum())
        return mets

    def _summary(self, tot: _Totals, mu: Optional[float], t0: float) -> dict:
        """The update's metrics: loss terms averaged over optimiser steps, global token counts and
        the sampler/trainer gap."""
        out = {k: v / max(1, tot.n_updates) for k, v in tot.sums.items()}
        out["policy/grad_norm"] = mean(tot.grad_norms)
        if mu is not None:
            out["weight/mu"] = mu
        out["optim/skipped_updates"] = float(tot.skipped)
        out["time/update"] = time.perf_counter() - t0
        tokens, padded, h_sum, h_n, g_sum, g_n = self.dist.sum([tot.trained_tokens, tot.padded_tokens, *tot.demo_h,
                                                                 *tot.gap[:2]])
        (g_max,) = self.dist.max([tot.gap[2]])
        if g_n:
            out["rollout/logprob_gap"] = g_sum / g_n
            out["rollout/max_ratio"] = g_max
        out["_train_tokens"] = tokens
        out["train/pad_fraction"] = 1.0 - ratio(tokens, padded) if padded else 0.0
        out["_demo_entropy"] = ratio(h_sum, h_n)
        return out
