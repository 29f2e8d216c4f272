"""The config fields' own documentation, for CLI help: one source (the docstring under each field in vimpo_bench/config/__init__.py).

    config_help("run.seed")   # 'Seed of everything: prompts, sampling, noise, initialization. (run.seed; default 0)'

The schema is read as text and parsed (`ast`), not imported, so that `--help` stays fast and a flag's help can
never drift from the field it sets.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

CONFIG_SOURCE = Path(__file__).parent.parent / "config" / "__init__.py"  # the schema


@functools.cache
def _fields() -> dict[str, tuple[str, str]]:
    """{"<section>.<key>": (docstring, default as written)} for every documented field of a config section."""
    tree = ast.parse(CONFIG_SOURCE.read_text(encoding="utf-8"))
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    sections = _sections(tree)
    out: dict[str, tuple[str, str]] = {}
    for section, class_name in sections.items():
        body = classes[class_name].body
        for field, after in zip(body, [*body[1:], None], strict=True):
            if not (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)):
                continue
            doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else ""
            out[f"{section}.{field.target.id}"] = (" ".join(str(doc).split()), _default(field.value))
    return out


def _sections(tree: ast.Module) -> dict[str, str]:
    """The SECTIONS table of config.py: section name -> dataclass name."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SECTIONS" for t in node.targets):
            return {k.value: v.id for k, v in zip(node.value.keys, node.value.values, strict=True)}
    raise RuntimeError("config.py has no SECTIONS table")


def _default(value: ast.expr | None) -> str:
    """The default as written: a literal, or the first argument of `num(...)`; '' when built otherwise."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "num" and value.args:
        value = value.args[0]
    if isinstance(value, ast.Constant):
        return "none" if value.value is None else str(value.value)
    return ""


def field_doc(dotted: str) -> str:
    """The docstring of config field `section.key` (KeyError if there is no such documented field)."""
    return _fields()[dotted][0]


def config_help(dotted: str, note: str = "") -> str:
    """CLI help for a flag that sets `dotted`: the field's doc, then the key and its default, then `note`."""
    doc, default = _fields()[dotted]
    where = f"{dotted}; default {default}" if default else dotted
    return f"{doc} ({where}){' ' + note if note else ''}"
