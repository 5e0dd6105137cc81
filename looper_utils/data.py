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
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from .answers import normalize_number
from .artifacts import atomic_write_text

FIELDS = ("id", "question", "answer", "gold")
SPLITS = ("train", "dev", "test", "platinum")
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
    return {"train": d / "gsm8k_train.jsonl", "dev": d / "gsm8k_dev.jsonl",
            "test": d / "gsm8k_test.jsonl", "platinum": d / "gsm8k_platinum_test.jsonl"}


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows atomically (temp file + rename)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(Path(path), text)


def read_jsonl(path: Path, required: tuple[str, ...] = FIELDS, check_gold: bool = True) -> list[dict]:
    """Read and validate a JSONL file of problems.

    Each row must be a JSON object holding ``required`` fields; when
    ``check_gold`` is set, ``gold`` must be a number the grader can read.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; run notebooks/01_data.ipynb first")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
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
            if check_gold and "gold" in required and normalize_number(str(row["gold"])) is None:
                raise DataError(f"{path}:{lineno}: gold {row['gold']!r} is not a number; gold must be the "
                                "number after '####' in the answer")
            rows.append(row)
    return rows


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


def to_rows(records: Iterable[dict[str, Any]], prefix: str, source: str) -> tuple[list[dict], list[str]]:
    """GSM8K-style records (question, answer) -> rows; unparseable ones reported, not dropped silently."""
    rows, problems = [], []
    for i, rec in enumerate(records):
        q, a = rec.get("question"), rec.get("answer")
        gold = gold_from_answer(a) if isinstance(a, str) else None
        if not isinstance(q, str) or not q.strip() or gold is None:
            problems.append(f"{source}:{i + 1}: no question or no '#### N' answer line")
            continue
        row = {"id": rec.get("id") or f"{prefix}-{i:05d}", "question": q.strip(), "answer": a.strip(), "gold": gold}
        if "cleaning_status" in rec:
            row["cleaning_status"] = rec["cleaning_status"]
        rows.append(row)
    return rows, problems


def _load_records(path_or_id: str, split: str, config_name: str = "main") -> list[dict]:
    """Records from a local JSONL file, a folder holding ``{split}.jsonl``, or a hub dataset."""
    p = Path(path_or_id).expanduser()
    if p.is_file():
        return read_jsonl(p, required=("question", "answer"), check_gold=False)
    if p.is_dir():
        for name in (f"{split}.jsonl", f"{split}.json"):
            if (p / name).is_file():
                return read_jsonl(p / name, required=("question", "answer"), check_gold=False)
        parquet = sorted(p.glob(f"**/{split}-*.parquet"))
        if parquet:
            import pandas as pd
            return pd.concat([pd.read_parquet(f) for f in parquet]).to_dict("records")
        raise DataError(f"{p}: no {split}.jsonl (or {split}-*.parquet) in this folder; "
                        "point the path at a folder holding it")
    if p.is_absolute() or path_or_id.startswith("."):
        raise DataError(f"{p}: no such file or folder")
    from datasets import load_dataset  # hub id: needs network (the `full` profile)

    return list(load_dataset(path_or_id, config_name, split=split))


def load_gsm8k(path_or_id: str, split: str) -> tuple[list[dict], list[str]]:
    """GSM8K ``train`` or ``test`` as rows, plus the rows that could not be parsed."""
    return to_rows(_load_records(path_or_id, split), prefix=f"gsm8k-{split}", source=f"{path_or_id}[{split}]")


def load_platinum(path_or_id: str) -> tuple[list[dict], list[str], dict[str, int]]:
    """GSM8K-Platinum test rows, unparseable rows, and the count per ``cleaning_status``.

    The dataset card defines ``consensus``, ``verified`` and ``revised`` as
    kept and ``rejected`` as removed (poorly posed questions): rejected rows
    are dropped here and counted.
    """
    records = _load_records(path_or_id, "test")
    counts = Counter(str(r.get("cleaning_status", "unknown")) for r in records)
    kept = [r for r in records if str(r.get("cleaning_status", "consensus")) != "rejected"]
    rows, problems = to_rows(kept, prefix="platinum", source=f"{path_or_id}[test]")
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
