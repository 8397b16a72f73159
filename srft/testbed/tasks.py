"""The testbed's reasoning tasks: data, demonstrations and verifiers.

The testbed reproduces the paper's situation in miniature:

- Problems are chained additions / subtractions of one-digit numbers, generated
  and scored by `reasoning-gym`'s `chain_sum` task (its generator gives the
  expression and answer; its `score_answer` is the verifier, binarised).
- The base model (see `srft.testbed.base_model`) was pretrained on a "web"
  corpus of single-step arithmetic facts ("7-9=-2"), of worked calculations in
  the corpus's own style ("calc 4-1-7: 4-1=3; 3-7=-4; result -4") and of
  question/answer pairs answered *directly* ("Q:4-1-7\\nA:-4"). Asked a question,
  it answers directly; a 4-term chain in one go is hard for a tiny model, so it
  is partly competent in distribution.
- Demonstrations are written by a programmatic teacher, step by step, in a
  reasoning format the base model has never seen, as R1 traces are to a base
  model: "<think>4-1=3, 3-7=-4</think>-4". The base model can chain facts in its
  own style but never does so when answering a question; the demonstrations
  teach it to reason before answering.
- Fixed splits, disjoint by expression: train prompts (with one demonstration
  each, a fixed finite set), an in-distribution test set (3 terms) and
  out-of-distribution test sets (longer chains: 5 and 6 terms).

Records follow TRL's column convention: `prompt` (a string), `demonstration`
(the teacher's completion), `answer` (the verifiable answer), plus `task` and
`expression` metadata.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Fixed testbed layout; bump TESTBED_VERSION when any of this changes.
TESTBED_VERSION = 1
ID_TERMS = 4
OOD_SETS = {"ood_chain5": 5, "ood_chain6": 6}
N_ID_TEST = 200
N_OOD_TEST = 200
N_TRAIN = 1000


def _compact(expression: str) -> str:
    """'4 - 1 - 7' -> '4-1-7' (the testbed's character-level form)."""
    return expression.replace(" ", "")


def format_prompt(expression: str) -> str:
    return f"Q:{_compact(expression)}\nA:"


def direct_answer(answer: str) -> str:
    """The base model's (pretraining) answer format: the number right away."""
    return str(answer)


def chain_steps(expression: str) -> tuple[list[str], int]:
    """'4 - 1 - 7' -> (['4-1=3', '3-7=-4'], -4): one fact per operation."""
    tokens = expression.split()
    acc = int(tokens[0])
    steps = []
    for op, term in zip(tokens[1::2], tokens[2::2]):
        new = acc + int(term) if op == "+" else acc - int(term)
        steps.append(f"{acc}{op}{term}={new}")
        acc = new
    return steps, acc


def teacher_demonstration(expression: str) -> str:
    """Step-by-step solution by a programmatic teacher, e.g.
    '4 - 1 - 7' -> '<think>4-1=3, 3-7=-4</think>-4'."""
    steps, result = chain_steps(expression)
    return f"{THINK_OPEN}{', '.join(steps)}{THINK_CLOSE}{result}"


def worked_calculation(expression: str) -> str:
    """The pretraining corpus's own style of worked calculation (not the
    demonstrations' format): 'calc 4-1-7: 4-1=3; 3-7=-4; result -4'."""
    steps, result = chain_steps(expression)
    return f"calc {_compact(expression)}: {'; '.join(steps)}; result {result}"


_NUMBER = re.compile(r"[-+]?\d+")


def extract_answer(completion: str) -> Optional[str]:
    """The final answer of a completion: the first number after the last
    '</think>' if there is one, else the first number of the completion."""
    text = completion.rsplit(THINK_CLOSE, 1)[-1] if THINK_CLOSE in completion else completion
    match = _NUMBER.search(text.strip().split("\n", 1)[0]) if text.strip() else None
    return match.group(0) if match else None


@lru_cache(maxsize=1)
def _chain_sum_scorer():
    import reasoning_gym as rg

    return rg.create_dataset("chain_sum", size=1, seed=0)


def score(completion: str, answer: str) -> float:
    """Binary reward: 1.0 if the extracted answer equals `answer` under
    reasoning-gym's chain_sum scorer, else 0.0."""
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
    test: dict[str, list[dict]]  # "id_chain4", "ood_chain5", "ood_chain6"
    pretrain_exclude: set[str]  # expressions the base model must never see


@lru_cache(maxsize=4)
def build_splits(seed: int = 0) -> Splits:
    """The fixed testbed splits (deterministic in `seed`)."""
    pool_id = _unique(_generate(ID_TERMS, 12000, seed=1000 + seed), set())
    random.Random(seed).shuffle(pool_id)
    id_name = f"id_chain{ID_TERMS}"
    id_test = [_record(it, id_name) for it in pool_id[:N_ID_TEST]]
    train = [_record(it, "train") for it in pool_id[N_ID_TEST : N_ID_TEST + N_TRAIN]]
    test = {id_name: id_test}
    exclude = {r["expression"] for r in id_test}
    for i, (name, k) in enumerate(OOD_SETS.items()):
        pool = _unique(_generate(k, N_OOD_TEST * 3, seed=2000 + 10 * seed + i), set())
        test[name] = [_record(it, name) for it in pool[:N_OOD_TEST]]
        exclude |= {r["expression"] for r in test[name]}
    return Splits(train=train, test=test, pretrain_exclude=exclude)
