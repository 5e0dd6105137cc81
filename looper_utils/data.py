"""Stage 01's data: GSM8K, GSM8K-Platinum or synthetic GSM8K-format problems, as four validated JSONL splits.

Every split is a JSONL file of rows ``{id, question, answer, gold}``; reads
validate every row and fail with ``file:line: what is wrong``; writes are
atomic. This module owns the split files of ``data/``: their names
(``data_files``), the reader the stages use (``read_jsonl``), writing the four
splits and ``data/manifest.json`` as one unit (``write_splits``) and the check
that the splits a stage reads come from one run of 01_data (``check_splits``).
It also makes the four splits for a config (``prepare_splits``), digests rows
for resumable stages (``rows_digest``) and measures splits for the notebook
(``split_stats``, ``overlap``).

It is the stage's public face: what 01_data and the later stages use from the
parts below is importable from here (``data.synthetic_problems``, ...).

- ``problem_rows``: the row format (``#### N``, calculator annotations), gold
  checks, and one JSONL file read with every row checked or written atomically;
- ``gsm8k``: GSM8K and GSM8K-Platinum from a file, a folder or the hub, and
  the stable train/dev split;
- ``synthetic``: the offline generator of GSM8K-format problems (``smoke``,
  ``demo``);
- ``teacher``: the teacher mix of the synthetic SFT answers (``data.teacher``)
  and ``completion_style``, the style of a completion read from its text.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .artifacts import atomic_write_json, explain_disk_full, read_json
from .gsm8k import PLATINUM_KEEP, load_gsm8k, load_platinum, split_train_dev, to_rows
from .problem_rows import (FIELDS, MAX_GOLD_DIGITS, DataError, annotations, count_steps, gold_from_answer, gold_problem,
                           read_rows, write_jsonl)
from .progress import overwrite_notice
from .synthetic import build_synthetic_splits, synthetic_problem, synthetic_problems
from .teacher import (COMPLETION_STYLES, TEACHER_STYLES, apply_teacher, completion_style, parse_teacher, slip_answer,
                      style_shares, terse_answer)

__all__ = [
    # this module: the split files of data/ and their manifest
    "SPLITS", "MANIFEST", "data_files", "read_jsonl", "split_problems", "write_splits", "check_splits",
    "prepare_splits", "rows_digest", "split_stats", "overlap",
    # problem_rows
    "FIELDS", "MAX_GOLD_DIGITS", "DataError", "gold_from_answer", "count_steps", "annotations", "gold_problem",
    "write_jsonl",
    # gsm8k
    "PLATINUM_KEEP", "to_rows", "load_gsm8k", "load_platinum", "split_train_dev",
    # synthetic
    "synthetic_problem", "synthetic_problems", "build_synthetic_splits",
    # teacher
    "TEACHER_STYLES", "COMPLETION_STYLES", "parse_teacher", "terse_answer", "slip_answer", "apply_teacher",
    "completion_style", "style_shares",
]

SPLITS = ("train", "dev", "test", "platinum")
MANIFEST = "manifest.json"  # in data/: which run wrote the four splits, and each file's digest


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
    return [row for _, row in read_rows(path, required, check_gold)]


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


# ---- what a resumable stage trained on ----------------------------------

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

    Near = Jaccard similarity of word 5-gram shingles >= ``threshold``, exactly (every pair that
    reaches it is found; the most similar training question is reported). Candidates come from
    prefix filtering: with shingles ordered rarest first, two sets of Jaccard >= t must share a
    shingle among the first ``n - ceil(t * n) + 1`` of each. Template-made questions share their
    common shingles with thousands of rows, so the rare ones are what keeps this fast.
    """
    norm_train = {_norm_q(r["question"]) for r in train}
    exact = [r["id"] for r in other if _norm_q(r["question"]) in norm_train]
    train_sh = [_shingles(r["question"]) for r in train]
    freq = Counter(s for sh in train_sh for s in sh)

    def prefix(sh: set[str]) -> list[str]:
        keep = len(sh) - math.ceil(threshold * len(sh) - 1e-9) + 1
        return sorted(sh, key=lambda s: (freq.get(s, 0), s))[:max(1, keep)]

    index: dict[str, list[int]] = {}
    for i, sh in enumerate(train_sh):
        for s in prefix(sh):
            index.setdefault(s, []).append(i)
    near = []
    for r in other:
        sh = _shingles(r["question"])
        cands = {i for s in prefix(sh) for i in index.get(s, ())}
        best = max(((len(sh & train_sh[i]) / len(sh | train_sh[i]), -i) for i in cands), default=None)
        if best is not None and best[0] >= threshold:
            near.append({"id": r["id"], "train_id": train[-best[1]]["id"], "jaccard": round(best[0], 3)})
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
