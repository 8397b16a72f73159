"""CHAMP (Concept and Hint-Augmented Math Problems, Mao et al. 2024) as training rows.

The PyPI package `champ-dataset` ships the data as one JSON file,
`champ_dataset/dataset_files/v0.json`:

    {"problems": {"P_Combinatorics_1": {
        "identifier": "P_Combinatorics_1", "category": "Combinatorics",
        "_raw_text": "...", "_text": "...",              # the problem statement
        "_raw_answer": "239", "_answer": "239",           # the final answer
        "solution": {"steps": [{"_raw_text": "...", "_text": "...", "ch_idxs": [0]}, ...]},
        "ch_list": ["H_Combinatorics_1_1", "C_comb_sum", ...],   # hint / concept ids
        "fws_annotations": {...}, "conversations": {...}},      # model outputs, unused here
      ...},                                                      # 270 problems
     "concepts": {...}, "hints": {...}}

`_raw_*` texts mark math spans with `@@...@@`; the `_text` / `_answer` fields
are the same with the markers removed (recomputed here when absent).

The package's own `__init__` imports `natsort`, which `pip install --no-deps`
leaves out, so the JSON file is located with `importlib.util.find_spec` (which
does not run the package) and read directly.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from srft.errors import DataError

PACKAGE = "champ_dataset"
INSTALL_HINT = "pip install --no-deps champ-dataset"


def champ_data_file() -> Path:
    """Path of the package's JSON data file (the newest `dataset_files/v*.json`)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data.dataset='champ' needs the CHAMP data package: {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        files = sorted((Path(loc) / "dataset_files").glob("v*.json"),
                       key=lambda p: (len(p.stem), p.stem))
        if files:
            return files[-1]
    raise DataError(f"the {PACKAGE} package at {list(spec.submodule_search_locations)} has no "
                    f"dataset_files/v*.json; reinstall it: {INSTALL_HINT}")


def _text(d: dict, key: str) -> str:
    """`_text` / `_answer`, or `_raw_*` with the `@@` math markers removed."""
    v = d.get(f"_{key}")
    if v is None:
        raw = d.get(f"_raw_{key}")
        v = raw.replace("@@", "") if isinstance(raw, str) else None
    return v.strip() if isinstance(v, str) else ""


def _as_reasoning_trace(step_texts: list[str], answer: str) -> str:
    """The reference solution in the paper's demonstration format: the steps
    inside <think> </think>, then the final answer in \\boxed{} (the format the
    default system prompt asks for, so the math verifier scores it)."""
    steps = "\n".join(t for t in step_texts if t)
    return f"<think>\n{steps}\n</think>\n\nThe final answer is \\boxed{{{answer}}}."


@lru_cache(maxsize=2)
def _load(path: str) -> tuple[dict, ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the CHAMP data file: {e}") from None
    problems = data.get("problems") if isinstance(data, dict) else None
    if not isinstance(problems, dict) or not problems:
        raise DataError(f"{path}: no 'problems' mapping in the CHAMP data file")
    rows = []
    for pid, p in problems.items():
        if not isinstance(p, dict):
            raise DataError(f"{path}: problem {pid!r} is not a mapping")
        steps = (p.get("solution") or {}).get("steps") or []
        step_texts = [_text(s, "text") for s in steps if isinstance(s, dict)]
        rows.append({
            "prompt": _text(p, "text"),
            "demonstration": _as_reasoning_trace(step_texts, _text(p, "answer")),
            "answer": _text(p, "answer"),
            "source": "champ",
            "id": p.get("identifier", pid),
            "category": p.get("category", ""),
        })
    return tuple(rows)


def load_champ_rows() -> list[dict]:
    """The 270 CHAMP problems: `prompt` (problem statement), `demonstration`
    (the reference solution, one step per line inside <think> </think>, then
    "The final answer is \\boxed{answer}."), `answer` (final answer text),
    `source`="champ", `id` (e.g. "P_Combinatorics_1"), `category`."""
    return [dict(r) for r in _load(str(champ_data_file()))]
