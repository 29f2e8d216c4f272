"""Plotly figures as plain dicts, drawn by the plotly.js inlined once in the page.

Building plotly's Python graph objects validates every property and deep-copies templates: ~0.2 s a
figure, most of the report's render time. The report only needs lines, markers, bands and subplot
grids, so it writes the JSON that `Plotly.newPlot` takes directly.
"""

from __future__ import annotations

import json
import math

import numpy as np

GRID = "#e4e7eb"


def _clean(value):
    """JSON-ready: numpy -> lists, NaN/inf -> null (a gap in a line)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray) or hasattr(value, "to_numpy"):
        arr = np.asarray(value)
        if arr.dtype.kind in "iub":
            return arr.tolist()
        if arr.dtype.kind == "f":
            finite = np.isfinite(arr)
            out = _round_sig(np.where(finite, arr, 0.0)).astype(object)
            out[~finite] = None
            return out.tolist()
        return _clean(arr.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _round_sig(x: np.ndarray, digits: int = 6) -> np.ndarray:
    """Round to `digits` significant digits: a screen needs no more, and the page gets ~2x smaller."""
    mag = np.floor(np.log10(np.abs(np.where(x == 0, 1.0, x))))
    scale = 10.0 ** (digits - 1 - mag)
    return np.round(x * scale) / scale


def rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


class Figure:
    """A rows x cols grid of subplots (cell i counts row by row from 0), optionally with a right-hand
    second y axis on a single cell."""

    def __init__(self, rows=1, cols=1, titles=(), height=420, secondary_y=False, hspace=0.07, vspace=0.16):
        self.data: list[dict] = []
        self.height = height
        self.cells = rows * cols
        self.layout: dict = {
            "height": height, "margin": {"l": 55, "r": 55 if secondary_y else 20, "t": 40 if titles else 20, "b": 40},
            "paper_bgcolor": "white", "plot_bgcolor": "white", "hovermode": "closest",
            "legend": {"orientation": "h", "y": -0.15}, "font": {"size": 12}, "annotations": [], "shapes": [],
        }
        w = (1 - hspace * (cols - 1)) / cols
        h = (1 - vspace * (rows - 1)) / rows
        for i in range(rows * cols):
            r, c = divmod(i, cols)
            x0, y1 = c * (w + hspace), 1 - r * (h + vspace)
            xa, ya = self.axes(i)
            self.layout["xaxis" + xa[1:]] = {"domain": [x0, x0 + w], "anchor": ya, "gridcolor": GRID, "zeroline": False}
            self.layout["yaxis" + ya[1:]] = {"domain": [y1 - h, y1], "anchor": xa, "gridcolor": GRID, "zeroline": False}
            if i < len(titles):
                self.layout["annotations"].append({"text": titles[i], "x": x0 + w / 2, "y": y1, "xref": "paper",
                                                   "yref": "paper", "yanchor": "bottom", "showarrow": False,
                                                   "font": {"size": 13}})
        if secondary_y:
            self.layout["yaxis99"] = {"overlaying": "y", "side": "right", "anchor": "x", "showgrid": False}

    @staticmethod
    def axes(cell: int) -> tuple[str, str]:
        return ("x", "y") if cell == 0 else (f"x{cell + 1}", f"y{cell + 1}")

    def hide_cells(self, first: int) -> None:
        """Hide the grid's spare cells, `first` to the last (a grid wider than its number of plots)."""
        for cell in range(first, self.cells):
            self.axis("x", cell, visible=False)
            self.axis("y", cell, visible=False)

    def axis(self, which: str, cell: int = 0, **props) -> None:
        """Set properties (title, type, ...) of the x or y axis of `cell`."""
        name = self.axes(cell)[0 if which == "x" else 1]
        self.layout[("xaxis" if which == "x" else "yaxis") + name[1:]].update(props)

    def add(self, trace: dict, cell: int = 0, secondary: bool = False) -> None:
        xa, ya = self.axes(cell)
        self.data.append({"type": "scatter", "xaxis": xa, "yaxis": "y99" if secondary else ya, **trace})

    def band(self, x, mean, low, high, name, color, dash="solid", cell=0, showlegend=True) -> None:
        """A mean line and its shaded 95% band (band drawn where it exists: two or more seeds)."""
        x, mean, low, high = (np.asarray(v, dtype=float) for v in (x, mean, low, high))
        ok = np.isfinite(low) & np.isfinite(high)
        if ok.sum() >= 2:
            self.add({"x": np.concatenate([x[ok], x[ok][::-1]]), "y": np.concatenate([high[ok], low[ok][::-1]]),
                      "fill": "toself", "fillcolor": rgba(color, 0.18), "line": {"width": 0}, "hoverinfo": "skip",
                      "showlegend": False, "legendgroup": name, "mode": "lines"}, cell)
        self.add({"x": x, "y": mean, "name": name, "mode": "lines+markers" if len(x) < 30 else "lines",
                  "line": {"color": color, "dash": dash}, "legendgroup": name, "showlegend": showlegend}, cell)

    def note(self, cell: int, text: str) -> None:
        xa, ya = self.axes(cell)
        self.layout["annotations"].append({"text": text, "xref": f"{xa} domain", "yref": f"{ya} domain", "x": 0.5,
                                           "y": 0.5, "showarrow": False, "font": {"color": "#8a6d00"}})

    def vline(self, x: float, cell: int = 0) -> None:
        xa, ya = self.axes(cell)
        self.layout["shapes"].append({"type": "line", "xref": xa, "yref": f"{ya} domain", "x0": x, "x1": x, "y0": 0,
                                      "y1": 1, "line": {"color": "#9aa5b1", "dash": "dot", "width": 1}})

    def html(self, div_id: str) -> str:
        """The figure's div and its Plotly.newPlot call (JSON with "</" escaped so text cannot end the script)."""
        payload = [json.dumps(_clean(x), separators=(",", ":")).replace("</", "<\\/")
                   for x in (self.data, self.layout)]
        return (f'<div id="{div_id}" class="fig" style="height:{self.height}px"></div><script>'
                f'Plotly.newPlot("{div_id}",{payload[0]},{payload[1]},{{"displaylogo":false,"responsive":true}});'
                "</script>")
