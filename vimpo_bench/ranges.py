"""Allowed ranges of numeric options, declared beside the field they limit and checked by one function.

    beta: float = num(0.05, gt=0)          # a dataclass field with its range in the field's metadata
    check_ranges(obj, "algo")              # -> "algo.beta: must be finite and > 0, got nan"

Used by the config schema (`vimpo_bench.config`) and by the algorithm option dataclasses
(`vimpo_bench.algorithms`), which the config imports: this module sits below both and imports neither.
A subclass that only changes a field's default (`beta: float = 0.0`) keeps the range its base declared.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass, field
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 120, 120, 3


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: always finite (a check written `x <= 0` lets NaN through),
    and between `low` and `high` (an open end excludes the bound itself)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def allows(self, x: float) -> bool:
        if not math.isfinite(x):
            return False
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        lo, hi = (str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}" for x in (self.low, self.high))
        if self.low == -math.inf and self.high == math.inf:
            return "a finite number"
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {lo}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {hi}"
        return f"in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"


def num(default: Any, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
        le: float | None = None, why: str = "") -> Any:
    """A numeric dataclass field with its allowed range beside it; `check_ranges` walks the schema."""
    rng = Range(low=gt if gt is not None else (ge if ge is not None else -math.inf),
                high=lt if lt is not None else (le if le is not None else math.inf),
                low_open=gt is not None, high_open=lt is not None, why=why)
    return field(default=default, metadata={"range": rng})


def declared_range(cls: type, name: str) -> Range | None:
    """The range declared for field `name` of dataclass `cls`, or by the nearest base class that declares
    one (None: no range declared anywhere)."""
    for klass in cls.__mro__:
        found = getattr(klass, "__dataclass_fields__", {}).get(name)
        if found is not None and "range" in found.metadata:
            return found.metadata["range"]
    return None


def range_problem(obj: Any, where: str) -> str | None:
    """The first number of dataclass instance `obj` outside its declared range, as a one-line message
    naming `where`.key, the allowed range and the value; None when all are in range. None values skip (an
    optional field left unset); a field with a declared range that holds a non-number is a problem too."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        rng = declared_range(type(obj), f.name)
        if value is None or (rng is None and not _is_number(value)):
            continue
        rng = rng or Range()
        why = f" ({rng.why})" if rng.why else ""
        if not _is_number(value):
            return f"{where}.{f.name}: must be a number {rng}{why}, got {short(value)}"
        if not rng.allows(value):
            finite = "" if math.isfinite(value) else "finite and "
            return f"{where}.{f.name}: must be {finite}{rng}{why}, got {short(value)}"
    return None


def check_ranges(obj: Any, where: str, error: type[Exception] = ValueError) -> None:
    """Raise `error` with `range_problem`'s message unless every number of `obj` is in its range."""
    problem = range_problem(obj, where)
    if problem:
        raise error(problem)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def short(value: Any, limit: int = 200) -> str:
    """repr(value) cut to about `limit` characters: messages echo user input, never a whole megabyte of it
    (reprlib also stops early inside huge or deeply shared containers)."""
    return clip(_REPR.repr(value), limit)


def clip(text: str, limit: int = 300) -> str:
    """Text cut to `limit` characters (with ... when cut), for plain text echoed in messages."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
