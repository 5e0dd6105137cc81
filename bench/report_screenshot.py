"""Build a run's report card and check it the way a reader sees it: in a headless browser.

    python bench/report_screenshot.py                     # the test fixture, copied to a temp folder
    python bench/report_screenshot.py runs/<run_id> --out report.png

Checks, each printed, exit status 1 if any fails:
1. every ``figures/*.png`` is embedded once as a data URI that decodes to a valid PNG (Pillow);
2. the HTML references nothing outside itself (no http(s)/file src or href);
3. Chromium loads every <img>: a probe copy of the page writes each image's
   ``complete`` flag and natural size into the DOM on load, read back with ``--dump-dom``;
4. a screenshot is written, by default of the whole page (look at it: the figures should show).

Needs Chromium (Debian: ``apt-get install -y chromium``).
"""
from __future__ import annotations

import argparse
import base64
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from looper_utils.report import build_report

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "report_run"
_DATA_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|file:|//)""", re.I)
_PROBE = """<script>addEventListener('load', () => {
  const out = [...document.images].map((im, i) =>
    `img ${i} complete=${im.complete} size=${im.naturalWidth}x${im.naturalHeight}`);
  out.push(`page height=${document.documentElement.scrollHeight}`);
  const pre = document.createElement('pre'); pre.id = 'img-probe'; pre.textContent = out.join('\\n');
  document.body.appendChild(pre);
});</script>"""


def chromium_args(chromium: str, profile_dir: Path) -> list[str]:
    # Flags keep the browser off the network and away from any first-run or sync machinery.
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile_dir}"]


def check_embedded(html_text: str, run_dir: Path) -> list[str]:
    errors = []
    payloads = _DATA_IMG.findall(html_text)
    figures = sorted((run_dir / "figures").glob("*.png"))
    print(f"figures on disk: {len(figures)}; data-URI images in report.html: {len(payloads)}")
    if len(payloads) != len(figures):
        errors.append(f"{len(figures)} figures but {len(payloads)} embedded images")
    on_disk = {f.read_bytes(): f.name for f in figures}
    for i, b64 in enumerate(payloads):
        raw = base64.b64decode(b64, validate=True)
        try:
            with Image.open(io.BytesIO(raw)) as im:
                im.verify()
            with Image.open(io.BytesIO(raw)) as im:
                print(f"  img {i}: {im.format} {im.size[0]}x{im.size[1]}, {len(raw):,} bytes "
                      f"= {on_disk.get(raw, 'NOT a file in figures/')}")
        except Exception as exc:  # noqa: BLE001 - any decode failure is the finding
            errors.append(f"img {i} is not a valid PNG: {exc}")
        if raw not in on_disk:
            errors.append(f"img {i} does not match any figures/*.png byte for byte")
    if _EXTERNAL.search(html_text):
        errors.append(f"external reference: {_EXTERNAL.search(html_text).group(0)!r}")
    return errors


def check_in_browser(html_path: Path, out_png: Path, chromium: str, size: str | None) -> list[str]:
    """Probe the images in Chromium, then screenshot (``size`` None: 1280 wide, the whole page tall)."""
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = tmp / "probe.html"
        probe.write_text(html_path.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"),
                         encoding="utf-8")
        dom = subprocess.run(chromium_args(chromium, tmp / "p1") + ["--virtual-time-budget=5000", "--dump-dom",
                                                                     probe.as_uri()],
                             capture_output=True, text=True, timeout=120)
        lines = re.findall(r"img \d+ complete=\w+ size=\d+x\d+", dom.stdout)
        print("chromium image probe:\n  " + ("\n  ".join(lines) if lines else "(no probe output)"))
        if not lines:
            errors.append(f"chromium probe gave no output (rc={dom.returncode}): {dom.stderr[-500:]}")
        for line in lines:
            if "complete=true" not in line or " size=0x" in line:
                errors.append(f"image not loaded in chromium: {line}")
        height = re.search(r"page height=(\d+)", dom.stdout)
        if size is None:
            size = f"1280,{min(int(height.group(1)), 16000) if height else 4000}"
        shot = subprocess.run(chromium_args(chromium, tmp / "p2") + ["--hide-scrollbars", f"--window-size={size}",
                                                                      f"--screenshot={out_png}", html_path.as_uri()],
                              capture_output=True, text=True, timeout=120)
        if not out_png.is_file():
            errors.append(f"no screenshot written (rc={shot.returncode}): {shot.stderr[-500:]}")
        else:
            with Image.open(out_png) as im:
                print(f"screenshot: {out_png} ({im.size[0]}x{im.size[1]})")
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", type=Path, help="runs/<run_id> (default: the test fixture, copied)")
    ap.add_argument("--out", type=Path, help="screenshot path (default: <run_dir>/report_screenshot.png)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--window-size", help="W,H in pixels (default: 1280 wide, as tall as the page)")
    args = ap.parse_args(argv)
    run_dir = args.run_dir
    if run_dir is None:  # never write into the committed fixture
        run_dir = Path(tempfile.mkdtemp(prefix="report_run_")) / "report_run"
        shutil.copytree(FIXTURE, run_dir)
    md_path, html_path = build_report(run_dir)
    print(f"built {md_path} and {html_path} ({html_path.stat().st_size:,} bytes)")
    errors = check_embedded(html_path.read_text(encoding="utf-8"), run_dir)
    if shutil.which(args.chromium) is None:
        errors.append(f"{args.chromium} not found: apt-get install -y chromium, or pass --chromium PATH")
    else:
        errors += check_in_browser(html_path, (args.out or run_dir / "report_screenshot.png").resolve(),
                                   args.chromium, args.window_size)
    for e in errors:
        print("FAIL:", e)
    print("all checks passed" if not errors else f"{len(errors)} check(s) failed")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
