"""Testbed: verifier table, teacher demonstrations, fixed disjoint splits, tokenizer."""

from __future__ import annotations

import re

import pytest

from srft.testbed.tasks import (
    OOD_SETS,
    build_splits,
    chain_steps,
    chain_sum_reward,
    extract_answer,
    extract_choice,
    mc_options,
    response_style,
    score,
    teacher_demonstration,
    worked_answer,
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
    # the corpus's own worked style: the number after the last "result"
    ("4-1=3; 3-7=-4; result -4", "-4", 1.0),
    ("4-1=3; 3-7=-4; result -5", "-4", 0.0),
    ("4-1=3; 3-7=-4", "-4", 0.0),  # no "result": the first number (4) is the answer
    ("<think>x</think>-4 result 9", "-4", 1.0),  # </think> wins over "result"
    # multiple choice: the answer text must start with the letter
    ("B", "B", 1.0),
    ("(B)-4", "B", 1.0),
    (" B)", "B", 1.0),
    ("<think>4-1=3, 3-7=-4</think>C", "C", 1.0),
    ("<think>4-1=3, 3-7=-4</think>-4", "C", 0.0),  # the value instead of the letter
    ("A", "C", 0.0),
    ("Bad", "B", 0.0),  # a word, not a letter
    ("", "A", 0.0),
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
    assert set(a.test) == {"id_chain4", "ood_mc4", "ood_mc5"}
    val = {r["expression"] for r in a.val}
    assert len(val) == len(a.val) == 200 and not val & train and val <= a.pretrain_exclude
    seen = set(val)
    for name, rows in a.test.items():
        exprs = {r["expression"] for r in rows}
        assert len(exprs) == len(rows) == (400 if name == "id_chain4" else 300)
        assert not exprs & train and not exprs & seen, name  # every split disjoint from the others
        assert exprs <= a.pretrain_exclude
        seen |= exprs
    for r in a.train[:50] + a.test["ood_mc5"][:50]:
        assert score(r["demonstration"], r["answer"]) == 1.0  # the teacher is right
        assert "<think>" in r["demonstration"] and "<think>" not in r["prompt"]


def test_multiple_choice_ood_sets():
    """Another answer format over longer chains: four options, the answer's letter, positions
    spread over A-D, the value among the options exactly once."""
    rows = build_splits(0).test["ood_mc5"]
    assert {r["answer"] for r in rows} == set("ABCD")
    assert max(sum(r["answer"] == c for r in rows) for c in "ABCD") < 0.4 * len(rows)
    for r in rows[:100]:
        expr = r["expression"]
        value = chain_steps(expr)[1]
        opts, letter = mc_options(expr, value)
        assert len(set(opts)) == 4 and opts.count(value) == 1 and letter == r["answer"]
        assert re.search(rf"\({letter}\){value}(\s|$)", r["prompt"]) and r["prompt"].endswith("\nA:")
        assert len(expr.split()) // 2 + 1 == OOD_SETS["ood_mc5"]
    assert extract_choice("(D)7") == "D" and extract_choice("7") is None


def test_response_styles():
    assert response_style(worked_answer("4 - 1 - 7")) == "worked" == response_style("2+3=5; result 5")
    assert worked_answer("4 - 1 - 7") == "4-1=3; 3-7=-4; result -4"
    assert response_style("-4") == "direct" == response_style("result 3")  # no steps
    assert response_style("<think>4-1=3</think>3") == "think" == response_style("<think>4-1")


def test_pretraining_corpus_never_holds_a_test_or_validation_expression():
    from srft.testbed.base_model import pretraining_corpus
    from srft.testbed.tasks import _compact

    splits = build_splits(0)
    held_out = {_compact(e) for e in splits.pretrain_exclude}
    corpus = pretraining_corpus(0)
    assert set(corpus) == {"facts", "qa2", "qa3", "qa4", "calc", "qa_worked", "mc"}
    for kind, docs in corpus.items():
        assert not any("<think>" in d for d in docs), kind
        exprs = {d.split("\n", 1)[0][2:] if d.startswith("Q:") else d[5:].split(":", 1)[0]
                 for d in docs if d.startswith(("Q:", "calc "))}
        assert not exprs & held_out, kind
    assert all(response_style(d.split("\nA:", 1)[1]) == "worked" for d in corpus["qa_worked"][:50])
    assert all(d.rsplit("\nA:", 1)[1] in "ABCD" for d in corpus["mc"][:50])


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


def test_worked_style_mistakes_of_the_pretraining_corpus():
    """The base model's own reasoning is learned from worked calculations with mistakes: random
    slips (one step off, carried on) and the systematic one, a subtraction below zero losing its
    sign; the teacher's demonstrations have neither."""
    assert chain_steps("3 - 7 + 2 - 1") == (["3-7=-4", "-4+2=-2", "-2-1=-3"], -3)
    assert chain_steps("3 - 7 + 2 - 1", drop_sign=True) == (["3-7=4", "4+2=6", "6-1=5"], 5)
    assert chain_steps("-2 - 3", drop_sign=True) == (["-2-3=-5"], -5)  # already below zero: unchanged
    assert chain_steps("4 + 1 - 2", slip=(0, 2)) == (["4+1=7", "7-2=5"], 5)
    assert worked_answer("3 - 7", drop_sign=True) == "3-7=4; result 4"
    assert teacher_demonstration("3 - 7") == "<think>3-7=-4</think>-4"


def test_base_model_build_reports_progress_off_a_terminal(tmp_path):
    """A build whose output goes to a file (CI, a log) prints a progress line every 100 steps."""
    from srft.testbed.base_model import BasePretrainConfig, build_base_model

    logs: list[str] = []
    cfg = BasePretrainConfig(seed=3, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32,
                             steps=201, batch_size=2, warmup_steps=2)
    build_base_model(tmp_path / "base", cfg, log=logs.append)
    progress = [line for line in logs if "step " in line and "min left" in line]
    assert [line.split("step ")[1].split(",")[0] for line in progress] == ["100/201", "200/201"]


def test_one_process_builds_the_base_model_the_others_wait(tmp_path, monkeypatch):
    """Two first runs at once: one builds, the other waits on the lock and uses that build."""
    import threading
    import time

    from srft.testbed import base_model as bm

    monkeypatch.setenv("SRFT_CACHE", str(tmp_path))
    builds: list[int] = []

    def slow_build(path, cfg, log=print):
        builds.append(cfg.seed)
        time.sleep(0.5)
        path.mkdir(parents=True)
        (path / "model.safetensors").write_text("x")
        (path / "srft_testbed.json").write_text("{}")
        return path

    monkeypatch.setattr(bm, "build_base_model", slow_build)
    logs: list[str] = []
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(bm.ensure_base_model(7, log=logs.append)))
               for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert builds == [7] and len(results) == 2 and results[0] == results[1]
    assert any("another process is building the testbed base model" in line for line in logs)
