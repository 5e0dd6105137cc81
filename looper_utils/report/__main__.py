"""``python -m looper_utils.report runs/<run_id>``: build report.md and report.html for a run folder."""
import argparse
from pathlib import Path

from .card import build_report

parser = argparse.ArgumentParser(description="Build report.md and report.html for a run folder.")
parser.add_argument("run_dir", type=Path, help="runs/<run_id>")
for p in build_report(parser.parse_args().run_dir):
    print(p)
