"""RESP2, the Redis wire protocol: commands out, replies in.

Just what plait's admission road needs: :func:`command` encodes a command
as an array of bulk strings, and a :class:`Reader` turns the bytes a socket
gives, in pieces of any size, back into replies: integers, bulk and simple
strings, nil, arrays (nested) and errors. An error reply is returned as a
:class:`ReplyError` value, not raised, so that one inside an array does
not stop the parse; the caller decides what it means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["NOT_YET", "ProtocolError", "Reader", "ReplyError", "command"]


class ReplyError(Exception):
    """An error reply (``-ERR ...``); ``code`` is its first word (``NOSCRIPT``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = message.split(" ", 1)[0]


class ProtocolError(ConnectionError):
    """The bytes received are not RESP2: the connection can't be trusted any more."""


_BINARY = (bytes, bytearray, memoryview)


def command(args: Sequence[Any]) -> bytes:
    """``args`` (str, bytes, int or float) as one RESP2 command.

    Built as one str and encoded once, the quickest way in CPython when
    every argument is ASCII text, as admission arguments are; bytes or
    other text go the long way.
    """
    out = [f"*{len(args)}\r\n"]
    for arg in args:
        if type(arg) is not str:
            if isinstance(arg, _BINARY):
                return _command_bytes(args)
            arg = str(arg)
        out.append(f"${len(arg)}\r\n{arg}\r\n")
    text = "".join(out)
    return text.encode() if text.isascii() else _command_bytes(args)


def _command_bytes(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = bytes(arg) if isinstance(arg, _BINARY) else None
        if data is None:
            data = str(arg).encode()
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


class _Incomplete(Exception):
    """The buffer ends inside the reply being read."""


NOT_YET: Any = object()
"""What :meth:`Reader.reply` gives while no whole reply has arrived."""


class Reader:
    """Replies out of a byte stream fed in pieces of any size.

    A reply that has only partly arrived is parsed again from its start
    when more bytes come: replies to admission scripts are a few dozen
    bytes, so keeping a parse state across pieces would cost more than it
    saves.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        else:
            self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received past the last reply returned."""
        return len(self._buf) - self._pos

    def reply(self) -> Any:
        """The next whole reply, or :data:`NOT_YET`.

        Raises:
            ProtocolError: the bytes are not RESP2.
        """
        try:
            value, self._pos = _parse(self._buf, self._pos)
        except _Incomplete:
            return NOT_YET
        return value


def _parse(buf: bytes, start: int) -> tuple[Any, int]:
    end = buf.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete
    kind = buf[start : start + 1]
    line = buf[start + 1 : end]
    pos = end + 2
    if kind == b"$":
        n = _int(line)
        if n < 0:
            return None, pos
        stop = pos + n
        if len(buf) < stop + 2:
            raise _Incomplete
        if buf[stop : stop + 2] != b"\r\n":
            raise ProtocolError("a bulk string does not end where its length says")
        return buf[pos:stop], stop + 2
    if kind == b":":
        return _int(line), pos
    if kind == b"*":
        n = _int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b"+":
        return line.decode(errors="replace"), pos
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), pos
    raise ProtocolError(f"not a RESP2 reply: {buf[start : start + 40]!r}")


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError(f"not a RESP2 length or integer: {line[:40]!r}") from None
