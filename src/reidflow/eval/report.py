"""The evaluation report: Markdown (PNG files beside it) and one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ReportSection:
    title: str
    table: list[dict[str, Any]] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png path)
    notes: list[str] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{100 * value:.1f}" if 0.0 <= value <= 1.0 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    out_dir: Path, title: str, intro: str, sections: Sequence[ReportSection]
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir`` (images must already be inside it)."""
    md = [f"# {title}", "", intro, ""]
    for sec in sections:
        md += [f"## {sec.title}", ""]
        if sec.table:
            md += [markdown_table(sec.table), ""]
        md += [n + "\n" for n in sec.notes]
        for caption, path in sec.images:
            md += [f"![{caption}]({path.relative_to(out_dir).as_posix()})", f"*{caption}*", ""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md) + "\n")
    html_path = out_dir / "report.html"
    html_path.write_text(_html(title, intro, sections))
    return md_path, html_path


_STYLE = (
    "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "figure{margin:1em 0}figcaption{color:#555;font-size:13px}img{max-width:100%}</style></head><body>"
)


def _html(title: str, intro: str, sections: Sequence[ReportSection]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        _STYLE,
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{_inline(intro)}</p>",
    ]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.table:
            cols = list(sec.table[0])
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
            for row in sec.table:
                parts.append(
                    "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c, '')))}</td>" for c in cols) + "</tr>"
                )
            parts.append("</table>")
        parts += [f"<p>{_inline(n)}</p>" for n in sec.notes]
        for caption, path in sec.images:
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escape, then render Markdown ``code`` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
