"""Training data: loading, validation, encoding and the prompt order.

Rows follow TRL's column convention: `prompt` (a string, or a list of chat
messages), `demonstration` (a string, or a list of strings when a prompt has
several), `answer` (the verifiable answer); any other column is passed to the
reward function as a keyword argument.

Every row is validated before training starts; a bad row raises `DataError`
naming the row and the field. Demonstrations longer than `data.max_demo_tokens`
are dropped (the row is removed) or truncated, by `data.long_demo_policy`; both
are counted and reported.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional


class DataError(ValueError):
    """Bad training data, with the row and field in the message."""


@dataclass
class Example:
    """One training prompt, encoded."""

    index: int
    prompt: Any
    prompt_ids: list[int]
    demo_texts: list[str]
    demo_ids: list[list[int]]
    answer: str
    columns: dict[str, Any] = field(default_factory=dict)


def load_rows(dataset: str, seed: int = 0) -> list[dict]:
    if dataset == "testbed":
        from srft.testbed.tasks import build_splits

        return [dict(r) for r in build_splits(0).train]
    raise DataError(f"data.dataset: unknown dataset {dataset!r} (this version knows 'testbed')")


def encode_prompt(tokenizer, prompt) -> list[int]:
    """A string prompt is tokenized as is; a list of messages goes through the
    tokenizer's chat template with the generation prompt added."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def encode_completion(tokenizer, text: str) -> list[int]:
    """Completion tokens followed by EOS."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def prepare_examples(rows: list[dict], tokenizer, data_cfg, need_demos: bool, log=print) -> list[Example]:
    """Validate and encode every row before training."""
    if not rows:
        raise DataError("the training dataset is empty")
    examples, dropped, truncated = [], 0, 0
    for i, row in enumerate(rows):
        prompt = row.get("prompt")
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()) or (
            isinstance(prompt, list) and not prompt
        ):
            raise DataError(f"row {i}: field 'prompt' is missing or empty")
        if isinstance(prompt, list):
            for j, m in enumerate(prompt):
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise DataError(f"row {i}: field 'prompt' message {j} needs 'role' and 'content'")
        answer = row.get("answer")
        if answer is None or str(answer).strip() == "":
            raise DataError(f"row {i}: field 'answer' is missing or empty")
        demos = row.get("demonstration")
        demos = [] if demos is None else ([demos] if isinstance(demos, str) else list(demos))
        if need_demos and (not demos or any(not isinstance(d, str) or not d.strip() for d in demos)):
            raise DataError(f"row {i}: field 'demonstration' is missing or empty (the preset uses demonstrations)")
        prompt_ids = encode_prompt(tokenizer, prompt)
        if len(prompt_ids) > data_cfg.max_prompt_tokens:
            raise DataError(f"row {i}: field 'prompt' has {len(prompt_ids)} tokens, more than "
                            f"data.max_prompt_tokens={data_cfg.max_prompt_tokens}")
        demo_ids, keep = [], True
        for d in demos:
            ids = encode_completion(tokenizer, d)
            if len(ids) > data_cfg.max_demo_tokens:
                if data_cfg.long_demo_policy == "drop":
                    keep = False
                    break
                ids = ids[: data_cfg.max_demo_tokens]
                truncated += 1
            demo_ids.append(ids)
        if not keep:
            dropped += 1
            continue
        cols = {k: v for k, v in row.items() if k not in ("prompt", "demonstration")}
        examples.append(Example(i, prompt, prompt_ids, demos, demo_ids, str(answer), cols))
    if dropped or truncated:
        log(f"[srft] demonstrations over data.max_demo_tokens={data_cfg.max_demo_tokens}: "
            f"{dropped} rows dropped, {truncated} demonstrations truncated")
    if not examples:
        raise DataError("no training rows left after applying data.long_demo_policy")
    return examples


class PromptSampler:
    """Epoch-wise shuffled order over the examples, deterministic in the seed;
    its state (epoch, position) is saved with checkpoints."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            take = min(k - len(out), self.n - self.pos)
            out.extend(self._order[self.pos : self.pos + take])
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "n": self.n}

    def load_state_dict(self, s: dict) -> None:
        self.seed, self.epoch, self.pos = s["seed"], s["epoch"], s["pos"]
        self._order = self._make_order()


def pick_demos(ex: Example, n: int) -> list[int]:
    """Indices of the demonstrations placed in a group of n (cycling when a row has fewer)."""
    if n == 0:
        return []
    if not ex.demo_ids:
        raise DataError(f"row {ex.index}: no demonstration for a group that needs {n}")
    return [j % len(ex.demo_ids) for j in range(n)]


def column_lists(examples: list[Example], repeat: list[int]) -> dict[str, list]:
    """Per-sample column lists for the reward function (each example repeated)."""
    keys = sorted({k for ex in examples for k in ex.columns})
    return {k: [ex.columns.get(k) for ex, r in zip(examples, repeat) for _ in range(r)] for k in keys}


def optional_int(x: Optional[int]) -> Optional[int]:
    return None if x is None else int(x)
