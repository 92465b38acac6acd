"""Hands the proxy's call events to the CDR sinks and the line-tracker mirror, in order.

The sans-IO core returns call events with what it forwards; the worker puts
them here. One task per worker takes them one at a time and awaits each
sink, so that a sink sees initialize, update and finalize of a call in that
order even when it waits on a database. A sink that raises is logged
(rate-limited) and counted (`calls_cdr-failures`); the other sinks still get
the event.

A sink added with `critical=True` guards new calls: while its last write
failed, `on_health(reason)` tells the worker to refuse new calls (503); its
next success calls `on_health(None)`. Calls already up go on and are
recorded by the other sinks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from fastreg.calls import CdrSink, LineTrackerMirror
from fastreg.proxy import CallEvent
from fastreg.ratelog import RateLimitedLog

log = logging.getLogger("fastreg.cdr")

MAX_PENDING = 100_000  # events waiting for slow sinks; past it they are dropped and counted
_SINK_METHODS = {"start": "initialize", "answer": "update", "end": "finalize"}


class CallEventQueue:
    def __init__(self, sinks: list[tuple[CdrSink, bool]], mirror: LineTrackerMirror | None, counters,
                 on_health: Callable[[str | None], None], log_interval_s: float = 10.0) -> None:
        self.sinks = sinks
        self.mirror = mirror
        self.counters = counters
        self.on_health = on_health
        self._queue: asyncio.Queue[CallEvent] = asyncio.Queue()
        self._failing: set[int] = set()
        self._log = RateLimitedLog(log, log_interval_s)
        self._task: asyncio.Task | None = None

    def put(self, events: list[CallEvent]) -> None:
        for event in events:
            self.counters.calls[{"start": "started", "answer": "answered", "end": "ended"}[event.kind]] += 1
            if self._queue.qsize() >= MAX_PENDING:
                self.counters.calls["events-dropped"] += 1
                continue
            self._queue.put_nowait(event)

    async def initialize(self, ongoing: list | None = None) -> None:
        """The mirror's start-up reset (Yate's linetracker_initialize), by one
        worker only (`ongoing` is not None there): then the users of the calls
        already ongoing in the shared table (`TrackedCall`s) are counted into
        it again, so that a restart of that worker leaves the mirror equal to
        the table (up to the calls that start or end while it does so)."""
        if self.mirror is None or ongoing is None:
            return
        try:
            await self.mirror.initialize()
            for call in ongoing:
                for user in call.users:
                    await self.mirror.increment(user)
        except Exception:  # noqa: BLE001 - a mirror must not stop the worker
            log.exception("line tracker mirror: initialize failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        queue = self._queue
        while True:
            event = await queue.get()
            try:
                await self.apply(event)
            finally:
                queue.task_done()

    async def apply(self, event: CallEvent) -> None:
        record = event.call.record
        method = _SINK_METHODS[event.kind]
        for sink, critical in self.sinks:
            try:
                await getattr(sink, method)(record)
            except Exception as error:  # noqa: BLE001 - one sink's failure must not stop the others
                self.counters.calls["cdr-failures"] += 1
                self._log.warning("cdr-failed", time.time(), "CDR sink %s failed on %s of Call-ID %r: %s",
                                  type(sink).__name__, method, record.call_id, error)
                if critical and id(sink) not in self._failing:
                    self._failing.add(id(sink))
                    self.on_health(f"CDR Sink {type(sink).__name__} Failing")
            else:
                if critical and id(sink) in self._failing:
                    self._failing.discard(id(sink))
                    if not self._failing:
                        self.on_health(None)
        mirror = self.mirror
        if mirror is not None and event.kind in ("start", "end"):
            step = mirror.increment if event.kind == "start" else mirror.decrement
            for user in event.call.users:
                try:
                    await step(user)
                except Exception as error:  # noqa: BLE001
                    self._log.warning("mirror-failed", time.time(), "line tracker mirror failed for %r: %s",
                                      user, error)

    async def recheck(self) -> None:
        """Ask each failing critical sink whether it works again (`check()`,
        when the sink has one). Without this, a sink that failed while no call
        was up would never see another write (new calls are refused) and the
        refusal would last until a restart."""
        for sink, critical in self.sinks:
            if not critical or id(sink) not in self._failing:
                continue
            check = getattr(sink, "check", None)
            if check is None:
                continue
            try:
                healthy = await check()
            except Exception:  # noqa: BLE001 - a failing check is a "no"
                healthy = False
            if healthy:
                self._failing.discard(id(sink))
                if not self._failing:
                    self.on_health(None)

    async def close(self, timeout_s: float = 2.0) -> None:
        """Write what is queued (for at most `timeout_s`), then close the sinks."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except asyncio.TimeoutError:
                log.error("%d call event(s) not written at stop", self._queue.qsize())
            self._task.cancel()
            self._task = None
        for sink, _ in self.sinks:
            try:
                await sink.close()
            except Exception:  # noqa: BLE001
                log.exception("closing CDR sink %s failed", type(sink).__name__)


__all__ = ["CallEventQueue"]
