"""The call path's database parts: CDRs (Yate's call.cdr), the line tracker
mirror (linetracker_*), and call.route (extra targets for a called number),
from PostgreSQL queries and from the hook module.

They implement the protocols of `fastreg/calls.py` and are called by the
worker's proxy path, never by the sans-IO core.

CDR parameters (cdr_initialize / cdr_update / cdr_finalize): `${callid}`,
`${caller}`, `${called}`, `${callee}`, `${contact}`, `${address}`,
`${started_at}`, `${answered_at}`, `${ended_at}` (Unix times, NULL until
known), `${duration}` (talk time in seconds, NULL until the end),
`${status}`, `${reason}`.
"""

from __future__ import annotations

import logging

from fastreg.calls import CallRecord
from fastreg.errors import ParseError, RoutingUnavailable, ServiceUnavailable, SipError
from fastreg.hooks import Hooks, Refuse, RouteRequest, refusal_error
from fastreg.pgdb import Database, DatabaseUnavailable
from fastreg.uri import parse_uri
from fastreg.writebehind import WriteBehind

log = logging.getLogger("fastreg.postgres")


def cdr_values(record: CallRecord) -> dict[str, object]:
    return {
        "callid": record.call_id,
        "caller": record.caller,
        "called": record.called,
        "callee": record.callee,
        "contact": record.contact,
        "address": record.address,
        "started_at": record.started_at,
        "answered_at": record.answered_at,
        "ended_at": record.ended_at,
        "duration": record.duration_s,
        "status": record.status,
        "reason": record.reason,
    }


class CdrUnavailable(ServiceUnavailable):
    """Critical CDRs cannot be written: the new call is refused (503)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("CDR Database Unavailable", retry_after_s)


class PostgresCdrSink:
    """A `calls.CdrSink` writing cdr_initialize / cdr_update / cdr_finalize.

    Best effort (`critical = False`): every write goes through a bounded
    write-behind queue, in order, retried while the database is away; a full
    queue drops and counts. Critical (Yate's critical CDRs): `initialize` is
    written before the call goes on, and raises `CdrUnavailable` (503, the
    call is refused) when it cannot be; `accepting_calls` is False while the
    database is down, so the proxy can refuse a call before routing it. The
    update and the finalize of a call already accepted still go through the
    queue: a call that started is never cut because of its CDR.
    A missing query is a write that is not made.
    """

    def __init__(self, database: Database, critical: bool, limit: int, retry_after_s: int = 5) -> None:
        self.database = database
        self.critical = critical
        self.retry_after_s = retry_after_s
        self.queue = WriteBehind(database, limit, "CDR")

    @property
    def accepting_calls(self) -> bool:
        return not (self.critical and self.database.is_down)

    async def initialize(self, record: CallRecord) -> None:
        if not self.database.has("cdr_initialize"):
            return
        if self.critical:
            try:
                await self.database.execute("cdr_initialize", cdr_values(record))
            except DatabaseUnavailable as error:
                log.error("critical CDR not written, call %r refused: %s", record.call_id, error)
                raise CdrUnavailable(self.retry_after_s) from None
            return
        self._put("cdr_initialize", record)

    async def check(self) -> bool:
        """For the call-event queue while this critical sink is failing: does
        the database answer again?"""
        return await self.database.ping()

    async def update(self, record: CallRecord) -> None:
        self._put("cdr_update", record)

    async def finalize(self, record: CallRecord) -> None:
        self._put("cdr_finalize", record)

    def _put(self, query: str, record: CallRecord) -> None:
        if self.database.has(query):
            self.queue.start()
            self.queue.put(query, cdr_values(record))

    async def close(self) -> None:
        await self.queue.close()


class PostgresLineTracker:
    """A `calls.LineTrackerMirror` over linetracker_initialize (awaited once,
    at start: Yate resets the column there) and linetracker_increment /
    _decrement (`${username}`), written behind in order."""

    def __init__(self, database: Database, limit: int) -> None:
        self.database = database
        self.queue = WriteBehind(database, limit, "line tracker")

    async def initialize(self) -> None:
        if self.database.has("linetracker_initialize"):
            try:
                await self.database.execute("linetracker_initialize", {})
            except DatabaseUnavailable as error:
                # not fatal: the counts live in LMDB; the column is reset next start
                log.error("linetracker_initialize failed: %s", error)

    async def increment(self, username: str) -> None:
        self._put("linetracker_increment", username)

    async def decrement(self, username: str) -> None:
        self._put("linetracker_decrement", username)

    def _put(self, query: str, username: str) -> None:
        if self.database.has(query):
            self.queue.start()
            self.queue.put(query, {"username": username})

    async def close(self) -> None:
        await self.queue.close()


class CallRouter:
    """call.route: extra targets for a called number, from the hook's
    `call_route` (asked first) and the `call_route` query.

    `await call_route(called, caller, call_id, ...)` returns a list of target
    URIs (possibly empty: nothing extra) or raises a `SipError` (a `Refuse`
    from the hook; `hooks.failure_status` when the hook fails;
    `RoutingUnavailable`, a 503, when the database is unreachable). The hook's None means "no opinion": the query
    decides. The query's rows give one target each: the column `location`
    (Yate's name) or `target`, else the first column; NULL and empty values
    are skipped.
    """

    def __init__(self, database: Database | None = None, hooks: Hooks | None = None, retry_after_s: int = 5) -> None:
        self.database = database if database is not None and database.has("call_route") else None
        self.hooks = hooks if hooks is not None and hooks.has("call_route") else None
        self.retry_after_s = retry_after_s

    @property
    def active(self) -> bool:
        return self.database is not None or self.hooks is not None

    async def call_route(self, called: str, caller: str, call_id: str = "", method: str = "INVITE",
                         domain: str = "", source_host: str = "", source_port: int = 0,
                         transport: str = "UDP") -> list[str]:
        if self.hooks is not None:
            request = RouteRequest(called, caller, call_id, method, domain, source_host, source_port)
            answer = await self.hooks.call("call_route", request, call_id)
            if isinstance(answer, Refuse):
                raise refusal_error(answer)
            if isinstance(answer, (list, tuple)) and all(isinstance(t, str) for t in answer):
                return checked_targets(answer, called, call_id)
            if answer is not None:
                raise self.hooks.refused("call_route", call_id, answer)
        if self.database is None:
            return []
        address = f"[{source_host}]:{source_port}" if ":" in source_host else f"{source_host}:{source_port}"
        values = {"called": called, "caller": caller, "callid": call_id, "address": address,
                  "ip_host": source_host, "ip_port": source_port, "transport": transport, "domain": domain,
                  "method": method}
        try:
            rows = await self.database.fetch_all("call_route", values)
        except DatabaseUnavailable as error:
            log.warning("call_route for %r failed (Call-ID %r): %s", called, call_id, error)
            raise RoutingUnavailable(self.retry_after_s) from None
        targets = []
        for row in rows:
            value = row.get("location", row.get("target", next(iter(row.values()), None)))
            if value:
                targets.append(str(value))
        return checked_targets(targets, called, call_id)


def checked_targets(targets, called: str, call_id: str) -> list[str]:
    """The targets that are SIP or SIPS URIs (they become a Request-URI or a
    Contact, so nothing else may pass: no header injection from a row or a
    hook); the others are skipped and logged."""
    kept = []
    for target in targets:
        target = target.strip()
        try:
            if parse_uri(target).scheme not in ("sip", "sips") or "<" in target or ">" in target:
                raise ParseError("not a SIP URI")
        except ParseError:
            log.warning("call_route for %r gave %r, which is not a SIP URI: skipped (Call-ID %r)",
                        called, target[:200], call_id)
            continue
        kept.append(target)
    return kept


__all__ = ["PostgresCdrSink", "PostgresLineTracker", "CallRouter", "CdrUnavailable", "cdr_values", "checked_targets",
           "SipError"]
