"""Users, the registration mirror, CDRs, the line tracker and call routing in
a real PostgreSQL (127.0.0.1:5432, database test; each test in a schema of
its own). Outages are played with a TcpProxy between fastreg and PostgreSQL:
stopping it cuts every connection and refuses new ones, as a database that
goes away does, without stopping the server other tests share.

Under FASTREG_REQUIRE_POSTGRES=1 (CI) an unreachable database fails these
tests instead of skipping them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, start_server
from sipua import Transport, UserAgent
from tcpproxy import TcpProxy

from fastreg.calls import CallRecord
from fastreg.config import PostgresConfig
from fastreg.errors import ServiceUnavailable
from fastreg.pgcalls import CallRouter, CdrUnavailable, PostgresCdrSink, PostgresLineTracker
from fastreg.pgdb import Database, DatabaseUnavailable
from fastreg.users.pg import PostgresUsers

REALM = "fastreg.local"
DEFAULT_QUERIES = None  # filled from conf/fastreg-postgres.toml


def default_queries() -> dict[str, str]:
    import tomllib

    global DEFAULT_QUERIES
    if DEFAULT_QUERIES is None:
        with open(ROOT / "conf" / "fastreg-postgres.toml", "rb") as handle:
            DEFAULT_QUERIES = tomllib.load(handle)["postgres"]["queries"]
    return DEFAULT_QUERIES


def database(dsn: str, clock=time.monotonic, **settings) -> Database:
    config = PostgresConfig(dsn=dsn, queries=tuple(sorted(default_queries().items())),
                            **{"connect_timeout_s": 1.0, "statement_timeout_s": 1.0, **settings})
    return Database(config, clock)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def proxy(pg_test):
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    yield proxy
    proxy.stop()


def wait_until(predicate, timeout: float = 30.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached")


# -- fastreg db init ---------------------------------------------------------------------------

def test_db_init_creates_the_schema(pg_test, tmp_path):
    schema = pg_test.new_schema(apply_schema=False)
    config = tmp_path / "pg.toml"
    config.write_text("[users]\n" + schema.toml())
    run = lambda: subprocess.run([sys.executable, "-m", "fastreg", "db", "init", "-c", str(config)],  # noqa: E731
                                 capture_output=True, text=True, timeout=30, cwd=ROOT)
    result = run()
    assert result.returncode == 0, result.stderr
    assert schema.name in result.stdout
    tables = {row[0] for row in schema.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema.name,))}
    assert {"users", "registrations", "routes", "cdr"} <= tables
    assert run().returncode == 0  # again: nothing to do, no error


def test_db_init_without_a_database_is_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fastreg", "db", "init", "-c", str(ROOT / "conf" / "fastreg.toml")],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2 and "postgres.dsn" in result.stderr


# -- users: lookups, the cache, injection -----------------------------------------------------

def test_user_auth_row_becomes_a_record_with_settings(pg_schema):
    ha1 = "0123456789abcdef0123456789abcdef"
    pg_schema.execute("INSERT INTO users (username, password, maxcalls) VALUES ('alice', 'pw', 3)")
    pg_schema.execute("INSERT INTO users (username, ha1) VALUES ('bob', %s)", (ha1,))
    pg_schema.execute("INSERT INTO users (username) VALUES ('carol')")

    async def main():
        db = database(pg_schema.dsn())
        users = PostgresUsers(db, REALM, 10.0, 100, 5)
        try:
            for name in ("alice", "bob", "carol", "dave"):
                assert users.needs_prefetch(name)
                await users.prefetch(name)
                assert not users.needs_prefetch(name)
            return [users.lookup(n) for n in ("alice", "bob", "carol", "dave")]
        finally:
            await db.close()

    alice, bob, carol, dave = asyncio.run(main())
    assert alice.password == "pw" and alice.ha1 is None and alice.settings["maxcalls"] == "3"
    assert bob.password is None and bob.ha1 == ha1
    assert carol is not None and not carol.can_authenticate  # exists (480 rather than 404), cannot register
    assert dave is None


@pytest.mark.parametrize("username", [
    "x' OR '1'='1",
    "alice'; DROP TABLE users; --",
    "' UNION SELECT 'pw' AS password --",
    "alice\\",
    "%(username)s",
    "${username}",
])
def test_sql_injection_through_the_username_finds_nobody_and_changes_nothing(pg_schema, username):
    pg_schema.execute("INSERT INTO users (username, password) VALUES ('alice', 'pw')")

    async def main():
        db = database(pg_schema.dsn())
        users = PostgresUsers(db, REALM, 10.0, 100, 5)
        try:
            await users.prefetch(username)
            return users.lookup(username)
        finally:
            await db.close()

    assert asyncio.run(main()) is None
    assert pg_schema.execute("SELECT username, password FROM users") == [("alice", "pw")]


def test_cache_keeps_an_answer_for_its_ttl_then_asks_again(pg_schema):
    pg_schema.execute("INSERT INTO users (username, password) VALUES ('alice', 'old')")
    clock = Clock()

    async def main():
        db = database(pg_schema.dsn())
        users = PostgresUsers(db, REALM, 10.0, 100, 5)
        users.clock = clock
        try:
            await users.prefetch("alice")
            pg_schema.execute("UPDATE users SET password = 'new' WHERE username = 'alice'")
            clock.now += 9.9
            kept = (users.needs_prefetch("alice"), users.lookup("alice").password)
            clock.now += 0.2
            assert users.needs_prefetch("alice")
            await users.prefetch("alice")
            return kept, users.lookup("alice").password, users.fetches
        finally:
            await db.close()

    assert asyncio.run(main()) == ((False, "old"), "new", 2)


def test_cache_is_bounded_oldest_first(pg_schema):
    async def main():
        db = database(pg_schema.dsn())
        users = PostgresUsers(db, REALM, 10.0, 3, 5)
        try:
            for name in "abcd":
                await users.prefetch(name)
            return [users.needs_prefetch(name) for name in "abcd"]
        finally:
            await db.close()

    assert asyncio.run(main()) == [True, False, False, False]


def test_lookup_without_a_prefetch_is_503_not_a_crash(pg_schema):
    users = PostgresUsers(database(pg_schema.dsn()), REALM, 10.0, 100, 7)
    with pytest.raises(ServiceUnavailable) as raised:
        users.lookup("alice")
    assert raised.value.status == 503 and ("Retry-After", "7") in raised.value.headers


# -- the database going away ------------------------------------------------------------------

def test_database_down_fails_fast_then_recovers_by_itself(pg_schema, proxy):
    pg_schema.execute("INSERT INTO users (username, password) VALUES ('alice', 'pw')")
    clock = Clock()

    async def main():
        db = database(pg_schema.dsn(proxy.port), clock)
        users = PostgresUsers(db, REALM, 0.0, 100, 5)
        try:
            await users.prefetch("alice")
            assert users.lookup("alice").password == "pw"
            proxy.stop()
            await users.prefetch("alice")  # the pooled connection is cut: a failure, the breaker opens
            with pytest.raises(ServiceUnavailable):
                users.lookup("alice")
            assert db.is_down
            connections = proxy.connections
            for _ in range(20):  # while down: no attempt at all until the probe is due
                with pytest.raises(DatabaseUnavailable):
                    await db.fetch_one("user_auth", {"username": "alice"})
            assert proxy.connections == connections
            proxy.start()
            clock.now += 1.0  # the next probe is due
            await users.prefetch("alice")
            assert not db.is_down
            return users.lookup("alice").password
        finally:
            await db.close()

    assert asyncio.run(main()) == "pw"


def test_slow_query_is_cut_by_the_statement_timeout(pg_schema):
    async def main():
        config = PostgresConfig(dsn=pg_schema.dsn(), statement_timeout_s=0.2,
                                queries=(("cdr_initialize", "SELECT pg_sleep(5), ${callid}"),))
        db = Database(config)
        try:
            with pytest.raises(DatabaseUnavailable) as raised:
                await db.execute("cdr_initialize", {"callid": "x"})
            return raised.value.transient, str(raised.value)
        finally:
            await db.close()

    transient, text = asyncio.run(main())
    assert transient and "QueryCanceled" in text and "statement timeout" in text  # the server cut it


def test_a_query_the_database_refuses_is_not_an_outage(pg_schema):
    async def main():
        config = PostgresConfig(dsn=pg_schema.dsn(), queries=(("cdr_initialize", "SELECT * FROM no_such_table"),))
        db = Database(config)
        try:
            with pytest.raises(DatabaseUnavailable) as raised:
                await db.execute("cdr_initialize", {})
            return raised.value.transient, db.is_down
        finally:
            await db.close()

    assert asyncio.run(main()) == (False, False)


# -- CDRs, the line tracker, call routing ------------------------------------------------------

def call(call_id: str, **changes) -> CallRecord:
    record = dict(call_id=call_id, caller="alice", called="bob", callee="bob", contact="sip:bob@10.0.0.2:5060",
                  address="10.0.0.1:5060", started_at=1_700_000_000.0)
    record.update(changes)
    return CallRecord(**record)


def test_cdr_rows_after_a_call(pg_schema):
    async def main():
        db = database(pg_schema.dsn())
        sink = PostgresCdrSink(db, critical=False, limit=100)
        try:
            await sink.initialize(call("c1"))
            await sink.update(call("c1", answered_at=1_700_000_002.0, status=200, reason="OK"))
            await sink.finalize(call("c1", answered_at=1_700_000_002.0, ended_at=1_700_000_032.5, status=200,
                                     reason="BYE"))
            await sink.initialize(call("c2"))
            await sink.finalize(call("c2", ended_at=1_700_000_010.0, status=486, reason="Busy Here"))
            assert await sink.queue.flush(10)
        finally:
            await sink.close()
            await db.close()

    asyncio.run(main())
    rows = pg_schema.execute(
        "SELECT call_id, caller, called, callee, contact, address, extract(epoch FROM started_at), "
        "extract(epoch FROM answered_at), extract(epoch FROM ended_at), duration, status, reason FROM cdr "
        "ORDER BY call_id")
    assert [tuple(float(v) if hasattr(v, "as_integer_ratio") and not isinstance(v, int) else v for v in row)
            for row in rows] == [
        ("c1", "alice", "bob", "bob", "sip:bob@10.0.0.2:5060", "10.0.0.1:5060", 1_700_000_000.0, 1_700_000_002.0,
         1_700_000_032.5, 30.5, 200, "BYE"),
        ("c2", "alice", "bob", "bob", "sip:bob@10.0.0.2:5060", "10.0.0.1:5060", 1_700_000_000.0, None,
         1_700_000_010.0, None, 486, "Busy Here"),
    ]


def test_best_effort_cdrs_wait_for_the_database_and_lose_nothing(pg_schema, proxy):
    async def main():
        db = database(pg_schema.dsn(proxy.port))
        sink = PostgresCdrSink(db, critical=False, limit=100)
        try:
            proxy.stop()
            await sink.initialize(call("c1"))
            await sink.finalize(call("c1", ended_at=1_700_000_005.0, status=487, reason="Request Terminated"))
            await asyncio.sleep(0.3)
            assert len(sink.queue) == 2 and sink.accepting_calls  # best effort: calls go on
            proxy.start()
            assert await sink.queue.flush(15)
            return sink.queue.written, sink.queue.dropped
        finally:
            await sink.close()
            await db.close()

    assert asyncio.run(main()) == (2, 0)
    assert pg_schema.execute("SELECT call_id, status FROM cdr") == [("c1", 487)]


def test_best_effort_queue_is_bounded_and_counts_what_it_drops(pg_schema, proxy):
    async def main():
        db = database(pg_schema.dsn(proxy.port))
        sink = PostgresCdrSink(db, critical=False, limit=3)
        try:
            proxy.stop()
            for n in range(5):
                await sink.initialize(call(f"c{n}"))
            dropped = sink.queue.dropped
            proxy.start()
            assert await sink.queue.flush(15)
            return dropped, sink.queue.written
        finally:
            await sink.close()
            await db.close()

    assert asyncio.run(main()) == (2, 3)
    assert pg_schema.execute("SELECT call_id FROM cdr ORDER BY call_id") == [("c0",), ("c1",), ("c2",)]


def test_critical_cdrs_refuse_new_calls_while_they_cannot_be_written(pg_schema, proxy):
    async def main():
        db = database(pg_schema.dsn(proxy.port))
        sink = PostgresCdrSink(db, critical=True, limit=100, retry_after_s=9)
        try:
            await sink.initialize(call("before"))
            proxy.stop()
            with pytest.raises(CdrUnavailable) as raised:
                await sink.initialize(call("during"))
            assert raised.value.status == 503 and ("Retry-After", "9") in raised.value.headers
            assert not sink.accepting_calls
            await sink.finalize(call("before", ended_at=1_700_000_009.0, status=200, reason="BYE"))  # queued
            proxy.start()
            assert await sink.queue.flush(15)
            await asyncio.sleep(PROBE + 0.1)
            await sink.initialize(call("after"))
            return sink.accepting_calls
        finally:
            await sink.close()
            await db.close()

    assert asyncio.run(main()) is True
    assert pg_schema.execute("SELECT call_id, status FROM cdr ORDER BY id") == [("before", 200), ("after", None)]


PROBE = 0.5


def test_line_tracker_mirror(pg_schema):
    pg_schema.execute("INSERT INTO users (username, password, inuse) VALUES ('alice', 'a', 7), ('bob', 'b', 0)")

    async def main():
        db = database(pg_schema.dsn())
        tracker = PostgresLineTracker(db, limit=100)
        try:
            await tracker.initialize()
            reset = pg_schema.execute("SELECT username, inuse FROM users ORDER BY username")
            for name in ("alice", "alice", "bob", "alice"):
                await tracker.increment(name)
            await tracker.decrement("alice")
            await tracker.decrement("bob")
            await tracker.decrement("bob")  # never below zero
            assert await tracker.queue.flush(10)
            return reset
        finally:
            await tracker.close()
            await db.close()

    assert asyncio.run(main()) == [("alice", 0), ("bob", 0)]
    assert pg_schema.execute("SELECT username, inuse FROM users ORDER BY username") == [("alice", 2), ("bob", 0)]


def test_call_route_from_the_database(pg_schema, proxy):
    pg_schema.execute("INSERT INTO routes (called, target, priority) VALUES "
                      "('helpdesk', 'sip:bob@fastreg.local', 2), ('helpdesk', 'sip:alice@fastreg.local', 1)")

    async def main():
        db = database(pg_schema.dsn(proxy.port))
        router = CallRouter(db)
        try:
            found = await router.call_route("helpdesk", "carol", "call-1")
            none = await router.call_route("nobody", "carol", "call-2")
            injected = await router.call_route("helpdesk' OR '1'='1", "carol", "call-3")
            proxy.stop()
            with pytest.raises(ServiceUnavailable):
                await router.call_route("helpdesk", "carol", "call-4")
            return found, none, injected
        finally:
            await db.close()

    assert asyncio.run(main()) == (["sip:alice@fastreg.local", "sip:bob@fastreg.local"], [], [])


# -- the server with users in the database -----------------------------------------------------

def rows(server) -> list[dict]:
    result = server.cli("contacts", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_registration_with_users_from_the_database_and_the_mirror(pg_schema, tmp_path):
    pg_schema.add_users({"alice": "pw-a", "bob": "pw-b"})
    server = start_server(tmp_path, pg_schema.toml())
    try:
        alice = UserAgent("alice", "pw-a", Transport("UDP", server.address))
        bob = UserAgent("bob", "pw-b", Transport("TCP", server.address))
        assert alice.request().status_code == 200
        assert alice.request(contacts=["<sip:alice@10.0.0.9:5060>"], expires=600).status_code == 200
        assert bob.request().status_code == 200
        assert UserAgent("bob", "wrong", Transport("UDP", server.address)).request().status_code == 401
        assert UserAgent("nobody", "x", Transport("UDP", server.address)).request().status_code == 401
        mirror = lambda: pg_schema.execute(  # noqa: E731
            "SELECT username, aor, contact, transport, round(extract(epoch FROM expires_at - updated_at)) "
            "FROM registrations ORDER BY aor, contact")
        wait_until(lambda: len(mirror()) == 3)
        got = {r[2]: r for r in mirror()}
        assert got == {
            alice.contact_uri(): ("alice", "sip:alice@fastreg.local", alice.contact_uri(), "UDP", 3600),
            "sip:alice@10.0.0.9:5060": ("alice", "sip:alice@fastreg.local", "sip:alice@10.0.0.9:5060", "UDP", 600),
            bob.contact_uri(): ("bob", "sip:bob@fastreg.local", bob.contact_uri(), "TCP", 3600),
        }
        # unregister one contact, then everything with '*'
        assert alice.request(contacts=["<sip:alice@10.0.0.9:5060>"], expires=0).status_code == 200
        wait_until(lambda: len(mirror()) == 2)
        assert bob.request(contacts=["*"], expires=0).status_code == 200
        wait_until(lambda: [r[2] for r in mirror()] == [alice.contact_uri()])
        # routing: 302 for a registered user, 480 for one that exists, 404 for nobody
        caller = UserAgent("alice", "pw-a", Transport("UDP", server.address))
        assert caller.request("INVITE", request_uri="sip:alice@fastreg.local").status_code == 302
        assert caller.request("INVITE", request_uri="sip:bob@fastreg.local").status_code == 480
        assert caller.request("INVITE", request_uri="sip:nobody@fastreg.local").status_code == 404
        assert len(rows(server)) == 1
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_sql_injection_through_the_wire_username(pg_schema, tmp_path):
    pg_schema.add_users({"alice": "pw-a"})
    server = start_server(tmp_path, pg_schema.toml())
    try:
        for name in ("alice' OR '1'='1", "x'; DROP TABLE users; --", "' UNION SELECT 'pw-a' --"):
            ua = UserAgent(name.replace(" ", "%20"), "pw-a", Transport("UDP", server.address))
            assert ua.request().status_code in (400, 401, 403)
        assert pg_schema.execute("SELECT username FROM users") == [("alice",)]
        assert UserAgent("alice", "pw-a", Transport("UDP", server.address)).request().status_code == 200
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_notify_drops_a_cached_user_at_once(pg_schema, tmp_path):
    pg_schema.add_users({"alice": "old-pw"})
    channel = f"fastreg_{pg_schema.name}"
    server = start_server(tmp_path, pg_schema.toml(extra=f'auth_cache_ttl_s = 3600.0\nnotify_channel = "{channel}"'))
    try:
        assert UserAgent("alice", "old-pw", Transport("UDP", server.address)).request().status_code == 200
        pg_schema.execute("UPDATE users SET password = 'new-pw' WHERE username = 'alice'")

        def new_password_works():
            pg_schema.execute(f"NOTIFY {channel}, 'alice'")
            return UserAgent("alice", "new-pw", Transport("UDP", server.address)).request().status_code == 200

        wait_until(new_password_works, timeout=15, step=0.2)  # once the worker's LISTEN is in place
        assert UserAgent("alice", "old-pw", Transport("UDP", server.address)).request().status_code == 401
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_database_stopped_in_the_middle_of_a_load_and_started_again(pg_schema, tmp_path, proxy):
    """The outage at small scale (bench/pg_outage.sh does it with SIPp): 503 with
    Retry-After for what needs the database, routing and cached users keep
    working, the server recovers by itself, no binding is lost, and the mirror
    catches up."""
    users = {f"u{n}": f"pw{n}" for n in range(400)}
    pg_schema.add_users(users)
    extra = "auth_cache_ttl_s = 60.0\nretry_after_s = 3\nconnect_timeout_s = 1.0"
    server = start_server(tmp_path, pg_schema.toml(port=proxy.port, extra=extra))
    names = iter(users)
    statuses: dict[int, int] = {}
    registered: list[str] = []
    retry_after: set[str] = set()
    stop = threading.Event()

    def load():
        while not stop.is_set():
            name = next(names, None)
            if name is None:
                return
            ua = UserAgent(name, users[name], Transport("UDP", server.address))
            response = ua.request()
            ua.transport.sock.close()
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                registered.append(name)
            elif response.status_code == 503:
                retry_after.add(response.get("retry-after") or "")
            time.sleep(0.005)

    try:
        early = UserAgent("u-early", "x", Transport("UDP", server.address))
        pg_schema.add_users({"u-early": "x"})
        assert early.request().status_code == 200
        thread = threading.Thread(target=load)
        thread.start()
        wait_until(lambda: statuses.get(200, 0) >= 20)
        proxy.stop()
        wait_until(lambda: statuses.get(503, 0) >= 20)
        # during the outage: a cached user refreshes, a registered user is routed to
        assert early.request().status_code == 200
        caller = UserAgent("u-early", "x", Transport("UDP", server.address))
        assert caller.request("INVITE", request_uri="sip:u-early@fastreg.local").status_code == 302
        before = statuses.get(200, 0)
        proxy.start()
        wait_until(lambda: statuses.get(200, 0) >= before + 20)
        stop.set()
        thread.join(30)
        assert retry_after == {"3"}
        bound = {row["aor"] for row in rows(server)}
        assert {f"sip:{n}@fastreg.local" for n in registered} | {"sip:u-early@fastreg.local"} <= bound
        assert server.alive()
        # the mirror catches up with every binding written during the outage too
        wait_until(lambda: pg_schema.execute("SELECT count(*) FROM registrations")[0][0] == len(bound), timeout=20)
        # and `fastreg stats` tells what happened
        def counted():
            total = json.loads(server.cli("stats", "--json").stdout)["total"]
            return total if total["db_writes"] >= len(bound) else None

        total = wait_until(counted)
        assert total["db_failures"] > 0 and total["users_fetch_failed"] > 0 and total["users_fetched"] > 0
        assert total["db_writes_dropped"] == 0 and total["db_writes_waiting"] == 0
    finally:
        stop.set()
        server.stop()
    assert "Traceback" not in server.log(), server.log()
    assert "database unreachable" in server.log() and "database reachable again" in server.log()


def test_write_behind_batches_and_drops_only_the_write_the_database_refuses(pg_schema):
    from fastreg.writebehind import WriteBehind

    async def main():
        config = PostgresConfig(dsn=pg_schema.dsn(), queries=(
            ("cdr_initialize",
             "INSERT INTO cdr (call_id, started_at) VALUES (${callid}, to_timestamp(${started_at}))"),))
        db = Database(config)
        queue = WriteBehind(db, 100, "CDR")
        try:
            for n in range(6):  # queued before the writer starts: one batch
                queue.put("cdr_initialize", {"callid": f"c{n}", "started_at": None if n == 3 else 1_700_000_000.0 + n})
            queue.start()
            assert await queue.flush(10)
            return queue.written, queue.failed, queue.dropped
        finally:
            await queue.close()
            await db.close()

    assert asyncio.run(main()) == (5, 1, 0)  # c3 has no start time: NOT NULL refuses it, and only it
    assert pg_schema.execute("SELECT call_id FROM cdr ORDER BY id") == [(f"c{n}",) for n in (0, 1, 2, 4, 5)]


@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_requests_waiting_for_one_user_are_handled_in_arrival_order(pg_schema, tmp_path, kind):
    """Two authorized REGISTERs of one Call-ID sent back to back for a user not yet
    cached: both wait for the same user_auth query, then run in order (CSeq 2, then 3);
    the other way round the second would be refused as a stale CSeq."""
    from sipua import parse_challenge

    pg_schema.add_users({"alice": "pw-a"})
    server = start_server(tmp_path, pg_schema.toml())
    try:
        phone = UserAgent("alice", "pw-a", Transport(kind, server.address))
        phone.cseq = 1
        phone.transport.send(phone.build())
        challenge = parse_challenge(phone.receive_final().get("www-authenticate"))
        for cseq, nc in ((2, 1), (3, 2)):
            authorization = phone.authorization(challenge, "REGISTER", "sip:fastreg.local", nc=nc)
            phone.transport.send(phone.build(authorization=authorization, cseq=cseq))
        answers = sorted((int(r.get("cseq").split()[0]), r.status_code)
                         for r in (phone.receive_final(), phone.receive_final()))
        assert answers == [(2, 200), (3, 200)]
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_worker_builds_the_call_path_parts_for_the_proxy(pg_schema, tmp_path):
    """What the proxy (issue #5) uses: Worker.call_router, .cdr_sink, .line_tracker_mirror."""
    from fastreg import config as config_mod
    from fastreg.worker import Worker

    path = tmp_path / "pg.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path / "var"}"\n[users]\n' + pg_schema.toml(extra="cdr_critical = true"))
    worker = Worker(config_mod.load(str(path)))
    try:
        assert isinstance(worker.cdr_sink, PostgresCdrSink) and worker.cdr_sink.critical
        assert isinstance(worker.line_tracker_mirror, PostgresLineTracker)
        assert isinstance(worker.call_router, CallRouter) and worker.call_router.database is worker.database
        assert isinstance(worker.users, PostgresUsers) and worker.registrar.defer_commit  # the mirror
        assert worker.async_path is not None and worker.mirror is not None
    finally:
        asyncio.run(worker._close_database())
        worker._close_now()


def test_sighup_asks_the_database_again_and_keeps_serving(pg_schema, tmp_path):
    import signal

    pg_schema.add_users({"alice": "old-pw"})
    server = start_server(tmp_path, pg_schema.toml(extra="auth_cache_ttl_s = 3600.0"))
    try:
        assert UserAgent("alice", "old-pw", Transport("UDP", server.address)).request().status_code == 200
        pg_schema.execute("UPDATE users SET password = 'new-pw' WHERE username = 'alice'")
        assert UserAgent("alice", "new-pw", Transport("UDP", server.address)).request().status_code == 401  # cached
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in server.log())
        assert UserAgent("alice", "new-pw", Transport("UDP", server.address)).request().status_code == 200
        assert server.alive()
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_schema_trigger_notifies_a_changed_user_without_waiting_for_the_cache(pg_schema, tmp_path):
    """conf/postgres/schema.sql's trigger NOTIFYs fastreg_users on a change (the channel is
    shared by the whole database: another test session's changes only empty caches)."""
    pg_schema.add_users({"alice": "old-pw"})
    server = start_server(tmp_path, pg_schema.toml(extra='auth_cache_ttl_s = 3600.0\nnotify_channel = "fastreg_users"'))
    try:
        assert UserAgent("alice", "old-pw", Transport("UDP", server.address)).request().status_code == 200
        assert UserAgent("bob", "bob-pw", Transport("UDP", server.address)).request().status_code == 401  # unknown
        pg_schema.execute("UPDATE users SET password = 'new-pw' WHERE username = 'alice'")
        pg_schema.execute("INSERT INTO users (username, password) VALUES ('bob', 'bob-pw')")
        wait_until(lambda: UserAgent("alice", "new-pw", Transport("UDP", server.address)).request().status_code == 200,
                   timeout=15, step=0.2)
        wait_until(lambda: UserAgent("bob", "bob-pw", Transport("UDP", server.address)).request().status_code == 200,
                   timeout=15, step=0.2)
        pg_schema.execute("DELETE FROM users WHERE username = 'alice'")
        wait_until(lambda: UserAgent("alice", "new-pw", Transport("UDP", server.address)).request().status_code == 401,
                   timeout=15, step=0.2)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()
