"""GSM8K and GSM8K-Platinum as problem rows, and the stable train/dev split.

Records come from a local JSONL file, a folder holding ``{split}.jsonl`` (or
``{split}-*.parquet``), or a hub dataset (the ``full`` profile, which needs
network). Each record becomes a row of ``looper_utils.problem_rows``' format;
a record that cannot be parsed is reported with its place (``file:line``),
never dropped silently, and a corrupt one (an absurd final number, a repeated
id) stops the run. Platinum's ``rejected`` rows are dropped and counted, as
its dataset card says. ``split_train_dev`` splits GSM8K's train file (and the
synthetic train pool) into train and dev by a hash of each question.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from .problem_rows import FINAL_RE, DataError, absurd_number, gold_from_answer, read_rows

__all__ = ["PLATINUM_KEEP", "to_rows", "load_gsm8k", "load_platinum", "split_train_dev"]

PLATINUM_KEEP = ("consensus", "verified", "revised")  # the dataset card's kept statuses


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
        finals = FINAL_RE.findall(a) if isinstance(a, str) else []
        bad = absurd_number(finals[-1]) if finals else None
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
        numbered = read_rows(path, required=("question", "answer"), check_gold=False)
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
