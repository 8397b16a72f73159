"""Testbed: verifier table, teacher demonstrations, fixed disjoint splits, tokenizer."""

from __future__ import annotations

import pytest

from srft.testbed.tasks import (
    build_splits,
    extract_answer,
    score,
    teacher_demonstration,
    chain_sum_reward,
)

VERIFIER_TABLE = [
    # (completion, answer, expected reward)
    ("-4", "-4", 1.0),
    ("-4\n", "-4", 1.0),
    (" 13", "13", 1.0),
    ("<think>4-1=3, 3-7=-4</think>-4", "-4", 1.0),
    ("<think>scratch 99</think> 12", "12", 1.0),  # the number after </think> counts
    ("<think>4-1=3, 3-7=-4</think>-4 because", "-4", 1.0),
    ("+7", "7", 1.0),
    ("007", "7", 1.0),  # reasoning-gym's decimal scorer tolerates leading zeros
    ("4", "-4", 0.0),  # sign matters
    ("-40", "-4", 0.0),
    ("<think>4-1=3, 3-7=-4</think>", "-4", 0.0),  # nothing after </think>
    ("", "3", 0.0),
    ("abc", "3", 0.0),
    ("3\n5", "5", 0.0),  # only the first line
    ("12", "21", 0.0),
]


@pytest.mark.parametrize("completion,answer,expected", VERIFIER_TABLE)
def test_verifier_table(completion, answer, expected):
    assert score(completion, answer) == expected


def test_unfinished_think_reads_the_first_number():
    # without </think> the completion is treated as a direct answer: its first number
    assert extract_answer("<think>4-1=3, 3-7=-4") == "4"
    assert score("<think>4-1=3, 3-7=-4", "-4") == 0.0


def test_reward_callable_is_trl_style():
    assert chain_sum_reward(["p1", "p2"], ["5", "6"], answer=["5", "5"], task=["x", "x"]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "expression,demo",
    [
        ("4 - 1 - 7", "<think>4-1=3, 3-7=-4</think>-4"),
        ("9 + 9 + 9 - 0", "<think>9+9=18, 18+9=27, 27-0=27</think>27"),
    ],
)
def test_teacher_demonstration(expression, demo):
    assert teacher_demonstration(expression) == demo


def test_splits_fixed_disjoint_and_demos_correct():
    a, b = build_splits(0), build_splits(0)
    assert [r["prompt"] for r in a.train] == [r["prompt"] for r in b.train]
    train = {r["expression"] for r in a.train}
    assert len(train) == len(a.train) == 1000
    assert set(a.test) == {"id_chain4", "ood_chain5", "ood_chain6"}
    for name, rows in a.test.items():
        exprs = {r["expression"] for r in rows}
        assert len(exprs) == len(rows) == 200
        assert not exprs & train, name
        assert exprs <= a.pretrain_exclude
    for r in a.train[:50] + a.test["ood_chain6"][:50]:
        assert score(r["demonstration"], r["answer"]) == 1.0  # the teacher is right
        assert "<think>" in r["demonstration"] and "<think>" not in r["prompt"]


def test_tokenizer_roundtrip_through_autotokenizer(tmp_path):
    """The saved tokenizer reloads (as Qwen2Tokenizer, from the model type) with the same ids."""
    from tests.conftest import make_tiny_model
    from transformers import AutoTokenizer

    from srft.testbed.tokenizer import build_tokenizer

    make_tiny_model(tmp_path / "m")
    built, loaded = build_tokenizer(), AutoTokenizer.from_pretrained(tmp_path / "m")
    text = "Q:4+9-3\nA:<think>4+9=13, 13-3=10</think>10"
    assert built(text)["input_ids"] == loaded(text)["input_ids"]
    ids = loaded(text)["input_ids"]
    assert loaded.decode(ids) == text
    assert loaded.convert_ids_to_tokens(ids).count("<think>") == 1
    assert loaded.eos_token_id == built.eos_token_id and loaded.pad_token_id == built.pad_token_id
