"""A YAML loader for user input that refuses alias bombs before building anything (config.load_yaml uses it)."""

from __future__ import annotations

import yaml

# A study file has hundreds of YAML nodes; nested aliases ("billion laughs") expand a kilobyte into billions,
# which every later deep copy, merge or message would then walk.
MAX_YAML_NODES = 100_000
MAX_YAML_BYTES = 2_000_000


class YamlRefused(yaml.YAMLError):
    """A document refused before it is built (an alias bomb, a self-referring alias)."""


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases expand past MAX_YAML_NODES nodes, or refer to
    themselves, before building any Python object (the check costs one visit per distinct node)."""

    def construct_document(self, node):
        _expanded_size(node)
        return super().construct_document(node)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expanded_size(root) -> int:
    """Nodes of the document with every alias expanded; iterative (no recursion limit), memoized per node."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[id(node)] > MAX_YAML_NODES:
                raise YamlRefused(f"aliases expand to more than {MAX_YAML_NODES} nodes (an alias bomb?)")
            continue
        if id(node) in sizes:
            continue
        if id(node) in on_path:
            raise YamlRefused("an alias refers to itself")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]
