"""The first lines of a run: the few settings that decide it, and the checks that need the
tokenised data and the model.

`settings_lines` names where the defaults came from (the testbed's or a real model's,
`srft.model_kinds`), the preset, learning rate and schedule, the budget, the lengths, where
demonstrations come from and how many rows the length limit dropped, the reward and the
system prompt, so that a run on a real model never trains on a testbed value unseen.
`check_context` refuses a run whose longest prompt plus the response budget (or the longest
demonstration) does not fit the model's context, before any step.
"""

from __future__ import annotations

from typing import Any, Optional

from srft.data import DEFAULT_SYSTEM_PROMPT
from srft.model_kinds import describe


def _reward_text(rewards: list) -> str:
    parts = []
    for r in rewards:
        what = {"testbed": "the testbed's verifier", "math": "the math verifier (last \\boxed{} + math-verify, "
                "reads the `answer` column)"}.get(r.name, "a custom function")
        parts.append(f"{r.name} ({what}){'' if r.weight == 1.0 else f' x {r.weight:g}'}")
    return " + ".join(parts)


def _system_prompt_text(cfg, tokenizer) -> str:
    sp = cfg.data.system_prompt
    if cfg.data.chat_template == "none" or not getattr(tokenizer, "chat_template", None):
        return "none (prompts are raw text: " + ("data.chat_template none)" if cfg.data.chat_template == "none" else
                                                 "the tokenizer has no chat template)")
    if not sp or sp == "none":
        return "none"
    if sp == DEFAULT_SYSTEM_PROMPT:
        return "the paper's <think> ... </think> + \\boxed{} instruction (data.system_prompt; `none` for none)"
    return repr(sp[:60] + ("..." if len(sp) > 60 else ""))


def settings_lines(cfg, rewards: list, n_rows: int, model_path: str, tokenizer: Any = None) -> list[str]:
    """The settings that decide the run, as log lines."""
    r, d, t, o = cfg.rollout, cfg.data, cfg.train, cfg.optim
    demos = ("none (rollout.n_demos = 0)" if r.n_demos == 0 else
             f"the training rows' {d.demonstration_column or 'demonstration / completion / messages'} column, "
             f"{r.n_demos} per prompt, from {n_rows} rows")
    lines = [
        f"[srft] settings ({describe(cfg.kind_applied or 'testbed', model_path)}):",
        f"[srft]   preset {t.preset}: {t.max_steps} steps x {t.prompts_per_step} prompts, groups of "
        f"{r.n_rollouts} rollouts + {r.n_demos} demonstration(s); lr {o.lr:g} ({o.schedule}"
        f"{f', {o.warmup_steps} warm-up steps' if o.warmup_steps else ''})",
        f"[srft]   lengths: responses <= {r.max_new_tokens} tokens (evaluation {cfg.eval.max_new_tokens}), prompts <= "
        f"{d.max_prompt_tokens}, demonstrations <= {d.max_demo_tokens} (longer: {d.long_demo_policy})",
        f"[srft]   demonstrations: {demos}",
        f"[srft]   reward: {_reward_text(rewards) if rewards else 'none (SFT on rows without an answer: demonstrations are not scored, eval_dataset is not evaluated)'}",
        f"[srft]   system prompt: {_system_prompt_text(cfg, tokenizer)}",
    ]
    return lines


def dropped_warning(cfg, n_rows: int, n_kept: int) -> Optional[str]:
    """The warning for rows dropped because their demonstrations are too long, or None."""
    if n_kept == n_rows:
        return None
    return (f"[srft] warning: {n_rows - n_kept} of {n_rows} rows dropped: their demonstrations are longer than "
            f"data.max_demo_tokens={cfg.data.max_demo_tokens} tokens (raise it, or data.long_demo_policy truncate)")


def model_context(model: Any) -> Optional[int]:
    """The model's context length (config.max_position_embeddings), when it says."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def check_context(examples: list, cfg, model: Any) -> None:
    """The longest prompt plus rollout.max_new_tokens, and the longest prompt plus demonstration, fit
    the model's context; else a ValueError naming the settings to change."""
    context = model_context(model)
    if context is None or not examples:
        return
    prompt = max(len(e.prompt_ids) for e in examples)
    need = prompt + cfg.rollout.max_new_tokens
    if need > context:
        raise ValueError(f"rollout.max_new_tokens: the longest prompt ({prompt} tokens) + the response budget "
                         f"({cfg.rollout.max_new_tokens}) = {need} tokens, more than the model's context ({context}); "
                         f"lower rollout.max_new_tokens or data.max_prompt_tokens")
    demo = max((len(e.prompt_ids) + len(ids) for e in examples for ids in e.demo_ids), default=0)
    if demo > context:
        raise ValueError(f"data.max_demo_tokens: a prompt with its demonstration is {demo} tokens, more than the "
                         f"model's context ({context}); lower data.max_demo_tokens (longer demonstrations are "
                         f"dropped or truncated by data.long_demo_policy)")
