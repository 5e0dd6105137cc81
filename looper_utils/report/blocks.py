"""The vocabulary of the report card: five kinds of block, values as cell text, and the two outputs.

Every part of the card is a list of blocks (``Heading``, ``Para``, ``Table``,
``Figure``, ``Details``); ``to_markdown`` and ``to_html`` print the same list,
so ``report.md`` and ``report.html`` always say the same thing. The HTML
carries its CSS inline and embeds every figure as a base64 data URI, so it
can be shared as it is. Jinja or nbconvert would add a dependency for a page
this small.

The ``fmt_*`` helpers turn metric values into the text of a cell (a dash for
a missing value); ``dict_table`` and ``kv_table`` make the generic tables.
Nothing here knows what a run or a stage holds.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..stats import wilson_ci

__all__ = ["Heading", "Para", "Table", "Figure", "Details", "DASH", "fmt_num", "fmt_pct", "fmt_pct_ci",
           "fmt_seconds", "fmt_p", "sort_key", "flatten", "dict_table", "kv_table", "to_markdown", "to_html"]

DASH = "—"  # what a cell shows for a missing value


# ---- blocks ------------------------------------------------------------------------------

@dataclass
class Heading:
    """A section title; level 1 is the card's title, 2 a section, 3 a subsection."""

    level: int
    text: str


@dataclass
class Para:
    """A paragraph; `code` spans become <code> in the HTML."""

    text: str
    kind: str = ""  # "" | "missing" | "meta"


@dataclass
class Table:
    """A table of text cells (format values with the ``fmt_*`` helpers first)."""

    headers: list[str]
    rows: list[list[str]]
    align_numbers: bool = True  # right-align cells that start with a number (not for version strings)


@dataclass
class Figure:
    """A PNG of the run folder: linked from the Markdown, embedded in the HTML."""

    path: Path
    caption: str
    number: int = 0


@dataclass
class Details:
    """Blocks folded away under a one-line summary (``<details>`` in both outputs)."""

    summary: str
    blocks: list[Any] = field(default_factory=list)


# ---- formatting --------------------------------------------------------------------------

def fmt_num(x: Any) -> str:
    """Any metric value as cell text: thousands separators, 4 significant digits, long lists summarised.

    >>> fmt_num(12345), fmt_num(0.123456), fmt_num(True), fmt_num(None)
    ('12,345', '0.1235', 'yes', '—')
    """
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x.is_integer() and abs(x) >= 1000:
            return f"{int(x):,}"
        return f"{x:,.1f}" if abs(x) >= 1000 else f"{x:.4g}"
    if isinstance(x, list):
        if len(x) <= 12:
            return "[" + ", ".join(fmt_num(v) for v in x) + "]"
        vals = [v for v in x if isinstance(v, (int, float)) and not isinstance(v, bool)]
        extra = f", min {fmt_num(min(vals))}, max {fmt_num(max(vals))}" if vals else ""
        return f"{len(x)} values: first {fmt_num(x[0])}, last {fmt_num(x[-1])}{extra}"
    return str(x)


def fmt_pct(x: Any) -> str:
    """A fraction as a percentage with one decimal (``0.4567`` -> ``45.7%``)."""
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) and not isinstance(x, bool) else DASH


def fmt_pct_ci(acc: Any, ci: Any = None, n: Any = None) -> str:
    """``45.0% [38.1, 52.0]``; the interval is Wilson's when only ``n`` is known.

    >>> fmt_pct_ci(0.45, [0.381, 0.52]), fmt_pct_ci(0.5, n=100), fmt_pct_ci(None)
    ('45.0% [38.1, 52.0]', '50.0% [40.4, 59.6]', '—')
    """
    if not isinstance(acc, (int, float)):
        return DASH
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci) and isinstance(n, int) and n > 0:
        ci = list(wilson_ci(round(acc * n), n)[1:])
    out = fmt_pct(acc)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        out += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return out


def fmt_seconds(s: Any) -> str:
    """A duration in seconds, in the largest units that fit.

    >>> fmt_seconds(12.34), fmt_seconds(131.7), fmt_seconds(7384)
    ('12.3 s', '2 min 11 s', '2 h 03 min')
    """
    if not isinstance(s, (int, float)):
        return DASH
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def fmt_p(p: Any) -> str:
    """A p-value with 3 significant digits, or ``< 0.0001``."""
    if not isinstance(p, (int, float)):
        return DASH
    return "< 0.0001" if p < 1e-4 else f"{p:.3g}"


def sort_key(k: str) -> tuple:
    """Sort key for metric keys: numbers ("2", "10") in numeric order, then the other keys by name."""
    return (0, float(k), "") if re.fullmatch(r"-?\d+(\.\d+)?", str(k)) else (1, 0.0, str(k))


# ---- generic rendering of nested metrics -------------------------------------------------

def flatten(obj: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    """(key path, value) of every leaf of nested dicts (and lists of dicts, keyed by index).

    >>> flatten({"a": {"b": 1, "c": [{"d": 2}]}})
    [(('a', 'b'), 1), (('a', 'c', '0', 'd'), 2)]
    """
    if isinstance(obj, dict) and obj:
        return [kv for k, v in obj.items() for kv in flatten(v, prefix + (str(k),))]
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        return [kv for i, v in enumerate(obj) for kv in flatten(v, prefix + (str(i),))]
    return [(prefix, obj)]


def dict_table(d: dict, key_header: str = "key", value_fmt: Callable = fmt_num) -> Table:
    """A dict of scalars as rows; equally deep dicts as a grid (outer keys joined by " / " x innermost keys).

    >>> dict_table({"sft": {"platinum": {"wrong": 3, "correct": 5}}}, "model / set").rows
    [['sft / platinum', '3', '5']]
    """
    leaves = flatten(d)
    depths = {len(p) for p, _ in leaves}
    if len(depths) == 1 and min(depths) >= 2 and len({p[-1] for p, _ in leaves}) > 1:
        cols = list(dict.fromkeys(p[-1] for p, _ in leaves))
        rows: dict[str, dict[str, Any]] = {}
        for p, v in leaves:
            rows.setdefault(" / ".join(p[:-1]), {})[p[-1]] = v
        return Table([key_header] + cols, [[r] + [value_fmt(vals.get(c)) for c in cols] for r, vals in rows.items()])
    return Table([key_header, "value"], [[" / ".join(p), value_fmt(v)] for p, v in leaves])


def kv_table(pairs: list[tuple[str, str, bool]]) -> Table:
    """A metric / value table of the (name, text, present) triples whose metric is present."""
    return Table(["metric", "value"], [[k, v] for k, v, present in pairs if present])


# ---- Markdown and HTML -----------------------------------------------------------------------

def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in t.headers) + " |",
             "|" + "|".join("---" for _ in t.headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def to_markdown(blocks: list, run_dir: Path) -> str:
    """The blocks as Markdown; figures are linked relative to ``run_dir``."""
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(f"> **{b.text}**" if b.kind == "missing" else (f"*{b.text}*" if b.kind == "meta" else b.text))
        elif isinstance(b, Table):
            out.append(_md_table(b))
        elif isinstance(b, Figure):
            rel = b.path.relative_to(run_dir).as_posix()
            out.append(f"![{b.caption}]({rel})\n\n*Figure {b.number}. {b.caption}* (`{rel}`)")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{html.escape(b.summary)}</summary>\n\n"
                       + to_markdown(b.blocks, run_dir) + "\n</details>")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


_NUMERIC = re.compile(r"^[-+<]?\s?\d")  # cells that start with a number are right-aligned


def _html_blocks(blocks: list, run_dir: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f'<p class="{b.kind}">{_inline(b.text)}</p>' if b.kind else f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b.headers)
            num = [[bool(i and b.align_numbers and _NUMERIC.match(c)) for i, c in enumerate(r)] for r in b.rows]
            body = "".join("<tr>" + "".join(('<td class="num">' if right else "<td>") + html.escape(c) + "</td>"
                                            for c, right in zip(row, flags)) + "</tr>"
                           for row, flags in zip(b.rows, num))
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            rel = html.escape(b.path.relative_to(run_dir).as_posix())
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                       f"<figcaption>Figure {b.number}. {html.escape(b.caption)} <code>{rel}</code>"
                       "</figcaption></figure>")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{html.escape(b.summary)}</summary>{_html_blocks(b.blocks, run_dir)}"
                       "</details>")
    return "\n".join(out)


_CSS = """
body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2327;
 max-width:1000px;margin:2em auto;padding:0 1.2em;background:#fff}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #e3e6ea;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #d5d9de;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#f1f3f5}tbody tr:nth-child(even){background:#fafbfc}td.num{text-align:right;
 font-variant-numeric:tabular-nums;white-space:nowrap}
p.meta{color:#5f6b76}p.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em .8em}
figure{margin:1em 0 1.6em;page-break-inside:avoid;break-inside:avoid}
figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{color:#444;font-size:.9em;margin-top:.3em}code{background:#f1f3f5;padding:0 .25em;border-radius:3px}
details{margin:.4em 0}summary{cursor:pointer;font-weight:600}
@media print{body{margin:0;max-width:none}h2{page-break-after:avoid}table{page-break-inside:auto}}
"""
# Closed <details> would hide the configuration on paper: open them all before printing.
_PRINT_JS = "addEventListener('beforeprint',()=>document.querySelectorAll('details').forEach(d=>d.open=true));"


def to_html(title: str, blocks: list, run_dir: Path) -> str:
    """The blocks as one self-contained HTML page: inline CSS, figures as data URIs, nothing fetched."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style><script>{_PRINT_JS}</script></head>\n"
            f"<body>\n{_html_blocks(blocks, run_dir)}\n</body></html>\n")
