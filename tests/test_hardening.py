"""Hardening under garbage and guessing: short, bounded versions of
bench/fuzz.py and bench/throttle_demo.py against real server processes.

- a few thousand generated messages of every kind over UDP and TCP, with
  many connections at once and slow (trickling) ones: the server process
  stays alive, logs no internal error, and a normal REGISTER succeeds
  throughout (the fuzzer's probe) and afterwards (tests/sipua.py);
- a client that closes its TCP connection with answers still pending costs
  the server nothing (it used to die of SIGPIPE);
- wrong-password attempts for one user from 127.0.0.1 are throttled (403)
  past auth.throttle_failures, while the same user from 127.0.0.2 registers;
- a few dozen failures spread over many users from one address (a normal
  test run, or users behind an SBC) throttle nobody with the defaults.
"""

from __future__ import annotations

import io
import socket
import sys
import time

import pytest

from conftest import ROOT, TEST_USERS, start_server
from sipua import Transport, UserAgent

sys.path.insert(0, str(ROOT / "bench"))
import fuzz  # noqa: E402
import throttle_demo  # noqa: E402

EXTRA_USERS = {str(n): f"pw{n}" for n in range(4000, 4060)}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    # Default auth settings (the throttle as shipped); a short TCP message
    # timeout so that the trickling connections are cut within the test.
    server = start_server(tmp_path_factory.mktemp("hardening"), server_toml="tcp_message_timeout_s = 1.0",
                          users={**TEST_USERS, **EXTRA_USERS})
    yield server
    server.stop()


def assert_healthy(server) -> None:
    assert server.alive(), server.log()[-3000:]
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log, log[-5000:]
    for kind in ("UDP", "TCP"):
        phone = UserAgent("219", "secret219", Transport(kind, server.address))
        try:
            assert phone.request().status_code == 200
        finally:
            phone.transport.close()


def test_fuzz_over_udp_and_tcp_never_stops_the_server(srv):
    # A paced rate (about 5 s for the whole run), so that the run always outlasts
    # the 1 s message timeout the slow connections are meant to hit: at full
    # speed a fast run could end before any of them was cut.
    options = fuzz.Options(srv.address, count=4000, seconds=25, rate=800, user="218", password="secret218",
                           many=300, many_hold_s=2.0, slow=4, probe_interval=0.5, seed=20240601,
                           pid=srv.process.pid)
    result = fuzz.run(options)
    text = io.StringIO()
    fuzz.report(result, options, text)
    print(text.getvalue())
    assert result.passed, text.getvalue()
    # Every kind went out over every transport it applies to.
    for kind in fuzz.KINDS:
        assert result.sent[kind, "TCP"] > 0, kind
        if kind not in fuzz.TCP_ONLY:
            assert result.sent[kind, "UDP"] > 0, kind
    # The server answered what deserves an answer over both transports (400 for what it could read a Via of).
    assert result.responses["UDP", "400"] > 0 and result.responses["TCP", "400"] > 0
    # Many connections at once: all accepted, each pinged one ponged, each OPTIONS answered.
    many = result.many
    assert many["rounds"] == 2 and many["opened"] == 600 and many["connect-failed"] == 0, many
    assert many["pong"] == many["ping-sent"] and many["options-200"] == many["options-sent"], many
    # Slow connections are cut after tcp_message_timeout_s (1 s here), not held.
    assert result.slow["closed-by-server"] >= 4 and max(result.slow_closed_after) < 3.0, result.slow_closed_after
    assert result.probe["ok"] >= 4
    assert_healthy(srv)


def test_client_closing_with_answers_pending_does_not_kill_the_server(srv):
    """Pipelined requests and an ordinary close: the server's later writes get EPIPE.
    With SIGPIPE at its default action (as `fastreg` main() sets it for the CLI) that
    killed the whole server within a few dozen connections."""
    request = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKpipe\r\n"
               b"From: <sip:a@x>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: pipe\r\nCSeq: 1 OPTIONS\r\n"
               b"Content-Length: 0\r\n\r\n")
    for _ in range(150):
        with socket.create_connection(srv.address, timeout=5) as sock:
            sock.sendall(request * 50)
        assert srv.alive(), srv.log()[-3000:]
    time.sleep(0.3)
    assert_healthy(srv)


def test_failures_spread_over_many_users_from_one_address_never_throttle(srv):
    users = sorted(EXTRA_USERS)[:40]
    statuses = []
    for n, user in enumerate(users):
        phone = UserAgent(user, EXTRA_USERS[user], Transport("UDP" if n % 2 else "TCP", srv.address))
        try:
            for _ in range(2):  # two typos each: 80 failures from 127.0.0.1 in all
                statuses.append(phone.request(password="typo").status_code)
            assert phone.request().status_code == 200, user
        finally:
            phone.transport.close()
    # And a dozen unknown users from the same address.
    for n in range(12):
        stranger = UserAgent(f"nobody{n}", "x", Transport("UDP", srv.address))
        statuses.append(stranger.request().status_code)
        stranger.transport.close()
    assert set(statuses) == {401}, statuses


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_wrong_passwords_are_throttled_per_source_and_user(tmp_path, transport):
    server = start_server(tmp_path, "[auth]\nthrottle_failures = 10\n")
    try:
        result = throttle_demo.run(server.address, "205", "secret205", count=30, interval=0.2, min_legit=3,
                                   attack_interval=0.03, transport=transport)
        text = io.StringIO()
        throttle_demo.report(result, "205", "127.0.0.1", "127.0.0.2", text)
        print(text.getvalue())
        assert result.passed, text.getvalue()
        # The 10th failure starts the block: attempts 1-10 are challenged again, 11-30 refused.
        assert (result.wrong_401, result.wrong_403, result.first_403_at) == (10, 20, 11), text.getvalue()
        assert result.wrong_accepted == 0
        # 127.0.0.2 registered while the attack ran, every time.
        assert result.legit_during_attack >= 2 and result.legit_failed == 0
        # The block is per (source, user): the right password from 127.0.0.1 is refused too,
        # another user from 127.0.0.1 is not.
        assert result.right_from_attacker == 403
        other = UserAgent("206", "secret206", Transport(transport, server.address))
        assert other.request().status_code == 200
        other.transport.close()
        assert_healthy(server)
    finally:
        server.stop()
