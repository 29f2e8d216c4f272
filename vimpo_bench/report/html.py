"""The building blocks of the report's HTML: a `Panel` (one section of the page, with its tables and
notes), escaping, notes, table cells and tables. Panels (`panels`) fill them; the page (`render`) and the
Markdown page (`markdown`) read them. Nothing here imports another report module.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import pandas as pd

MAX_TABLE_ROWS = 200


@dataclass
class Panel:
    """One section of the page. `body` is trusted HTML built by the helpers below (all text escaped);
    `tables` go to CSV as NAME/<key>.csv; `notes` are the (kind, text) messages also in `body`; `meta`
    holds what else a renderer other than HTML needs (axis labels, frames not written as CSV); `error`
    is set when building the panel itself failed."""

    id: str
    title: str
    question: str
    body: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    error: str | None = None

    def say(self, text: str, kind: str = "missing") -> None:
        """Add a visible message (see `note`) to the body and to `notes`."""
        self.notes.append((kind, text))
        self.body.append(note(text, kind))


def esc(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def note(text: str, kind: str = "missing") -> str:
    """A visible one-paragraph message; kind "missing" for absent data, "warn" for doubts, "info"."""
    return f'<p class="note {kind}">{esc(text)}</p>'


def cell_text(value: object) -> str:
    """A table cell's text in both formats: a dash for missing, 4 significant digits for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_html(df: pd.DataFrame, csv_name: str | None = None, max_rows: int = MAX_TABLE_ROWS) -> str:
    """An escaped HTML table of `df`; long tables are cut with a pointer to the full CSV."""
    if df is None or df.empty:
        return note("(empty table)")
    shown = df.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(cell_text(v))}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    )
    out = f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if len(df) > max_rows:
        where = f" (all rows in {csv_name}.csv)" if csv_name else ""
        out += note(f"first {max_rows} of {len(df)} rows{where}", "info")
    return out
