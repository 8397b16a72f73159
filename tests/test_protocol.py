"""The paper's evaluation protocol (`srft.protocol`, `srft eval --protocol`) and the benchmark
loaders it reads (`srft.benchmarks`: verl parquet, GPQA csv, MMLU-Pro, option shuffling)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from srft.benchmarks import load_problems, shuffle_options, split_options
from srft.protocol import (PAPER_ROWS, PROTOCOLS, Protocol, canonical_source, format_protocol_table,
                           load_protocol_sets, run_protocol)
from tests.conftest import SHARED_BENCHMARKS, verl_row
from tests.test_benchmarks import ScriptedEngine

SYSTEM = "Think in <think> </think>, then answer in \\boxed{}."
ARC = SHARED_BENCHMARKS / "arc_c.parquet"
MATH_ID = SHARED_BENCHMARKS / "math_id.parquet"


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


def choice_row(i: int, source: str, options: list[str], answer: str, labels: str = "ABCD") -> dict:
    q = f"Question {i}?\n\n" + "".join(f"{labels[j]}) {o}\n" for j, o in enumerate(options))
    return verl_row(i, q, "", answer, system=SYSTEM, source=source)


def write_gpqa(path: Path, n: int = 3) -> Path:
    import pandas as pd

    pd.DataFrame([{"Question": f"G{i}: which?", "Correct Answer": f"right{i}", "Incorrect Answer 1": f"w{i}a",
                   "Incorrect Answer 2": f"w{i}b", "Incorrect Answer 3": f"w{i}c", "Subdomain": "x"}
                  for i in range(n)]).to_csv(path, index=False)
    return path


def write_mmlu_pro(path: Path) -> Path:
    return write_parquet(path, [
        {"question_id": 0, "question": "M0?", "options": ["a0", "b0", "c0", "d0", "e0"], "answer": "E",
         "answer_index": 4, "category": "math"},
        {"question_id": 1, "question": "M1?", "options": ["a1", "b1", "c1"], "answer": "B", "answer_index": 1,
         "category": "law"},
    ])


# ----------------------------------------------------------------------------- options
def test_split_options_finds_the_final_block_only():
    stem, labels, opts, tail = split_options("Pick one.\n\nA) red\nB) blue\nC) green\n")
    assert (stem, labels, opts, tail) == ("Pick one.\n", ["A", "B", "C"], ["red", "blue", "green"], "")
    assert split_options("1) one\n2) two\n")[1] == ["1", "2"]
    assert split_options("no options here") is None
    assert split_options("A) only one\n") is None
    assert split_options("B) b\nC) c\n") is None  # must start at A / 1
    assert split_options("A) a\nC) c\n") is None  # consecutive labels only


def test_shuffle_moves_the_answer_with_its_option():
    prob = {"source": "arc_c", "index": 7, "answer": "C",
            "prompt": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": "Q?\n\nA) red\nB) blue\nC) green\nD) black\n"}]}
    out = shuffle_options(prob, seed=0)
    text = out["prompt"][1]["content"]
    assert out["prompt"][0] == prob["prompt"][0] and text.startswith("Q?\n\nA) ")
    _, labels, opts, _ = split_options(text)
    assert labels == list("ABCD") and sorted(opts) == ["black", "blue", "green", "red"]
    assert opts[labels.index(out["answer"])] == "green"  # the correct option, wherever it went
    assert shuffle_options(prob, seed=0) == out  # deterministic
    orders = {tuple(split_options(shuffle_options(dict(prob, index=i), 0)["prompt"][1]["content"])[2])
              for i in range(20)}
    assert len(orders) > 5  # problems get different permutations
    assert prob["prompt"][1]["content"].endswith("D) black\n")  # the input is not modified
    digits = {"source": "arc_c", "index": 0, "answer": "2", "prompt": "Q?\n\n1) one\n2) two\n3) three\n"}
    d = shuffle_options(digits, 3)
    _, labels, opts, _ = split_options(d["prompt"])
    assert labels == ["1", "2", "3"] and opts[labels.index(d["answer"])] == "two"
    assert shuffle_options(dict(digits, answer="7"), 0) is None  # the answer is not a label


# ----------------------------------------------------------------------------- loaders
def test_gpqa_csv_loader_shuffles_its_four_options(tmp_path):
    probs = load_problems(write_gpqa(tmp_path / "gpqa_diamond.csv"), seed=1)
    assert [p["source"] for p in probs] == ["gpqa_diamond"] * 3
    for i, p in enumerate(probs):
        _, labels, opts, _ = split_options(p["prompt"][-1]["content"])
        assert labels == list("ABCD") and opts[labels.index(p["answer"])] == f"right{i}"
        assert p["prompt"][-1]["content"].startswith(f"G{i}: which?\n\n")
    assert {p["answer"] for p in load_problems(write_gpqa(tmp_path / "g.csv", 40))} != {"A"}
    assert load_problems(tmp_path / "g.csv", limit=2)[0]["source"] == "gpqa"
    import pandas as pd

    pd.DataFrame([{"Question": "q", "Correct Answer": "x"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="missing \\['Incorrect Answer 1'"):
        load_problems(tmp_path / "bad.csv")


def test_mmlu_pro_loader_and_its_errors(tmp_path):
    probs = load_problems(write_mmlu_pro(tmp_path / "test-00000-of-00001.parquet"))
    assert [(p["source"], p["answer"]) for p in probs] == [("mmlu_pro", "E"), ("mmlu_pro", "B")]
    assert probs[0]["prompt"] == [{"role": "user", "content": "M0?\n\nA) a0\nB) b0\nC) c0\nD) d0\nE) e0\n"}]
    write_parquet(tmp_path / "bad.parquet", [{"question": "q", "options": ["a", "b"], "answer": "C"}])
    with pytest.raises(ValueError, match="row 0: answer 'C' is not a letter of its 2 options"):
        load_problems(tmp_path / "bad.parquet")
    write_parquet(tmp_path / "other.parquet", [{"text": "q"}])
    with pytest.raises(ValueError, match="unknown layout"):
        load_problems(tmp_path / "other.parquet")


def test_source_names_are_canonical():
    assert [canonical_source(s) for s in ("aime24", "AMC23", "MATH-500", "olympiadbench", "GPQA", "mmlu-pro",
                                          "arc_challenge", "mine")] == [
        "aime", "amc", "math", "olympiad_bench", "gpqa_diamond", "mmlu_pro", "arc_c", "mine"]


def bench_files(tmp_path: Path) -> list[Path]:
    math = write_parquet(tmp_path / "math.parquet", [
        verl_row(0, "1+1?", "", "2", system=SYSTEM, source="aime"),
        verl_row(0, "1+1?", "", "2", system=SYSTEM, source="aime"),  # a repeated copy
        verl_row(1, "2+2?", "", "4", system=SYSTEM, source="aime"),
        verl_row(2, "3*3?", "", "9", system=SYSTEM, source="math"),
    ])
    arc = write_parquet(tmp_path / "arc.parquet", [choice_row(i, "arc_c", ["p", "q", "r", "s"], "B")
                                                   for i in range(2)])
    return [math, arc, write_gpqa(tmp_path / "gpqa_diamond.csv", 2)]


def test_protocol_sets_shuffle_ood_options_and_share_the_system_message(tmp_path):
    files = bench_files(tmp_path)
    sets, facts = load_protocol_sets(files, PROTOCOLS["srft"], seed=0)
    assert list(sets) == ["aime", "math", "arc_c", "gpqa_diamond"] and len(sets["aime"]) == 2
    assert facts["files"]["gpqa_diamond"].endswith("gpqa_diamond.csv") and facts["unshuffled"] == {}
    assert sets["aime"][0]["prompt"][0] == {"role": "system", "content": SYSTEM}  # math untouched
    assert sets["aime"][0]["prompt"][1]["content"] == "1+1?"
    for row in sets["gpqa_diamond"]:  # built rows get the files' system message
        assert row["prompt"][0] == {"role": "system", "content": SYSTEM}
    for row in sets["arc_c"]:
        _, labels, opts, _ = split_options(row["prompt"][-1]["content"])
        assert opts[labels.index(row["answer"])] == "q"
    plain, _ = load_protocol_sets(files, Protocol("plain", "", shuffle_options=False), seed=0)
    assert [r["answer"] for r in plain["arc_c"]] == ["B", "B"]
    dropped, _ = load_protocol_sets(files, PROTOCOLS["srft"], system_prompt="drop")
    assert all(m["role"] != "system" for rows in dropped.values() for r in rows for m in r["prompt"])
    with pytest.raises(ValueError, match="source 'aime' of .* is also in"):
        load_protocol_sets([files[0], files[0]], PROTOCOLS["srft"])


# ----------------------------------------------------------------------------- running
class CountingEngine(ScriptedEngine):
    def generate(self, prompt_ids, params, seed=None):
        self.calls += 1
        return super().generate(prompt_ids, params, seed)


def test_run_protocol_scores_by_hand_and_resumes(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    sets = {"aime": [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?", "answer": "4"}],
            "math": [{"prompt": "3*3?", "answer": "9"}],
            "arc_c": [{"prompt": "Q?", "answer": "B"}, {"prompt": "Q2?", "answer": "C"}],
            "mine": [{"prompt": "x?", "answer": "1"}]}
    proto = Protocol("t", "test", k={"aime": 2})
    # every sample answers \boxed{2}: aime (k=2): p1 2/2, p2 0/2 -> avg@2 0.5, pass@2 0.5;
    # math (9), arc_c (B, C), mine (1): 0. ID average = (0.5 + 0) / 2, OOD = 0.
    engine = CountingEngine(tok, ["\\boxed{2}"])
    summary = run_protocol(None, tok, sets, proto, model_name="m", out_dir=tmp_path / "out", engine=engine,
                           overrides={"max_new_tokens": 8}, log=lambda *_: None)
    src = summary["sources"]
    assert list(src) == ["aime", "math", "arc_c", "mine"]
    assert src["aime"]["k"] == 2 and src["aime"]["accuracy"] == 0.5 and src["aime"]["pass@2"] == 0.5
    assert src["math"]["k"] == 1 and src["math"]["accuracy"] == 0.0
    assert src["arc_c"]["accuracy"] == 0.0 and src["mine"]["group"] == "other"
    assert summary["groups"]["ID"]["average"] == pytest.approx(0.25)  # mean of 0.5 and 0.0
    assert summary["groups"]["ID"]["missing"] == ["amc", "minerva", "olympiad_bench"]
    assert summary["groups"]["OOD"]["average"] == 0.0
    assert engine.calls == 4
    saved = json.loads((tmp_path / "out" / "sources" / "aime.json").read_text())
    assert saved["settings"]["k"] == 2 and saved["settings"]["max_new_tokens"] == 8
    # the same command again: every source is kept, nothing generated
    again = run_protocol(None, tok, sets, proto, model_name="m", out_dir=tmp_path / "out", engine=engine,
                         overrides={"max_new_tokens": 8}, log=lambda *_: None)
    assert engine.calls == 4 and again["sources"]["aime"]["accuracy"] == 0.5
    # another token budget: evaluated again
    run_protocol(None, tok, sets, proto, model_name="m", out_dir=tmp_path / "out", engine=engine,
                 overrides={"max_new_tokens": 9}, log=lambda *_: None)
    assert engine.calls == 8
    table = format_protocol_table(summary)
    assert "| AIME24 | ID | 2 | avg@2 | 50.0 | 50.0 |" in table and "| MATH-500 | ID | 1 | pass@1 | 0.0 |" in table
    assert "| **ID average** | | | | **25.0** |" in table and "| mine | other | 1 | pass@1 | 0.0 |" in table
    assert f"| SRFT (Qwen2.5-Math-7B) | {PAPER_ROWS[-1][1]} | {PAPER_ROWS[-1][2]} |" in table
    assert "| **this model** (m) | 25.0 | 0.0 |" in table
    assert "ID average over 2 of 5 sources" in table


def test_multi_box_answers_count_on_the_protocol(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    sets = {"olympiad_bench": [{"prompt": "solve", "answer": "(2, 2), (6, 2)"}]}
    two_boxes = ["\\boxed{(2, 2)} and \\boxed{(6, 2)}"]
    on = run_protocol(None, tok, sets, Protocol("t", ""), model_name="m", engine=ScriptedEngine(tok, two_boxes),
                      log=lambda *_: None)
    off = run_protocol(None, tok, sets, Protocol("t", "", multi_box=False), model_name="m",
                       engine=ScriptedEngine(tok, two_boxes), log=lambda *_: None)
    assert on["sources"]["olympiad_bench"]["accuracy"] == 1.0
    assert off["sources"]["olympiad_bench"]["accuracy"] == 0.0


def cli(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srft.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_protocol_end_to_end_and_resume(tiny_model_dir, tmp_path):
    files = bench_files(tmp_path)
    out = tmp_path / "eval"
    args = ["eval", "--model", tiny_model_dir, "--protocol", "srft", "--benchmark", *files, "--limit", "2",
            "--k", "2", "--max-new-tokens", "6", "--output-dir", out]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("AIME24", "MATH-500", "ARC-C", "GPQA-Diamond", "**ID average**", "**OOD average**",
                 "SRFT (Qwen2.5-Math-7B)", "**this model**"):
        assert name in r.stdout, name
    summary = json.loads((out / "protocol.json").read_text())
    assert set(summary["sources"]) == {"aime", "math", "arc_c", "gpqa_diamond"}
    assert summary["sources"]["aime"]["k"] == 2 and summary["sources"]["aime"]["settings"]["max_new_tokens"] == 6
    assert (out / "protocol.md").read_text().strip() in r.stdout
    r2 = cli(*args)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count("kept from") == 4  # every source finished: nothing evaluated again
    assert json.loads((out / "protocol.json").read_text())["sources"] == summary["sources"]


def test_cli_protocol_errors_name_the_flag(tiny_model_dir, tmp_path):
    r = cli("eval", "--model", tiny_model_dir, "--protocol", "srft")
    assert r.returncode == 2 and "--protocol needs the benchmark files" in r.stderr
    r = cli("eval", "--model", tiny_model_dir, "--protocol", "paper", "--benchmark", tmp_path / "x.parquet")
    assert r.returncode == 2 and "unknown protocol 'paper'" in r.stderr


@pytest.mark.skipif(not (ARC.is_file() and MATH_ID.is_file()), reason=f"shared benchmark files not in {SHARED_BENCHMARKS}")
def test_real_files_load_on_the_protocol():
    sets, facts = load_protocol_sets([MATH_ID, ARC], PROTOCOLS["srft"], seed=0)
    assert {k: len(v) for k, v in sets.items()} == {"aime": 30, "amc": 83, "math": 500, "minerva": 272,
                                                    "olympiad_bench": 675, "arc_c": 1172}  # LUFFY file: 675 (paper: 674)
    assert facts["unshuffled"] == {}
    import collections

    spread = collections.Counter(r["answer"] for r in sets["arc_c"])
    assert all(spread[x] > 200 for x in "ABCD")  # shuffled answers spread over the letters


SMOL = Path(__file__).resolve().parents[1] / "models" / "smollm2-135m"


@pytest.mark.slow
@pytest.mark.skipif(not SMOL.is_dir(), reason=f"no SmolLM2-135M at {SMOL}: srft prepare-model smollm2-135m "
                    "--output-dir models/smollm2-135m")
def test_protocol_on_smollm2_over_a_few_problems_per_source(tmp_path):
    """A real pretrained model with a chat template, every source of the protocol (the shared math
    and ARC files when present, GPQA and MMLU-Pro in their release layouts), two problems each."""
    files = [f for f in (MATH_ID, ARC) if f.is_file()] or bench_files(tmp_path)[:2]
    files += [write_gpqa(tmp_path / "gpqa_diamond.csv", 2), write_mmlu_pro(tmp_path / "mmlu_pro.parquet")]
    r = cli("eval", "--model", SMOL, "--protocol", "srft", "--benchmark", *files, "--limit", "2", "--k", "2",
            "--max-new-tokens", "48", "--output-dir", tmp_path / "out", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert {"gpqa_diamond", "mmlu_pro"} <= set(summary["sources"])
    assert all(s["mean_length"] > 0 and s["k"] == 2 for s in summary["sources"].values())
    assert summary["groups"]["ID"]["average"] is not None and summary["groups"]["OOD"]["average"] is not None
