"""Algorithms by name: `get(name, **options)` -> an object with `.advantages(batch)` and `.loss(batch)`.

    algo = get("vimpo", beta=0.05, advantage="implied")
    adv = algo.advantages(batch)                  # once per step, over the whole batch
    loss, stats = algo.loss(batch.with_advantages(adv))

Every algorithm is a frozen dataclass whose fields are its options (documented in docs/algorithms.md);
unknown names and options fail listing the valid ones (house rule 2).
"""

from __future__ import annotations

import dataclasses

# Importing each algorithm module registers its classes (`@register(name)`, algorithms/registry.py).
from vimpo_bench.algorithms import grpo as _grpo  # noqa: F401 - registers "grpo", "dr_grpo", "dapo"
from vimpo_bench.algorithms import rloo as _rloo  # noqa: F401 - registers "rloo"
from vimpo_bench.algorithms import vimpo as _vimpo  # noqa: F401 - registers "vimpo"
from vimpo_bench.algorithms.batch import Batch
from vimpo_bench.algorithms.registry import REGISTRY, register


def names() -> list[str]:
    return sorted(REGISTRY)


def options(name: str) -> dict[str, object]:
    """The options of algorithm `name` with their defaults."""
    cls = _lookup(name)
    return {f.name: f.default for f in dataclasses.fields(cls)}


def get(name: str, **opts):
    """Build algorithm `name` with `opts` (validated; unknown ones are an error listing the valid ones)."""
    cls = _lookup(name)
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for algorithm {name!r}; valid options: {', '.join(valid)}")
    return cls(**opts)


def name_of(algorithm) -> str:
    """The registered name of an algorithm object (its exact class: `DrGrpo` is "dr_grpo", not "grpo")."""
    for name, cls in REGISTRY.items():
        if type(algorithm) is cls:
            return name
    raise ValueError(f"{type(algorithm).__qualname__} is not a registered algorithm")


def _lookup(name: str) -> type:
    if name not in REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; valid algorithms: {', '.join(names())}")
    return REGISTRY[name]


__all__ = ["Batch", "get", "name_of", "names", "options", "register", "REGISTRY"]
