"""Data loaders (verl/LUFFY parquet, JSONL, CSV, datasets folders, CHAMP) and row validation."""

from __future__ import annotations

import importlib.util
import json
import re
from types import SimpleNamespace

import pytest

from tests.conftest import verl_row

from srft.data import DataError, _canonical_rows, load_rows, prepare_examples, validate_row


class CharTokenizer:
    """One id per character; chat template = "role: content\\n" per message + "assistant: "."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 1000 + 1 for c in text]}

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant: " if add_generation_prompt else "")
        return self(text)["input_ids"]


def cfg(max_prompt_tokens=512, max_demo_tokens=512, long_demo_policy="drop"):
    return SimpleNamespace(max_prompt_tokens=max_prompt_tokens, max_demo_tokens=max_demo_tokens,
                           long_demo_policy=long_demo_policy)


def prepare(rows, need_demos=True, **kw):
    return prepare_examples(rows, CharTokenizer(), cfg(**kw), need_demos, log=lambda *_: None)


# ------------------------------------------------------------------ verl / LUFFY parquet
LUFFY_ROWS = [
    verl_row(0, "What is 2+3?", "<think>2+3=5</think>\n\\boxed{5}", "5", system="You are a helpful assistant."),
    verl_row(1, "Compute 7*6.", "<think>7*6=42</think>\n\\boxed{42}", "42"),
    verl_row(2, "Solve x+1=3.", "<think>x=2</think>\n\\boxed{2}", "2"),
]


@pytest.fixture
def luffy_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "openr1.parquet"
    pd.DataFrame(LUFFY_ROWS).to_parquet(path, engine="pyarrow", index=False)
    return path


def test_verl_luffy_parquet(luffy_parquet):
    rows = load_rows(str(luffy_parquet))
    assert len(rows) == 3
    r = rows[0]
    assert r["prompt"] == LUFFY_ROWS[0]["prompt"]
    assert type(r["prompt"]) is list and all(type(m) is dict for m in r["prompt"])
    assert all(type(m["role"]) is str and type(m["content"]) is str for m in r["prompt"])
    assert r["demonstration"] == "<think>2+3=5</think>\n\\boxed{5}"
    assert r["answer"] == "5"
    # other columns pass through; the columns read (prompt, target, reward_model) are replaced
    assert r["data_source"] == "openr1" and r["ability"] == "math"
    assert r["extra_info"] == {"index": 0, "split": "default"}
    assert "target" not in r and "reward_model" not in r
    assert [x["answer"] for x in rows] == ["5", "42", "2"]
    exs = prepare(rows)
    assert [e.demo_texts for e in exs][1] == ["<think>7*6=42</think>\n\\boxed{42}"]
    assert exs[2].columns["answer"] == "2" and exs[2].columns["data_source"] == "openr1"


def test_verl_rows_from_pandas_numpy_arrays(luffy_parquet):
    """pandas.read_parquet gives numpy arrays of dicts; they become plain lists."""
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(luffy_parquet)
    assert type(df["prompt"].iloc[0]).__module__ == "numpy"
    rows = _canonical_rows(df.to_dict("records"), list(df.columns), {}, "df")
    assert rows[0]["prompt"] == LUFFY_ROWS[0]["prompt"] and type(rows[0]["prompt"]) is list
    assert rows[1]["demonstration"] == LUFFY_ROWS[1]["target"][0]["content"]
    assert rows[2]["answer"] == "2"
    assert type(rows[0]["extra_info"]["index"]) is int


def test_verl_target_variants(tmp_path):
    pytest.importorskip("pyarrow")
    recs = [
        {"prompt": [{"role": "user", "content": "q0"}], "target": "plain text demo",
         "reward_model": {"ground_truth": "a0"}},
        {"prompt": [{"role": "user", "content": "q1"}],
         "target": [{"role": "assistant", "content": "d1"}, {"role": "assistant", "content": "d2"}],
         "reward_model": {"ground_truth": "a1"}},
    ]
    rows = _canonical_rows(recs, ["prompt", "target", "reward_model"], {}, "t")
    assert rows[0]["demonstration"] == "plain text demo"
    assert rows[1]["demonstration"] == ["d1", "d2"]
    bad = [{"prompt": "q", "target": [{"role": "user", "content": "x"}], "reward_model": {"ground_truth": "1"}}]
    with pytest.raises(DataError, match=r"row 0: field 'demonstration' \(column 'target'\) has no assistant"):
        _canonical_rows(bad, ["prompt", "target", "reward_model"], {}, "t")
    # a verl file without a target column is fine for pure RL
    rows = _canonical_rows([{"prompt": "q", "reward_model": {"ground_truth": "1"}}], ["prompt", "reward_model"], {}, "t")
    assert rows == [{"prompt": "q", "answer": "1"}]


# ------------------------------------------------------------------ JSONL / JSON
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_message_prompts(tmp_path):
    p = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": [{"role": "user", "content": "1+1?"}], "demonstration": "2", "answer": "2", "level": 1},
        {"prompt": "plain prompt", "demonstration": ["a", "b"], "answer": 7},
    ])
    rows = load_rows(str(p))
    assert rows[0] == {"prompt": [{"role": "user", "content": "1+1?"}], "demonstration": "2",
                       "answer": "2", "level": 1}
    assert rows[1]["demonstration"] == ["a", "b"] and rows[1]["answer"] == "7"
    exs = prepare(rows)
    assert len(exs) == 2 and exs[1].demo_texts == ["a", "b"] and exs[1].answer == "7"


def test_json_array_and_trl_completion_messages(tmp_path):
    p = tmp_path / "train.json"
    p.write_text(json.dumps([{"question": "q?", "completion": [{"role": "assistant", "content": "sol"}],
                              "final": "3"}]))
    rows = load_rows(str(p), columns={"prompt": "question", "demonstration": "completion", "answer": "final"})
    assert rows == [{"prompt": "q?", "demonstration": "sol", "answer": "3"}]
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"prompt": "p", "answer": "1"}, indent=2))
    assert load_rows(str(one)) == [{"prompt": "p", "answer": "1"}]


def test_blank_lines_and_bom_are_fine(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "p", "answer": "1"}\n\n\n{"prompt": "q", "answer": "2"}\n')
    assert [r["prompt"] for r in load_rows(str(p))] == ["p", "q"]


# ------------------------------------------------------------------ CSV
def test_csv_renamed_columns(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text('question,solution,final,topic\n'
                 '"What is 3, squared?","3*3=9",9,algebra\n'
                 '"[{""role"": ""user"", ""content"": ""hi""}]","say hi",hi,chat\n', encoding="utf-8")
    cols = {"prompt": "question", "demonstration": "solution", "answer": "final"}
    rows = load_rows(str(p), columns=cols)
    assert rows[0] == {"prompt": "What is 3, squared?", "demonstration": "3*3=9", "answer": "9", "topic": "algebra"}
    assert rows[1]["prompt"] == [{"role": "user", "content": "hi"}]  # JSON message list in a cell
    assert len(prepare(rows)) == 2


def test_tsv(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text("prompt\tanswer\nq1\t1\n", encoding="utf-8")
    assert load_rows(str(p)) == [{"prompt": "q1", "answer": "1"}]


# ------------------------------------------------------------------ datasets folders
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return datasets


def test_save_to_disk_dataset_and_dict(tmp_path, hf_cache):
    datasets = hf_cache
    recs = {"q": ["a?", "b?"], "sol": ["A", "B"], "answer": ["1", "2"], "id": [10, 11]}
    datasets.Dataset.from_dict(recs).save_to_disk(str(tmp_path / "ds"))
    rows = load_rows(str(tmp_path / "ds"), columns={"prompt": "q", "demonstration": "sol"})
    assert rows == [{"prompt": "a?", "demonstration": "A", "answer": "1", "id": 10},
                    {"prompt": "b?", "demonstration": "B", "answer": "2", "id": 11}]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(recs),
                               "test": datasets.Dataset.from_dict({k: v[:1] for k, v in recs.items()})})
    dd.save_to_disk(str(tmp_path / "dd"))
    cols = {"prompt": "q", "demonstration": "sol"}
    assert len(load_rows(str(tmp_path / "dd"), columns=cols)) == 2
    assert len(load_rows(f"{tmp_path / 'dd'}:test", columns=cols)) == 1
    with pytest.raises(DataError, match=r"no split 'valid'; the splits are \['train', 'test'\]"):
        load_rows(f"{tmp_path / 'dd'}:valid", columns=cols)


def test_save_to_disk_verl_layout(tmp_path, hf_cache):
    hf_cache.Dataset.from_list(LUFFY_ROWS).save_to_disk(str(tmp_path / "verl"))
    rows = load_rows(str(tmp_path / "verl"))
    assert rows[1]["prompt"] == LUFFY_ROWS[1]["prompt"] and rows[1]["answer"] == "42"
    assert rows[1]["demonstration"] == LUFFY_ROWS[1]["target"][0]["content"]


def test_load_dataset_local_folder(tmp_path, hf_cache):
    folder = tmp_path / "jsonl_ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "p", "answer": "1", "demonstration": "d"}])
    rows = load_rows(str(folder))
    assert rows == [{"prompt": "p", "demonstration": "d", "answer": "1"}]


# ------------------------------------------------------------------ bad data
def test_prepare_examples_error_table():
    ok = {"prompt": "p", "demonstration": "d", "answer": "1"}
    cases = [
        ({"demonstration": "d", "answer": "1"}, r"row 1: field 'prompt' is missing"),
        ({**ok, "prompt": "   "}, r"row 1: field 'prompt' is empty"),
        ({**ok, "prompt": []}, r"row 1: field 'prompt' is an empty message list"),
        ({**ok, "prompt": [{"content": "x"}]}, r"row 1: field 'prompt' message 0 has no 'role'"),
        ({**ok, "prompt": [{"role": "user", "content": "x"}, {"role": "user"}]},
         r"row 1: field 'prompt' message 1 has no 'content'"),
        ({**ok, "prompt": ["hi"]}, r"row 1: field 'prompt' message 0 must be a mapping"),
        ({**ok, "prompt": 5}, r"row 1: field 'prompt' must be a string or a list of chat messages, got int"),
        ({"prompt": "p", "demonstration": "d"}, r"row 1: field 'answer' is missing"),
        ({**ok, "answer": " "}, r"row 1: field 'answer' is empty"),
        ({**ok, "answer": {"value": 3}}, r"row 1: field 'answer' must be text or a number, got dict"),
        ({**ok, "answer": ["3"]}, r"row 1: field 'answer' must be text or a number, got list"),
        ({**ok, "answer": True}, r"row 1: field 'answer' must be text or a number, got bool"),
        ({"prompt": "p", "answer": "1"}, r"row 1: field 'demonstration' is missing"),
        ({**ok, "demonstration": ""}, r"row 1: field 'demonstration' is empty"),
        ({**ok, "demonstration": []}, r"row 1: field 'demonstration' is an empty list"),
        ({**ok, "demonstration": ["a", " "]}, r"row 1: field 'demonstration' item 1 is empty"),
        ({**ok, "demonstration": 3}, r"row 1: field 'demonstration' must be a string or a list of strings, got int"),
        ({**ok, "demonstration": ["a", {"x": 1}]}, r"row 1: field 'demonstration' item 1 must be a string, got dict"),
        ({**ok, "prompt": "x" * 100}, r"row 1: field 'prompt' has 100 tokens, more than data.max_prompt_tokens=50"),
    ]
    for bad, pattern in cases:
        with pytest.raises(DataError, match=pattern):
            prepare([ok, bad], max_prompt_tokens=50)
    with pytest.raises(DataError, match="empty"):
        prepare([])


def test_demonstrations_optional_without_demo_groups():
    exs = prepare([{"prompt": "p", "answer": "1"}], need_demos=False)
    assert exs[0].demo_texts == [] and exs[0].demo_ids == []
    assert validate_row(0, {"prompt": "p", "answer": "1", "demonstration": None}, False) == ("p", [], "1")


def test_more_demonstrations_per_group_than_a_row_has():
    """rollout.n_demos demonstrations per group: a row with fewer is an error (a group never repeats one)."""
    rows = [{"prompt": "p", "demonstration": ["a", "b"], "answer": "1"}, {"prompt": "q", "demonstration": "c", "answer": "2"}]
    exs = prepare_examples(rows[:1], CharTokenizer(), cfg(), True, log=lambda *_: None, n_demos=2)
    assert exs[0].demo_texts == ["a", "b"]
    with pytest.raises(DataError, match=r"row 1: field 'demonstration' has 1 demonstration\(s\), fewer than "
                                        r"rollout.n_demos=2"):
        prepare_examples(rows, CharTokenizer(), cfg(), True, log=lambda *_: None, n_demos=2)
    assert len(prepare_examples(rows, CharTokenizer(), cfg(), False, log=lambda *_: None, n_demos=2)) == 2


def test_long_demo_policy_unchanged():
    rows = [{"prompt": "p", "demonstration": "x" * 20, "answer": "1"}, {"prompt": "p", "demonstration": "y", "answer": "2"}]
    logs = []
    exs = prepare_examples(rows, CharTokenizer(), cfg(max_demo_tokens=5), True, log=logs.append)
    assert [e.index for e in exs] == [1] and not logs  # the run's warning says how many (srft.run_summary)
    exs = prepare_examples(rows, CharTokenizer(), cfg(max_demo_tokens=5, long_demo_policy="truncate"), True,
                           log=logs.append)
    assert len(exs[0].demo_ids[0]) == 5 and "1 demonstrations over data.max_demo_tokens=5 truncated" in logs[0]


def test_file_errors(tmp_path):
    def err(name, content, pattern, columns=None):
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(DataError, match=pattern) as info:
            load_rows(str(p), columns=columns)
        assert name in str(info.value)
        return str(info.value)

    err("bad_utf8.jsonl", b'{"prompt": "ok", "answer": "1"}\n{"prompt": "\xff\xfe", "answer": "2"}\n',
        r"bad_utf8.jsonl line 2: not UTF-8")
    err("garbage.jsonl", bytes(range(256)) * 4, r"garbage.jsonl line \d+: (the file holds binary data|not UTF-8)")
    err("garbage.csv", b"prompt,answer\n\x00\x01\x02,3\n", r"garbage.csv line 2: the file holds binary data")
    pytest.importorskip("pyarrow")
    err("garbage.parquet", bytes(range(256)) * 4, r"garbage.parquet: cannot read as parquet")
    err("malformed.jsonl", b'{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n',
        r"malformed.jsonl line 2: invalid JSON")
    err("list_line.jsonl", b'{"prompt": "a", "answer": "1"}\n[1, 2]\n', r"line 2: expected a JSON object")
    err("empty.jsonl", b"", r"empty.jsonl: the file has no data rows")
    err("blank.jsonl", b"\n  \n", r"the file has no data rows")
    err("empty.csv", b"", r"empty.csv: the file is empty")
    err("header_only.csv", b"prompt,answer\n", r"header_only.csv: the file has no data rows")
    err("ragged.csv", b"prompt,answer\na,1\nb,2,extra\n", r"ragged.csv line 3: 3 fields, the header has 2")
    err("data.txt", b"hello", r"unknown data file type '.txt'")
    msg = err("cols.csv", b"q,a\nx,1\n", r"no column 'question' for field 'prompt' \(configured\)",
              columns={"prompt": "question", "answer": "a"})
    assert "the columns are ['q', 'a']" in msg
    err("nodefault.jsonl", b'{"question": "x", "answer": "1"}\n',
        r"no column 'prompt' for field 'prompt' \(default\); the columns are \['question', 'answer'\]")
    err("nodemo.jsonl", b'{"prompt": "x", "answer": "1"}\n', r"no column 'sol' for field 'demonstration'",
        columns={"demonstration": "sol"})
    with pytest.raises(DataError, match=r"no such file or folder: .*missing\.jsonl"):
        load_rows(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match=r"unknown field 'question'"):
        load_rows(str(tmp_path / "x.jsonl"), columns={"question": "q"})
    with pytest.raises(DataError, match=r"built in"):
        load_rows("testbed", columns={"prompt": "q"})


def test_bad_rows_in_files_name_the_row(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "demonstration": "d", "answer": "1"},
                                           {"prompt": "b", "demonstration": "d"}])
    with pytest.raises(DataError, match=r"row 1: field 'answer' is missing"):
        prepare(load_rows(str(p)))
    c = tmp_path / "t.csv"
    c.write_text("prompt,demonstration,answer\na,d,1\n,d,2\n")
    with pytest.raises(DataError, match=r"row 1: field 'prompt' is empty"):
        prepare(load_rows(str(c)))


def test_testbed_rows_unchanged():
    rows = load_rows("testbed")
    assert len(rows) == 1000 and {"prompt", "demonstration", "answer"} <= set(rows[0])


# ------------------------------------------------------------------ CHAMP
CHAMP_MISSING = importlib.util.find_spec("champ_dataset") is None


@pytest.mark.skipif(CHAMP_MISSING, reason="the champ-dataset package is not installed "
                                          "(pip install --no-deps champ-dataset)")
def test_champ_rows():
    rows = load_rows("champ")
    assert len(rows) == 270
    for r in rows:
        for k in ("prompt", "demonstration", "answer"):
            assert isinstance(r[k], str) and r[k].strip(), (r["id"], k)
        assert "@@" not in r["prompt"] + r["demonstration"] + r["answer"]
        assert r["source"] == "champ" and re.fullmatch(r"P_[A-Za-z-]+_\d+", r["id"])
    assert len({r["id"] for r in rows}) == 270
    assert rows[0]["id"] == "P_Combinatorics_1" and rows[0]["answer"] == "239"
    assert len(prepare(rows, max_prompt_tokens=10_000, max_demo_tokens=10_000)) == 270


def test_champ_missing_package_message(monkeypatch):
    import srft.datasets_champ as champ

    monkeypatch.setattr(champ.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps champ-dataset"):
        load_rows("champ")


def test_long_demonstrations_do_not_drop_rows_of_a_pure_rl_run():
    from types import SimpleNamespace

    from srft.data import prepare_examples
    from srft.testbed.tokenizer import build_tokenizer

    cfg = SimpleNamespace(max_prompt_tokens=64, max_demo_tokens=4, long_demo_policy="drop", system_prompt=None,
                          chat_template="auto")
    rows = [{"prompt": "Q:1+1\nA:", "demonstration": "<think>1+1=2, long long long</think>2", "answer": "2"}]
    tok = build_tokenizer()
    assert len(prepare_examples(rows, tok, cfg, need_demos=False, log=lambda *a: None)) == 1
    with pytest.raises(Exception, match="no training rows left"):
        prepare_examples(rows, tok, cfg, need_demos=True, log=lambda *a: None)


# ------------------------------------------------------------------ TRL's dataset formats, optional answer
def test_trl_prompt_completion_format(tmp_path):
    p = write_jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "2+2=", "completion": " 4", "answer": "4"},
        {"prompt": [{"role": "user", "content": "3+3?"}],
         "completion": [{"role": "assistant", "content": "6"}], "answer": "6"},
    ])
    rows = load_rows(str(p))
    assert rows[0] == {"prompt": "2+2=", "demonstration": " 4", "answer": "4"}
    assert rows[1] == {"prompt": [{"role": "user", "content": "3+3?"}], "demonstration": "6", "answer": "6"}
    assert [e.demo_texts for e in prepare(rows)] == [[" 4"], ["6"]]
    # an explicit demonstration column wins over `completion` (which then passes through to the reward)
    both = load_rows([{"prompt": "p", "demonstration": "d", "completion": "c", "answer": "1"}])
    assert both == [{"prompt": "p", "demonstration": "d", "completion": "c", "answer": "1"}]


def test_trl_conversational_messages_format():
    sys_msg = {"role": "system", "content": "be brief"}
    rows = load_rows([
        {"messages": [sys_msg, {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
         "answer": "2", "level": 3},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "answer": "4"},
        {"messages": [{"role": "user", "content": "only a question"}], "answer": "0"},  # all prompt, no demo
    ])
    assert rows[0] == {"prompt": [sys_msg, {"role": "user", "content": "1+1?"}], "demonstration": "2",
                       "answer": "2", "level": 3}
    assert rows[1]["prompt"][-1] == {"role": "user", "content": "2+2?"} and len(rows[1]["prompt"]) == 3
    assert rows[1]["demonstration"] == "4"
    assert rows[2] == {"prompt": [{"role": "user", "content": "only a question"}], "answer": "0"}
    assert len(prepare(rows[:2])) == 2
    with pytest.raises(DataError, match="row 2: field 'demonstration' is missing"):
        prepare(rows)  # the third conversation has no assistant turn to learn from
    with pytest.raises(DataError, match=r"row 0: field 'messages' has only an assistant turn"):
        load_rows([{"messages": [{"role": "assistant", "content": "x"}], "answer": "1"}])
    with pytest.raises(DataError, match=r"row 1: field 'messages' must be a non-empty list"):
        load_rows([{"messages": [{"role": "user", "content": "q"}], "answer": "1"}, {"messages": "text", "answer": "1"}])
    with pytest.raises(DataError, match="no column 'answer' for field 'answer'"):
        load_rows([{"messages": [{"role": "user", "content": "q"}]}])


def test_answer_optional_when_no_reward_reads_it(tmp_path):
    from srft.rewards import needs_answer, resolve_rewards

    def reward_len(completions, **kwargs):
        return [-abs(20 - len(c)) for c in completions]

    def uses_answer(completions, answer, **kwargs):
        return [float(c == a) for c, a in zip(completions, answer)]

    assert not needs_answer(resolve_rewards([reward_len]))
    assert needs_answer(resolve_rewards([reward_len, uses_answer]))
    assert needs_answer(resolve_rewards("math")) and needs_answer(resolve_rewards("testbed"))
    data = [{"prompt": "p", "completion": "c"}, {"messages": [{"role": "user", "content": "q"},
                                                             {"role": "assistant", "content": "a"}]}]
    with pytest.raises(DataError, match="no column 'answer' for field 'answer'"):
        load_rows(data[:1])
    assert load_rows(data[:1], need_answer=False) == [{"prompt": "p", "demonstration": "c"}]
    assert load_rows(data[1:], need_answer=False)[0]["demonstration"] == "a"
    exs = prepare_examples(load_rows(data[:1], need_answer=False), CharTokenizer(), cfg(), True,
                           log=lambda *_: None, need_answer=False)
    assert exs[0].answer is None and "answer" not in exs[0].columns
    with pytest.raises(DataError, match="row 0: field 'answer' is missing"):
        validate_row(0, {"prompt": "p"}, False)
    assert validate_row(0, {"prompt": "p"}, False, need_answer=False) == ("p", [], None)
