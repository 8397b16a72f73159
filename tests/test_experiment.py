"""`srft experiment --quick` end to end on a tiny model, the two-stage baseline, and
the summary arithmetic (mean / std over seeds, steps to reach a target)."""

from __future__ import annotations

import json

import pytest

from srft.cli import main
from srft.config import Config, apply_overrides
from srft.experiment import QUICK_PRESETS, QUICK_SEEDS, parse_presets, steps_to_reach, summarize
from srft.metrics import read_metrics
from srft.objective import SRFT_ABLATIONS, get_preset
from srft.stages import stage_configs, stage_steps


def test_quick_grid_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "--quick", "--model", str(tiny_model_dir), "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    sets = ["id_chain4", "ood_mc4", "ood_mc5"]
    assert res["sets"] == sets
    assert list(res["table"]) == ["base", *QUICK_PRESETS]
    for method, row in res["table"].items():
        assert list(row) == [*sets, "ID avg", "OOD avg", "entropy"], method
    assert set(res["runs"]) == {f"{p}/seed-{s}" for p in QUICK_PRESETS for s in QUICK_SEEDS}
    # the markdown table: header, base, one row per method, each with 1 + 6 cells
    md = (out / "results.md").read_text()
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if line.startswith("| "):  # not the |---| line
            rows.append(line)
    # the gap table: SRFT minus each method, a Welch interval per cell
    assert "| in distribution | " in md and md.count(" [+") + md.count(" [-") >= 2 * (len(QUICK_PRESETS) - 1)
    assert len(rows) == 2 + len(QUICK_PRESETS)
    assert all(line.count("|") == 8 for line in rows)
    assert rows[1].startswith("| base |")
    for name in ("accuracy_main.png", "entropy_main.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    # every curve has the step-0 evaluation and one per step (eval_every 1, 2 steps)
    for p in QUICK_PRESETS:
        assert [s for s, _ in res["curves"][p]["accuracy_id"]] == [0, 1, 2], p
    # the two-stage run: stage folders, renumbered metrics with the stage
    st = out / "runs" / "sft_then_grpo" / "seed-0"
    assert (st / "stage1-sft" / "final" / "model.safetensors").exists()
    assert (st / "final" / "model.safetensors").exists()
    rows = read_metrics(st / "metrics.jsonl")
    assert [(r["step"], r["train/stage"]) for r in rows] == [(1, 1), (2, 2)]
    # running the same command again redoes nothing
    capsys.readouterr()
    assert main(["experiment", "--quick", "--model", str(tiny_model_dir), "--output-dir", str(out)]) == 0
    assert "8 runs, 8 already done" in capsys.readouterr().out
    # ... but not with other settings: the grid would mix them
    assert main(["experiment", "--quick", "--model", str(tiny_model_dir), "--output-dir", str(out),
                 "--optim.lr", "0.5"]) == 2
    assert "was run with other settings (optim.lr: 0.001 there, 0.5 now)" in capsys.readouterr().err


def test_stage_split_and_configs(tmp_path):
    assert stage_steps(100, [0.5, 0.5]) == [50, 50]
    assert stage_steps(7, [0.5, 0.5]) == [4, 3]
    assert sum(stage_steps(5, [0.3, 0.7])) == 5
    p = get_preset("sft_then_grpo")
    cfg = apply_overrides(Config(), {**p.overrides, "train.preset": "sft_then_grpo", "train.max_steps": 10,
                                     "train.output_dir": str(tmp_path / "r"), "rollout.n_rollouts": 4}, "t")
    s1, s2 = stage_configs(cfg)
    assert (s1.train.preset, s1.train.max_steps, s1.rollout.n_rollouts) == ("sft", 5, 0)
    assert not s1.objective.rl_self and s1.objective.sft_demo
    # the last stage keeps the user's flags and starts from stage 1's final model
    assert (s2.train.preset, s2.train.max_steps, s2.rollout.n_rollouts) == ("grpo", 5, 4)
    assert s2.model.name_or_path == str(tmp_path / "r" / "stage1-sft" / "final")
    assert s2.objective.rl_self and not s2.objective.sft_demo and not s2.objective.rl_demo
    # each stage optimises exactly its preset's objective (tested against its formula in test_objective.py)
    for stage, name in ((s1, "sft"), (s2, "grpo")):
        assert stage.objective == apply_overrides(Config(), get_preset(name).overrides, name).objective


def test_parse_presets_groups_and_errors():
    assert parse_presets("main")[:3] == ["srft", "sft", "grpo"]
    assert parse_presets("ablations") == ["srft", *SRFT_ABLATIONS]
    assert len(parse_presets("all")) == 6 + len(SRFT_ABLATIONS)
    assert parse_presets("grpo, srft,grpo") == ["grpo", "srft"]
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        parse_presets("srft,nope")


def _run(after: dict, before: dict, hist, ent):
    return {"eval": {"after": {k: {"accuracy": v} for k, v in after.items()},
                     "before": {k: {"accuracy": v} for k, v in before.items()},
                     "history": hist},
            "metrics": [{"step": i + 1, "entropy/rollout": e} for i, e in enumerate(ent)]}


def test_summary_mean_std_by_hand():
    base = {"id_chain4": 0.1, "ood_chain5": 0.0, "ood_chain6": 0.2}
    h = [{"step": 0, "id_chain4": 0.1, "ood_chain5": 0.0, "ood_chain6": 0.2}]
    runs = {
        ("srft", 0): _run({"id_chain4": 0.5, "ood_chain5": 0.1, "ood_chain6": 0.3}, base,
                          h + [{"step": 5, "id_chain4": 0.5, "ood_chain5": 0.1, "ood_chain6": 0.3}], [1.0] * 9 + [0.5]),
        ("srft", 1): _run({"id_chain4": 0.7, "ood_chain5": 0.3, "ood_chain6": 0.1}, base,
                          h + [{"step": 5, "id_chain4": 0.7, "ood_chain5": 0.3, "ood_chain6": 0.1}], [1.0] * 9 + [0.3]),
    }
    s = summarize(["srft"], [0, 1], runs)
    t = s["table"]
    assert t["base"]["id_chain4"] == pytest.approx((10.0, 0.0))
    assert t["base"]["OOD avg"] == pytest.approx((10.0, 0.0))
    assert t["srft"]["id_chain4"][0] == pytest.approx(60.0)
    assert t["srft"]["id_chain4"][1] == pytest.approx(14.1421356, rel=1e-6)  # stdev(50, 70)
    assert t["srft"]["OOD avg"] == pytest.approx((20.0, 0.0))  # (10+30)/2 and (30+10)/2
    assert t["srft"]["entropy"] == pytest.approx((0.4, 0.1414213562))  # last 10% of 10 steps = last step
    assert s["curves"]["srft"]["accuracy_id"] == [(0, pytest.approx(10.0)), (5, pytest.approx(60.0))]
    assert steps_to_reach(s["curves"]["srft"]["accuracy_id"], 55.0) == 5
    assert steps_to_reach(s["curves"]["srft"]["accuracy_id"], 61.0) is None


def test_welch_t_by_hand():
    from srft.experiment import compare_to, welch_t

    # means 60 and 50, stds 10 and 20, n = 4: se = sqrt((100 + 400) / 4) = 11.18
    assert welch_t(60, 10, 50, 20, 4) == pytest.approx(10 / 11.180339887)
    assert welch_t(5, 0, 5, 0, 3) == 0.0
    table = {"base": {"ID avg": (10.0, 0.0)}, "srft": {"ID avg": (60.0, 10.0)}, "sft": {"ID avg": (50.0, 20.0)}}
    (d, t), = compare_to(table, "srft", "ID avg", 4).values()
    assert d == pytest.approx(10.0) and t == pytest.approx(0.894427191)


def test_best_lr_by_hand():
    from srft.experiment import best_lr

    assert best_lr({1e-4: 0.2, 3e-4: 0.5, 1e-3: 0.4}) == 3e-4
    assert best_lr({1e-4: 0.5, 3e-4: 0.5, 1e-3: 0.1}) == 1e-4  # a tie: the smaller rate


def test_learning_rate_selection_on_a_tiny_grid(tiny_model_dir, tmp_path):
    """One run per (preset, rate) at seed 0, scored on the testbed's validation split (never a
    test set); the runs are reused by a second call."""
    from srft.experiment import select_learning_rates

    root = tmp_path / "sel"
    over = {"model.name_or_path": str(tiny_model_dir)}
    sel = select_learning_rates(["grpo", "sft"], root, grid=(1e-4, 1e-2), quick=True, flag_over=over,
                                log=lambda *a: None)
    assert set(sel) == {"grpo", "sft"}
    for p, r in sel.items():
        assert set(r["val"]) == {1e-4, 1e-2} and r["lr"] == max(r["val"], key=lambda lr: (r["val"][lr], -lr))
        ev = json.loads((root / p / "lr-0.0001" / "eval.json").read_text())
        assert set(ev["after"]) == {"eval"} and ev["after"]["eval"]["n"] == 6  # the validation split only
        saved = (root / p / "lr-0.01" / "config.yaml").read_text()
        assert "dataset: testbed:val" in saved and "lr: 0.01" in saved
    from srft.testbed.tasks import build_splits

    val_prompts = {r["prompt"] for r in build_splits(0).val}
    done = json.loads((root / "grpo" / "lr-0.0001" / "eval.json").read_text())
    assert all(s["prompt"] in val_prompts for s in done["after"]["eval"]["samples"])
    t = (root / "grpo" / "lr-0.0001" / "eval.json").stat().st_mtime
    select_learning_rates(["grpo"], root, grid=(1e-4, 1e-2), quick=True, flag_over=over, log=lambda *a: None)
    assert (root / "grpo" / "lr-0.0001" / "eval.json").stat().st_mtime == t  # reused, not rerun


def test_welch_interval_by_hand():
    from srft.experiment import t975, welch_interval

    d, lo, hi, df = welch_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # var([1,2,3]) / 3 = 1/3; the zero-variance sample adds nothing: df = 2, t = 4.303
    assert d == 2.0 and df == pytest.approx(2.0)
    assert (lo, hi) == pytest.approx((2 - 4.303 * (1 / 3) ** 0.5, 2 + 4.303 * (1 / 3) ** 0.5))
    # equal sizes and variances: df = 2n - 2
    d, lo, hi, df = welch_interval([1.0, 3.0, 5.0, 7.0, 9.0], [0.0, 2.0, 4.0, 6.0, 8.0])
    assert d == 1.0 and df == pytest.approx(8.0) and hi - d == pytest.approx(2.306 * (2 * 10 / 5) ** 0.5)
    assert welch_interval([2.0, 2.0], [1.0, 1.0])[:3] == (1.0, 1.0, 1.0)
    assert t975(8.7) == 2.306 and t975(27) == 2.060 and t975(1e9) == 1.96
