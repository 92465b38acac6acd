"""Integration tests: a real fastreg process, real UDP and TCP sockets on loopback."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, free_port, start_server
from sipua import Transport, UserAgent, contacts_of

from fastreg import _pyparse


def ua(server, user="200", kind="UDP", **kw):
    return UserAgent(user, f"secret{user}", Transport(kind, server.address), **kw)


@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_register_refresh_query_unregister(server, kind):
    phone = ua(server, kind=kind)
    r = phone.request()
    assert r.status_code == 200 and contacts_of(r) == [phone.contact_uri()]
    r = phone.request()  # refresh: same Call-ID, higher CSeq
    assert r.status_code == 200 and len(contacts_of(r)) == 1
    r = phone.request(contacts=[])  # query
    assert contacts_of(r) == [phone.contact_uri()]
    r = phone.request(expires=0)
    assert r.status_code == 200 and contacts_of(r) == []
    phone.transport.close()


def test_rport_and_received_in_udp_response(server):
    phone = ua(server)
    phone.cseq += 1
    phone.transport.send(phone.build())
    r = phone.transport.receive()
    top = r.vias[0]
    assert dict(top.params)["rport"] == str(phone.transport.local[1])
    assert dict(top.params)["received"] == "127.0.0.1"


def test_invite_is_redirected_to_registered_contact(server):
    callee = ua(server, "201")
    assert callee.request().status_code == 200
    caller = ua(server, "202")
    caller.cseq += 1
    caller.transport.send(caller.build("INVITE", request_uri="sip:201@fastreg.local", to_uri="sip:201@fastreg.local"))
    r = caller.receive_final()
    assert r.status_code == 302 and contacts_of(r) == [callee.contact_uri()]


def test_ipv6(tmp_path):
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    server = start_server(tmp_path, host="::1")
    try:
        for kind in ("UDP", "TCP"):
            phone = UserAgent("203", "secret203", Transport(kind, server.address))
            assert phone.request().status_code == 200
    finally:
        server.stop()


# -- TCP framing and limits -----------------------------------------------------------

def test_tcp_pipelined_and_split_messages(server):
    phone = ua(server, kind="TCP")
    first = phone.build("OPTIONS", request_uri=f"sip:127.0.0.1:{server.port}", cseq=1)
    second = phone.build("OPTIONS", request_uri=f"sip:127.0.0.1:{server.port}", cseq=2)
    phone.transport.send(first + second)  # two requests in one segment
    assert phone.transport.receive().status_code == 200
    assert phone.transport.receive().status_code == 200
    third = phone.build("OPTIONS", request_uri=f"sip:127.0.0.1:{server.port}", cseq=3)
    for i in range(0, len(third), 7):  # one request over many segments
        phone.transport.send(third[i:i + 7])
        time.sleep(0.005)
    assert phone.transport.receive().get("cseq") == "3 OPTIONS"


def test_tcp_crlf_keepalive_is_answered(server):
    sock = socket.create_connection(server.address, timeout=5)
    sock.sendall(b"\r\n\r\n")
    assert sock.recv(16) == b"\r\n"
    sock.close()


def test_tcp_trickle_is_closed_after_message_timeout(tmp_path):
    server = start_server(tmp_path, server_toml="tcp_message_timeout_s = 1.0")
    try:
        sock = socket.create_connection(server.address, timeout=5)
        started = time.monotonic()
        closed_after = None
        for byte in b"REGISTER sip:fastreg.local SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK1\r\n" * 4:
            try:
                sock.send(bytes([byte]))
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable and sock.recv(100) == b"":
                    closed_after = time.monotonic() - started
                    break
            except OSError:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and 0.9 < closed_after < 3.0, closed_after
        # A normal client still registers.
        assert ua(server, kind="TCP").request().status_code == 200
    finally:
        server.stop()


def test_tcp_connection_cap(tmp_path):
    server = start_server(tmp_path, server_toml="tcp_max_connections = 5")
    try:
        held = [socket.create_connection(server.address, timeout=5) for _ in range(5)]
        time.sleep(0.2)
        extra = socket.create_connection(server.address, timeout=5)
        extra.settimeout(3)
        try:
            assert extra.recv(10) == b""
        except ConnectionResetError:
            pass
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert ua(server, kind="TCP").request().status_code == 200
    finally:
        server.stop()


# -- bad input --------------------------------------------------------------------

def test_bad_requests_get_400_with_reason_over_udp(server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    bad = (b"REGISTER sip:fastreg.local SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKx;rport\r\n"
           b"From: <sip:200@fastreg.local>;tag=1\r\nTo: <sip:200@fastreg.local>\r\nCall-ID: c1\r\n"
           b"CSeq: banana REGISTER\r\nContent-Length: 0\r\n\r\n")
    sock.sendto(bad, server.address)
    r = _pyparse.parse_message(sock.recvfrom(65536)[0])
    assert r.status_code == 400 and "CSeq" in r.reason
    broken = bad.replace(b"Call-ID: c1\r\n", b"this line has no colon\r\n")
    sock.sendto(broken, server.address)
    assert _pyparse.parse_message(sock.recvfrom(65536)[0]).status_code == 400
    long_line = bad.replace(b"Content-Length: 0", b"X-Pad: " + b"a" * 20000 + b"\r\nContent-Length: 0")
    sock.sendto(long_line, server.address)
    assert _pyparse.parse_message(sock.recvfrom(65536)[0]).status_code == 513
    sock.close()


def test_responses_and_garbage_are_dropped_and_server_survives(server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    for junk in [b"", b"\x00\xff" * 100, b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\r\n",
                 b"REGISTER\r\n\r\n", b"INVITE sip:x SIP/2.0\r\n"]:
        sock.sendto(junk, server.address)
    with pytest.raises(socket.timeout):
        sock.recvfrom(65536)
    assert ua(server).request().status_code == 200
    assert server.alive()


# -- the location table ------------------------------------------------------------

def test_bindings_survive_restart_with_remaining_expiry(tmp_path):
    server = start_server(tmp_path)
    try:
        long = ua(server, "204")
        assert long.request(expires=3600).status_code == 200
        short = ua(server, "205")
        assert short.request(expires=60).status_code == 200
    finally:
        assert server.stop() == 0
    time.sleep(1.5)
    server = start_server(tmp_path, port=server.port)
    try:
        rows = {r["aor"]: r for r in json.loads(server.cli("contacts", "--json").stdout)}
        assert set(rows) == {"sip:204@fastreg.local", "sip:205@fastreg.local"}
        assert 3590 <= rows["sip:204@fastreg.local"]["expires"] <= 3599
        assert rows["sip:205@fastreg.local"]["expires"] <= 59
        query = ua(server, "204")
        query.call_id = long.call_id
        query.cseq = long.cseq
        assert len(contacts_of(query.request(contacts=[]))) == 1
    finally:
        server.stop()


def test_expired_bindings_are_swept(tmp_path):
    server = start_server(tmp_path, "[registrar]\nmin_expires = 1\n")
    try:
        phone = ua(server, "206")
        assert phone.request(expires=1).status_code == 200
        time.sleep(3.5)
        listed = json.loads(server.cli("contacts", "--json").stdout)
        assert listed == []
    finally:
        server.stop()


def test_users_file_reloaded_on_change(server):
    with open(server.users_file, "a") as handle:
        handle.write("\n[7777]\npassword=newpass\n")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = UserAgent("7777", "newpass", Transport("UDP", server.address)).request()
        if r.status_code == 200:
            break
        time.sleep(0.3)
    assert r.status_code == 200


# -- the command line ------------------------------------------------------------------

def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "fastreg", *args], capture_output=True, text=True, timeout=30,
                          cwd=cwd, env={**os.environ, **(env or {})})


def test_bad_configuration_is_refused_with_key(tmp_path):
    (tmp_path / "bad.toml").write_text('[registrar]\nmin_expires = "soon"\n')
    result = run_cli("serve", "-c", str(tmp_path / "bad.toml"))
    assert result.returncode == 2 and "registrar.min_expires" in result.stderr


def test_port_in_use_exits_non_zero(tmp_path):
    port = free_port()
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", port))
    try:
        result = run_cli("serve", "--listen", f"udp:127.0.0.1:{port}", "--state-dir", str(tmp_path / "v"), cwd=ROOT)
        assert result.returncode != 0 and "in use" in result.stderr
    finally:
        holder.close()


def test_embedded_defaults_match_conf_file():
    import tomllib

    from fastreg import config

    with open(ROOT / "conf" / "fastreg.toml", "rb") as handle:
        assert config.from_mapping(tomllib.load(handle)) == config.Config()


@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_durability_sync_group_commit_answers_after_flush(tmp_path, kind):
    server = start_server(tmp_path, "[location]\ndurability = \"sync\"\n")
    try:
        phones = [ua(server, str(200 + i), kind=kind) for i in range(5)]
        for phone in phones:
            assert phone.request().status_code == 200
        rows = json.loads(server.cli("contacts", "--json").stdout)
        assert len(rows) == 5
    finally:
        assert server.stop() == 0
