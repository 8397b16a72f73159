"""`srft experiment --quick` end to end on a tiny model, the two-stage baseline, and
the summary arithmetic (mean / std over seeds, steps to reach a target)."""

from __future__ import annotations

import json

import pytest

from srft.cli import main
from srft.config import Config, apply_overrides
from srft.experiment import QUICK_PRESETS, QUICK_SEEDS, parse_presets, summarize
from srft.metrics import read_metrics
from srft.objective import SRFT_ABLATIONS, get_preset
from srft.stages import stage_configs, stage_steps
from srft.stats import steps_to_reach


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
    # a copy of the folder elsewhere is the same grid: reused, not redone
    import shutil

    shutil.copytree(out, tmp_path / "copy")
    assert main(["experiment", "--quick", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "copy")]) == 0
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


def test_stage_split_and_first_stage_lr(tmp_path):
    """train.stage_split gives the first stage its share of the steps, train.first_stage_lr its own
    learning rate; the stages themselves run as one-stage presets (the two fields reset)."""
    p = get_preset("sft_then_grpo")
    cfg = apply_overrides(Config(), {**p.overrides, "train.preset": "sft_then_grpo", "train.max_steps": 100,
                                     "train.output_dir": str(tmp_path / "r"), "optim.lr": 1e-4,
                                     "train.stage_split": 0.25, "train.first_stage_lr": 3e-3}, "t")
    s1, s2 = stage_configs(cfg)
    assert (s1.train.max_steps, s2.train.max_steps) == (25, 75)
    assert (s1.optim.lr, s2.optim.lr) == (3e-3, 1e-4)
    assert s1.train.stage_split is None and s2.train.first_stage_lr is None
    for bad in ({"train.stage_split": 1.0}, {"train.stage_split": 0.0}, {"train.first_stage_lr": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            apply_overrides(Config(), bad, "t").validate()


def test_stage_split_selection_on_a_tiny_grid(tiny_model_dir, tmp_path):
    """sft_then_grpo's split is chosen on the validation split, each stage at its method's rate."""
    from srft.experiment import select_stage_split

    root = tmp_path / "sel"
    sel = {"sft": {"lr": 1e-2}, "grpo": {"lr": 1e-4}}
    out = select_stage_split(sel, root, splits=(0.25, 0.75), quick=True,
                             flag_over={"model.name_or_path": str(tiny_model_dir), "train.max_steps": 4},
                             log=lambda *a: None)
    assert set(out["val"]) == {0.25, 0.75}
    assert out["split"] == max(out["val"], key=lambda sp: (out["val"][sp], -sp))
    assert out["overrides"] == {"optim.lr": 1e-4, "train.first_stage_lr": 1e-2, "train.stage_split": out["split"]}
    run = root / "sft_then_grpo" / "split-0.25"
    assert [r["train/stage"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 2, 2]
    assert "lr: 0.01" in (run / "stage1-sft" / "config.yaml").read_text()
    assert set(json.loads((run / "eval.json").read_text())["after"]) == {"eval"}  # validation only


def test_parse_presets_groups_and_errors():
    assert parse_presets("main")[:5] == ["srft", "srft_paper", "sft", "sft_filtered", "grpo"]
    assert parse_presets("ablations") == ["srft", *SRFT_ABLATIONS]
    assert len(parse_presets("all")) == 11 + len(SRFT_ABLATIONS)
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


def test_claim_verdicts_by_hand():
    """Each claim's verdict by its rule, on numbers worked out by hand: Welch's p over seeds,
    Holm-adjusted over the 7 claims, the detectable difference beside each."""
    from srft.experiment import claim_verdicts, format_verdicts

    base = {"id_chain4": 0.1, "ood_mc4": 0.2}

    def run(acc_id, acc_ood, ent_last, hist=(), think=None):
        h = [{"step": 0, "id_chain4": 0.1, "ood_mc4": 0.2}] + [{"step": st, "id_chain4": a, "ood_mc4": 0.2}
                                                                for st, a in hist]
        r = _run({"id_chain4": acc_id, "ood_mc4": acc_ood}, base, h, [1.0] * 9 + [ent_last])
        for row, t in zip(r["metrics"], think or []):
            row["rollout/think_share"] = t
        return r

    def build(think_srft=None):
        runs = {}
        for s, (a, b, c) in enumerate([(0.60, 0.50, 0.40), (0.62, 0.52, 0.41), (0.64, 0.54, 0.42)]):
            runs[("srft", s)] = run(a, 0.3, 0.9, [(50, 0.85), (100, a)], think_srft)
            runs[("grpo", s)] = run(b, 0.3 + 0.01 * s, 0.1)  # SRFT 10 points above, the same OOD within noise
            runs[("sft_then_grpo", s)] = run(c, 0.3, 0.5, [(50, 0.30), (100, 0.82 if s < 2 else 0.5)])
        presets, seeds = ["srft", "grpo", "sft_then_grpo"], [0, 1, 2]
        return {r["claim"]: r for r in claim_verdicts(runs, presets, seeds, summarize(presets, seeds, runs))}

    v = build()
    assert len(v) == 7
    idg = v["SRFT above grpo (baseline), in distribution"]
    # 60/62/64 vs 50/52/54: d = 10, se = sqrt(4/3 + 4/3) = 1.633, t = 6.12, df = 4: p = 0.0036; Holm rank 4 of 7
    assert idg["measured"].startswith("+10.0 points") and idg["p"] == pytest.approx(0.0036, abs=2e-4)
    assert idg["p_holm"] == pytest.approx(4 * idg["p"], rel=1e-6) and idg["verdict"] == "holds"
    # MDD: sd 2 and 2 over 3 seeds, df 4: (2.776 + 0.941) x 1.633 = 6.07
    assert idg["mdd"] == pytest.approx(6.07, abs=0.01)
    # OOD: srft 30 in every seed, grpo 30, 31, 32: difference -1, se = 1/sqrt(3), df 2: p = 0.225
    ood = v["SRFT above grpo (baseline), out of distribution"]
    assert ood["verdict"] == "not distinguishable" and "[-3.5, +1.5]" in ood["measured"]
    assert ood["p"] == pytest.approx(0.225, abs=2e-3) and ood["p_holm"] == pytest.approx(2 * ood["p"], rel=1e-6)
    # entropy relative to the base model's (the first step's, 1.0): level 0.9 vs 0.1, area 0.99 vs 0.91
    level = next(r for c, r in v.items() if "(level" in c)
    area = next(r for c, r in v.items() if "(area" in c)
    assert level["verdict"] == area["verdict"] == "holds" and level["measured"].startswith("+0.80 x base")
    assert area["measured"].startswith("+0.08 x base")
    # speed: SRFT reaches 80% at step 50 in every seed; sft_then_grpo at 100, 100 and never (150):
    # d = 66.7, se = 16.7, t = 4.0, df = 2: p = 0.057, x 3 by Holm: not distinguishable
    speed = next(r for c, r in v.items() if c.startswith("one stage"))
    assert speed["measured"].startswith("+66.7 steps") and speed["verdict"] == "not distinguishable"
    assert speed["p_holm"] == pytest.approx(3 * speed["p"], rel=1e-6) and speed["mdd"] > 66.7
    table = format_verdicts(list(v.values()))
    assert "| p (Holm) | MDD | verdict |" in table and "Rules:" in table
    # the format moves by 50 points during SRFT's runs: the entropy claims are not testable
    v = build(think_srft=[0.0] * 9 + [0.5])
    level = next(r for c, r in v.items() if "(level" in c)
    assert level["verdict"] == "not testable" and "format share moved by up to 50 points" in level["note"]
    assert len([r for r in v.values() if r["p_holm"] is not None]) == 5  # Holm over the 5 testable claims


def test_welch_t_by_hand():
    from srft.experiment import compare_to
    from srft.stats import welch_t

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
    from srft.stats import t975, welch_interval

    d, lo, hi, df = welch_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # var([1,2,3]) / 3 = 1/3; the zero-variance sample adds nothing: df = 2, t = 4.303
    assert d == 2.0 and df == pytest.approx(2.0)
    assert (lo, hi) == pytest.approx((2 - 4.303 * (1 / 3) ** 0.5, 2 + 4.303 * (1 / 3) ** 0.5))
    # equal sizes and variances: df = 2n - 2
    d, lo, hi, df = welch_interval([1.0, 3.0, 5.0, 7.0, 9.0], [0.0, 2.0, 4.0, 6.0, 8.0])
    assert d == 1.0 and df == pytest.approx(8.0) and hi - d == pytest.approx(2.306 * (2 * 10 / 5) ** 0.5)
    assert welch_interval([2.0, 2.0], [1.0, 1.0])[:3] == (1.0, 1.0, 1.0)
    assert t975(8.7) == 2.306 and t975(27) == 2.060 and t975(1e9) == 1.96


def test_a_rate_at_an_edge_is_extended_on_that_side():
    from srft.experiment import LR_GRID, extension, next_rate

    assert LR_GRID == (1e-4, 3e-4, 1e-3, 3e-3)
    assert [next_rate(1e-3, True), next_rate(3e-3, True), next_rate(1e-4, False), next_rate(3e-4, False)] == \
        [3e-3, 1e-2, 3e-5, 1e-4]
    assert extension({1e-4: 0.1, 3e-4: 0.5, 1e-3: 0.9, 3e-3: 0.95}) == 1e-2  # best at the top edge
    assert extension({1e-4: 0.9, 3e-4: 0.5, 1e-3: 0.1, 3e-3: 0.0}) == 3e-5  # at the bottom edge
    assert extension({1e-4: 0.1, 3e-4: 0.9, 1e-3: 0.5, 3e-3: 0.0}) is None  # inside: no extension
