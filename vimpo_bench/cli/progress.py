"""The CLI's progress bars, one helper for every command (train, eval, study run, sweep).

`bar(...)` is a tqdm bar on a terminal. Written to a file or a pipe (a log, CI, `nohup`), a redraw per step
is thousands of carriage returns in one line; there it is a `LineBar`, which prints a whole line each time
the bar crosses another `EVERY` percent (and when it closes), with the same description, count, elapsed
time, ETA and figures. `StepBars` shows a run's phases (the warm start, the RL steps) with its metrics.
`quiet_third_party()` silences the bars of libraries underneath (transformers' "Loading weights",
"Writing model shards", huggingface_hub's downloads): the CLI's own bars say what is going on.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

EVERY = 5  # percent between two lines of a LineBar


def quiet_third_party() -> None:
    """Before transformers or huggingface_hub is imported: their progress bars off (the env var both read)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


class LineBar:
    """tqdm's attributes and calls that the CLI uses (n, total, desc, set_postfix, set_postfix_str, refresh,
    update, close), printed as whole lines: one per EVERY percent crossed, and a last one at close."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", file=None, **_ignored):
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.file = file or sys.stderr
        self.postfix = ""
        self.started = time.monotonic()
        self.shown = -1  # the last EVERY-percent mark printed
        self.closed = False

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in items.items()), refresh)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text
        if refresh:
            self.refresh()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.total:
            eta = elapsed / self.n * (self.total - self.n) if self.n else None
            head = f"{self.desc}: {100 * self.n / self.total:3.0f}% {self.n}/{self.total} {self.unit}"
            when = f"[{tqdm.format_interval(elapsed)}<{tqdm.format_interval(eta) if eta is not None else '?'}]"
        else:
            head, when = f"{self.desc}: {self.n} {self.unit}", f"[{tqdm.format_interval(elapsed)}]"
        return " ".join(part for part in (head, when, self.postfix) if part)

    def refresh(self) -> None:
        if self.closed:
            return
        mark = int(100 * self.n / self.total) // EVERY if self.total else self.n
        if mark > self.shown:
            self.shown = mark
            print(self.line(), file=self.file, flush=True)

    def close(self) -> None:
        if not self.closed:
            if self.shown < (int(100 * self.n / self.total) // EVERY if self.total else self.n) or self.n == 0:
                print(self.line(), file=self.file, flush=True)
            self.closed = True


def bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs):
    """A tqdm bar on a terminal (stderr), else a LineBar."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **kwargs)
    return LineBar(total=total, desc=desc, unit=unit)


class StepBars:
    """A bar per phase of a run (the warm start, the RL steps): step, reward, accuracy, ETA. `position` and
    `leave` place it under another bar (a study's cells)."""

    def __init__(self, position: int = 0, leave: bool = True, keys: dict[str, str] | None = None):
        self.bars: dict = {}
        self.position, self.leave = position, leave
        self.keys = keys or {"reward": "reward/trained_mean", "acc": "reward/clean_mean", "val": "val/sampled_accuracy"}

    def __call__(self, phase: str, done: int, total: int, metrics: dict) -> None:
        shown = self.bars.get(phase)
        if shown is not None and done < shown.n:  # a new run of the same phase (the next cell)
            shown.close()
            shown = None
        if shown is None:
            shown = self.bars[phase] = bar(total=total, desc=phase, unit="step", position=self.position,
                                           leave=self.leave)
        shown.n = done
        if phase == "train":
            figures = {k: metrics.get(key) for k, key in self.keys.items()}
        else:
            figures = metrics
        shown.set_postfix({k: f"{v:.3f}" for k, v in figures.items() if v is not None}, refresh=False)
        shown.refresh()
        if done >= total:
            shown.close()

    def close(self) -> None:
        for shown in self.bars.values():
            shown.close()
        self.bars = {}
