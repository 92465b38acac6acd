"""Integration tests with a real multi-worker server: the shared table and
nonces across workers, the spread of a single peer over the workers,
concurrency on one AOR, the supervisor (kill -9, SIGTERM, SIGHUP, a worker
that cannot start) and `fastreg stats`. Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT, free_port, start_server, write_regfile
from sipua import Transport, UserAgent, contacts_of, parse_challenge

WORKERS = 2


def ua(server, user="200", kind="UDP", **kw):
    return UserAgent(user, f"secret{user}", Transport(kind, server.address), **kw)


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stats(server) -> dict:
    result = server.cli("stats", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def running_workers(server) -> dict[int, dict]:
    return {w["index"]: w for w in stats(server)["workers"] if w["state"] == "running"}


def options(server, transport: Transport, cseq: int = 1) -> int:
    probe = UserAgent("probe", "x", transport)
    host = f"[{server.host}]" if ":" in server.host else server.host
    transport.send(probe.build("OPTIONS", request_uri=f"sip:{host}:{server.port}", cseq=cseq))
    return transport.receive(timeout=5).status_code


def bindings(server, aor=None) -> list[dict]:
    result = server.cli("contacts", "--json", *([aor] if aor else []))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """One 2-worker server for the tests that only add bindings of their own users."""
    server = start_server(tmp_path_factory.mktemp("multi"), workers=WORKERS,
                          users={str(n): f"secret{n}" for n in range(200, 260)})
    wait_until(lambda: len(running_workers(server)) == WORKERS, what="both workers publishing stats")
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()


# -- spread ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_single_source_is_spread_over_every_worker(multi, kind):
    """Everything from one address (and for UDP one port, like an SBC): every worker serves some."""
    before = {i: w.get("requests_OPTIONS", 0) for i, w in running_workers(multi).items()}
    sent = 200 if kind == "UDP" else 40
    if kind == "UDP":
        transport = Transport("UDP", multi.address)
        for n in range(sent):
            assert options(multi, transport, n + 1) == 200
        transport.close()
    else:
        for n in range(sent):  # one connection each: a connection stays with one worker
            transport = Transport("TCP", multi.address)
            assert options(multi, transport, n + 1) == 200
            transport.close()

    def counted():
        now = running_workers(multi)
        delta = {i: now[i].get("requests_OPTIONS", 0) - before.get(i, 0) for i in now}
        return delta if sum(delta.values()) >= sent else None

    delta = wait_until(counted, what="the stats to count every request")
    assert len(delta) == WORKERS
    # Binomial(200, 1/2) below 50 or Binomial(40, 1/2) below 5: under 1e-6 with the selector;
    # without it (the kernel's 4-tuple hash), one UDP source always lands on one worker.
    assert min(delta.values()) >= sent // 8, delta


# -- one table, one secret -----------------------------------------------------------

def worker_pids(server) -> set[int]:
    return {w["pid"] for w in running_workers(server).values()}


def serving_pid(server, client: socket.socket, pids: set[int]) -> int | None:
    """The worker that accepted this TCP connection: its socket inode in /proc/net/tcp, then whose fd it is."""
    local_port = client.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as handle:
        for line in handle.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == server.port and int(remote.split(":")[1], 16) == local_port:
                inode = fields[9]
    if inode in (None, "0"):
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
        except OSError:
            continue
    return None


def connections_on_two_workers(server) -> tuple[Transport, Transport]:
    pids = worker_pids(server)
    by_pid: dict[int, Transport] = {}
    spare = []
    for _ in range(40):
        transport = Transport("TCP", server.address)
        assert options(server, transport) == 200  # accepted and served
        pid = serving_pid(server, transport.sock, pids)
        if pid is not None and pid not in by_pid:
            by_pid[pid] = transport
            if len(by_pid) == 2:
                break
        else:
            spare.append(transport)
    for transport in spare:
        transport.close()
    assert len(by_pid) == 2, "could not get connections on two different workers"
    first, second = by_pid.values()
    return first, second


def test_nonce_and_binding_cross_workers(multi):
    """A challenge from worker A is answered through worker B; the binding written
    through B is read through A; and A recognises B's retransmission."""
    on_a, on_b = connections_on_two_workers(multi)
    try:
        phone = UserAgent("210", "secret210", on_a)
        phone.cseq += 1
        on_a.send(phone.build())
        challenge = on_a.receive()
        assert challenge.status_code == 401
        nonce = parse_challenge(challenge.get("www-authenticate"))
        phone.cseq += 1
        auth = phone.authorization(nonce, "REGISTER", "sip:fastreg.local")
        registered = phone.build(authorization=auth, branch="z9hG4bKcrossworker1")
        on_b.send(registered)  # the contact names A's socket; B verifies A's nonce
        r = on_b.receive()
        assert r.status_code == 200, r.status_code
        assert contacts_of(r) == [phone.contact_uri()]
        on_a.send(registered)  # the same request again, through A: a retransmission
        again = on_a.receive()
        assert again.status_code == 200 and contacts_of(again) == [phone.contact_uri()]
        phone.transport = on_a  # a query through A, authenticated through A
        query = phone.request(contacts=[])
        assert query.status_code == 200 and contacts_of(query) == [phone.contact_uri()]
        rows = bindings(multi, "sip:210@fastreg.local")
        assert [row["contact"] for row in rows] == [phone.contact_uri()]
    finally:
        on_a.close()
        on_b.close()


@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_every_registration_is_visible_from_every_worker(multi, kind):
    users = [str(n) for n in (range(220, 230) if kind == "UDP" else range(230, 240))]
    phones = [ua(multi, user, kind) for user in users]
    for phone in phones:
        assert phone.request().status_code == 200
    # Queries land on random workers: each must see every binding.
    for phone in phones:
        for _ in range(3):
            r = phone.request(contacts=[])
            assert r.status_code == 200 and contacts_of(r) == [phone.contact_uri()]
    for phone in phones:
        phone.transport.close()


# -- concurrency on one AOR ---------------------------------------------------------------

def run_together(functions):
    barrier = threading.Barrier(len(functions))
    results = [None] * len(functions)
    errors = []

    def run(i, fn):
        try:
            barrier.wait(timeout=10)
            results[i] = fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return results


@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_concurrent_registers_with_different_call_ids_lose_no_update(multi, kind):
    user = "240" if kind == "UDP" else "241"
    phones = [ua(multi, user, kind) for _ in range(12)]  # 12 devices, one AOR, 12 Call-IDs
    statuses = run_together([lambda p=p: p.request().status_code for p in phones])
    assert statuses == [200] * len(phones)
    rows = bindings(multi, f"sip:{user}@fastreg.local")
    assert sorted(row["contact"] for row in rows) == sorted(p.contact_uri() for p in phones)
    for phone in phones:
        phone.transport.close()


@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_concurrent_registers_with_one_call_id_end_at_the_highest_cseq(multi, kind):
    """One Call-ID, many CSeqs at once through many sockets: RFC 3261 10.3 step 7 —
    a CSeq not above the stored one fails, so the highest always wins."""
    user = "242" if kind == "UDP" else "243"
    call_id = f"{os.urandom(6).hex()}@concurrent"
    contact = f"<sip:{user}@127.0.0.1:5999>"
    phones = [ua(multi, user, kind, call_id=call_id) for _ in range(10)]
    challenges = []
    for i, phone in enumerate(phones):  # a challenge for each (a 401 changes nothing)
        phone.transport.send(phone.build(contacts=[contact], cseq=10 * i + 1))
        r = phone.transport.receive()
        assert r.status_code == 401
        challenges.append(parse_challenge(r.get("www-authenticate")))

    def send(i):
        phone = phones[i]
        auth = phone.authorization(challenges[i], "REGISTER", "sip:fastreg.local")
        phone.transport.send(phone.build(contacts=[contact], cseq=10 * i + 2, authorization=auth))
        return phone.transport.receive().status_code

    statuses = run_together([lambda i=i: send(i) for i in range(len(phones))])
    assert set(statuses) <= {200, 400}, statuses  # 400 Invalid CSeq Number for an outdated one
    assert statuses[-1] == 200  # the highest CSeq can never be outdated
    rows = bindings(multi, f"sip:{user}@fastreg.local")
    assert len(rows) == 1 and rows[0]["call_id"] == call_id
    assert rows[0]["cseq"] == 10 * (len(phones) - 1) + 2
    for phone in phones:
        phone.transport.close()


# -- stats ---------------------------------------------------------------------------------

def test_stats_json_per_worker_and_total(multi):
    assert ua(multi, "250").request().status_code == 200

    def applied():
        report = stats(multi)
        return report if report["total"].get("registrations_applied", 0) >= 1 else None

    report = wait_until(applied, what="a published registration")
    workers = report["workers"]
    assert [w["index"] for w in workers] == list(range(WORKERS))
    assert len({w["pid"] for w in workers}) == WORKERS
    for key in ("registrations_applied", "requests_REGISTER", "responses_2xx", "auth_failures", "parse_errors",
                "dropped", "udp_kernel_drops"):
        assert report["total"][key] == sum(w.get(key, 0) for w in workers), key
    assert "udp_rcvbuf_errors" in report["system"]
    text = multi.cli("stats")
    assert text.returncode == 0
    assert "registrations_applied" in text.stdout and "worker 1" in text.stdout and "total" in text.stdout


def test_stats_marks_dead_and_stopped_workers(tmp_path):
    from fastreg import stats as stats_mod
    from fastreg.stats import Counters
    from fastreg.store_lmdb import LmdbLocation

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    counters = Counters()
    counters.registrations_applied = 5
    counters.requests["REGISTER"] = 10
    now = time.time()
    location = LmdbLocation(str(tmp_path / "var" / "location"))
    for index, pid, state in ((0, os.getpid(), "running"), (1, gone.pid, "running"), (2, gone.pid, "stopped")):
        entry = stats_mod.snapshot(counters, index=index, pid=pid, started_at=now - 5, now=now, state=state)
        location.put_stats(stats_mod.stats_key(index), stats_mod.encode(entry))
    location.close()
    (tmp_path / "fastreg.toml").write_text(f'[server]\nstate_dir = "{tmp_path / "var"}"\n')
    result = subprocess.run([sys.executable, "-m", "fastreg", "stats", "--json", "-c", str(tmp_path / "fastreg.toml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [w["state"] for w in report["workers"]] == ["running", "dead", "stopped"]
    assert report["total"]["registrations_applied"] == 15
    assert report["total"]["requests_REGISTER"] == 30


# -- the supervisor ------------------------------------------------------------------------

def register_once(user: str, server, timeout: float = 2.0) -> bool:
    """One authenticated registration with short, bounded waits; True on 200."""
    transport = Transport("UDP", server.address)
    try:
        phone = UserAgent(user, f"pw{user}", transport)
        phone.cseq += 1
        transport.send(phone.build())
        r = transport.receive(timeout)
        if r.status_code != 401:
            return False
        phone.cseq += 1
        transport.send(phone.build(authorization=phone.authorization(
            parse_challenge(r.get("www-authenticate")), "REGISTER", "sip:fastreg.local")))
        return transport.receive(timeout).status_code == 200
    except OSError:
        return False
    finally:
        transport.close()


def test_kill_9_of_a_worker_under_load(tmp_path):
    users = {str(10000 + n): f"pw{10000 + n}" for n in range(3000)}
    server = start_server(tmp_path, workers=WORKERS, users=users)
    try:
        before = wait_until(lambda: (w := running_workers(server)) and len(w) == WORKERS and w,
                            what="both workers")
        names = iter(users)
        lock = threading.Lock()
        ok, failed = [], []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                with lock:
                    user = next(names, None)
                if user is None:
                    return
                (ok if register_once(user, server) else failed).append(user)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(ok) >= 100, what="registrations under load")
        victim = before[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(lambda: (w := running_workers(server).get(1)) and w["pid"] != victim and w,
                              timeout=10, what="the replacement of worker 1")
        count_at_replacement = len(ok)
        wait_until(lambda: len(ok) >= count_at_replacement + 100, what="registrations after the restart")
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        assert server.alive()
        # at most what was in flight in the killed worker (one request per load thread)
        assert len(failed) <= len(threads), failed
        listed = {row["aor"] for row in bindings(server)}
        assert {f"sip:{u}@fastreg.local" for u in ok} <= listed
        assert replaced["pid"] in {w["pid"] for w in running_workers(server).values()}
        assert "worker 1 (pid %d) killed by SIGKILL" % victim in server.log()
        # the table is intact and the dead worker's reader slot is gone
        import lmdb

        env = lmdb.open(str(server.state_dir / "location"), readonly=True, max_dbs=8, lock=True)
        try:
            assert env.reader_check() == 0
            assert f"{victim}" not in env.readers().split()
        finally:
            env.close()
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()


def test_sweeper_moves_to_a_survivor_when_its_worker_dies(tmp_path):
    server = start_server(tmp_path, "[registrar]\nmin_expires = 1\n", workers=WORKERS)
    try:
        wait_until(lambda: len(running_workers(server)) == WORKERS, what="both workers")
        lock_file = server.state_dir / "sweeper.lock"
        holder = wait_until(lambda: lock_file.exists() and lock_file.read_text().strip(), what="a sweeper")
        os.kill(int(holder), signal.SIGKILL)
        # (a datagram sent while the killed process is still exiting can be lost:
        # wait for the replacement, as a phone would retransmit)
        wait_until(lambda: len(worker_pids(server) - {int(holder)}) == WORKERS, what="the replacement")
        phone = ua(server, "207")
        assert phone.request(expires=1).status_code == 200
        assert len(bindings(server)) == 1
        wait_until(lambda: bindings(server) == [], timeout=10, interval=0.3, what="the sweep")
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, WORKERS])
def test_sigterm_finishes_and_exits_0(tmp_path, workers):
    server = start_server(tmp_path, workers=workers)
    pids = wait_until(lambda: len(running_workers(server)) == workers and worker_pids(server), what="workers")
    phones = [ua(server, str(n)) for n in range(200, 210)]
    for phone in phones:
        assert phone.request().status_code == 200
    # requests still arriving when SIGTERM comes: answered or lost, never a crash
    burst = Transport("UDP", server.address)
    for n in range(50):
        burst.send(UserAgent("probe", "x", burst).build("OPTIONS", request_uri=f"sip:127.0.0.1:{server.port}",
                                                         cseq=n + 1))
    assert server.stop(signal.SIGTERM) == 0
    burst.close()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    log = server.log()
    assert log.count("stopped") >= workers and "Traceback" not in log, log
    report = json.loads(server.cli("stats", "--json").stdout)
    assert [w["state"] for w in report["workers"]] == ["stopped"] * workers
    # what was committed is there on the next start
    server = start_server(tmp_path, workers=workers, port=server.port)
    try:
        assert {row["aor"] for row in bindings(server)} == {p.aor for p in phones}
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, WORKERS])
def test_sighup_applies_live_keys_and_names_the_others(tmp_path, workers):
    server = start_server(tmp_path, workers=workers)
    try:
        wait_until(lambda: len(running_workers(server)) == workers, what="the workers")
        phone = ua(server, "211")
        r = phone.request(expires=3600)
        assert r.status_code == 200 and "expires=3600" in r.get("contact")
        text = server.config_path.read_text()
        server.config_path.write_text(
            text + "[registrar]\nmax_expires = 120\ndefault_expires = 120\n[location]\nmap_size_mb = 64\n")
        with open(server.users_file, "a") as handle:
            handle.write("\n[8888]\npassword=hup\n")
        server.process.send_signal(signal.SIGHUP)

        def applied():  # several requests: they go to random workers, all must have it
            results = [phone.request(expires=3600) for _ in range(6)]
            return all(r.status_code == 200 and "expires=120" in r.get("contact") for r in results)

        wait_until(applied, timeout=10, interval=0.2, what="max_expires applied by every worker")
        assert UserAgent("8888", "hup", Transport("UDP", server.address)).request().status_code == 200
        log = wait_until(lambda: "location.map_size_mb" in server.log() and server.log(), what="the log line")
        assert "need a restart" in log and "registrar.max_expires" in log
        assert server.alive() and len(running_workers(server)) == workers
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()


def test_sighup_with_a_bad_configuration_keeps_the_previous_one(tmp_path):
    server = start_server(tmp_path, workers=WORKERS)
    try:
        server.config_path.write_text(server.config_path.read_text() + "[registrar]\nmin_expires = \"soon\"\n")
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "not reloaded" in server.log(), what="the refusal in the log")
        assert ua(server, "212").request().status_code == 200
        assert server.alive()
    finally:
        assert server.stop() == 0


def serve(tmp_path, *args, **kw):
    return subprocess.run([sys.executable, "-m", "fastreg", "serve", *args], capture_output=True, text=True,
                          timeout=30, cwd=kw.get("cwd", tmp_path))


@pytest.mark.parametrize("workers", [1, WORKERS])
@pytest.mark.parametrize("problem", ["users file missing", "location is not a directory", "port in use"])
def test_a_worker_that_cannot_start_stops_serve_with_a_clear_message(tmp_path, problem, workers):
    port = free_port()
    users = tmp_path / "regfile.conf"
    write_regfile(users, {"200": "secret200"})
    state = tmp_path / "var"
    args = ["--workers", str(workers), "--listen", f"udp:127.0.0.1:{port}", "--listen", f"tcp:127.0.0.1:{port}",
            "--state-dir", str(state), "--users", str(users)]
    holder = None
    if problem == "users file missing":
        users.unlink()
        expect = "regfile.conf"
    elif problem == "location is not a directory":
        state.mkdir()
        (state / "location").write_text("not a table")
        expect = "location"
    else:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        expect = "in use"
    try:
        result = serve(tmp_path, *args)
    finally:
        if holder is not None:
            holder.close()
    assert result.returncode == 2, result.stderr
    assert expect in result.stderr and "cannot" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_supervisor_death_takes_the_workers_with_it(tmp_path):
    server = start_server(tmp_path, workers=WORKERS)
    pids = wait_until(lambda: len(running_workers(server)) == WORKERS and worker_pids(server), what="workers")
    server.stop(signal.SIGKILL)

    def gone():
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as handle:
                    if "zombie" not in handle.read().lower():
                        return False
            except OSError:
                pass
        return True

    wait_until(gone, timeout=10, what="the workers to exit")
    # and the port is free again
    serve_port = server.port
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", serve_port))
    finally:
        probe.close()


def test_the_reader_slot_of_a_killed_process_is_cleared(tmp_path):
    """A process killed inside a read transaction leaves its LMDB reader slot (it would pin
    an old snapshot for good); a worker clears it (the sweeper, or a worker that starts)."""
    import lmdb

    server = start_server(tmp_path, workers=WORKERS)
    path = str(server.state_dir / "location")
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time\nfrom fastreg.store_lmdb import LmdbLocation\n"
             "txn = LmdbLocation(sys.argv[1], readonly=True).env.begin()\nprint('holding', flush=True)\n"
             "time.sleep(60)\n", path],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert holder.stdout.readline().strip() == "holding"
        finally:
            holder.kill()
            holder.wait()
        env = lmdb.open(path, readonly=True, max_dbs=8)
        try:
            wait_until(lambda: str(holder.pid) not in env.readers().split(), timeout=10, interval=0.2,
                       what="the stale reader slot to be cleared")
        finally:
            env.close()
        assert "cleared 1 stale LMDB reader slot" in server.log()
    finally:
        assert server.stop() == 0


def test_kernel_drops_are_counted_per_worker(tmp_path):
    """A stalled worker's full receive buffer: the kernel's drops show in `fastreg stats`."""
    server = start_server(tmp_path, workers=WORKERS, server_toml="udp_rcvbuf_bytes = 8192")
    try:
        pids = wait_until(lambda: len(running_workers(server)) == WORKERS and worker_pids(server), what="workers")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            sender = Transport("UDP", server.address)
            probe = UserAgent("probe", "x", sender)
            for n in range(400):
                sender.send(probe.build("OPTIONS", request_uri=f"sip:127.0.0.1:{server.port}", cseq=n + 1))
            sender.close()
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        report = wait_until(lambda: (r := stats(server))["total"]["udp_kernel_drops"] > 0 and r,
                            what="the drops in the stats")
        assert report["total"]["udp_kernel_drops"] + report["total"].get("requests_OPTIONS", 0) >= 400
        assert report["system"]["udp_rcvbuf_errors"] >= report["total"]["udp_kernel_drops"]
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("workers", [1, WORKERS])
def test_sighup_rereads_the_digest_keys(tmp_path, workers):
    """Key rotation with the same configuration: SIGHUP reads auth.secret_file again in
    every worker; a nonce under the previous key verifies while that key is listed."""
    keys = tmp_path / "keys"
    keys.write_text("key-a\n")
    server = start_server(tmp_path, f'[auth]\nsecret_file = "{keys}"\n', workers=workers)
    try:
        phone = ua(server, "213")
        phone.cseq += 1
        phone.transport.send(phone.build())
        challenge = parse_challenge(phone.transport.receive().get("www-authenticate"))
        nc = iter(range(1, 1000))

        def with_old_nonce() -> int:
            phone.cseq += 1
            auth = phone.authorization(challenge, "REGISTER", "sip:fastreg.local", nc=next(nc))
            phone.transport.send(phone.build(authorization=auth))
            return phone.transport.receive().status_code

        assert with_old_nonce() == 200
        keys.write_text("key-b\nkey-a\n")  # rotate: b signs, a still verifies
        server.process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert [with_old_nonce() for _ in range(6)] == [200] * 6
        keys.write_text("key-b\n")  # a retired
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: [with_old_nonce() for _ in range(6)] == [401] * 6, what="key-a retired in every worker")
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log(), server.log()
