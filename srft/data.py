"""Training data: loading, validation, encoding and the prompt order.

Rows follow TRL's column convention: `prompt` (a string, or a list of chat
messages), `demonstration` (a string, or a list of strings when a prompt has
several), `answer` (the verifiable answer); any other column is passed to the
reward function as a keyword argument. TRL's own dataset formats are read too:

* prompt-completion (`prompt`, `completion`): the completion is the demonstration
  (a string, or an assistant message list in the conversational form);
* conversational language modelling (`messages`, no `prompt` column): the turns
  before the last assistant turn are the prompt, the last assistant turn is the
  demonstration (a conversation that does not end with an assistant turn is all prompt);
* `answer` is needed only when a reward function names an `answer` parameter
  (the built-in testbed and math rewards do; a TRL reward taking `**kwargs`
  does not): `load_rows(..., need_answer=False)` lets the column be absent.

`load_rows(dataset, seed, columns)` reads, by the form of `dataset`:

* ``"testbed"``: the built-in reasoning testbed (its training split; ``"testbed:val"``, its
  validation split, used to choose learning rates);
* ``"champ"``: the CHAMP competition-math set (``pip install --no-deps champ-dataset``);
* a file: ``.jsonl`` / ``.ndjson`` / ``.json``, ``.csv`` / ``.tsv``, ``.parquet``;
* a folder written by ``datasets.Dataset(Dict).save_to_disk``, any other folder
  ``datasets.load_dataset`` can read, or a Hugging Face Hub id; ``NAME:SPLIT``
  picks the split (default ``train``).

A table with a ``reward_model`` column is read in the verl / LUFFY layout:
``prompt`` (chat messages), ``target`` (the demonstration: a list of messages
whose assistant contents are taken, or a string) and ``reward_model.ground_truth``
(the answer). Otherwise the columns ``prompt``, ``demonstration`` and ``answer``
are read; `columns` renames any of them (``{"prompt": "question"}``); a dotted
name ``"a.b"`` reads key ``b`` of the mapping column ``a``. The columns read are
replaced by the canonical ones; every other column passes through.

Every row is validated before training starts; a bad row raises `DataError`
naming the row and the field (rows counted from 0 in file order; blank JSONL
lines are skipped). Demonstrations longer than `data.max_demo_tokens` are
dropped (the row is removed) or truncated, by `data.long_demo_policy`; both are
counted and reported.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from srft.datasets_champ import load_champ_rows
from srft.errors import DataError
from srft.testbed.tasks import build_splits

CANONICAL = ("prompt", "demonstration", "answer")
DEFAULT_COLUMNS = {"prompt": "prompt", "demonstration": "demonstration", "answer": "answer"}
VERL_COLUMNS = {"prompt": "prompt", "demonstration": "target", "answer": "reward_model.ground_truth"}
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
BUILTIN_DATASETS = ("testbed", "champ")


@dataclass
class Example:
    """One training prompt, encoded."""

    index: int
    prompt: Any
    prompt_ids: list[int]
    demo_texts: list[str]
    demo_ids: list[list[int]]
    answer: Optional[str]
    columns: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- loading
def load_rows(dataset: str, seed: int = 0, columns: Optional[dict] = None, need_answer: bool = True) -> list[dict]:
    """Rows with the canonical keys `prompt`, `demonstration` (when the data has
    one), `answer` (when the data has one; required with `need_answer`), plus every
    other column. See the module docstring for the accepted forms of `dataset`;
    `columns` maps canonical names to source columns (None values mean the layout's
    default). Raises DataError."""
    overrides = _check_columns(columns)
    if hasattr(dataset, "to_list") or (isinstance(dataset, (list, tuple)) and all(isinstance(r, dict)
                                                                                 for r in dataset)):
        records = list(dataset.to_list() if hasattr(dataset, "to_list") else dataset)  # datasets.Dataset / dicts
        if not records:
            raise DataError("data.dataset: the in-memory dataset has no rows")
        names = list(dict.fromkeys(k for r in records for k in r))
        return _canonical_rows(records, names, overrides, "the in-memory dataset", need_answer=need_answer)
    if not isinstance(dataset, str) or not dataset.strip():
        raise DataError(f"data.dataset: expected a dataset name, file or folder, a list of dicts or a "
                        f"datasets.Dataset, got {type(dataset).__name__}")
    dataset = dataset.strip()
    if dataset in ("testbed:train", "testbed:val"):  # the testbed's validation split: for choosing settings
        splits = build_splits(0)
        return [dict(r) for r in (splits.val if dataset.endswith(":val") else splits.train)]
    if dataset in BUILTIN_DATASETS:
        if overrides:
            raise DataError(f"data.dataset={dataset!r} is built in and has fixed columns; column names "
                            f"({', '.join(f'{k}={v!r}' for k, v in overrides.items())}) apply to files and "
                            f"datasets only")
        if dataset == "testbed":
            return [dict(r) for r in build_splits(0).train]
        return load_champ_rows()

    path, split = Path(dataset).expanduser(), None
    if not path.exists() and ":" in dataset:
        name, _, maybe_split = dataset.rpartition(":")
        if name and maybe_split and "/" not in maybe_split:
            path, split = Path(name).expanduser(), maybe_split
            dataset = name
    if path.is_file():
        if split is not None:
            raise DataError(f"data.dataset: {path} is a single file; the ':{split}' split suffix is for "
                            f"dataset folders and hub ids")
        records, names = _read_file(path)
        text_table = path.suffix.lower() in CSV_SUFFIXES
        return _canonical_rows(records, names, overrides, str(path), prompt_json=text_table,
                              need_answer=need_answer)
    if path.is_dir():
        return _load_hf(str(path), split, overrides, local=True, need_answer=need_answer)
    if _looks_like_path(dataset):
        raise DataError(f"data.dataset: no such file or folder: {path}")
    return _load_hf(dataset, split, overrides, local=False, need_answer=need_answer)


def _check_columns(columns) -> dict[str, str]:
    if columns is None:
        return {}
    if not isinstance(columns, dict):
        raise DataError(f"data columns: expected a mapping like {{'prompt': 'question'}}, got {columns!r}")
    out = {}
    for k, v in columns.items():
        if k not in CANONICAL:
            raise DataError(f"data columns: unknown field {k!r}; the fields are {list(CANONICAL)}")
        if v is None or (isinstance(v, str) and v.strip() == ""):
            continue
        if not isinstance(v, str):
            raise DataError(f"data columns: the column for {k!r} must be a string, got {v!r}")
        out[k] = v
    return out


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or
            name.lower().endswith(JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES) or name.count("/") > 1)


def _read_file(path: Path) -> tuple[list[dict], list[str]]:
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        records, names = _read_json(path)
    elif suffix in CSV_SUFFIXES:
        records, names = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in PARQUET_SUFFIXES:
        records, names = _read_parquet(path)
    else:
        raise DataError(f"{path}: unknown data file type {suffix or '(no suffix)'!r}; use .jsonl, .json, .csv, "
                        f".tsv or .parquet, or a dataset folder")
    if not records:
        raise DataError(f"{path}: the file has no data rows")
    return records, names


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the file: {e.strerror or e}") from None


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                        f"save the file as UTF-8") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path} line {line}: the file holds binary data (NUL bytes), not text")
    return text[1:] if text.startswith("\ufeff") else text


def _column_names(records: list[dict]) -> list[str]:
    names: dict[str, None] = {}
    for r in records:
        for k in r:
            names.setdefault(k, None)
    return list(names)


def _read_json(path: Path) -> tuple[list[dict], list[str]]:
    text = _decode(path, _read_bytes(path))
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        for i, r in enumerate(data):
            if not isinstance(r, dict):
                raise DataError(f"{path}: row {i} is a JSON {type(r).__name__}, expected an object with "
                                f"the row's fields")
        return data, _column_names(data)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("{"):
        try:  # one (possibly pretty-printed) object; otherwise read as JSON Lines below
            one = json.loads(text)
            return [one], list(one)
        except json.JSONDecodeError:
            pass
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(r, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object with the row's fields, "
                            f"got a {type(r).__name__}")
        records.append(r)
    return records, _column_names(records)


def _read_csv(path: Path, delimiter: str) -> tuple[list[dict], list[str]]:
    text = _decode(path, _read_bytes(path))
    old = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty (no header line)")
            header = [h.strip() for h in header]
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise DataError(f"{path} line 1: duplicate column names {dup}")
            records = []
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise DataError(f"{path} line {reader.line_num}: {len(cells)} fields, the header has "
                                    f"{len(header)} ({header})")
                records.append(dict(zip(header, cells)))
        except csv.Error as e:
            raise DataError(f"{path} line {reader.line_num}: malformed CSV: {e}") from None
    finally:
        csv.field_size_limit(old)
    return records, header


def _read_parquet(path: Path) -> tuple[list[dict], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet files needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # ArrowInvalid, OSError, ...
        raise DataError(f"{path}: cannot read as parquet: {e}") from None
    return table.to_pylist(), list(table.column_names)


def _load_hf(name: str, split: Optional[str], overrides: dict, local: bool, need_answer: bool = True) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.dataset={name!r}: loading dataset folders and hub datasets needs the "
                        f"`datasets` package (pip install datasets)") from None
    where = f"{name}" + (f" split {split!r}" if split else "")
    p = Path(name).expanduser()
    if local and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as e:
            raise DataError(f"{p}: cannot load the saved dataset: {e}") from None
        if isinstance(ds, datasets.DatasetDict):
            split = split or "train"
            if split not in ds:
                raise DataError(f"{p}: no split {split!r}; the splits are {list(ds)} (use {name}:SPLIT)")
            ds, where = ds[split], f"{p} split {split!r}"
        elif split is not None:
            raise DataError(f"{p} is a single saved Dataset without splits; drop the ':{split}' suffix")
    else:
        split = split or "train"
        try:
            ds = datasets.load_dataset(str(p) if local else name, split=split)
        except Exception as e:
            hint = "" if local else " (not a local file or folder, so it was looked up on the Hugging Face Hub)"
            raise DataError(f"data.dataset={name!r}: cannot load split {split!r}{hint}: "
                            f"{type(e).__name__}: {e}") from None
        where = f"{name} split {split!r}"
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{where}: expected a table dataset, got {type(ds).__name__}")
    if len(ds) == 0:
        raise DataError(f"{where}: the dataset has no rows")
    return _canonical_rows(ds.to_list(), list(ds.column_names), overrides, where, need_answer=need_answer)


def _canonical_rows(records: list[dict], names: list[str], overrides: dict, where: str,
                    prompt_json: bool = False, need_answer: bool = True) -> list[dict]:
    """Map source columns to `prompt` / `demonstration` / `answer` (verl layout
    detected by a `reward_model` column) and normalise values to plain Python."""
    optional_answer = not need_answer
    verl = "reward_model" in names
    mapping = {**(VERL_COLUMNS if verl else DEFAULT_COLUMNS), **overrides}
    if not verl and "prompt" not in overrides and "prompt" not in names and "messages" in names:
        return _conversation_rows(records, names, overrides, where, optional_answer)
    if (not verl and "demonstration" not in overrides and "demonstration" not in names
            and "completion" in names):  # TRL's prompt-completion format
        mapping["demonstration"] = "completion"
    getters: dict[str, tuple[str, Optional[str]]] = {}
    consumed: set[str] = set()
    for fld in CANONICAL:
        col = mapping[fld]
        if col in names:
            getters[fld] = (col, None)
        elif "." in col and col.split(".", 1)[0] in names:
            getters[fld] = tuple(col.split(".", 1))  # type: ignore[assignment]
        elif fld == "demonstration" and fld not in overrides:
            continue  # no demonstrations in this data (fine unless the preset needs them)
        elif fld == "answer" and optional_answer and fld not in overrides:
            continue  # no reward reads an answer
        else:
            how = "configured" if fld in overrides else ("default for the verl/LUFFY layout" if verl else "default")
            raise DataError(f"{where}: no column {col!r} for field {fld!r} ({how}); the columns are {names}. "
                            f"Name the column with data.{fld}_column (load_rows(columns={{{fld!r}: ...}}))")
        consumed.add(getters[fld][0])
    out = []
    for i, rec in enumerate(records):
        row: dict[str, Any] = {}
        for fld, (col, key) in getters.items():
            value = rec.get(col)
            if key is not None and value is not None:
                value = to_plain(value)
                if not isinstance(value, dict):
                    raise DataError(f"{where} row {i}: field {fld!r}: column {col!r} should be a mapping "
                                    f"holding {key!r}, got {type(value).__name__}")
                value = value.get(key)
            src = col if key is None else f"{col}.{key}"
            if fld == "prompt":
                row[fld] = _norm_prompt(value, prompt_json)
            elif fld == "demonstration":
                row[fld] = _norm_demo(value, f"{where} row {i}: field 'demonstration' (column {src!r})")
            else:
                row[fld] = _norm_answer(value)
        for k, v in rec.items():
            if k not in consumed and k not in CANONICAL:
                row[k] = to_plain(v)
        out.append(row)
    return out


def _conversation_rows(records: list[dict], names: list[str], overrides: dict, where: str,
                       optional_answer: bool) -> list[dict]:
    """TRL's conversational format: a `messages` column; the last assistant turn is the
    demonstration, the turns before it the prompt."""
    ans_col = overrides.get("answer", "answer")
    if ans_col not in names and not optional_answer:
        raise DataError(f"{where}: no column {ans_col!r} for field 'answer'; the columns are {names}. Name the "
                        f"column with data.answer_column, or use a reward function that does not read `answer`")
    out = []
    for i, rec in enumerate(records):
        msgs = _norm_prompt(rec.get("messages"), False)
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise DataError(f"{where} row {i}: field 'messages' must be a non-empty list of chat messages "
                            f"({{'role': ..., 'content': ...}}), got {type(msgs).__name__}")
        row: dict[str, Any] = {}
        if msgs[-1].get("role") == "assistant":
            if len(msgs) == 1:
                raise DataError(f"{where} row {i}: field 'messages' has only an assistant turn; the turns before "
                                f"the last assistant turn are the prompt")
            row["prompt"], row["demonstration"] = msgs[:-1], msgs[-1].get("content")
        else:
            row["prompt"] = msgs
        if ans_col in names:
            row["answer"] = _norm_answer(rec.get(ans_col))
        for k, v in rec.items():
            if k not in ("messages", ans_col) and k not in CANONICAL:
                row[k] = to_plain(v)
        out.append(row)
    return out


def to_plain(v: Any) -> Any:
    """numpy arrays / scalars (pandas, pyarrow) to plain Python, recursively."""
    if type(v).__module__ == "numpy" and hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    return v


def _norm_prompt(v: Any, prompt_json: bool) -> Any:
    v = to_plain(v)
    if isinstance(v, str) and prompt_json and v.lstrip().startswith("["):
        try:  # a CSV cell holding a TRL conversational prompt as a JSON list of messages
            parsed = json.loads(v)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and parsed and all(isinstance(m, dict) and "role" in m for m in parsed):
            v = parsed
    if isinstance(v, list):
        # struct columns give every message every key; a key absent from a message comes back as None
        return [{k: x for k, x in m.items() if x is not None} if isinstance(m, dict) else m for m in v]
    return v


def _norm_demo(v: Any, what: str) -> Any:
    """A string, a list of strings, or chat messages (the assistant contents are
    taken, one demonstration each); one demonstration comes back as a string."""
    v = to_plain(v)
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list) or not v:
        return v
    parts, has_messages = [], False
    for x in v:
        if isinstance(x, dict):
            has_messages = True
            if x.get("role") in (None, "assistant"):
                parts.append(x.get("content"))
        else:
            parts.append(x)
    if has_messages and not parts:
        roles = sorted({str(x.get("role")) for x in v if isinstance(x, dict)})
        raise DataError(f"{what} has no assistant message (roles: {roles})")
    return parts[0] if len(parts) == 1 else parts


def _norm_answer(v: Any) -> Any:
    v = to_plain(v)
    if isinstance(v, float) and v != v:  # NaN: an empty cell
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return v


# ---------------------------------------------------------------- encoding and validation

DEFAULT_SYSTEM_PROMPT = (
    "A conversation between a user and an assistant. The assistant first thinks the problem through, "
    "writing its reasoning inside <think> </think> tags, and then gives the solution with the final answer "
    "in \\boxed{}, i.e. <think> reasoning here </think> solution with the final answer in \\boxed{}."
)


def to_messages(prompt, system_prompt: Optional[str]) -> list[dict]:
    """A string prompt as chat messages: the system prompt (if any) then the user turn."""
    if not isinstance(prompt, str):
        return list(prompt)
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": prompt}]


def encode_prompt(tokenizer, prompt, system_prompt: Optional[str] = None, chat: str = "auto") -> list[int]:
    """Token ids of a prompt, ready for generation.

    chat="auto": when the tokenizer has a chat template, a string prompt becomes
    [system_prompt (if not None), user] and a message list is used as is, through the
    template with the generation prompt; without a template a string prompt is
    tokenized as is and a message list is joined as "content" blocks separated by
    blank lines (the testbed's tokenizer has no template). chat="none": never use
    a template (message lists are joined as above).
    """
    has_template = chat != "none" and getattr(tokenizer, "chat_template", None)
    if isinstance(prompt, str) and not has_template:
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    messages = to_messages(prompt, system_prompt)
    if not has_template:
        text = "\n\n".join(str(m["content"]) for m in messages) + "\n"
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def encode_completion(tokenizer, text: str) -> list[int]:
    """Completion tokens followed by EOS."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def _check_prompt(i: int, row: dict) -> Any:
    prompt = row.get("prompt")
    if prompt is None:
        raise DataError(f"row {i}: field 'prompt' is missing")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"row {i}: field 'prompt' is empty")
        return prompt
    if not isinstance(prompt, (list, tuple)):
        raise DataError(f"row {i}: field 'prompt' must be a string or a list of chat messages, "
                        f"got {type(prompt).__name__}")
    if not prompt:
        raise DataError(f"row {i}: field 'prompt' is an empty message list")
    for j, m in enumerate(prompt):
        if not isinstance(m, dict):
            raise DataError(f"row {i}: field 'prompt' message {j} must be a mapping with 'role' and 'content', "
                            f"got {type(m).__name__}")
        for key in ("role", "content"):
            if m.get(key) is None:
                raise DataError(f"row {i}: field 'prompt' message {j} has no {key!r} "
                                f"(each message needs 'role' and 'content')")
        if not isinstance(m["role"], str) or not m["role"].strip():
            raise DataError(f"row {i}: field 'prompt' message {j}: 'role' must be a non-empty string, "
                            f"got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise DataError(f"row {i}: field 'prompt' message {j}: 'content' must be a string, "
                            f"got {type(m['content']).__name__}")
    if not any(m["content"].strip() for m in prompt):
        raise DataError(f"row {i}: field 'prompt' is empty (every message has empty 'content')")
    return list(prompt)


def _check_answer(i: int, row: dict) -> Any:
    answer = row.get("answer")
    if answer is None or (isinstance(answer, float) and answer != answer):
        raise DataError(f"row {i}: field 'answer' is missing")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"row {i}: field 'answer' must be text or a number, got {type(answer).__name__} "
                        f"({str(answer)[:60]!r}); it is compared as text, so it is never converted from a "
                        f"{type(answer).__name__} (data.answer_column 'a.b' reads key b of a mapping column)")
    if isinstance(answer, str) and not answer.strip():
        raise DataError(f"row {i}: field 'answer' is empty")
    return answer


def _check_demos(i: int, row: dict, need_demos: bool) -> list[str]:
    d = row.get("demonstration")
    if d is None:
        demos = []
    elif isinstance(d, str):
        demos = [d]
    elif isinstance(d, (list, tuple)):
        for k, x in enumerate(d):
            if not isinstance(x, str):
                raise DataError(f"row {i}: field 'demonstration' item {k} must be a string, got {type(x).__name__}")
        demos = list(d)
    else:
        raise DataError(f"row {i}: field 'demonstration' must be a string or a list of strings, "
                        f"got {type(d).__name__}")
    if need_demos:
        why = "(rollout.n_demos > 0: the preset places demonstrations in every group)"
        if d is None:
            raise DataError(f"row {i}: field 'demonstration' is missing {why}")
        if not demos:
            raise DataError(f"row {i}: field 'demonstration' is an empty list {why}")
        for k, x in enumerate(demos):
            if not x.strip():
                item = "" if isinstance(d, str) else f" item {k}"
                raise DataError(f"row {i}: field 'demonstration'{item} is empty {why}")
    return demos


def validate_row(i: int, row: dict, need_demos: bool, need_answer: bool = True) -> tuple[Any, list[str], Any]:
    """(prompt, demonstrations, answer) of row i, or DataError naming the row and field; without
    `need_answer` a row may have no answer (None)."""
    if not isinstance(row, dict):
        raise DataError(f"row {i}: expected a mapping of fields, got {type(row).__name__}")
    prompt = _check_prompt(i, row)
    answer = _check_answer(i, row) if need_answer or "answer" in row else None
    demos = _check_demos(i, row, need_demos)
    return prompt, demos, answer


def prepare_examples(rows: list[dict], tokenizer, data_cfg, need_demos: bool, log=print,
                     n_demos: int = 1, need_answer: bool = True) -> list[Example]:
    """Validate and encode every row before training. With `need_demos`, every row must hold at
    least `n_demos` (rollout.n_demos) demonstrations: a group never repeats one. Without
    `need_answer` (no reward reads `answer`) rows may have none."""
    if not rows:
        raise DataError("the training dataset is empty")
    examples, dropped, truncated = [], 0, 0
    for i, row in enumerate(rows):
        prompt, demos, answer = validate_row(i, row, need_demos, need_answer)
        if need_demos and len(demos) < n_demos:
            raise DataError(f"row {i}: field 'demonstration' has {len(demos)} demonstration(s), fewer than "
                            f"rollout.n_demos={n_demos} per group (a group would repeat one); lower "
                            f"rollout.n_demos or give the row more demonstrations")
        prompt_ids = encode_prompt(tokenizer, prompt, getattr(data_cfg, "system_prompt", None),
                                   getattr(data_cfg, "chat_template", "auto"))
        if len(prompt_ids) > data_cfg.max_prompt_tokens:
            raise DataError(f"row {i}: field 'prompt' has {len(prompt_ids)} tokens, more than "
                            f"data.max_prompt_tokens={data_cfg.max_prompt_tokens} (raise it or shorten the prompt)")
        demo_ids, keep = [], True
        for d in demos if need_demos else []:  # a run without demonstrations ignores them
            ids = encode_completion(tokenizer, d)
            if len(ids) > data_cfg.max_demo_tokens:
                if data_cfg.long_demo_policy == "drop":
                    keep = False
                    break
                ids = ids[: data_cfg.max_demo_tokens]
                truncated += 1
            demo_ids.append(ids)
        if not keep:
            dropped += 1
            continue
        cols = {k: v for k, v in row.items() if k not in ("prompt", "demonstration")}
        examples.append(Example(i, prompt, prompt_ids, demos, demo_ids, None if answer is None else str(answer), cols))
    if truncated:  # (dropped rows: srft.run_summary.dropped_warning)
        log(f"[srft] {truncated} demonstrations over data.max_demo_tokens={data_cfg.max_demo_tokens} truncated")
    if not examples:
        raise DataError(f"no training rows left after applying data.long_demo_policy=drop: every row has a "
                        f"demonstration longer than data.max_demo_tokens={data_cfg.max_demo_tokens} tokens; "
                        f"raise data.max_demo_tokens or use --data.long_demo_policy truncate")
    return examples


class PromptSampler:
    """Epoch-wise shuffled order over the examples, deterministic in the seed;
    its state (epoch, position) is saved with checkpoints."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._order = self._make_order()

    def _make_order(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
            take = min(k - len(out), self.n - self.pos)
            out.extend(self._order[self.pos : self.pos + take])
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "n": self.n}

    def load_state_dict(self, s: dict) -> None:
        self.seed, self.epoch, self.pos = s["seed"], s["epoch"], s["pos"]
        self._order = self._make_order()


def pick_demos(ex: Example, n: int) -> list[int]:
    """Indices of the demonstrations placed in a group of n (cycling when a row has fewer)."""
    if n == 0:
        return []
    if not ex.demo_ids:
        raise DataError(f"row {ex.index}: no demonstration for a group that needs {n}")
    return [j % len(ex.demo_ids) for j in range(n)]
