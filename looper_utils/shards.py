"""Resumable, sharded sampling: the loop rollouts (03) and evaluation (06) share.

Problems are cut into shards; each shard is sampled with its own seed
(``seed + shard index``), graded, and written as one Parquet file through an
atomic rename. A rerun skips the shards on disk, so a killed run loses at most
the shard in flight and a resumed run gives the same table as a straight one.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .artifacts import atomic_write_bytes


def shard_path(out: Path, i: int) -> Path:
    return Path(out) / f"shard_{i:05d}.parquet"


def n_shards(n: int, shard_size: int) -> int:
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return (n + shard_size - 1) // shard_size


def write_missing(problems: list[dict], sample_fn: Callable[[list[dict], int], Any],
                  grade_fn: Callable[[list[dict], list[Any]], list[dict]], out: Path, *, shard_size: int,
                  seed: int, columns: list[str]) -> dict[str, float]:
    """Sample, grade and write every shard not yet on disk; return the throughput of this call.

    ``sample_fn(rows, shard_seed)`` returns a ``generation.GenerationResult``;
    ``grade_fn(rows, samples)`` turns its samples into records.
    """
    n = n_shards(len(problems), shard_size)
    new_tokens, seconds, skipped = 0, 0.0, 0
    for i in range(n):
        if shard_path(out, i).is_file():
            skipped += 1
            continue
        chunk = problems[i * shard_size:(i + 1) * shard_size]
        res = sample_fn(chunk, seed + i)
        new_tokens += res.n_new_tokens
        seconds += res.seconds
        buf = io.BytesIO()
        pd.DataFrame(grade_fn(chunk, res.samples), columns=columns).to_parquet(buf, index=False)
        atomic_write_bytes(shard_path(out, i), buf.getvalue())
    return {"new_tokens": new_tokens, "seconds": seconds, "shards": n, "shards_skipped": skipped,
            "tokens_per_second": new_tokens / seconds if seconds else 0.0}
