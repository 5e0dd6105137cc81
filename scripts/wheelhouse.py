"""Download every wheel the project needs into one folder, for a GPU box with no internet.

    python scripts/wheelhouse.py --dest wheelhouse --python 3.11 --platform manylinux_2_28_x86_64 [--extras dev,gpu]
    # on the offline box:
    pip install --no-index --find-links wheelhouse "torch==2.13.0" -e ".[dev,gpu]"

The requirement list is read from pyproject.toml (the one list of
dependencies); this package itself is built into the folder as a wheel too.
`--skip` leaves out packages the target already has (for example a torch
image: `--skip torch`).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirements(extras: list[str], skip: set[str], torch_pin: str) -> list[str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(proj["dependencies"])
    for e in extras:
        reqs += proj.get("optional-dependencies", {}).get(e, [])
    out = []
    for r in reqs:
        name = r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip().lower()
        if name in skip:
            continue
        out.append(torch_pin if name == "torch" else r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", default="wheelhouse")
    ap.add_argument("--python", default="3.11", help="target Python version, e.g. 3.11 or 3.12")
    ap.add_argument("--platform", action="append", default=None,
                    help="pip platform tag(s); default: manylinux x86_64 tags")
    ap.add_argument("--extras", default="dev,gpu")
    ap.add_argument("--skip", default="", help="comma-separated packages the target already has")
    ap.add_argument("--torch", default="torch==2.13.0")
    a = ap.parse_args()
    dest = Path(a.dest)
    dest.mkdir(parents=True, exist_ok=True)
    plats = a.platform or ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                           "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "any"]
    reqs = requirements([e for e in a.extras.split(",") if e], {s.strip().lower() for s in a.skip.split(",") if s},
                        a.torch)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), str(ROOT)], check=True)
    cmd = [sys.executable, "-m", "pip", "download", "--dest", str(dest), "--only-binary=:all:",
           "--python-version", a.python, "--implementation", "cp"]
    for p in plats:
        cmd += ["--platform", p]
    subprocess.run(cmd + reqs, check=True)
    print(f"{len(list(dest.glob('*.whl')))} wheels in {dest}/. Offline install:\n"
          f"  pip install --no-index --find-links {dest} '{a.torch}' -e '.[{a.extras}]'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
