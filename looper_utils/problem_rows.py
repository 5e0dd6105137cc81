"""One problem row and a JSONL file of them: the format every split in ``data/`` shares.

A row is ``{id, question, answer, gold}``: ``answer`` is the worked solution
(calculator annotations ``<<a*b=c>>`` and a final ``#### N`` line), ``gold``
the canonical number read from that line by the one grader
(``looper_utils.answers``). This module owns that format: reading a solution
(``gold_from_answer``, ``count_steps``, ``annotations``), telling an unusable
gold (``gold_problem``, ``absurd_number``), reading a JSONL file with every row
checked (``read_rows``: ``file:line: what is wrong``) and writing one
atomically. The split files and their manifest are ``looper_utils.data``'s.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from .answers import normalize_number
from .artifacts import atomic_write_text

__all__ = ["FIELDS", "MAX_GOLD_DIGITS", "ANNOTATION_RE", "FINAL_RE", "DataError", "gold_from_answer", "count_steps",
           "annotations", "absurd_number", "gold_problem", "write_jsonl", "read_rows"]

FIELDS = ("id", "question", "answer", "gold")
MAX_GOLD_DIGITS = 15  # GSM8K's longest answer has 9 digits; floats hold 15 exactly
ANNOTATION_RE = re.compile(r"<<([^<>=]*)=([^<>]*)>>")  # a calculator annotation: <<expression=value>>
FINAL_RE = re.compile(r"^\s*####\s*(.+?)\s*$", re.M)  # the final answer line: #### N


class DataError(ValueError):
    """A data file or row is unusable; the message says where and how to fix it."""


# ---- the solution format ---------------------------------------------------

def gold_from_answer(answer: str) -> str | None:
    """The canonical number of a GSM8K solution's ``#### N`` line.

    >>> gold_from_answer("2+3=<<2+3=5>>5\\n#### 1,005")
    '1005'
    >>> gold_from_answer("no final line") is None
    True
    """
    finals = FINAL_RE.findall(answer or "")
    return normalize_number(finals[-1]) if finals else None


def count_steps(answer: str) -> int:
    """Number of calculator annotations in a solution: the difficulty.

    >>> count_steps("a <<2*3=6>>6 then <<6+1=7>>7\\n#### 7")
    2
    """
    return len(ANNOTATION_RE.findall(answer or ""))


def annotations(answer: str) -> list[tuple[str, str]]:
    """``(expression, claimed value)`` of every ``<<expr=value>>`` annotation."""
    return [(e.strip(), v.strip()) for e, v in ANNOTATION_RE.findall(answer or "")]


# ---- gold ----------------------------------------------------------------

def absurd_number(text: str) -> str | None:
    """Why ``text``, read as a number, is a corrupt answer rather than a wrong one: it is not finite or
    absurdly long. None for a sensible number and for text that is no number at all.

    >>> absurd_number("nan"), absurd_number("12"), absurd_number("twelve")
    ("gold 'nan' is not a finite number", None, None)
    """
    t = str(text).strip()
    if re.fullmatch(r"[-+]?(?:inf(?:inity)?|nan)", t, re.I):
        return f"gold {t!r} is not a finite number"
    core = re.sub(r"[\s$€£%,]", "", t).rstrip(".")
    if not re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", core):
        return None
    shown = t if len(t) <= 24 else f"{t[:20]}..."
    digits = sum(c.isdigit() for c in core.split("e")[0].split("E")[0])
    if digits > MAX_GOLD_DIGITS:
        return (f"gold {shown!r} has {digits} digits (at most {MAX_GOLD_DIGITS}; GSM8K's longest answer has 9), "
                "so the row is corrupt")
    if not math.isfinite(float(core)):
        return f"gold {shown!r} is not a finite number"
    return None


def gold_problem(gold: Any) -> str | None:
    """Why ``gold`` cannot be a problem's answer, or None when it can.

    >>> gold_problem("1,005") is None, gold_problem("three")
    (True, "gold 'three' is not a number")
    >>> gold_problem(float("inf"))
    "gold 'inf' is not a finite number"
    >>> gold_problem("9" * 4000)
    "gold '99999999999999999999...' has 4000 digits (at most 15; GSM8K's longest answer has 9), so the row is corrupt"
    """
    bad = absurd_number(str(gold))
    if bad:
        return bad
    if normalize_number(str(gold)) is None:
        return f"gold {str(gold)!r} is not a number"
    return None


# ---- JSONL files -----------------------------------------------------------

def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows atomically (temp file + rename)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(Path(path), text)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file; any other encoding stops with the line, byte offset and fix."""
    with open(path, "rb") as fh:
        if fh.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise DataError(f"{path}: the file is UTF-16 (it starts with a UTF-16 byte-order mark); JSONL must be "
                            f"UTF-8: convert it, e.g. `iconv -f UTF-16 -t UTF-8 {path} > converted.jsonl`")
        fh.seek(0)
        offset = 0
        for lineno, raw in enumerate(fh, start=1):
            if b"\x00" in raw:  # UTF-16 without a byte-order mark decodes as UTF-8 with a NUL in every other byte
                raise DataError(f"{path}:{lineno}: NUL byte at byte offset {offset + raw.index(0)}: the file "
                                "looks UTF-16 (or binary); JSONL must be UTF-8: convert it, e.g. "
                                f"`iconv -f UTF-16LE -t UTF-8 {path} > converted.jsonl`")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset "
                                f"{offset + exc.start}); JSONL must be UTF-8: convert the file, e.g. "
                                f"`iconv -f WINDOWS-1252 -t UTF-8 {path} > converted.jsonl` if it was saved as "
                                "Latin-1 / Windows-1252") from None
            offset += len(raw)
            # a UTF-8 byte-order mark (some Windows editors write one) is no part of the data
            yield lineno, text.removeprefix("\ufeff") if lineno == 1 else text


def read_rows(path: Path, required: tuple[str, ...], check_gold: bool) -> list[tuple[int, dict]]:
    """``(line number, row)`` of every row of a JSONL file, each checked on the way.

    Each row must be a JSON object holding ``required`` fields; when
    ``check_gold`` is set, ``gold`` must be a number the grader can read (and
    not an absurd one); ids must be unique; the file must be UTF-8. The first
    problem found stops the read with ``file:line``, what is wrong and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; run notebooks/01_data.ipynb first")
    out = []
    first_line: dict[str, int] = {}
    for lineno, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: bad JSON ({exc.msg} at column {exc.colno}); "
                            "fix or delete that line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [f for f in required if f not in row]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}; every row needs "
                            f"{', '.join(required)}")
        if check_gold and "gold" in required:
            bad = gold_problem(row["gold"])
            if bad:
                raise DataError(f"{path}:{lineno}: {bad}; gold must be the number after '####' in the answer")
        if "id" in row:  # two rows with one id would share records, shards and resume state downstream
            key = str(row["id"])
            if key in first_line:
                raise DataError(f"{path}:{lineno}: id {key!r} is used again (first at {path}:{first_line[key]}); "
                                "every row needs its own id: delete the duplicate row or give it a new id")
            first_line[key] = lineno
        out.append((lineno, row))
    return out
