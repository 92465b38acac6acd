"""The PostgreSQL connection of one worker: a small async pool, the
configured queries, and a circuit breaker.

Every query runs on psycopg 3's async connections, so the event loop never
waits for the database. Parameters are always bound (`sqltemplate.py`).

The pool is fastreg's own (a few lines) rather than psycopg_pool's, for one
reason: recovery. psycopg_pool retries a lost connection with exponential
backoff (1, 2, 4, 8 s ...), so after a ten second outage it can take several
more seconds to notice that the database is back. Here a connection that
fails is closed and forgotten, and the next query opens a new one at once.

The circuit breaker keeps an outage from becoming a pile of waiting
requests: after a failure that says the database is unreachable or too slow
(connection refused, timeout, statement timeout, server shutdown), the
database counts as down; while it is down every query fails at once with
`DatabaseUnavailable`, except one probe every `PROBE_INTERVAL_S` that tries
for real. The first success closes the breaker. An error in the SQL itself
(a bad query, a constraint) also raises `DatabaseUnavailable` for the
request but does not open the breaker: the database answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from fastreg.config import PostgresConfig
from fastreg.sqltemplate import SqlTemplate, compile_queries, compile_sql

log = logging.getLogger("fastreg.postgres")

_timeout = getattr(asyncio, "timeout", None)

PROBE_INTERVAL_S = 0.5
_SLACK_S = 1.0  # client-side timeout beyond the server's statement timeout (a stalled network)


class DatabaseUnavailable(Exception):
    """A query could not run. `transient`: the database is down or too slow
    (trying again later can work); otherwise it refused the query itself (an
    error in the SQL or a constraint: trying again will not help). The text
    names the query and the cause, never a parameter value."""

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class Database:
    """The configured queries of `[postgres.queries]`, run on a pool of
    `pool_size` connections. One instance per worker (connections are not
    shared across processes); `open()` inside the worker's event loop."""

    def __init__(self, config: PostgresConfig, clock=time.monotonic) -> None:
        self.config = config
        self.queries: dict[str, SqlTemplate] = compile_queries(config.queries)
        self.queries["_ping"] = compile_sql("_ping", "SELECT 1", frozenset())  # ping(); not a configurable name
        self.clock = clock
        self._idle: list = []
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future] = deque()
        self._closed = False
        self.down_since: float | None = None
        self._next_probe_at = 0.0
        self._probing = False
        self.failures = 0  # queries that failed, for the stats and the tests
        self.timeout_s = config.statement_timeout_s + _SLACK_S
        self.conninfo = connection_string(config.dsn, config.connect_timeout_s, config.statement_timeout_s)

    def has(self, name: str) -> bool:
        return name in self.queries

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    # -- queries ---------------------------------------------------------

    async def fetch_one(self, name: str, values: dict[str, object]) -> dict | None:
        """The first row of query `name` as a dict (None: no row)."""
        rows = await self._run(name, values, "one")
        return rows

    async def fetch_all(self, name: str, values: dict[str, object]) -> list[dict]:
        return await self._run(name, values, "all")

    async def ping(self) -> bool:
        """Is the database reachable? (`SELECT 1` through the pool and the
        circuit breaker: while down, at most one real try per probe interval.)"""
        try:
            await self._run("_ping", {}, "one")
        except DatabaseUnavailable:
            return False
        return True

    async def execute(self, name: str, values: dict[str, object]) -> None:
        await self._run(name, values, None)

    async def execute_many(self, name: str, values: list[dict[str, object]]) -> None:
        """Query `name` once per entry of `values`, pipelined, in one
        transaction: all of them or none."""
        await self._run(name, values, "many")

    async def _run(self, name: str, values, want: str | None):
        if self._closed:
            raise DatabaseUnavailable(f"{name}: database closed")
        template = self.queries[name]
        probe = False
        if self.down_since is not None:
            now = self.clock()
            if self._probing or now < self._next_probe_at:
                self.failures += 1
                raise DatabaseUnavailable(f"{name}: database unreachable")
            self._probing = probe = True
        try:
            try:
                if _timeout is not None:  # Python 3.11+: no extra task per query
                    async with _timeout(self.timeout_s):
                        result = await self._query(template, values, want)
                else:
                    result = await asyncio.wait_for(self._query(template, values, want), self.timeout_s)
            except asyncio.TimeoutError:
                raise _Unreachable("timed out") from None
        except _Unreachable as error:
            self.failures += 1
            self._mark_down(name, str(error))
            raise DatabaseUnavailable(f"{name}: {error}") from None
        except _QueryFailed as error:
            self.failures += 1
            raise DatabaseUnavailable(f"{name}: {error}", transient=False) from None
        finally:
            if probe:
                self._probing = False
        if self.down_since is not None:
            log.warning("database reachable again after %.1f s", self.clock() - self.down_since)
            self.down_since = None
        return result

    def _mark_down(self, name: str, why: str) -> None:
        now = self.clock()
        self._next_probe_at = now + PROBE_INTERVAL_S
        if self.down_since is None:
            self.down_since = now
            log.error("database unreachable (%s: %s); requests that need it get 503 until it is back", name, why)

    async def _query(self, template: SqlTemplate, values, want: str | None):
        import psycopg

        connection = await self._acquire()
        healthy = False
        try:
            if want == "many":
                async with connection.transaction():
                    async with connection.cursor() as many:
                        await many.executemany(template.sql, [template.bind(v) for v in values])
                healthy = True
                return None
            cursor = await connection.execute(template.sql, template.bind(values))
            if want == "one":
                result = await cursor.fetchone() if cursor.description else None
            elif want == "all":
                result = await cursor.fetchall() if cursor.description else []
            else:
                result = None
            healthy = True
            return result
        except psycopg.OperationalError as error:
            # lost connection, server shutting down, statement timeout, ...
            raise _Unreachable(type(error).__name__ + ": " + _first_line(error)) from None
        except psycopg.Error as error:
            healthy = not connection.closed
            raise _QueryFailed(type(error).__name__ + ": " + _first_line(error)) from None
        finally:
            self._release(connection, healthy)

    # -- the pool --------------------------------------------------------

    async def _acquire(self):
        import psycopg
        from psycopg.rows import dict_row

        while True:
            if self._idle:
                return self._idle.pop()
            if self._open < self.config.pool_size:
                self._open += 1
                try:
                    return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True,
                                                                 row_factory=dict_row)
                except psycopg.Error as error:
                    self._open -= 1
                    self._wake_one()
                    raise _Unreachable("cannot connect: " + _first_line(error)) from None
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                connection = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._release(waiter.result(), True)  # handed over as we were cancelled
                raise
            if connection is not None:
                return connection
            # None: a slot freed up; loop and open a connection

    def _release(self, connection, healthy: bool) -> None:
        if not healthy or connection.closed or self._closed:
            self._open -= 1
            _close_quietly(connection)
            self._wake_one()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._open -= 1
            try:
                await connection.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


def connection_string(dsn: str, connect_timeout_s: float, statement_timeout_s: float) -> str:
    """`dsn` with the connect timeout, the statement timeout (added to any
    `options` it has, such as a search_path) and fastreg's application name."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    options = f"{params.get('options') or ''} -c statement_timeout={int(statement_timeout_s * 1000)}".strip()
    params.setdefault("application_name", "fastreg")
    params["connect_timeout"] = str(max(1, int(connect_timeout_s + 0.999)))
    params["options"] = options
    return make_conninfo(**params)


class _Unreachable(Exception):
    pass


class _QueryFailed(Exception):
    pass


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _close_quietly(connection) -> None:
    try:
        connection.pgconn.finish()  # synchronous and immediate: no round trip on a dead connection
    except Exception:  # noqa: BLE001
        pass


__all__ = ["Database", "DatabaseUnavailable", "PROBE_INTERVAL_S"]
