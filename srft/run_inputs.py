"""Everything a run needs before the model loads, checked and built once: the config with its
preset applied (`srft.config.apply_preset`), the reward functions (`srft.preflight`: every
field, choice, import and file checked first), the resume point (`train.resume`), the
used-folder check, the training rows and the evaluation sets. `srft.api.SRFTTrainer` builds
it and hands it to `srft.trainer.Trainer`; a Trainer constructed directly builds it itself.
Bad input stops here, before any model loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from srft.checkpoint import resume_point
from srft.config import Config, apply_preset, user_set
from srft.data import load_rows
from srft.eval_sets import EvalSets, build_eval_sets
from srft.preflight import preflight
from srft.resume_rules import check_resume
from srft.rewards import needs_answer
from srft.run_dir import keep_matplotlib_cache_in, refuse_used_output_dir


@dataclass
class RunInputs:
    cfg: Config
    reward_fn: Callable
    need_answer: bool
    """whether the reward functions read the `answer` column"""
    rows: list[dict]
    """the training rows, validated (`srft.data.load_rows`)"""
    eval: EvalSets
    resume_from: Optional[Path] = None
    """the checkpoint a resumed run continues from, and its trainer state"""
    resume_state: Optional[dict] = None
    resume_changes: dict = field(default_factory=dict)
    """{setting: [before, after]} a resume changes (`srft.resume_rules`: only those that may change)"""


def steps_for_epochs(cfg: Config, n_rows: int) -> int:
    """train.max_steps for train.epochs (TRL's num_train_epochs) passes over `n_rows` prompts."""
    if "train.max_steps" in user_set(cfg) or "max_steps" in cfg.__dict__.get("_trl", {}):
        raise ValueError(f"train.epochs ({cfg.train.epochs:g}) and train.max_steps ({cfg.train.max_steps}) are both "
                         f"given: give one (num_train_epochs or max_steps)")
    return max(1, math.ceil(cfg.train.epochs * n_rows / cfg.train.prompts_per_step))


def _reward_free(cfg: Config) -> bool:
    """An SFT run (no term uses a reward) with the reward left at "auto" on data other than the
    testbed's: it needs no reward, so rows without an `answer` train (TRL's SFTTrainer takes none)."""
    o = cfg.objective
    return (cfg.data.reward == "auto" and not (o.rl_self or o.rl_demo or o.demo_filter) and o.sft_gate is None
            and cfg.rollout.n_rollouts == 0 and cfg.data.dataset != "testbed")


def prepare_run(cfg: Config, model_given: bool = False) -> RunInputs:
    """Check the config and build the run's inputs (see the module docstring). `model_given`: the
    model is an object (the Python API), so model.name_or_path is not checked as a folder."""
    cfg, _ = apply_preset(cfg)  # a preset set in Python trains what it says (see apply_preset)
    # fields, choices, reward imports, tracker packages, model folder: before the data and the model
    reward_fn = preflight(cfg, model_given=model_given)
    if cfg.train.resume:
        cfg.train.output_dir = cfg.train.resume
    out = Path(cfg.train.output_dir)
    changes = check_resume(cfg, out) if cfg.train.resume else {}  # before anything loads
    resume_from, resume_state = resume_point(out, cfg.train.max_steps) if cfg.train.resume else (None, None)
    refuse_used_output_dir(cfg)
    keep_matplotlib_cache_in(out)  # before anything imports matplotlib (reasoning-gym does)
    d = cfg.data
    reward_free = _reward_free(cfg)
    need_answer = needs_answer(reward_fn) and not reward_free
    rows = load_rows(d.dataset, cfg.train.seed, columns={  # file errors before the model is loaded
        "prompt": d.prompt_column, "demonstration": d.demonstration_column, "answer": d.answer_column},
        need_answer=need_answer)
    if cfg.train.epochs is not None:
        cfg.train.max_steps = steps_for_epochs(cfg, len(rows))
    if reward_free and not all(r.get("answer") is not None for r in rows):
        reward_fn = []  # SFT needs no reward: demonstrations are not scored, eval_dataset not evaluated
    return RunInputs(cfg, reward_fn, need_answer, rows, build_eval_sets(cfg, reward_fn, need_answer),
                     resume_from, resume_state, changes)
