"""Algorithms register themselves by name: `@register("grpo")` above the class, in its own module.

The registry is filled as the algorithm modules are imported (vimpo_bench/algorithms/__init__.py imports
each once; `names()` lists them sorted); a second class under a taken name is an error, so two
modules cannot silently shadow each other.
"""

from __future__ import annotations

from collections.abc import Callable

REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make the class algorithm `name` (its dataclass fields are the options)."""

    def add(cls: type) -> type:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"algorithm name {name!r} is taken by {REGISTRY[name].__qualname__}")
        REGISTRY[name] = cls
        return cls

    return add
