"""A user directory whose answers come from somewhere slow (a database, a
hook) and are kept for a short time in each worker.

The sans-IO core asks `lookup(username)` synchronously. A slow source cannot
answer that without blocking the event loop, so the worker asks first:
when `needs_prefetch(username)` is true it awaits `prefetch(username)`,
which fetches the user and keeps the answer; then it runs the core, whose
`lookup` reads what was kept. See `fastreg/prefetch.py` for the worker side.

What `lookup` returns or raises:

- a fetched user: its `UserRecord`; a user the source does not know: None
  (kept too, so a storm of REGISTERs for an unknown name is one query per
  TTL);
- the fetch failed (database down or slow, hook failed): the `SipError` the
  failure maps to (503 with Retry-After for the database), raised. Such an
  entry is kept only until the requests that waited for it are answered:
  the next request fetches again;
- nothing was fetched for this name: 503 too (it means a path asked the
  directory without prefetching: answered, never a crash).

Entries live `ttl_s` seconds (0: fetched for every request), at most
`max_entries` of them (the oldest fetched goes first). `forget(username)`
drops one at once (LISTEN/NOTIFY), `forget_all()` every one.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from fastreg.errors import ServiceUnavailable, SipError
from fastreg.users import UserRecord

Fetch = Callable[[str, "str | None"], Awaitable["UserRecord | None"]]


class CachedUsers:
    """A `UserDirectory` with `needs_prefetch`/`prefetch` (see the module docstring).

    `fetch(username, call_id)` returns the record or None, or raises
    `SipError` for a failure that must be answered (each source maps its own
    failures). `call_id` is that of the request that asked first, for the log.
    """

    def __init__(self, fetch: Fetch, ttl_s: float, max_entries: int, retry_after_s: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.retry_after_s = retry_after_s
        self.clock = clock
        # username -> (valid until, UserRecord | None | SipError)
        self._entries: dict[str, tuple[float, object]] = {}
        self.fetches = 0
        self.fetch_failures = 0

    def lookup(self, username: str) -> UserRecord | None:
        entry = self._entries.get(username)
        if entry is None:
            raise ServiceUnavailable("User Directory Not Ready", self.retry_after_s)
        value = entry[1]
        if isinstance(value, SipError):
            raise value
        return value  # type: ignore[return-value]

    def needs_prefetch(self, username: str) -> bool:
        entry = self._entries.get(username)
        return entry is None or entry[0] <= self.clock()

    async def prefetch(self, username: str, call_id: str | None = None) -> None:
        """Fetch `username` and keep the answer (never raises for a failure of
        the source: the failure is kept for the waiting requests)."""
        self.fetches += 1
        try:
            value: object = await self.fetch(username, call_id)
            valid_until = self.clock() + self.ttl_s
        except SipError as error:
            self.fetch_failures += 1
            value, valid_until = error, 0.0  # stale at once: the next request fetches again
        entries = self._entries
        entries.pop(username, None)  # re-inserted last: the dict's order is the eviction order
        entries[username] = (valid_until, value)
        while len(entries) > self.max_entries:
            del entries[next(iter(entries))]

    def forget(self, username: str) -> None:
        self._entries.pop(username, None)

    def forget_all(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["CachedUsers"]
