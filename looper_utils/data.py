"""GSM8K, GSM8K-Platinum and synthetic GSM8K-format problems, as validated JSONL.

Every split is a JSONL file of rows ``{id, question, answer, gold}``:
``answer`` is the worked solution (calculator annotations ``<<a*b=c>>`` and a
final ``#### N`` line), ``gold`` the canonical number read from that line by
the one grader (``looper_utils.answers``). Reads validate every row and fail
with ``file:line: what is wrong``; writes are atomic.

The synthetic generator exists so the ``smoke`` and ``demo`` profiles run
offline: it writes problems in exactly GSM8K's format, with a difficulty set
by the number of calculation steps and the range of the numbers.

The teacher mix (``data.teacher``, e.g. ``"worked:0.4,terse:0.6"``). SFT
imitates everything in its data, good habits and bad, so the offline
profiles draw each training row's SFT answer from a documented mix of
solution styles, the way distilled traces mix the habits of their teacher:

* ``worked``: the reference solution, every step with its calculator
  annotation (``Mia has 5+3=<<5+3=8>>8 cards.``), then ``#### N``;
* ``terse``: the final number with no worked steps (``The answer is 8.``):
  the model must do all the arithmetic in one jump;
* ``slip``: worked, but one step's arithmetic is wrong and every later step
  and the final line follow it, like an unfiltered distilled trace.

A training row keeps ``answer`` (the reference worked solution, from which
``gold`` and the difficulty are read) and gains ``teacher_style`` and
``teacher_answer`` (what SFT imitates). ``gold`` stays the true answer
whatever the style, and dev, test and Platinum are graded on it.
``completion_style`` tells a model completion's style from its text, so
rollouts, PPO and evaluation can report accuracy and share per style.
``teacher="worked:1"`` is the clean control (every ``teacher_answer`` equals
``answer``); the ``full`` profile keeps GSM8K's real solutions.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .answers import normalize_number
from .artifacts import atomic_write_json, atomic_write_text, explain_disk_full, read_json
from .progress import overwrite_notice

FIELDS = ("id", "question", "answer", "gold")
SPLITS = ("train", "dev", "test", "platinum")
MANIFEST = "manifest.json"  # in data/: which run wrote the four splits, and each file's digest
MAX_GOLD_DIGITS = 15  # GSM8K's longest answer has 9 digits; floats hold 15 exactly
_ANNOT_RE = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_FINAL_RE = re.compile(r"^\s*####\s*(.+?)\s*$", re.M)
PLATINUM_KEEP = ("consensus", "verified", "revised")  # the dataset card's kept statuses


class DataError(ValueError):
    """A data file or row is unusable; the message says where and how to fix it."""


# ---- files ---------------------------------------------------------------

def data_files(data_dir: Path) -> dict[str, Path]:
    """The four files 01_data writes.

    >>> sorted(data_files(Path("data")))
    ['dev', 'platinum', 'test', 'train']
    """
    d = Path(data_dir)
    return {split: d / name for split, name in _SPLIT_NAMES_BY_SPLIT.items()}


_SPLIT_NAMES_BY_SPLIT = {"train": "gsm8k_train.jsonl", "dev": "gsm8k_dev.jsonl", "test": "gsm8k_test.jsonl",
                         "platinum": "gsm8k_platinum_test.jsonl"}
_SPLIT_NAMES = frozenset(_SPLIT_NAMES_BY_SPLIT.values())


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


def _absurd_number(text: str) -> str | None:
    """Why ``text``, read as a number, is a corrupt answer rather than a wrong one: it is not finite or
    absurdly long. None for a sensible number and for text that is no number at all."""
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
    bad = _absurd_number(str(gold))
    if bad:
        return bad
    if normalize_number(str(gold)) is None:
        return f"gold {str(gold)!r} is not a number"
    return None


def _read_rows(path: Path, required: tuple[str, ...], check_gold: bool) -> list[tuple[int, dict]]:
    """``(line number, row)`` of every row of a JSONL file, validated (see ``read_jsonl``)."""
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


def read_jsonl(path: Path, required: tuple[str, ...] = FIELDS, check_gold: bool = True) -> list[dict]:
    """Read and validate a JSONL file of problems.

    Each row must be a JSON object holding ``required`` fields; when
    ``check_gold`` is set, ``gold`` must be a number the grader can read (and
    not an absurd one); ids must be unique; the file must be UTF-8. One of
    the four split files of a ``data/`` folder is first checked against the
    folder's manifest (``check_splits``): the splits a stage reads must all
    come from one run of 01_data.
    """
    path = Path(path)
    if path.name in _SPLIT_NAMES and (path.parent / MANIFEST).is_file():
        check_splits(path.parent)
    return [row for _, row in _read_rows(path, required, check_gold)]


# ---- the four splits as one unit -------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def split_problems(splits: dict[str, list[dict]]) -> list[str]:
    """What makes a set of splits unfit to write: a missing or empty split, a duplicate id, a bad gold.

    >>> rows = synthetic_problems(3, seed=0)
    >>> split_problems({"train": [], "dev": rows[:1], "test": rows[1:2], "platinum": rows[2:]})
    ['the train split is empty']
    >>> split_problems({"train": rows[:2] + rows[:1], "dev": rows, "test": rows, "platinum": rows})[0]
    "train split, row 3: id 'syn-000000' is used again (first at row 1)"
    """
    out = []
    for split in SPLITS:
        rows = splits.get(split)
        if not rows:
            out.append(f"the {split} split is empty")
            continue
        first: dict[str, int] = {}
        for i, r in enumerate(rows, start=1):
            key = str(r.get("id"))
            if key in first:
                out.append(f"{split} split, row {i}: id {key!r} is used again (first at row {first[key]})")
            first.setdefault(key, i)
            bad = gold_problem(r.get("gold"))
            if bad:
                out.append(f"{split} split, row {i} (id {key!r}): {bad}")
    return out


def write_splits(data_dir: Path, splits: dict[str, list[dict]], *, run_id: str, profile: str) -> dict[str, Path]:
    """Write the four splits and ``data/manifest.json`` as one unit; return the files (``data_files``).

    Nothing in ``data/`` changes unless every split is fit (``split_problems``)
    and every file was written: the files go to a temporary folder inside
    ``data/`` first (a full disk fails there), then are renamed into place
    with the manifest last, holding each file's SHA-256 and the run that wrote
    it. The renames happen under a lock on ``data/.01_data.lock`` so two runs
    of 01 at once leave one run's four files, not a mix; a run killed between
    two renames leaves files that do not match the manifest, which
    ``check_splits`` reports.
    """
    import fcntl

    problems = split_problems(splits)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(f"not writing {data_dir}: {shown}. Fix the source data or the data.* parameters "
                        "(e.g. n_train, the GSM8K path) and rerun 01_data; the files already there are unchanged")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    files = data_files(data_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".01_data.", suffix=".tmp", dir=data_dir))
    try:
        with explain_disk_full(data_dir, "writing the data splits"):
            entries = {}
            for split in SPLITS:
                staged = write_jsonl(tmp / files[split].name, splits[split])
                entries[split] = {"file": files[split].name, "rows": len(splits[split]), "sha256": _sha256(staged)}
            manifest = {"run_id": run_id, "profile": profile,
                        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"), "splits": entries}
            atomic_write_json(tmp / MANIFEST, manifest)
        for split in SPLITS:
            read_jsonl(tmp / files[split].name)  # read back through the validating reader, before the swap
        if (data_dir / MANIFEST).is_file():
            try:
                before = read_json(data_dir / MANIFEST)
            except ValueError:
                before = None
            if isinstance(before, dict):
                def rows(m: dict) -> dict:  # what a reader sees change: who wrote the splits and their sizes
                    return {"run_id": m.get("run_id"), "profile": m.get("profile"),
                            "rows": {s: e.get("rows") for s, e in (m.get("splits") or {}).items()}}

                notice = overwrite_notice(str(data_dir), rows(before), rows(manifest))
                if notice:
                    print(notice, flush=True)
        with open(data_dir / ".01_data.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            for split in SPLITS:
                os.replace(tmp / files[split].name, files[split])
            os.replace(tmp / MANIFEST, data_dir / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def check_splits(data_dir: Path) -> dict[str, Any] | None:
    """Stop unless the four split files are those ``data/manifest.json`` lists; return the manifest.

    A folder with no manifest (written before manifests, or by hand) is not
    checked and gives None.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        return None
    manifest = read_json(path)
    entries = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict) or set(entries) != set(SPLITS):
        raise DataError(f"{path}: not a manifest of the four splits ({', '.join(SPLITS)}); rerun "
                        "notebooks/01_data.ipynb to write data/ again")
    who = f"run {manifest.get('run_id')!r} (profile {manifest.get('profile')!r}, {manifest.get('written')})"
    for split, entry in entries.items():
        f = data_dir / str(entry.get("file"))
        if not f.is_file():
            raise DataError(f"{f} is missing but {path} lists it (written by {who}); rerun notebooks/01_data.ipynb "
                            "so the four splits come from one run")
        if _sha256(f) != entry.get("sha256"):
            raise DataError(f"{f} is not the {split} split that {who} wrote ({path} holds another digest): "
                            "another run of 01_data, or one stopped while writing, changed data/. Rerun "
                            "notebooks/01_data.ipynb (or `python -m looper_utils.pipeline --stages 01`) so the "
                            "four splits come from one run, then the later stages")
    return manifest


# ---- GSM8K ---------------------------------------------------------------

def gold_from_answer(answer: str) -> str | None:
    """The canonical number of a GSM8K solution's ``#### N`` line.

    >>> gold_from_answer("2+3=<<2+3=5>>5\\n#### 1,005")
    '1005'
    >>> gold_from_answer("no final line") is None
    True
    """
    finals = _FINAL_RE.findall(answer or "")
    return normalize_number(finals[-1]) if finals else None


def count_steps(answer: str) -> int:
    """Number of calculator annotations in a solution: the difficulty.

    >>> count_steps("a <<2*3=6>>6 then <<6+1=7>>7\\n#### 7")
    2
    """
    return len(_ANNOT_RE.findall(answer or ""))


def annotations(answer: str) -> list[tuple[str, str]]:
    """``(expression, claimed value)`` of every ``<<expr=value>>`` annotation."""
    return [(e.strip(), v.strip()) for e, v in _ANNOT_RE.findall(answer or "")]


def to_rows(records: Iterable[dict[str, Any]], prefix: str, source: str,
            where: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """GSM8K-style records (question, answer) -> rows; unparseable ones reported, not dropped silently.

    ``where[i]`` says where record ``i`` comes from (``file:line``; default
    ``source:i+1``). A record whose final number is absurd (not finite, more
    than ``MAX_GOLD_DIGITS`` digits) or whose id repeats an earlier one stops
    the run with its place: such a file is corrupt, not merely untidy.
    """
    rows, problems = [], []
    first: dict[str, str] = {}
    for i, rec in enumerate(records):
        at = where[i] if where else f"{source}:{i + 1}"
        q, a = rec.get("question"), rec.get("answer")
        finals = _FINAL_RE.findall(a) if isinstance(a, str) else []
        bad = _absurd_number(finals[-1]) if finals else None
        if bad:
            raise DataError(f"{at}: {bad}; fix or remove that row of the source data and rerun 01_data")
        gold = gold_from_answer(a) if isinstance(a, str) else None
        if not isinstance(q, str) or not q.strip() or gold is None:
            problems.append(f"{at}: no question or no '#### N' answer line")
            continue
        row = {"id": rec.get("id") or f"{prefix}-{i:05d}", "question": q.strip(), "answer": a.strip(), "gold": gold}
        key = str(row["id"])
        if key in first:
            raise DataError(f"{at}: id {key!r} is used again (first at {first[key]}); every row needs its own id: "
                            "delete the duplicate row or give it a new id, then rerun 01_data")
        first[key] = at
        if "cleaning_status" in rec:
            row["cleaning_status"] = rec["cleaning_status"]
        rows.append(row)
    return rows, problems


def _load_records(path_or_id: str, split: str, config_name: str = "main") -> tuple[list[dict], list[str]]:
    """Records from a local JSONL file, a folder holding ``{split}.jsonl``, or a hub dataset, and where
    each one is (``file:line``, ``file.parquet:row N``, ``hub_id[split]:N``)."""
    def jsonl(path: Path) -> tuple[list[dict], list[str]]:
        numbered = _read_rows(path, required=("question", "answer"), check_gold=False)
        return [r for _, r in numbered], [f"{path}:{n}" for n, _ in numbered]

    p = Path(path_or_id).expanduser()
    if p.is_file():
        return jsonl(p)
    if p.is_dir():
        for name in (f"{split}.jsonl", f"{split}.json"):
            if (p / name).is_file():
                return jsonl(p / name)
        parquet = sorted(p.glob(f"**/{split}-*.parquet"))
        if parquet:
            import pandas as pd
            records, where = [], []
            for f in parquet:
                part = pd.read_parquet(f).to_dict("records")
                records += part
                where += [f"{f}:row {i + 1}" for i in range(len(part))]
            return records, where
        raise DataError(f"{p}: no {split}.jsonl (or {split}-*.parquet) in this folder; "
                        "point the path at a folder holding it")
    if p.is_absolute() or path_or_id.startswith("."):
        raise DataError(f"{p}: no such file or folder")
    from datasets import load_dataset  # hub id: needs network (the `full` profile)

    records = list(load_dataset(path_or_id, config_name, split=split))
    return records, [f"{path_or_id}[{split}]:{i + 1}" for i in range(len(records))]


def load_gsm8k(path_or_id: str, split: str) -> tuple[list[dict], list[str]]:
    """GSM8K ``train`` or ``test`` as rows, plus the rows that could not be parsed."""
    records, where = _load_records(path_or_id, split)
    return to_rows(records, prefix=f"gsm8k-{split}", source=f"{path_or_id}[{split}]", where=where)


def load_platinum(path_or_id: str) -> tuple[list[dict], list[str], dict[str, int]]:
    """GSM8K-Platinum test rows, unparseable rows, and the count per ``cleaning_status``.

    The dataset card defines ``consensus``, ``verified`` and ``revised`` as
    kept and ``rejected`` as removed (poorly posed questions): rejected rows
    are dropped here and counted.
    """
    records, where = _load_records(path_or_id, "test")
    counts = Counter(str(r.get("cleaning_status", "unknown")) for r in records)
    keep = [i for i, r in enumerate(records) if str(r.get("cleaning_status", "consensus")) != "rejected"]
    rows, problems = to_rows([records[i] for i in keep], prefix="platinum", source=f"{path_or_id}[test]",
                             where=[where[i] for i in keep])
    return rows, problems, dict(counts)


def split_train_dev(rows: list[dict], dev_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Stable, seeded split: a row goes to dev when the hash of (seed, question) falls under the fraction.

    Hashing the question (not the position) keeps each row's split when rows
    are added, removed or reordered.

    >>> rows = [{"question": f"q{i}"} for i in range(1000)]
    >>> tr, dv = split_train_dev(rows, 0.2, seed=1)
    >>> 150 < len(dv) < 250, len(tr) + len(dv)
    (True, 1000)
    >>> split_train_dev(rows[::-1], 0.2, seed=1)[1] == dv[::-1]
    True
    """
    train, dev = [], []
    for r in rows:
        h = hashlib.sha256(f"{seed}:{r['question']}".encode()).digest()
        (dev if int.from_bytes(h[:8], "big") / 2**64 < dev_fraction else train).append(r)
    return train, dev


# ---- synthetic problems --------------------------------------------------

_NAMES = ["Mia", "Liam", "Ava", "Noah", "Emma", "Omar", "Zoe", "Ravi", "Lena", "Kai", "Nora", "Ben",
          "Ines", "Theo", "Yara", "Sam", "Maya", "Leo", "Ada", "Jon"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "coins", "cards",
          "stamps", "eggs", "flowers", "toys", "beads", "rocks"]
_ADD = ["buys {n} more {item}", "finds {n} more {item}", "gets {n} more {item} from a friend",
        "picks up {n} more {item}"]
_SUB = ["gives away {n} {item}", "loses {n} {item}", "sells {n} {item}", "uses {n} {item}"]
_MUL = ["ends up with {n} times as many {item}", "multiplies the {item} so there are {n} times as many"]
_DIV = ["shares the {item} equally among {n} boxes and keeps one box",
        "splits the {item} into {n} equal piles and keeps one pile"]


def _step(rng: random.Random, value: int, max_value: int, allow: str) -> tuple[str, str, int, str]:
    """One operation on the running value: (op, phrase template, operand, result)."""
    ops = []
    if "+" in allow:
        ops.append("+")
    if "-" in allow and value >= 2:
        ops.append("-")
    if "*" in allow and value <= max_value * 3:
        ops.append("*")
    if "/" in allow and any(value % d == 0 for d in range(2, 6)):
        ops.append("/")
    op = rng.choice(ops)
    if op == "+":
        n = rng.randint(1, max_value)
        return op, rng.choice(_ADD), n, str(value + n)
    if op == "-":
        n = rng.randint(1, value - 1)
        return op, rng.choice(_SUB), n, str(value - n)
    if op == "*":
        n = rng.randint(2, 4 if max_value <= 30 else 6)
        return op, rng.choice(_MUL), n, str(value * n)
    n = rng.choice([d for d in range(2, 6) if value % d == 0])
    return op, rng.choice(_DIV), n, str(value // n)


_VERB = {"+": "After that {name} has", "-": "After that {name} has", "*": "Then {name} has",
         "/": "So {name} keeps"}


def synthetic_problem(rng: random.Random, idx: int, min_steps: int, max_steps: int, max_value: int,
                      prefix: str = "syn") -> dict[str, str]:
    """One GSM8K-format problem with ``steps`` calculator annotations."""
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    steps = rng.randint(min_steps, max_steps)
    value = rng.randint(2, max_value)
    q_parts = [f"{name} has {value} {item}."]
    a_parts = [f"{name} starts with {value} {item}."]
    allow = "+-*/" if max_steps > 2 else "+-*"
    for s in range(steps):
        op, phrase, n, result = _step(rng, value, max_value, allow)
        sym = {"+": "+", "-": "-", "*": "*", "/": "/"}[op]
        lead = "Then" if s else "First,"
        q_parts.append(f"{lead} {name} " + phrase.format(n=n, item=item) + ".")
        expr = f"{value}{sym}{n}"
        a_parts.append(f"{_VERB[op].format(name=name)} {expr}=<<{expr}={result}>>{result} {item}.")
        value = int(result)
    q_parts.append(f"How many {item} does {name} have now?")
    answer = "\n".join(a_parts) + f"\n#### {value}"
    return {"id": f"{prefix}-{idx:06d}", "question": " ".join(q_parts), "answer": answer, "gold": str(value)}


def synthetic_problems(n: int, seed: int, min_steps: int = 1, max_steps: int = 2, max_value: int = 20,
                       prefix: str = "syn", exclude: set[str] | None = None) -> list[dict[str, str]]:
    """``n`` distinct synthetic problems, deterministic per seed; questions in ``exclude`` are skipped.

    >>> a = synthetic_problems(3, seed=7)
    >>> a == synthetic_problems(3, seed=7), len({r["question"] for r in a})
    (True, 3)
    """
    rng = random.Random(f"synthetic:{seed}:{prefix}")
    seen = set(exclude or ())
    rows: list[dict[str, str]] = []
    tries = 0
    while len(rows) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise DataError(f"could not make {n} distinct problems with max_steps={max_steps}, "
                            f"max_value={max_value}; raise max_value or lower n")
        row = synthetic_problem(rng, len(rows), min_steps, max_steps, max_value, prefix)
        if row["question"] in seen:
            continue
        seen.add(row["question"])
        rows.append(row)
    return rows


def rows_digest(rows: Iterable[dict], fields: tuple[str, ...] = ("id", "question", "answer")) -> str:
    """A SHA-256 of the rows' ``fields``, in order: what a resumable stage trained on.

    A row's ``teacher_answer`` (what SFT imitates) is part of it when present,
    so runs with another teacher mix never resume each other; rows without
    one digest as before.

    >>> rows_digest([{"id": "a", "question": "q"}], ("id", "question")) == rows_digest([{"id": "a", "question": "q"}], ("id", "question"))
    True
    >>> r = {"id": "a", "question": "q", "answer": "x"}
    >>> rows_digest([r]) == rows_digest([dict(r, teacher_answer="y")])
    False
    """
    def one(r: dict) -> str:
        extra = f"{r['teacher_answer']}\x00" if "teacher_answer" in r else ""
        return "".join(f"{r[f]}\x00" for f in fields) + extra

    return hashlib.sha256("".join(one(r) for r in rows).encode()).hexdigest()


def build_synthetic_splits(n_train: int, n_dev: int, n_test: int, n_platinum: int, seed: int,
                           min_steps: int, max_steps: int, max_value: int, dev_fraction: float,
                           split_seed: int) -> dict[str, list[dict]]:
    """The four splits for an offline profile, with no question shared between them.

    Test and platinum are made first; the train pool (``n_train + n_dev``
    problems) excludes their questions and is split like GSM8K's train file.
    """
    kw = dict(min_steps=min_steps, max_steps=max_steps, max_value=max_value)
    test = synthetic_problems(n_test, seed, prefix="syn-test", **kw)
    platinum = synthetic_problems(n_platinum, seed, prefix="syn-plat",
                                  exclude={r["question"] for r in test}, **kw)
    held = {r["question"] for r in test + platinum}
    pool = synthetic_problems(n_train + n_dev, seed, prefix="syn-train", exclude=held, **kw)
    frac = n_dev / max(1, n_train + n_dev) if n_dev else dev_fraction
    train, dev = split_train_dev(pool, frac, split_seed)
    return {"train": train, "dev": dev, "test": test, "platinum": platinum}


# ---- the teacher mix -----------------------------------------------------

TEACHER_STYLES = ("worked", "terse", "slip")
COMPLETION_STYLES = TEACHER_STYLES + ("other",)  # "other": no answer at all
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_STEP_RE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*$")


def parse_teacher(spec: str) -> dict[str, float]:
    """``"worked:0.5,terse:0.5"`` -> shares per style that sum to 1 (a bare style name means all of it).

    >>> parse_teacher("worked:1,terse:3")
    {'worked': 0.25, 'terse': 0.75}
    >>> parse_teacher("worked")
    {'worked': 1.0}
    >>> parse_teacher("workd:1")
    Traceback (most recent call last):
    ...
    ValueError: data.teacher: unknown style 'workd' (did you mean 'worked'?); styles are worked, terse, slip
    """
    import difflib

    shares: dict[str, float] = {}
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        name, _, value = part.partition(":")
        name = name.strip()
        if name not in TEACHER_STYLES:
            close = difflib.get_close_matches(name, TEACHER_STYLES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"data.teacher: unknown style {name!r}{hint}; styles are {', '.join(TEACHER_STYLES)}")
        try:
            share = float(value) if value.strip() else 1.0
        except ValueError:
            raise ValueError(f"data.teacher: {part!r} needs a number after ':', as in 'worked:0.5'") from None
        if not share >= 0 or share == float("inf"):
            raise ValueError(f"data.teacher: the share of {name!r} must be a number >= 0, got {value!r}")
        if name in shares:
            raise ValueError(f"data.teacher: style {name!r} is given twice in {spec!r}")
        shares[name] = share
    total = sum(shares.values())
    if not shares or total <= 0:
        raise ValueError(f"data.teacher: {spec!r} gives no style a positive share; write e.g. 'worked:0.5,terse:0.5'")
    return {k: v / total for k, v in shares.items() if v > 0}


def terse_answer(gold: str) -> str:
    """The ``terse`` teacher: the final number and nothing else.

    >>> print(terse_answer("12"))
    The answer is 12.
    #### 12
    """
    return f"The answer is {gold}.\n#### {gold}"


def slip_answer(answer: str, rng: random.Random) -> str | None:
    """The ``slip`` teacher: one step's result off by 1 or 2, later steps and ``#### N`` following it.

    Works on chained solutions (each step starts from the previous result, as
    the synthetic ones do); ``None`` when the solution has no step it can
    change that way.

    >>> a = "Mia starts with 5 cards.\\nThen Mia has 5+3=<<5+3=8>>8 cards.\\nThen Mia has 8*2=<<8*2=16>>16 cards.\\n#### 16"
    >>> out = slip_answer(a, random.Random(0))
    >>> out.splitlines()[-1] != "#### 16", len(out.splitlines()) == len(a.splitlines())
    (True, True)
    """
    steps = []
    for m in _ANNOT_RE.finditer(answer or ""):
        sm = _STEP_RE.match(m.group(1))
        if not sm or not m.group(2).strip().isdigit():
            return None
        steps.append((int(sm.group(1)), sm.group(2), int(sm.group(3)), int(m.group(2))))
    step_text = re.compile(r"(\d+)\s*([-+*/])\s*(\d+)\s*=\s*<<[^<>=]*=[^<>]*>>\s*(\d+)")
    if (not steps or len(step_text.findall(answer)) != len(steps)
            or any(steps[j][0] != steps[j - 1][3] for j in range(1, len(steps)))):
        return None
    for first in (rng.randrange(len(steps)), len(steps) - 1):  # a random step; the last one always works
        deltas = [d for d in (-2, -1, 1, 2) if steps[first][3] + d >= 0]
        new = steps[first][3] + rng.choice(deltas)
        results, ok = [s[3] for s in steps], True
        results[first] = new
        for j in range(first + 1, len(steps)):
            a, op, b = results[j - 1], steps[j][1], steps[j][2]
            if op == "/":
                if b == 0 or a % b:
                    ok = False
                    break
                results[j] = a // b
            else:
                results[j] = _OPS[op](a, b)
            if results[j] < 0:
                ok = False
                break
        if ok:
            break
    out, it = answer, iter(range(len(steps)))

    def fix(m: re.Match) -> str:
        j = next(it)
        a = steps[j][0] if j <= first else results[j - 1]
        expr = f"{a}{steps[j][1]}{steps[j][2]}"
        return f"{expr}=<<{expr}={results[j]}>>{results[j]}"

    out = step_text.sub(fix, out)
    return _FINAL_RE.sub(f"#### {results[-1]}", out)


def apply_teacher(rows: list[dict], spec: str, seed: int) -> list[dict]:
    """Copies of ``rows`` with ``teacher_style`` and ``teacher_answer`` drawn from the mix ``spec``.

    Each style gets its exact share of the rows (rounded), assigned in a
    seeded random order; ``answer`` and ``gold`` are left as they are. A row
    the ``slip`` teacher cannot change keeps a worked answer (and says so).

    >>> rows = synthetic_problems(100, seed=1)
    >>> mixed = apply_teacher(rows, "worked:0.5,terse:0.3,slip:0.2", seed=1)
    >>> Counter(r["teacher_style"] for r in mixed) == Counter(worked=50, terse=30, slip=20)
    True
    >>> all(r["gold"] == o["gold"] and r["answer"] == o["answer"] for r, o in zip(mixed, rows))
    True
    >>> all(r["teacher_answer"] == r["answer"] for r in apply_teacher(rows, "worked:1", seed=1))
    True
    """
    shares = parse_teacher(spec)
    rng = random.Random(f"teacher:{seed}:{spec}")
    order = list(range(len(rows)))
    rng.shuffle(order)
    counts = {k: int(round(v * len(rows))) for k, v in shares.items()}
    names = list(shares)
    counts[names[0]] += len(rows) - sum(counts.values())  # rounding remainder to the first style
    style_of: dict[int, str] = {}
    pos = 0
    for name in names:
        for i in order[pos:pos + counts[name]]:
            style_of[i] = name
        pos += counts[name]
    out = []
    for i, r in enumerate(rows):
        style = style_of[i]
        if style == "terse":
            text = terse_answer(r["gold"])
        elif style == "slip":
            text = slip_answer(r["answer"], rng)
            if text is None:
                style, text = "worked", r["answer"]
        else:
            text = r["answer"]
        out.append(dict(r, teacher_style=style, teacher_answer=text))
    return out


def completion_style(text: str, think: bool = False) -> str:
    """The style of a model completion (or a teacher answer), read from its text alone.

    ``worked``: calculator steps (``<<a+b=c>>``), every one right; ``slip``:
    at least one step whose result is wrong; ``terse``: an answer with no
    calculator step; ``other``: no answer the grader can read. With
    ``think=True`` an answer counts only after ``</think>`` (the prompt
    convention of ``looper_utils.prompts``).

    >>> completion_style("Mia has 5+3=<<5+3=8>>8 cards.\\n</think>\\n\\n#### 8", think=True)
    'worked'
    >>> completion_style("Mia has 5+3=<<5+3=9>>9 cards.\\n</think>\\n\\n#### 9", think=True)
    'slip'
    >>> completion_style("The answer is 8.\\n</think>\\n\\n#### 8", think=True)
    'terse'
    >>> completion_style("Mia has 5+3=<<5+3=8>>8 cards. Then", think=True)
    'other'
    """
    from .answers import extract_answer
    from .regime_w.safe_eval import try_eval

    if extract_answer(text, think=think) is None:
        return "other"
    steps = annotations(text)
    if not steps:
        return "terse"
    for expr, claimed in steps:
        value, want = try_eval(expr), normalize_number(claimed)
        if value is None or want is None or abs(value - float(want)) > 1e-6 * max(1.0, abs(value)):
            return "slip"
    return "worked"


def style_shares(styles: Iterable[str]) -> dict[str, float]:
    """Share of each completion style (all four keys, summing to 1; zeros when there is none).

    >>> style_shares(["worked", "terse", "terse", "other"])
    {'worked': 0.25, 'terse': 0.5, 'slip': 0.0, 'other': 0.25}
    """
    c = Counter(styles)
    n = sum(c.values())
    return {k: (c[k] / n if n else 0.0) for k in COMPLETION_STYLES}


# ---- stats for the notebook ----------------------------------------------

def split_stats(rows: list[dict]) -> dict[str, float]:
    """Rows, mean/max calculation steps, median |gold| and question length of a split."""
    import statistics

    steps = [count_steps(r["answer"]) for r in rows] or [0]
    golds = [abs(float(r["gold"])) for r in rows] or [0.0]
    qlen = [len(r["question"].split()) for r in rows] or [0]
    return {"rows": len(rows), "steps_mean": statistics.fmean(steps), "steps_max": max(steps),
            "gold_median": statistics.median(golds), "gold_max": max(golds),
            "question_words_mean": statistics.fmean(qlen)}


def _norm_q(q: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9 ]", " ", q.lower())).strip()


def _shingles(q: str, n: int = 5) -> set[str]:
    w = _norm_q(q).split()
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def overlap(train: list[dict], other: list[dict], threshold: float = 0.8) -> dict[str, Any]:
    """Exact and near duplicates of ``other``'s questions in ``train``.

    Near = Jaccard similarity of word 5-gram shingles >= ``threshold``,
    found through a shingle index so it stays fast on GSM8K's 7k x 1.3k.
    """
    norm_train = {_norm_q(r["question"]) for r in train}
    exact = [r["id"] for r in other if _norm_q(r["question"]) in norm_train]
    index: dict[str, list[int]] = {}
    train_sh = [_shingles(r["question"]) for r in train]
    for i, sh in enumerate(train_sh):
        for s in sh:
            index.setdefault(s, []).append(i)
    near = []
    for r in other:
        sh = _shingles(r["question"])
        cand = Counter(i for s in sh for i in index.get(s, ()))
        for i, shared in cand.most_common(5):
            jac = shared / len(sh | train_sh[i])
            if jac >= threshold:
                near.append({"id": r["id"], "train_id": train[i]["id"], "jaccard": round(jac, 3)})
                break
    return {"n": len(other), "exact": len(exact), "near": len(near), "exact_ids": exact[:20],
            "near_examples": near[:10]}


def prepare_splits(cfg_data, seed: int) -> dict[str, Any]:
    """All four splits for a DataConfig, plus what was rejected or unparseable.

    Returns ``{"splits": {train, dev, test, platinum}, "problems": [...],
    "platinum_status_counts": {...}}``; nothing is dropped without being
    listed in ``problems`` or counted. Synthetic training rows carry the
    teacher mix's ``teacher_style`` / ``teacher_answer``; the other splits
    (graded on ``gold``) and real GSM8K (its own solutions) carry none.
    """
    d = cfg_data
    if d.source == "synthetic":
        splits = build_synthetic_splits(d.n_train, d.n_dev, d.n_test, d.n_platinum, seed, d.min_steps,
                                        d.max_steps, d.max_value, d.dev_fraction, d.split_seed)
        splits["train"] = apply_teacher(splits["train"], d.teacher, seed)  # what SFT imitates
        return {"splits": splits, "problems": [], "platinum_status_counts": {}}
    train_all, p1 = load_gsm8k(d.gsm8k_path, "train")
    test, p2 = load_gsm8k(d.gsm8k_path, "test")
    platinum, p3, counts = load_platinum(d.platinum_path)
    train, dev = split_train_dev(train_all, d.dev_fraction, d.split_seed)
    return {"splits": {"train": train, "dev": dev, "test": test, "platinum": platinum},
            "problems": p1 + p2 + p3, "platinum_status_counts": counts}
