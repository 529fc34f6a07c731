"""A run's claim in an embedded journal: an OS file lock that a crash lets go."""

from __future__ import annotations

import hashlib
import os

__all__ = ["RunLock"]


class RunLock:
    """An exclusive ``flock`` on one file per run id, beside the database.

    The kernel drops the lock when its process dies, however it dies, so a
    crashed run can be resumed at once. ``flock`` locks belong to an open
    file, not to a process: two runs of one id in one process exclude each
    other too.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def try_take(cls, database: str, run_id: str) -> RunLock | None:
        """The lock of ``run_id`` for ``database``, or None if someone holds it."""
        import fcntl

        folder = database + ".locks"
        os.makedirs(folder, exist_ok=True)
        name = hashlib.blake2b(run_id.encode(), digest_size=16).hexdigest()
        fd = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        """Let the lock go (closing the file does it); safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
