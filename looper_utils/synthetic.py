"""Synthetic GSM8K-format problems, so the ``smoke`` and ``demo`` profiles run offline.

The generator writes problems in exactly GSM8K's format (a worked solution
with a calculator annotation per step and a final ``#### N`` line, see
``looper_utils.problem_rows``), with a difficulty set by the number of
calculation steps and the range of the numbers. Problems are deterministic
per seed and distinct; ``build_synthetic_splits`` makes the four splits with
no question shared between them.
"""
from __future__ import annotations

import random

from .gsm8k import split_train_dev
from .problem_rows import DataError

__all__ = ["synthetic_problem", "synthetic_problems", "build_synthetic_splits"]

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
