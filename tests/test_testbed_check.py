"""`srft testbed check`: the precondition rules (by hand) and the command on a tiny model."""

from __future__ import annotations

import json

from srft.testbed.check import evaluate_preconditions
from srft.testbed.tasks import TESTBED_VERSION

BASE = {"share": {"direct": 0.7, "worked": 0.3, "think": 0.0},
        "accuracy_by_style": {"direct": 0.2, "worked": 0.5, "think": float("nan")},
        "greedy": {"id_chain4": 0.4, "ood_mc4": 0.25, "ood_mc5": 0.12}}
TRAIN = {"lr": {"grpo": 1e-4, "sft": 1e-3, "srft": 1e-3},
         "methods": {"grpo": {"gain": 6.0, "std": 1.0, "final": [1, 2, 3]},
                     "sft": {"gain": 12.0, "std": 4.9, "final": [1, 2, 3]},
                     "srft": {"gain": 20.0, "std": 2.0, "final": [1, 2, 3]}}}


def holds(rows):
    return {r[0]: r[3] for r in rows}


def test_rules_by_hand():
    assert holds(evaluate_preconditions(BASE, TRAIN)) == {
        "base_reasons": True, "demo_format_unseen": True, "ood_base_nonzero": True,
        "grpo_improves": True, "sft_improves": True, "seed_spread": True}
    worse = {**BASE, "share": {"direct": 0.69, "worked": 0.3, "think": 0.01},
             "accuracy_by_style": {"direct": 0.5, "worked": 0.4, "think": 0.0},
             "greedy": {"id_chain4": 0.4, "ood_mc4": 0.25, "ood_mc5": 0.09}}
    train = json.loads(json.dumps(TRAIN))
    train["methods"]["grpo"]["gain"], train["methods"]["sft"]["gain"] = 4.9, 9.9
    train["methods"]["srft"]["std"] = 5.1
    assert holds(evaluate_preconditions(worse, train)) == {
        "base_reasons": False, "demo_format_unseen": False, "ood_base_nonzero": False,
        "grpo_improves": False, "sft_improves": False, "seed_spread": False}
    quick = holds(evaluate_preconditions(BASE, None))  # --quick: the training rows are not measured
    assert [quick[k] for k in ("grpo_improves", "sft_improves", "seed_spread")] == [None, None, None]


def test_quick_check_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    from srft.cli import main

    code = main(["testbed", "check", "--quick", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| base_reasons |" in out and "| seed_spread | not measured (--quick)" in out
    res = json.loads((tmp_path / "check.json").read_text())
    assert res["testbed_version"] == TESTBED_VERSION and res["base"]["n_samples"] == 800
    assert abs(sum(res["base"]["share"].values()) - 1.0) < 1e-9
    assert set(res["base"]["greedy"]) == {"id_chain4", "ood_mc4", "ood_mc5"}
    failed = [r["precondition"] for r in res["rows"] if r["holds"] is False]
    assert code == (1 if failed else 0)  # a random tiny model fails some rows: exit 1 says so
