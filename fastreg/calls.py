"""Calls as the proxy sees them, and the sinks that record them.

The proxy (proxy.py) emits call events; sinks turn them into
call detail records (Yate's call.cdr) and mirror the line tracker's counts
(Yate's linetracker). The JSON Lines file sink is the default; a PostgreSQL
sink implements the same protocols. Sinks are called by the worker, never by
the sans-IO core, and may be async because a database sink waits on I/O.

Times are absolute Unix times (`_at`), as the worker's clock gave them to
the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call through the proxy, as far as it has gone.

    `caller` is the user part of From (the calling user), `called` the user
    part of the Request-URI as dialled (an AOR's user or one of its
    alternatives), `callee` the registered user the call was routed to,
    `contact` the contact URI it was sent to, `address` the "host:port" the
    INVITE came from. `status`/`reason` are the final response's (or, for a
    call that ended by BYE or by the maximum duration, the reason it ended).
    """

    call_id: str
    caller: str
    called: str
    callee: str
    contact: str
    address: str
    started_at: float
    answered_at: float | None = None
    ended_at: float | None = None
    status: int | None = None
    reason: str | None = None

    @property
    def duration_s(self) -> float | None:
        """Talk time: from the answer to the end (None until both are known)."""
        if self.answered_at is None or self.ended_at is None:
            return None
        return max(0.0, self.ended_at - self.answered_at)


@runtime_checkable
class CdrSink(Protocol):
    """Where call detail records go: initialize at the INVITE, update at the
    answer, finalize at the end (Yate's cdr_initialize/_update/_finalize)."""

    async def initialize(self, record: CallRecord) -> None: ...

    async def update(self, record: CallRecord) -> None: ...

    async def finalize(self, record: CallRecord) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class LineTrackerMirror(Protocol):
    """A copy of the ongoing-call counts kept elsewhere (a database column).

    The counts themselves live in the shared LMDB environment; a mirror is
    told about each change so operators can see them in their own tables.
    `initialize` runs once at start (Yate's linetracker_initialize resets
    the column)."""

    async def initialize(self) -> None: ...

    async def increment(self, username: str) -> None: ...

    async def decrement(self, username: str) -> None: ...


__all__ = ["CallRecord", "CdrSink", "LineTrackerMirror"]
