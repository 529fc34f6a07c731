"""Outputs as JSON text, and the digest of a call's arguments.

attrs classes and dataclasses go through a cattrs converter: unstructured
to plain data when they are encoded, structured back by the tool's return
annotation when they are replayed. Anything JSON cannot hold, and that the
converter leaves as it is, is refused with a ``TypeError``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import cattrs

__all__ = ["JsonCodec", "args_digest"]


def _hook(converter: cattrs.Converter) -> Callable[[Any], Any]:
    """``json.dumps(default=...)``: plain data for what the converter knows."""
    unstructure = converter.unstructure

    def default(value: Any) -> Any:
        plain = unstructure(value)
        if plain is value:
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

    __slots__ = ("_default", "_given", "converter")

    def __init__(self, converter: cattrs.Converter | None = None) -> None:
        self._given = converter
        self.converter = converter if converter is not None else cattrs.Converter()
        self._default = _hook(self.converter)

    def __repr__(self) -> str:
        return "JsonCodec()"

    def __reduce__(self) -> tuple[Any, ...]:
        # A default converter is made again where it is unpickled.
        given = self._given
        return (type(self), () if given is None else (given,))

    def encode(self, value: Any) -> str:
        """``value`` as JSON text; ``TypeError``/``ValueError`` if it cannot be."""
        return json.dumps(value, default=self._default, separators=(",", ":"))

    def decode(self, text: str, annotation: Any) -> Any:
        """The value of ``text``, structured as ``annotation`` unless None."""
        value = json.loads(text)
        if annotation is None:
            return value
        return self.converter.structure(value, annotation)


_DIGEST_CONVERTER = cattrs.Converter()
_digest_default = _hook(_DIGEST_CONVERTER)
_dumps = json.JSONEncoder(
    default=_digest_default, separators=(",", ":"), sort_keys=True
).encode
_blake2b = hashlib.blake2b


def args_digest(tool: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """A hash of a tool's name and a call's arguments, the same in every process.

    Keys are sorted, so dicts built in another order hash the same.

    Raises:
        TypeError, ValueError: an argument JSON cannot hold.
    """
    text = _dumps((tool, args, kwargs)) if kwargs else _dumps((tool, args))
    return _blake2b(text.encode(), digest_size=16).digest()
