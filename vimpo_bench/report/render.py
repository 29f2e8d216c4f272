"""HTML for the report: one self-contained file (plotly.js inlined once, no network), tables as CSV.

The page inlines plotly.js's "basic" bundle (trace types scatter, bar and pie; 1.2 MB), not the full
library plotly's Python package ships (4.8 MB): every figure here is a scatter trace (figures.py).

`render(data)` returns the page and its tables; `write_report(data, out)` writes NAME.html and the
folder NAME/ beside it with one CSV per table (see docs/report.md for the list).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import pandas as pd

from vimpo_bench.report.html import Panel, esc, note
from vimpo_bench.report.panels import build_panels

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 16px 48px;color:#1f2933;background:#fff}
h1{margin:20px 0 4px}h2{margin:0 0 4px}.sub{color:#52606d;margin:0 0 12px}
nav{padding:8px 0;border-bottom:1px solid #d9e2ec}
nav a{margin-right:14px;color:#1f4e8c;text-decoration:none;font-size:14px}
section.panel{border:1px solid #d9e2ec;border-radius:6px;padding:14px 16px;margin:18px 0;background:#fff}
.question{color:#52606d;font-style:italic;margin:0 0 10px}
.note{padding:8px 12px;border-radius:4px;margin:8px 0}.note.missing{background:#fff8e1;border-left:4px solid #f0b429}
.note.warn{background:#ffeeee;border-left:4px solid #e12d39}.note.info{background:#eef4fb;border-left:4px solid #2680c2}
.note.error{background:#ffe3e3;border-left:4px solid #ab091e;font-family:monospace}
.tablewrap{overflow-x:auto;max-height:520px;overflow-y:auto;margin:8px 0}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #d9e2ec;padding:3px 8px;text-align:left;vertical-align:top;white-space:nowrap}
th{background:#f0f4f8;position:sticky;top:0}
details.problem{border:1px solid #d9e2ec;border-radius:4px;margin:6px 0;padding:4px 8px}
details.problem summary{cursor:pointer}pre{white-space:pre-wrap;word-break:break-word;background:#f5f7fa;padding:8px;margin:4px 0;font-size:12px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:10px}
"""

# plotly.js-basic-dist-min from npm, vendored unchanged (MIT: assets/plotly-basic.LICENSE; see assets/README.md)
PLOTLY_BUNDLE = "plotly-basic.min.js"
PLOTLY_TRACES = ("scatter", "bar", "pie")  # the trace types that bundle draws


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """The vendored plotly.js bundle, after a one-line banner naming its version and trace types."""
    text = (resources.files("vimpo_bench.report") / "assets" / PLOTLY_BUNDLE).read_text(encoding="utf-8")
    found = re.search(r"plotly\.js \(basic - minified\) v(\d[\w.-]*)", text[:300])
    if found is None:
        raise RuntimeError(f"vimpo_bench/report/assets/{PLOTLY_BUNDLE} is not plotly.js's basic bundle")
    return f"/* plotly.js v{found.group(1)}, basic bundle ({', '.join(PLOTLY_TRACES)}); MIT license */\n{text}"


def page(title: str, subtitle: str, panels: list[Panel], plotly_js: str) -> str:
    nav = "".join(f'<a href="#panel-{p.id}">{esc(p.title)}</a>' for p in panels)
    sections = []
    for p in panels:
        body = "".join(p.body)
        if p.error:
            body = note(f"this panel could not be built: {p.error}", "error") + body
        sections.append(
            f'<section class="panel" id="panel-{p.id}" data-panel="{p.id}"><h2>{esc(p.title)}</h2>'
            f'<p class="question">{esc(p.question)}</p>{body}</section>'
        )
    # "</script" inside the inlined library would end the tag early; plotly.js contains none, but be sure.
    js = plotly_js.replace("</script", "<\\/script")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<style>{CSS}</style><script>{js}</script></head><body>"
        f"<h1>{esc(title)}</h1><p class=\"sub\">{esc(subtitle)}</p><nav>{nav}</nav>"
        + "".join(sections)
        + "</body></html>\n"
    )


def run_counts(runs: pd.DataFrame) -> str:
    """"8 train, 8 eval" for the kinds present."""
    n = runs["kind"].value_counts()
    return ", ".join(f"{n.get(k, 0)} {k}" for k in ("train", "eval", "sweep", "study", "other") if n.get(k, 0))


def generated_at() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def generated_line(data) -> str:
    """"Generated <now>" from a store; from a committed export, the time it was exported, so a page rebuilt
    later from the same export is the same page."""
    if data.manifest is not None:
        return f"Exported {data.manifest['exported_at']}"
    return f"Generated {generated_at()}"


def render(data, threshold: float | None = None) -> tuple[str, list[Panel]]:
    """The page for `data` (a collect.ReportData) and its panels (with their tables)."""
    panels, _, _ = build_panels(data, threshold)
    subtitle = f"vimpo-bench report of {data.selection}: {run_counts(data.runs)} run(s); {generated_line(data).lower()}"
    return page(f"vimpo-bench report: {data.title}", subtitle, panels, plotly_js()), panels


@dataclass
class ReportFiles:
    """What a report wrote: the page (NAME.html or NAME.md), its CSV tables and PNG figures (Markdown
    only) in the folder NAME/, and "panel id: error" for each panel that could not be built."""

    page: Path
    tables: list[Path]
    failed_panels: list[str]
    figures: list[Path] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.page.with_suffix("")


def write_tables(panels: list[Panel], folder: Path) -> list[Path]:
    """folder/<table>.csv for every table with rows; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for p in panels:
        for name, df in p.tables.items():
            if df is not None and not df.empty:
                path = folder / f"{name}.csv"
                df.to_csv(path, index=False)
                written.append(path)
    return written


def failures(panels: list[Panel]) -> list[str]:
    return [f"{p.id}: {p.error}" for p in panels if p.error]


def write_report(data, out: str | Path, threshold: float | None = None) -> ReportFiles:
    """Write OUT (the page) and OUT-without-suffix/<table>.csv; returns the paths."""
    out = Path(out)
    html_text, panels = render(data, threshold)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html_text, encoding="utf-8")
    return ReportFiles(out, write_tables(panels, out.with_suffix("")), failures(panels))
