"""The README's main job, end to end: `srft train` with no arguments builds the
testbed base model from scratch (a fresh SRFT_CACHE) and trains SRFT on it.
Slow (several minutes on 2 CPU cores); run in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from srft.metrics import read_metrics


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A cache folder the first test fills with a testbed base model built from scratch."""
    return tmp_path_factory.mktemp("fresh") / "cache"


@pytest.mark.slow
def test_default_srft_train_learns(tmp_path, fresh_cache):
    env = {**os.environ, "SRFT_CACHE": str(fresh_cache)}
    r = subprocess.run([sys.executable, "-m", "srft.cli", "train"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path / "runs" / "srft"
    print(r.stdout[-1500:])
    assert "| id_chain4 |" in r.stdout
    ev = json.loads((out / "eval.json").read_text())
    base, trained = ev["before"]["id_chain4"]["accuracy"], ev["after"]["id_chain4"]["accuracy"]
    assert 0.30 <= base <= 0.75, f"base model in-distribution accuracy {base:.3f} outside the testbed's design"
    assert trained - base >= 0.10, f"SRFT raised in-distribution accuracy by only {100 * (trained - base):.1f} points"
    rows = read_metrics(out / "metrics.jsonl")
    assert {"step", "reward/mean", "entropy/rollout", "weight/sft", "weight/rl", "loss/total"} <= set(rows[0])
    assert (out / "final" / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    assert len(list((out / "plots").glob("*.png"))) >= 4
    built = list((fresh_cache / "testbed").glob("base-*/model.safetensors"))
    assert len(built) == 1


@pytest.mark.slow
def test_testbed_check_base_rows_hold_on_a_fresh_build(tmp_path, fresh_cache):
    """`srft testbed check --quick` on the base model built on this machine (by the test above, or
    here if it runs alone): the base model's preconditions hold (exit 0), whatever the CPU."""
    env = {**os.environ, "SRFT_CACHE": str(fresh_cache)}
    r = subprocess.run([sys.executable, "-m", "srft.cli", "testbed", "check", "--quick", "--output-dir",
                        str(tmp_path / "check")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    print(r.stdout[-2500:])
    assert r.returncode == 0, r.stdout[-2500:] + r.stderr[-2000:]
    rows = {x["precondition"]: x["holds"] for x in json.loads((tmp_path / "check" / "check.json").read_text())["rows"]}
    assert rows["base_reasons"] and rows["demo_format_unseen"] and rows["ood_base_nonzero"]


@pytest.mark.slow
def test_papers_protocol_on_the_testbed_model(tmp_path, fresh_cache):
    """`srft eval --protocol srft` on the testbed base model (the one built above) over the shared
    math and ARC files when present, plus GPQA and MMLU-Pro files in their release layouts, with
    tiny limits: every source evaluated, the paper-style table printed and written."""
    from tests.conftest import SHARED_BENCHMARKS
    from tests.test_protocol import bench_files, write_mmlu_pro

    shared = [SHARED_BENCHMARKS / f for f in ("math_id.parquet", "arc_c.parquet")]
    files = [f for f in shared if f.is_file()] or bench_files(tmp_path)[:2]
    files += [bench_files(tmp_path)[2], write_mmlu_pro(tmp_path / "mmlu_pro.parquet")]
    env = {**os.environ, "SRFT_CACHE": str(fresh_cache)}
    r = subprocess.run([sys.executable, "-m", "srft.cli", "eval", "--model", "testbed", "--protocol", "srft",
                        "--benchmark", *map(str, files), "--limit", "2", "--k", "2", "--max-new-tokens", "16",
                        "--output-dir", str(tmp_path / "protocol")], env=env, capture_output=True, text=True,
                       timeout=3600)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((tmp_path / "protocol" / "protocol.json").read_text())
    expected = {"gpqa_diamond", "mmlu_pro"} | ({"aime", "amc", "math", "minerva", "olympiad_bench", "arc_c"}
                                              if all(f.is_file() for f in shared) else {"aime", "math", "arc_c"})
    assert set(summary["sources"]) == expected
    assert all(1 <= s["n"] <= 2 and s["k"] == 2 for s in summary["sources"].values())
    assert "**OOD average**" in r.stdout and "SRFT (Qwen2.5-Math-7B) | 59.5 | 62.5" in r.stdout
