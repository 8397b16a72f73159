"""Benchmark evaluation harness: verl parquet loading, deduplication, avg@k / pass@k."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srft.benchmarks import evaluate_benchmark, format_benchmark_table, load_benchmark
from srft.rollout.base import RolloutOutput
from tests.conftest import SHARED_BENCHMARKS

MATH_ID = SHARED_BENCHMARKS / "math_id.parquet"
ARC = SHARED_BENCHMARKS / "arc_c.parquet"
needs_math_id = pytest.mark.skipif(not MATH_ID.is_file(), reason=f"shared benchmark file {MATH_ID} not present")


def write_verl(path: Path, rows):
    import pandas as pd

    pd.DataFrame([{
        "data_source": src,
        "prompt": [{"role": "system", "content": "Think, then answer in \\boxed{}."}, {"role": "user", "content": q}],
        "ability": "math", "reward_model": {"ground_truth": gt, "style": "rule"}, "extra_info": {"index": i},
    } for i, (src, q, gt) in enumerate(rows)]).to_parquet(path)


class ScriptedEngine:
    """Returns, for each prompt, the next scripted completion (cycling)."""

    def __init__(self, tokenizer, script: list[str]):
        self.tok, self.script, self.calls = tokenizer, script, 0

    def generate(self, prompt_ids, params, seed=None):
        texts = [self.script[i % len(self.script)] for i in range(len(prompt_ids))]
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id] for t in texts]
        width = max(len(x) for x in ids)
        out = torch.full((len(ids), width), self.tok.pad_token_id)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            out[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        return RolloutOutput(out, mask, torch.zeros(out.shape), torch.ones(len(ids), dtype=torch.bool))


def test_dedup_and_avg_at_k(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    f = tmp_path / "b.parquet"
    write_verl(f, [("aime", "1+1?", "2")] * 3 + [("aime", "half?", "\\frac{1}{2}"), ("math", "3*3?", "9")])
    probs = load_benchmark(f)
    assert [(p["source"], p["answer"], p["copies"]) for p in probs] == [
        ("aime", "2", 3), ("aime", "\\frac{1}{2}", 1), ("math", "9", 1)]
    assert len(load_benchmark(f, limit=1)) == 2  # first unique problem of each source
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # k = 2 samples per problem, in order: p1: right, wrong; p2: 0.5 (right), wrong; p3: wrong, wrong
    script = ["so \\boxed{2}", "\\boxed{3}", "<think>\\boxed{9}</think> \\boxed{0.5}", "none", "\\boxed{8}", "x"]
    res = evaluate_benchmark(None, tok, probs, k=2, temperature=1.0, engine=ScriptedEngine(tok, script))
    assert res["per_source"]["aime"] == {"avg@2": 0.5, "pass@2": 1.0, "n": 2}
    assert res["per_source"]["math"] == {"avg@2": 0.0, "pass@2": 0.0, "n": 1}
    assert res["overall"]["avg@2"] == pytest.approx(2 / 6)
    assert res["sources_mean"] == pytest.approx(0.25)
    table = format_benchmark_table(res)
    assert "| aime | 2 | 50.0 | 100.0 |" in table and "| overall | 3 | 33.3 | 66.7 |" in table


def test_missing_ground_truth_names_the_row(tmp_path):
    f = tmp_path / "b.parquet"
    write_verl(f, [("math", "q", "1"), ("math", "q2", "")])
    with pytest.raises(ValueError, match="row 1: reward_model.ground_truth"):
        load_benchmark(f)


@needs_math_id
def test_math_id_unique_problems():
    probs = load_benchmark(MATH_ID)
    counts = {}
    for p in probs:
        counts[p["source"]] = counts.get(p["source"], 0) + 1
    copies = {p["source"]: p["copies"] for p in probs}
    assert counts["aime"] == 30 and copies["aime"] == 8
    assert counts["amc"] == 83 and copies["amc"] == 4
    assert counts["math"] == 500 and counts["minerva"] == 272


@needs_math_id
def test_cli_benchmark_slice(tiny_model_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "srft.cli", "eval", "--model", str(tiny_model_dir), "--benchmark",
                        str(MATH_ID), "--limit", "1", "--k", "2", "--max-new-tokens", "4", "--output-dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| aime | 1 |" in r.stdout and "| overall | 5 |" in r.stdout
    assert (tmp_path / "benchmark.json").is_file()


@pytest.mark.skipif(not ARC.is_file(), reason=f"shared benchmark file {ARC} not present")
def test_arc_letters_load():
    probs = load_benchmark(ARC, limit=20)
    assert len(probs) == 20 and all(p["answer"] in list("ABCD1234") for p in probs)
