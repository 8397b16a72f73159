"""The testbed's reasoning tasks: data, demonstrations and verifiers.

The testbed reproduces the paper's situation in miniature (version 3; docs/results.md
measures each of these preconditions with `srft testbed check`):

- Problems are chained additions / subtractions of one-digit numbers, generated
  and scored by `reasoning-gym`'s `chain_sum` task (its generator gives the
  expression and answer; its `score_answer` is the verifier, binarised).
- The base model (see `srft.testbed.base_model`) was pretrained on a "web"
  corpus of single-step arithmetic facts ("7-9=-2"), of worked calculations in
  the corpus's own style ("calc 4-1-7: 4-1=3; 3-7=-4; result -4"), of
  question/answer pairs, most answered *directly* ("Q:4-1-7\nA:-4") and some
  worked in the corpus's style ("Q:4-1-7\nA:4-1=3; 3-7=-4; result -4"), and of
  multiple-choice questions on short chains ("Q:4-1\n(A)2 (B)3 (C)5 (D)4\nA:B").
  Asked a question, it mostly answers directly (a 4-term chain in one go is hard
  for a tiny model) and sometimes works it out in its own style, which is more
  often right: on-policy RL has something to reinforce, as zero-RL has on
  Qwen2.5-Math. The corpus's worked calculations carry random slips and, in
  every one (version 3), a systematic mistake: a subtraction that goes below
  zero loses its sign ("3-7=4"). The base model's reasoning is therefore
  bounded, as a base model's is; the teacher's demonstrations are correct.
- Demonstrations are written by a programmatic teacher, step by step, in a
  reasoning format the base model has never seen, as R1 traces are to a base
  model: "<think>4-1=3, 3-7=-4</think>-4".
- Fixed splits, disjoint by expression: train prompts (with one demonstration
  each, a fixed finite set), a validation set (for choosing learning rates; never
  reported as a result), an in-distribution test set (4-term chains, `id_chain4`)
  and out-of-distribution test sets in another answer format, multiple choice
  over chains longer than any multiple-choice question of pretraining
  (`ood_mc4`: 4 terms, `ood_mc5`: 5 terms; the answer is the option's letter), as
  the paper's OOD sets (ARC-C, GPQA) are multiple choice in another domain.

Records follow TRL's column convention: `prompt` (a string), `demonstration`
(the teacher's completion), `answer` (the verifiable answer: a number, or a
letter A-D for multiple choice), plus `task` and `expression` metadata.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Fixed testbed layout; bump TESTBED_VERSION when any of this (or the base model's corpus) changes.
TESTBED_VERSION = 3
ID_TERMS = 4
ID_TEST = f"id_chain{ID_TERMS}"
VAL_SET = f"val_chain{ID_TERMS}"
OOD_SETS = {"ood_mc4": 4, "ood_mc5": 5}  # multiple choice over chains of this many terms
MC_LETTERS = "ABCD"
N_ID_TEST = 400
N_VAL = 200
N_OOD_TEST = 300
N_TRAIN = 1000


def _compact(expression: str) -> str:
    """'4 - 1 - 7' -> '4-1-7' (the testbed's character-level form)."""
    return expression.replace(" ", "")


def format_prompt(expression: str) -> str:
    return f"Q:{_compact(expression)}\nA:"


def direct_answer(answer: str) -> str:
    """The base model's (pretraining) answer format: the number right away."""
    return str(answer)


def chain_steps(expression: str, slip: Optional[tuple[int, int]] = None,
                drop_sign: bool = False) -> tuple[list[str], int]:
    """'4 - 1 - 7' -> (['4-1=3', '3-7=-4'], -4): one fact per operation. `slip` = (i, d): step i's
    result is off by d and the later steps carry the error on (a worked calculation with a mistake,
    as web text has them). `drop_sign`: the systematic mistake of the corpus's worked style, a
    subtraction that goes below zero from zero or above loses its sign ('3-7=4')."""
    tokens = expression.split()
    acc = int(tokens[0])
    steps = []
    for i, (op, term) in enumerate(zip(tokens[1::2], tokens[2::2])):
        new = acc + int(term) if op == "+" else acc - int(term)
        if drop_sign and op == "-" and acc >= 0 > new:
            new = -new
        if slip is not None and slip[0] == i:
            new += slip[1]
        steps.append(f"{acc}{op}{term}={new}")
        acc = new
    return steps, acc


def mc_options(expression: str, answer: int) -> tuple[list[int], str]:
    """Four options for a multiple-choice question (the answer and three distinct near misses,
    in an order fixed by the expression) and the answer's letter."""
    rng = random.Random(f"mc:{expression}")
    near = [answer + d for d in (-3, -2, -1, 1, 2, 3, 10, -10)]
    opts = rng.sample(near, 3) + [answer]
    rng.shuffle(opts)
    return opts, MC_LETTERS[opts.index(answer)]


def format_mc_prompt(expression: str, options: list[int]) -> str:
    """'Q:4-1-7\n(A)-5 (B)-4 (C)-2 (D)6\nA:'"""
    shown = " ".join(f"({MC_LETTERS[i]}){o}" for i, o in enumerate(options))
    return f"Q:{_compact(expression)}\n{shown}\nA:"


def worked_answer(expression: str, slip: Optional[tuple[int, int]] = None, drop_sign: bool = False) -> str:
    """An answer worked in the pretraining corpus's own style: '4-1=3; 3-7=-4; result -4'."""
    steps, result = chain_steps(expression, slip, drop_sign)
    return f"{'; '.join(steps)}; result {result}"


def teacher_demonstration(expression: str) -> str:
    """Step-by-step solution by a programmatic teacher, e.g.
    '4 - 1 - 7' -> '<think>4-1=3, 3-7=-4</think>-4'."""
    steps, result = chain_steps(expression)
    return f"{THINK_OPEN}{', '.join(steps)}{THINK_CLOSE}{result}"


def worked_calculation(expression: str, slip: Optional[tuple[int, int]] = None, drop_sign: bool = False) -> str:
    """The pretraining corpus's own style of worked calculation (not the
    demonstrations' format): 'calc 4-1-7: 4-1=3; 3-7=-4; result -4'."""
    steps, result = chain_steps(expression, slip, drop_sign)
    return f"calc {_compact(expression)}: {'; '.join(steps)}; result {result}"


_NUMBER = re.compile(r"[-+]?\d+")
_LETTER = re.compile(r"\(?([A-D])\)?(?![A-Za-z])")
_STEP = re.compile(r"-?\d+[-+]\d+=-?\d+")
RESULT_WORD = "result"


def _answer_text(completion: str) -> str:
    """Where the final answer is: after the last '</think>'; else after the last 'result' (the
    corpus's worked style); else the whole completion."""
    if THINK_CLOSE in completion:
        return completion.rsplit(THINK_CLOSE, 1)[-1]
    if RESULT_WORD in completion:
        return completion.rsplit(RESULT_WORD, 1)[-1]
    return completion


def extract_answer(completion: str) -> Optional[str]:
    """The final answer of a completion: the first number of the first line of its answer text
    (after the last '</think>', else after the last 'result', else the completion's start)."""
    text = _answer_text(completion)
    match = _NUMBER.search(text.strip().split("\n", 1)[0]) if text.strip() else None
    return match.group(0) if match else None


def extract_choice(completion: str) -> Optional[str]:
    """The option letter a multiple-choice completion answers with: the answer text must start
    with it ('B', '(B)', 'B)-4'), after the last '</think>' if there is one."""
    text = _answer_text(completion).strip()
    match = _LETTER.match(text)
    return match.group(1) if match else None


def response_style(completion: str) -> str:
    """"think": uses the demonstrations' <think> format; "worked": works the chain in the corpus's
    own style (steps like '4-1=3' and 'result'); "direct": answers without steps."""
    if "<think>" in completion or THINK_CLOSE in completion:
        return "think"
    if _STEP.search(completion) and RESULT_WORD in completion:
        return "worked"
    return "direct"


@lru_cache(maxsize=1)
def _chain_sum_scorer():
    import reasoning_gym as rg

    return rg.create_dataset("chain_sum", size=1, seed=0)


def score(completion: str, answer: str) -> float:
    """Binary reward: for a letter `answer` (multiple choice), 1.0 if the completion answers with
    that letter; otherwise 1.0 if the extracted number equals `answer` under reasoning-gym's
    chain_sum scorer; else 0.0."""
    answer = str(answer)
    if len(answer) == 1 and answer in MC_LETTERS:
        return 1.0 if extract_choice(completion) == answer else 0.0
    extracted = extract_answer(completion)
    if extracted is None:
        return 0.0
    s = _chain_sum_scorer().score_answer(extracted, {"answer": str(answer)})
    return 1.0 if s >= 1.0 else 0.0


def chain_sum_reward(prompts: list, completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """TRL-style reward callable for the testbed."""
    return [score(c, a) for c, a in zip(completions, answer)]


def _generate(n_terms: int, size: int, seed: int) -> list[dict]:
    import reasoning_gym as rg

    ds = rg.create_dataset(
        "chain_sum", size=size, seed=seed, min_terms=n_terms, max_terms=n_terms, min_digits=1, max_digits=1
    )
    return [{"expression": e["metadata"]["expression"], "answer": str(e["answer"])} for e in ds]


def _record(item: dict, split: str) -> dict:
    return {
        "prompt": format_prompt(item["expression"]),
        "demonstration": teacher_demonstration(item["expression"]),
        "answer": item["answer"],
        "task": f"chain_sum_{len(item['expression'].split()) // 2 + 1}",
        "expression": item["expression"],
        "split": split,
    }


def _mc_record(item: dict, split: str) -> dict:
    """A multiple-choice question; its demonstration works the chain, then gives the letter."""
    opts, letter = mc_options(item["expression"], int(item["answer"]))
    steps, _ = chain_steps(item["expression"])
    return {
        "prompt": format_mc_prompt(item["expression"], opts),
        "demonstration": f"{THINK_OPEN}{', '.join(steps)}{THINK_CLOSE}{letter}",
        "answer": letter,
        "task": f"chain_sum_mc_{len(item['expression'].split()) // 2 + 1}",
        "expression": item["expression"],
        "split": split,
    }


def _unique(items: list[dict], exclude: set[str]) -> list[dict]:
    seen, out = set(exclude), []
    for it in items:
        if it["expression"] not in seen:
            seen.add(it["expression"])
            out.append(it)
    return out


@dataclass
class Splits:
    train: list[dict]
    test: dict[str, list[dict]]  # ID_TEST, then the OOD_SETS
    val: list[dict]  # for choosing learning rates; never a reported result
    pretrain_exclude: set[str]  # expressions the base model must never see


@lru_cache(maxsize=4)
def build_splits(seed: int = 0) -> Splits:
    """The fixed testbed splits (deterministic in `seed`)."""
    pool_id = _unique(_generate(ID_TERMS, 12000, seed=1000 + seed), set())
    random.Random(seed).shuffle(pool_id)
    id_test = [_record(it, ID_TEST) for it in pool_id[:N_ID_TEST]]
    val = [_record(it, VAL_SET) for it in pool_id[N_ID_TEST : N_ID_TEST + N_VAL]]
    start = N_ID_TEST + N_VAL
    train = [_record(it, "train") for it in pool_id[start : start + N_TRAIN]]
    test = {ID_TEST: id_test}
    exclude = {r["expression"] for r in id_test + val}
    used = exclude | {r["expression"] for r in train}
    for i, (name, k) in enumerate(OOD_SETS.items()):
        pool = _unique(_generate(k, N_OOD_TEST * 3, seed=2000 + 10 * seed + i), used)
        test[name] = [_mc_record(it, name) for it in pool[:N_OOD_TEST]]
        exclude |= {r["expression"] for r in test[name]}
    return Splits(train=train, test=test, val=val, pretrain_exclude=exclude)
