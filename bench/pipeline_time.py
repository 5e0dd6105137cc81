"""Time `make run`'s pipeline (all six notebooks, a profile, offline) in a fresh temporary root.

    python bench/pipeline_time.py [--profile smoke] [--keep] [--out results.json]

Prints the wall time per stage and in total, and how far the total is from 5 and 10 minutes
(the smoke target is 10). A benchmark, never a test: timings depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from looper_utils import pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--keep", action="store_true", help="keep the temporary root (data, checkpoints, run)")
    ap.add_argument("--out", default=None, help="write the timings as JSON here")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="looper_bench_"))
    t0 = time.perf_counter()
    try:
        record = pipeline.run(a.profile, run_id="bench", root=root)
    finally:
        total = time.perf_counter() - t0
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    stages = {s: r["seconds"] for s, r in record["stages"].items()}
    print(f"\n{'stage':<14}{'seconds':>9}")
    for s, secs in stages.items():
        print(f"{s:<14}{secs:>9.1f}")
    print(f"{'total':<14}{total:>9.1f}   ({total / 60:.1f} min; {total - 300:+.0f} s vs 5 min, "
          f"{total - 600:+.0f} s vs 10 min)")
    top = sorted(stages.items(), key=lambda kv: -kv[1])[:2]
    print("dominated by: " + ", ".join(f"{s} ({v / total:.0%})" for s, v in top))
    if a.out:
        Path(a.out).write_text(json.dumps({"profile": a.profile, "stages": stages, "total_seconds": total,
                                           "cpus": os.cpu_count(), "machine": platform.platform()}, indent=1))


if __name__ == "__main__":
    main()
