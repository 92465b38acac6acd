"""Call detail records as JSON Lines: one line per call, appended when it ends.

`JsonLinesCdrSink` implements `calls.CdrSink`. A file is append-only, so only
`finalize` writes (the whole record: Call-ID, caller, called, callee, contact,
address, start/answer/end times, duration, final status and reason);
`initialize` and `update` are there for sinks that keep a row per call (the
PostgreSQL one).

Every worker process appends to the same file. Each record is one write(2)
on a file opened with O_APPEND, so lines from different workers never
interleave, and it is flushed to the kernel at once (a crash of fastreg
loses no finished record; `fsync=True` also survives a power cut, at the
price of a disk flush per call).

Rotation by size: past `max_bytes`, the file is renamed to `.1` (`.1` to
`.2`, ..., the oldest beyond `keep` deleted) under an exclusive flock on
`<file>.lock`, so that two workers never rotate at once; a worker whose open
file was rotated away by another notices (the path names another inode) and
reopens (it looks at most once a second, so a few lines of that second may
still go to the file just rotated to `.1`: nothing is lost).
"""

from __future__ import annotations

import fcntl
import json
import os
import time

from fastreg.calls import CallRecord

REOPEN_CHECK_S = 1.0  # how often a worker looks whether another one rotated the file


def cdr_line(record: CallRecord) -> bytes:
    """The JSON line of one finished call (keys in a fixed order)."""
    duration = record.duration_s
    row = {
        "call_id": record.call_id,
        "caller": record.caller,
        "called": record.called,
        "callee": record.callee,
        "contact": record.contact,
        "address": record.address,
        "started_at": record.started_at,
        "answered_at": record.answered_at,
        "ended_at": record.ended_at,
        "duration_s": None if duration is None else round(duration, 3),
        "status": record.status,
        "reason": record.reason,
    }
    return (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8", "surrogateescape")


class JsonLinesCdrSink:
    """A `CdrSink` appending one JSON object per finished call to `path`."""

    def __init__(self, path: str, max_bytes: int = 100 * 1024 * 1024, keep: int = 5, fsync: bool = False) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.fsync = fsync
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._open()  # fails at start (OSError) rather than at the first call

    # -- CdrSink ---------------------------------------------------------------

    async def initialize(self, record: CallRecord) -> None:
        pass  # append-only: the record is written once, complete, at the end

    async def update(self, record: CallRecord) -> None:
        pass

    async def finalize(self, record: CallRecord) -> None:
        self.write(record)

    async def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the file ----------------------------------------------------------------

    async def check(self) -> bool:
        """For the call-event queue while this sink is critical and failing:
        can the file take lines again (it opens, and its file system has at
        least 1 MiB free)?"""
        try:
            fd = self._current_fd()
            st = os.fstatvfs(fd)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize >= 1 << 20

    def write(self, record: CallRecord) -> None:
        """Append the record's line (synchronous; OSError when it cannot)."""
        line = cdr_line(record)
        fd = self._current_fd()
        os.write(fd, line)
        if self.fsync:
            os.fsync(fd)
        if os.fstat(fd).st_size >= self.max_bytes:
            self._rotate()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)

    def _current_fd(self) -> int:
        """Our descriptor, reopened when the path was rotated away (by another worker)."""
        now = time.monotonic()
        if self._fd is not None and now - self._checked_at < REOPEN_CHECK_S:
            return self._fd
        self._checked_at = now
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._ino
        except FileNotFoundError:
            same = False
        if self._fd is None or not same:
            self._open()
        assert self._fd is not None
        return self._fd

    def _rotate(self) -> None:
        lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_size < self.max_bytes:
                    return  # another worker rotated it while we waited
            except FileNotFoundError:
                return
            oldest = f"{self.path}.{self.keep}"
            if os.path.exists(oldest):
                os.unlink(oldest)
            for n in range(self.keep - 1, 0, -1):
                if os.path.exists(f"{self.path}.{n}"):
                    os.rename(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            os.rename(self.path, f"{self.path}.1")
            self._open()
        finally:
            os.close(lock)  # releases the flock


__all__ = ["JsonLinesCdrSink", "cdr_line"]
