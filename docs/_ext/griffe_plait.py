"""A Griffe extension that lets mkdocstrings render plait's docstrings well.

plait's docstrings are Google style with a few reStructuredText habits, and
its specs are attrs classes, which static analysis cannot see an
``__init__`` in. When the package is loaded for the API reference, this
extension:

- gives every attrs class without a hand-written ``__init__`` the one attrs
  generates, read from the imported class, so that the reference shows the
  real signature and can check the ``Args:`` section against it;
- turns roles such as ``:class:`plait.Retry``` and ``:meth:`execute``` into
  links to the reference when they name a public object, and into inline
  code otherwise;
- turns a paragraph ending in ``::`` (a reStructuredText literal block) into
  one ending in ``:``, since the indented block after it is already a code
  block in Markdown;
- splits an ``a, b: description`` entry of an ``Args:`` or ``Attributes:``
  section into one entry per name, as Google style expects.

It changes what the docs show, never the source.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):`(~?)([\w.]+)(\(\))?`")
LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)
SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Attributes|Keyword Args):\s*$")
SHARED_ENTRY = re.compile(r"^(\s+)([\w*]+(?:,\s*[\w*]+)+):\s(.*)$")
PACKAGE = "plait"


def _runtime(path: str) -> Any:
    """The live object at a Griffe ``path`` such as ``plait._model._retry.Retry``."""
    module_path, _, name = path.rpartition(".")
    try:
        module = importlib.import_module(module_path)
    except ImportError:  # a nested class: its parent is not a module
        return None
    return getattr(module, name, None)


def _show(value: Any) -> str:
    """A default value as code: classes and functions by name."""
    if isinstance(value, tuple):
        inner = ", ".join(_show(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, type) or callable(value):
        module = getattr(value, "__module__", "builtins")
        name = getattr(value, "__qualname__", repr(value))
        return name if module == "builtins" else f"{module}.{name}"
    return repr(value)


def _default(value: Any, field: Any) -> str | None:
    """How a default shows in a signature; None for a required parameter."""
    import attrs

    if field is not None and isinstance(field.default, attrs.Factory):
        factory = field.default.factory
        if factory in (dict, list, tuple, set, frozenset):
            return repr(factory())
        return f"{_show(factory)}()"
    if value is inspect.Parameter.empty:
        return None
    return _show(value)


def _attrs_init(cls: griffe.Class) -> None:
    """Add the ``__init__`` that attrs generates for ``cls``, if it has one."""
    live = _runtime(cls.path)
    if live is None or not hasattr(live, "__attrs_attrs__"):
        return
    import attrs

    fields = {f.name: f for f in attrs.fields(live)}
    parameters = [
        griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
    ]
    for p in inspect.signature(live.__init__).parameters.values():
        if p.name == "self":
            continue
        default = _default(p.default, fields.get(p.name))
        annotation = p.annotation
        if annotation is inspect.Parameter.empty:
            annotation = None
        elif not isinstance(annotation, str):
            annotation = inspect.formatannotation(annotation)
        parameters.append(
            griffe.Parameter(
                p.name,
                annotation=annotation,
                kind=griffe.ParameterKind(p.kind.description),
                default=default,
            )
        )
    init = griffe.Function(
        "__init__",
        lineno=cls.lineno,
        endlineno=cls.lineno,
        parent=cls,
        parameters=griffe.Parameters(*parameters),
        returns="None",
    )
    cls.set_member("__init__", init)


class _Resolver:
    """Decides where a role's target points: a public object, or nowhere."""

    def __init__(self, pkg: griffe.Module) -> None:
        self.pkg = pkg
        self.public = set(_runtime(f"{PACKAGE}.__all__") or ())

    def _member_exists(self, parts: list[str]) -> bool:
        obj: Any = self.pkg
        try:
            for part in parts:
                if part.startswith("_"):
                    return False
                obj = obj.members[part]
        except KeyError:
            return False
        return True

    def resolve(self, target: str, context: griffe.Object) -> str | None:
        parts = target.split(".")
        if parts[0] == PACKAGE:
            parts = parts[1:]
        if parts and parts[0] in self.public and self._member_exists(parts):
            return ".".join([PACKAGE, *parts])
        # A bare method or attribute name: look in the enclosing class.
        owner = context if context.is_class else context.parent
        if owner is not None and owner.is_class and len(parts) == 1:
            for name in self.public:
                if self._class_is(name, owner) and self._member_exists(
                    [name, parts[0]]
                ):
                    return f"{PACKAGE}.{name}.{parts[0]}"
        return None

    def _class_is(self, name: str, owner: Any) -> bool:
        member = self.pkg.members.get(name)
        if member is None:
            return False
        try:
            return bool(member.final_target.path == owner.path)
        except Exception:
            return False


def _rewrite(text: str, context: griffe.Object, resolver: _Resolver) -> str:
    def replace(match: re.Match[str]) -> str:
        short, target, parens = match.group(1), match.group(2), match.group(3) or ""
        shown = (target.rsplit(".", 1)[-1] if short else target) + parens
        where = resolver.resolve(target, context)
        return f"[`{shown}`][{where}]" if where else f"`{shown}`"

    text = _split_shared_entries(text)
    return LITERAL_BLOCK.sub(":", ROLE.sub(replace, text))


def _split_shared_entries(text: str) -> str:
    """Give each name of an ``a, b: description`` entry its own entry.

    Google style has one name per entry; a few docstrings share one
    description between several names, which the parser would read as one
    parameter called ``a, b``.
    """
    lines = text.split("\n")
    out: list[str] = []
    section_indent: int | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if SECTION.match(line):
            section_indent = indent
        elif line.strip() and section_indent is not None and indent <= section_indent:
            section_indent = None
        shared = SHARED_ENTRY.match(line) if section_indent is not None else None
        if shared is None:
            out.append(line)
            i += 1
            continue
        body = [shared.group(3)]
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        for name in shared.group(2).split(","):
            out.append(f"{shared.group(1)}{name.strip()}: {body[0]}")
            out.extend(body[1:])
    return "\n".join(out)


def _objects(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class PlaitDocs(griffe.Extension):
    """Attrs signatures and role links for plait's API reference."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != PACKAGE:
            return
        resolver = _Resolver(pkg)
        for obj in list(_objects(pkg)):
            if obj.is_class and "__init__" not in obj.members:
                _attrs_init(obj)
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, obj, resolver)
