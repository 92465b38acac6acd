"""A bounded queue of database writes, written in order by one task.

Used where the answer to the phone must not wait for the database and the
write can be late: the registration mirror (user_register/user_unregister,
after the LMDB commit: the location table stays the source of truth), the
best-effort CDRs and the line tracker mirror.

- `put()` never waits: when `limit` writes are already waiting, the new one
  is dropped and counted (`dropped`), so an outage costs bounded memory.
- One writer task takes the writes in arrival order, in batches: up to
  `BATCH` consecutive writes of the same query go to the database pipelined
  in one transaction (one round trip's worth of latency, all or nothing), so
  a registration storm is a few transactions, not one per registration.
  A transient failure
  (database down or slow) keeps the write at the head and tries again after
  `retry_s`, so nothing queued is lost or reordered while the database is
  away; a write the database refuses (an error in the SQL or a constraint)
  would fail again, so it is dropped, counted (`failed`) and logged (the
  batch it was in is written again one write at a time, so only that one is
  dropped).
- `close()` gives the queue up to `drain_s` to empty, then counts what is
  left as dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque

from fastreg.pgdb import Database, DatabaseUnavailable

log = logging.getLogger("fastreg.postgres")

RETRY_S = 0.5
BATCH = 200
COALESCE_S = 0.01  # the most a write waits for others to share its batch


class WriteBehind:
    def __init__(self, database: Database, limit: int, what: str, retry_s: float = RETRY_S) -> None:
        self.database = database
        self.limit = limit
        self.what = what  # for the log: "registration mirror", "CDR", ...
        self.retry_s = retry_s
        self._queue: deque[tuple[str, dict]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.retries = 0
        self._one_at_a_time = 0  # writes left to retry singly after a refused batch

    def __len__(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Start the writer (in the running loop); again: nothing."""
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._write_all())

    def put(self, query: str, values: dict) -> bool:
        """Queue one write of `query`; False (and counted) when the queue is full."""
        if len(self._queue) >= self.limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("%s queue full (%d waiting): %d write(s) dropped so far", self.what, self.limit,
                          self.dropped)
            return False
        self._queue.append((query, values))
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    async def _write_all(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                # Let a few more arrive: one batch of them costs less than each alone.
                await asyncio.sleep(COALESCE_S)
                continue
            query = queue[0][0]
            batch = [queue[0][1]]
            if not self._one_at_a_time:
                for other, values in itertools.islice(queue, 1, BATCH):
                    if other != query:
                        break
                    batch.append(values)
            try:
                if len(batch) == 1:
                    await self.database.execute(query, batch[0])
                else:
                    await self.database.execute_many(query, batch)
            except DatabaseUnavailable as error:
                if error.transient:
                    self.retries += 1
                    await asyncio.sleep(self.retry_s)
                    continue
                if len(batch) > 1:  # find the one the database refuses: write them singly
                    self._one_at_a_time = len(batch)
                    continue
                self.failed += 1
                log.error("%s write refused by the database, dropped: %s", self.what, error)
            except Exception:  # a bug: drop these writes, keep the writer alive
                self.failed += len(batch)
                log.exception("%s write failed, dropped", self.what)
            else:
                self.written += len(batch)
            for _ in batch:
                queue.popleft()
            if self._one_at_a_time:
                self._one_at_a_time -= 1

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (True) or `timeout_s` passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queue and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return not self._queue

    async def close(self, drain_s: float = 2.0) -> None:
        if self._task is not None:
            await self.flush(drain_s)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue:
            lost = len(self._queue)
            self.dropped += lost
            self._queue.clear()
            log.error("%s: %d write(s) not written at stop (database unreachable)", self.what, lost)


__all__ = ["WriteBehind"]
