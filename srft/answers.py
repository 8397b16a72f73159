"""Answer extraction: the final answer of a completion, as a string.

Pure string functions (regular expressions and linear scans; no processes, no
math-verify): what they return is graded by `srft.math_reward`.

What it does
------------
`extract_prediction(completion, gold, multi_box=False)` is the prediction to grade:
the content of the last box (`extract_answer`), or for a multiple-choice ground
truth the "answer is (X)" fallback (`extract_choice`). A multi-box answer is one
string, its parts joined by `MULTI_BOX_SEP` (`multi_box_parts` splits it again).
`choice_score` grades a choice letter; `normalise_answer` prepares an answer
for math-verify's parser.

Extraction rules (`extract_answer`)
-----------------------------------
- If the completion contains ``</think>``, only the text after the LAST
  ``</think>`` is considered (the reasoning is never graded).
- The answer is the content of the LAST ``\\boxed{...}`` or ``\\fbox{...}``
  (whitespace allowed before the brace), matched with balanced braces: nested
  groups (``\\boxed{\\frac{1}{2}}``) are kept, escaped braces ``\\{`` ``\\}``
  do not count. If that last box is not closed (truncated output), the result
  is None: an earlier, closed box is NOT used instead.
- No box: None. There is no other fallback for math answers (no "last number"
  heuristics), so a model must box its answer to be rewarded.
- Multi-box option (``extract_answer(..., multi_box=True)``,
  ``extract_prediction(..., multi_box=True)``,
  `srft.math_reward.math_reward_multi_box`; off by
  default), after math-verify (`math_verify.parser.lazy_latex_regex`, which TRL
  and LUFFY's evaluation use): starting from the last closed box, the boxes
  immediately before it are taken too while the text between two consecutive
  boxes is only a separator, at most 6 boxes in all (math-verify's first box +
  5), returned in order. A separator is ``,`` ``;`` ``and`` ``or`` ``,and``
  ``,or`` (also written ``\\text{and}`` / ``\\text{ or }``), with optional
  spacing (whitespace, ``\\quad``, ``\\qquad``, ``\\,`` ``\\;`` ``\\:``
  ``\\ `` ``~``) and optional math delimiters closing the box before it and
  opening the box after it (``$`` ``$$`` ``\\(`` ``\\)`` ``\\[`` ``\\]``), at
  most 80 characters. So ``$\\boxed{3}$ or $\\boxed{-3}$`` and
  ``\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}`` are two-part
  answers, while ``\\boxed{1}. Then we get \\boxed{2}`` is just ``2`` and so is
  ``\\boxed{1} \\boxed{2}`` (no separator). Empty boxes end the list and
  consecutive identical boxes count once. The parts are returned as one string
  joined by `MULTI_BOX_SEP` (``"\\x1f"``, a control character that LaTeX never
  contains and that travels to the workers unchanged; a ``\\x1f`` inside a box
  is replaced by a space). One box gives the same string as without the option.
  Deviations from math-verify, which is looser: it also joins boxes separated by
  any text shorter than 10 characters (``\\boxed{1}. So \\boxed{2}``) or by any
  text shorter than 70 characters containing ``and``/``or``/``,``/``;``
  (``\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}``), without
  a limit on their number (`latex2sympy2_extended`'s ``extract_boxed_content``,
  used for boxes outside ``$..$``), and it accepts other text inside the
  delimiters around a box (``\\( y_2 = \\boxed{..} \\)``); srft reads such
  text as prose and keeps the last box only.
- Multiple choice (a ground truth that is a single capital letter A-J,
  optionally in parentheses, see `is_choice_letter`): the boxed content, or when
  there is no box a final "answer is (X)" / "Answer: X" in the last 500
  characters (`extract_choice`), is normalised (``\\text{}``-like wrappers,
  ``$``, parentheses, spaces and a trailing period removed) and compared with
  the letter; the comparison is case-insensitive for the single letter only.
  Choice answers are compared in pure Python (no worker needed).
- All extraction is linear in the completion length (one regex scan for box
  openings, one scan for the braces of the last one; with the multi-box option
  each earlier box is scanned only up to the next box's opening, so the scans
  cover disjoint ranges, and a gap is checked only when at most 80 characters
  long), so 100 KB of ``{`` is handled in milliseconds.

Normalisation (`normalise_answer`)
----------------------------------
Before parsing (`srft.math_reward.verify_one`, prediction and ground truth alike),
surrounding ``$..$``, ``\\(..\\)``, ``\\[..\\]`` are removed and plain scientific
notation such as ``2.55e-10`` is rewritten as ``2.55\\times 10^{-10}`` (otherwise
LaTeX reads ``e`` as Euler's number).

Deviations / choices worth knowing
----------------------------------
- Scientific-notation rewriting (above) is not part of math_verify; without it
  minerva answers like ``3.83e35`` cannot match ``3.83\\times 10^{35}``. A
  digit string like ``2e-1`` is therefore read as 0.2, never as 2e - 1.
- A single capital letter A-J as ground truth is always treated as a choice
  letter, never as a symbol.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

__all__ = [
    "extract_answer",
    "extract_choice",
    "extract_prediction",
    "is_choice_letter",
    "choice_score",
    "normalise_answer",
    "multi_box_parts",
    "MULTI_BOX_SEP",
]

CHOICE_TAIL_CHARS = 500

# --------------------------------------------------------------------------- extraction

_THINK_END = "</think>"
_BOX_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_RE = re.compile(r"\\.|[{}]", re.S)

# multi-box answers (`extract_answer(..., multi_box=True)`): the parts are joined by a
# control character that LaTeX answers never contain (it is pickled unchanged to workers)
MULTI_BOX_SEP = "\x1f"
MULTI_BOX_MAX = 6  # math-verify: a first box and up to 5 more
MULTI_BOX_MAX_GAP = 80  # characters between two boxes of one answer, at most
# spacing between boxes: whitespace, \quad, \qquad, \, \; \: \<space>, ~
_GAP_SPACE_RE = re.compile(r"(?:\s|\\q?quad(?![A-Za-z])|\\[,;: ]|~)+")
# after spacing is collapsed to one space: [closing delimiter] separator [opening delimiter]
_BOX_GAP_RE = re.compile(
    r" ?(?:\$\$?|\\[)\]])? ?"
    r"(?:[,;]|(?:, ?)?(?:and|or|\\(?:text|textrm|mathrm|mbox) ?\{ ?(?:and|or) ?\}))"
    r" ?(?:\$\$?|\\[(\[])? ?"
)


def _after_think(text: str) -> str:
    i = text.rfind(_THINK_END)
    return text if i < 0 else text[i + len(_THINK_END):]


def _box_end(text: str, start: int, end: int) -> int | None:
    """Index of the brace closing a box whose content starts at `start`, searching text[start:end]."""
    depth = 1
    for m in _BRACE_RE.finditer(text, start, end):
        tok = m.group()
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return None  # unbalanced


def _is_box_gap(gap: str) -> bool:
    """True when the text between two boxes is only a list separator (see "Extraction rules")."""
    if len(gap) > MULTI_BOX_MAX_GAP:
        return False
    return _BOX_GAP_RE.fullmatch(_GAP_SPACE_RE.sub(" ", gap)) is not None


def extract_answer(completion: str, multi_box: bool = False) -> str | None:
    """Content of the last ``\\boxed{}``/``\\fbox{}`` after the last ``</think>``.

    None when there is no box or the last box is not closed. With `multi_box`,
    the closed boxes immediately before it that are separated only by a list
    separator (``,`` ``;`` ``and`` ``or`` ..., see the module docstring) are
    taken too, at most `MULTI_BOX_MAX` boxes, and returned in order joined by
    `MULTI_BOX_SEP`. Linear time.
    """
    if not isinstance(completion, str):
        return None
    text = _after_think(completion)
    opens: deque[re.Match] = deque(maxlen=MULTI_BOX_MAX)
    for m in _BOX_OPEN_RE.finditer(text):
        opens.append(m)
    if not opens:
        return None
    last = opens.pop()
    close = _box_end(text, last.end(), len(text))
    if close is None:
        return None
    answer = text[last.end():close].strip().replace(MULTI_BOX_SEP, " ")
    if not multi_box or not answer:
        return answer
    parts = [answer]
    nxt = last.start()  # start of the box after the candidate
    while opens and len(parts) < MULTI_BOX_MAX:
        o = opens.pop()
        # the candidate must close before the next box starts: each scan covers
        # text[o.end():nxt], and these ranges do not overlap, so the walk stays linear
        close = _box_end(text, o.end(), nxt)
        if close is None or not _is_box_gap(text[close + 1:nxt]):
            break
        part = text[o.end():close].strip().replace(MULTI_BOX_SEP, " ")
        if not part:
            break
        if part != parts[-1]:  # consecutive duplicates collapse, as in math-verify
            parts.append(part)
        nxt = o.start()
    return MULTI_BOX_SEP.join(reversed(parts))


_CHOICE_GOLD_RE = re.compile(r"\s*(?:\(\s*([A-J])\s*\)|([A-J]))\s*")
_CHOICE_TAIL_RE = re.compile(
    r"(?i:answer)(?:\s+(?i:is))?\s*[:：]?\s*(?:\*\*)?\s*(?:\$\s*)?(?:\\text\s*\{\s*)?\(?\s*([A-J])\s*\)?(?![\w])"
)
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mathit|mbox)\s*\{(.*)\}", re.S)


def is_choice_letter(gold: Any) -> bool:
    """True for a multiple-choice ground truth: one capital letter A-J, optionally in parentheses."""
    return isinstance(gold, str) and _CHOICE_GOLD_RE.fullmatch(gold) is not None


def _gold_letter(gold: str) -> str:
    m = _CHOICE_GOLD_RE.fullmatch(gold)
    assert m is not None
    return m.group(1) or m.group(2)


def _normalise_choice(pred: str) -> str | None:
    """``\\text{(b).}`` -> ``B``; None when the prediction is not a single letter."""
    s = pred.strip()
    for _ in range(8):
        prev = s
        m = _TEXT_WRAP_RE.fullmatch(s)
        if m:
            s = m.group(1)
        s = s.strip().strip("$").strip()
        if s.endswith("."):
            s = s[:-1]
        if s.startswith("(") and s.endswith(")"):
            s = s[1:-1]
        s = s.strip()
        if s == prev:
            break
    s = s.replace(" ", "")
    if len(s) == 1 and s.upper() in "ABCDEFGHIJ":
        return s.upper()
    return None


def choice_score(pred: str, gold: str) -> float:
    """1.0 when the prediction (a multi-box one: its last part) is the letter of a choice `gold`, else 0.0."""
    pred = pred.rsplit(MULTI_BOX_SEP, 1)[-1]  # choice answers keep the last-box rule
    return 1.0 if _normalise_choice(pred) == _gold_letter(gold) else 0.0


def extract_choice(completion: str) -> str | None:
    """Letter of a final "answer is (X)" / "Answer: X" in the last 500 characters (after ``</think>``)."""
    if not isinstance(completion, str):
        return None
    tail = _after_think(completion)[-CHOICE_TAIL_CHARS:]
    letter = None
    for m in _CHOICE_TAIL_RE.finditer(tail):
        letter = m.group(1)
    return letter


def extract_prediction(completion: Any, gold: Any, multi_box: bool = False) -> str | None:
    """The prediction to grade: the last box (with `multi_box`, the boxes of a list
    ending with it, see `extract_answer`), or for a choice gold the "answer is (X)"
    fallback. Choice golds always use the last box alone."""
    text = _completion_text(completion)
    choice = is_choice_letter(gold)
    pred = extract_answer(text, multi_box=multi_box and not choice)
    if pred is None and choice:
        pred = extract_choice(text)
    return pred


def _completion_text(completion: Any) -> str:
    """A completion as text: a string, or TRL's conversational form (list of messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        return "".join(_completion_text(m) for m in completion)
    return "" if completion is None else str(completion)


# --------------------------------------------------------------------------- normalisation

_SCI_RE = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_MATH_ENV_RE = re.compile(r"\$\$?(.*?)\$\$?|\\\((.*?)\\\)|\\\[(.*?)\\\]", re.S)
_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")


def normalise_answer(s: str) -> str:
    """An answer as math-verify's parser gets it: surrounding ``$..$``, ``\\(..\\)``, ``\\[..\\]``
    removed, plain scientific notation (``2.55e-10``) written as ``2.55\\times 10^{-10}``."""
    s = s.strip()
    m = _MATH_ENV_RE.fullmatch(s)
    if m:
        inner = next(g for g in m.groups() if g is not None)
        if not _UNESCAPED_DOLLAR_RE.search(inner):
            s = inner.strip()
    return _SCI_RE.sub(lambda m: f"{m.group(1)}\\times 10^{{{m.group(2).lstrip('+')}}}", s)


def multi_box_parts(pred: str) -> list[str]:
    """The non-blank parts of a multi-box answer (joined by `MULTI_BOX_SEP`); one part for one box."""
    return [q for q in pred.split(MULTI_BOX_SEP) if q.strip()]
