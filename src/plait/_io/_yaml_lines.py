"""Read YAML text with PyYAML's safe loader, keeping the line of every key.

The text is *composed* into PyYAML's node tree first; walking the nodes gives
the line of each mapping key and list element, catches duplicate keys (which
PyYAML would let the last one win) and recursive or exploding aliases, and
only then are the nodes *constructed* into plain data with ``SafeLoader``.
"""

from __future__ import annotations

from typing import Any, NoReturn

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ._form import MAX_DEPTH
from ._problems import Loc, Problems, key_part

__all__ = ["parse_yaml"]

_MERGE = "tag:yaml.org,2002:merge"
# Aliases may repeat a subtree; past this many nodes it is an alias bomb.
_MAX_NODES = 100_000


def parse_yaml(text: str, problems: Problems) -> Any:
    """Parse YAML text into plain data; note the line of each location.

    Lines go to ``problems.lines``; repeated keys are added to ``problems``.

    Raises:
        WorkflowError: the text is not YAML, is empty or nests too deeply,
            with the line of the problem.
    """
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as e:  # a character YAML does not allow
        _fail(e, text, problems)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            _fail(e, text, problems)
        except RecursionError:
            problems.fail((), f"the document nests more than {MAX_DEPTH} levels deep")
        if node is None:
            problems.fail(
                (),
                "the document is empty; expected a step: a mapping with a kind key",
                line=1,
            )
        walk = _Walk(loader, problems)
        walk.node(node, (), 0)
        if walk.bad_values:
            problems.check()
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as e:
            _fail(e, text, problems)
        except (ValueError, TypeError, OverflowError) as e:
            problems.fail((), f"invalid YAML: {e}")
    finally:
        loader.dispose()


def _fail(e: yaml.YAMLError, text: str, problems: Problems) -> NoReturn:
    if isinstance(e, yaml.MarkedYAMLError):
        parts = [p for p in (e.context, e.problem) if p]
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problems.fail((), f"invalid YAML: {', '.join(parts)}", line=line)
    if isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, e.position) + 1
        char = e.character
        shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        problems.fail((), f"invalid YAML: {e.reason}: {shown}", line=line)
    problems.fail((), f"invalid YAML: {e}")


class _Walk:
    """One pass over the node tree: lines, duplicate keys, scalar values."""

    def __init__(self, loader: yaml.SafeLoader, problems: Problems) -> None:
        self.loader = loader
        self.problems = problems
        self.lines = problems.lines
        self.bad_values = False
        self.visited = 0
        self.open: set[int] = set()

    def node(self, node: Node, loc: Loc, depth: int) -> None:
        self.visited += 1
        if self.visited > _MAX_NODES:
            self.problems.fail(
                loc,
                f"the document holds more than {_MAX_NODES} values "
                "(aliases repeating aliases?)",
                line=_line(node),
            )
        if depth > MAX_DEPTH:
            self.problems.fail(
                loc,
                f"the document nests more than {MAX_DEPTH} levels deep",
                line=_line(node),
            )
        if id(node) in self.open:
            self.problems.fail(
                loc, "an alias refers to a node that holds it", line=_line(node)
            )
        if isinstance(node, ScalarNode):
            self.scalar(node, loc)
            return
        self.open.add(id(node))
        try:
            if isinstance(node, MappingNode):
                self.mapping(node, loc, depth)
            elif isinstance(node, SequenceNode):
                for i, item in enumerate(node.value):
                    self.lines.setdefault((*loc, i), _line(item))
                    self.node(item, (*loc, i), depth + 1)
        finally:
            self.open.discard(id(node))

    def mapping(self, node: MappingNode, loc: Loc, depth: int) -> None:
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                # `<<: *defaults`: the merged keys keep the lines of the anchor.
                merged = (
                    value_node.value
                    if isinstance(value_node, SequenceNode)
                    else [value_node]
                )
                for item in merged:
                    self.node(item, loc, depth + 1)
                continue
            if not isinstance(key_node, ScalarNode):
                self.node(key_node, loc, depth + 1)
                self.node(value_node, loc, depth + 1)
                continue
            key = self.scalar(key_node, loc)
            line = _line(key_node)
            sub = (*loc, key_part(key))
            try:
                first = seen.get(key)
            except TypeError:  # a tagged scalar such as `!!set` is not hashable
                self.problems.add(
                    loc,
                    f"a mapping key must be a plain value, got {type(key).__name__}",
                    line=line,
                )
                continue
            if first is not None:
                self.problems.duplicate_key(sub, key, first, line)
            else:
                seen[key] = line
            self.lines.setdefault(sub, line)
            self.node(value_node, sub, depth + 1)

    def scalar(self, node: ScalarNode, loc: Loc) -> object:
        try:
            return self.loader.construct_object(node)
        except Exception as e:  # a bad !!int, !!timestamp, unknown tag ...
            self.bad_values = True
            message = e.problem if isinstance(e, yaml.MarkedYAMLError) else str(e)
            self.problems.add(
                loc,
                f"invalid YAML value {node.value!r:.60}: {message}",
                line=_line(node),
            )
            return None


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1
