"""Outputs as JSON text, and the digest of a call's arguments.

attrs classes and dataclasses go through a cattrs converter: unstructured
to plain data when they are encoded, structured back by the tool's return
annotation when they are replayed. Anything JSON cannot hold, and that the
converter leaves as it is, is refused with a ``TypeError``.
"""

from __future__ import annotations

import hashlib
import json
import json.scanner
from collections.abc import Callable, Sequence
from typing import Any

import cattrs

from ._protocol import JournalRecord

__all__ = ["JsonCodec", "args_digest", "rows_json"]


def _hook(converter: cattrs.Converter) -> Callable[[Any], Any]:
    """``json.dumps(default=...)``: plain data for what the converter knows."""
    unstructure = converter.unstructure

    def default(value: Any) -> Any:
        plain = unstructure(value)
        # The converter gives back what it cannot unstructure, or a copy of
        # the same type (a set stays a set): JSON would ask again, forever.
        if plain is value or type(plain) is type(value):
            raise TypeError(f"{type(value).__qualname__} is not JSON serializable")
        return plain

    return default


class JsonCodec:
    """Journal outputs as JSON; attrs classes and dataclasses through cattrs.

    On replay a value comes back as the tool's return annotation says (a
    ``-> Answer`` tool gets an ``Answer`` back); without an annotation it
    comes back as JSON gives it (lists for tuples, str keys for dict keys).

    Args:
        converter: the cattrs converter to use (hooks for your own types);
            a new ``cattrs.Converter()`` by default.
    """

    __slots__ = ("_encode", "_given", "_structure", "converter")

    def __init__(self, converter: cattrs.Converter | None = None) -> None:
        self._given = converter
        self.converter = converter if converter is not None else cattrs.Converter()
        self._encode = json.JSONEncoder(
            default=_hook(self.converter), separators=(",", ":")
        ).encode
        self._structure = self.converter.structure

    def __repr__(self) -> str:
        return "JsonCodec()"

    def __reduce__(self) -> tuple[Any, ...]:
        # A default converter is made again where it is unpickled.
        given = self._given
        return (type(self), () if given is None else (given,))

    def encode(self, value: Any) -> str:
        """``value`` as JSON text; ``TypeError``/``ValueError`` if it cannot be."""
        kind = type(value)
        if kind is int:
            return int.__repr__(value)
        if kind is str:
            return _encode_str(value)
        return self._encode(value)

    def decode(self, text: str, annotation: Any) -> Any:
        """The value of ``text``, structured as ``annotation`` unless None."""
        value = _loads(text)
        if annotation is None or type(value) is annotation:
            return value
        return self._structure(value, annotation)


_scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _loads(text: str) -> Any:
    """``json.loads`` for text this codec wrote: the C scanner, no wrapper."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)  # raises the usual JSONDecodeError
    if end != len(text):
        return json.loads(text)
    return value


_SCALARS = frozenset({int, str, float, bool, type(None)})
_encode_str = json.encoder.encode_basestring_ascii
_DIGEST_CONVERTER = cattrs.Converter()
_digest_default = _hook(_DIGEST_CONVERTER)
_dumps = json.JSONEncoder(
    default=_digest_default, separators=(",", ":"), sort_keys=True
).encode
_blake2b = hashlib.blake2b


def args_digest(tool: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A hash of a tool's name and a call's arguments, the same in every process.

    Keys are sorted, so dicts built in another order hash the same. Plain
    positional scalars (the common map call) skip the JSON encoder: their
    ``repr`` is as stable, and the ``r`` prefix keeps the two forms apart.

    Raises:
        TypeError, ValueError: an argument JSON cannot hold.
    """
    if not kwargs and (
        (len(args) == 1 and type(args[0]) in _SCALARS)
        or all(type(a) in _SCALARS for a in args)
    ):
        text = f"r{tool!r}{args!r}"
    else:
        text = "j" + (_dumps((tool, args, kwargs)) if kwargs else _dumps((tool, args)))
    return _blake2b(text.encode(), digest_size=16).digest()


def rows_json(records: Sequence[JournalRecord]) -> str:
    """A group of records as one JSON array of rows, for a store to unpack.

    Each row is ``[site, element, attempt, ok, tool, digest as hex,
    output]``. The SQL stores take a whole group as this one parameter and
    unpack it on their side (``json_each``, ``json_array_elements``): the
    writer thread then holds the GIL for one C-accelerated encode, not for
    binding seven values per record.
    """
    return json.dumps(
        [
            (r.site, r.element, r.attempt, r.ok, r.tool, r.digest.hex(), r.output)
            for r in records
        ],
        separators=(",", ":"),
    )
