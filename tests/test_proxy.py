"""Proxy mode and call routing through a real server process: two user agents
register through fastreg, one calls the other, fastreg forwards (RFC 3261
16.11), tracks the call and writes its CDR. Redirect mode: alternatives and
the registered-contact rule. Bad input on this path."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from conftest import start_server, write_regfile
from sipua import Transport, UserAgent, new_branch
from fastreg import _pyparse
from fastreg.message import SipMessage

PROXY_TOML = '[routing]\nmode = "proxy"\n'


class Phone:
    """A registered UA on a UDP socket that answers and sends what the test says."""

    def __init__(self, server, user: str, password: str | None = None, extra_register: list[str] | None = None,
                 contact_host: str | None = None) -> None:
        self.server = server
        self.user = user
        self.transport = Transport("UDP", server.address)
        self.ua = UserAgent(user, password or f"secret{user}", self.transport)
        host, port = self.transport.local
        self.contact = f"sip:{user}@{contact_host or host}:{port}"
        response = self.ua.request("REGISTER", contacts=[f"<{self.contact}>"], extra=extra_register or [])
        assert response.status_code == 200, response

    @property
    def local(self) -> tuple[str, int]:
        return self.transport.local

    def send(self, data: bytes, to: tuple[str, int] | None = None) -> None:
        self.transport.sock.sendto(data, to or self.server.address)

    def receive(self, timeout: float = 5.0) -> tuple[SipMessage, bytes]:
        self.transport.sock.settimeout(timeout)
        data, _ = self.transport.sock.recvfrom(65536)
        return _pyparse.parse_message(data), data

    def receive_request(self, method: str, timeout: float = 5.0) -> tuple[SipMessage, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            message, data = self.receive(max(0.1, deadline - time.monotonic()))
            if message.method == method:
                return message, data

    def receive_status(self, minimum: int = 200, timeout: float = 5.0) -> SipMessage:
        deadline = time.monotonic() + timeout
        while True:
            message, _ = self.receive(max(0.1, deadline - time.monotonic()))
            if message.status_code is not None and message.status_code >= minimum:
                return message

    def answer(self, request: SipMessage, status: int, reason: str, to_tag: str = "callee1",
               contact: bool = True) -> bytes:
        """A response to `request`, sent to its top Via (fastreg) as a UAS does."""
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {via.raw}" for via in request.vias]
        lines.append(f"From: {request.get('from')}")
        to = request.get("to")
        if ";tag=" not in to:
            to = f"{to};tag={to_tag}"
        lines.append(f"To: {to}")
        lines.append(f"Call-ID: {request.get('call-id')}")
        lines.append(f"CSeq: {request.get('cseq')}")
        for rr in request.get_all("record-route"):
            lines.append(f"Record-Route: {rr}")
        if contact:
            lines.append(f"Contact: <{self.contact}>")
        lines.append("Content-Length: 0")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        top = request.vias[0]
        self.send(data, (top.host, top.port or 5060))
        return data

    def close(self) -> None:
        self.transport.close()


def invite(caller: Phone, ruri: str, to_uri: str, call_id: str, cseq: int = 1, branch: str | None = None,
           extra: tuple[str, ...] = (), max_forwards: int = 70, method: str = "INVITE", to_tag: str = "",
           via_port: int | None = None, transport: str = "UDP") -> bytes:
    host, port = caller.local
    port = via_port or port
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {host}:{port};branch={branch or new_branch()};rport",
        f"Max-Forwards: {max_forwards}",
        f"From: <sip:{caller.user}@fastreg.local>;tag=caller{call_id[:6]}",
        f"To: <{to_uri}>{';tag=' + to_tag if to_tag else ''}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <{caller.contact}>",
        *extra,
        "Content-Type: application/sdp",
        "Content-Length: 4",
        "",
        "v=0\n",
    ]
    return "\r\n".join(lines[:-1]).encode() + b"\r\n" + lines[-1].encode()


def calls_json(server) -> dict:
    result = server.cli("calls", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def cdr_rows(server) -> list[dict]:
    path = server.state_dir / "cdr.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture
def proxy_server(tmp_path):
    users = {f"{n}": f"secret{n}" for n in range(200, 209)}
    write_regfile(tmp_path / "regfile.conf", users)
    with open(tmp_path / "regfile.conf", "a") as handle:
        handle.write("\n[209]\npassword=secret209\nmaxcalls=1\n")
    server = start_server(tmp_path, PROXY_TOML)
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_call_through_the_proxy_is_forwarded_tracked_and_recorded(proxy_server):
    server = proxy_server
    alice, bob = Phone(server, "200"), Phone(server, "201")
    try:
        call_id = f"{os.urandom(6).hex()}@test"
        alice.send(invite(alice, "sip:201@fastreg.local", "sip:201@fastreg.local", call_id))
        request, raw = bob.receive_request("INVITE")
        # Request-URI is the contact; our Via on top of Alice's; Record-Route; Max-Forwards decremented; body kept
        assert request.request_uri == bob.contact
        assert [v.host for v in request.vias] == ["127.0.0.1", "127.0.0.1"]
        assert request.vias[0].port == server.port and request.vias[0].branch.startswith("z9hG4bK-fr")
        assert request.vias[1].port == alice.local[1]
        assert request.get("max-forwards") == "69"
        assert request.get_all("record-route") == [f"<sip:127.0.0.1:{server.port};lr>"]
        assert request.get("route") is None
        assert request.body == b"v=0\n"
        # a retransmission takes the same branch (and counts the call once)
        alice.send(invite(alice, "sip:201@fastreg.local", "sip:201@fastreg.local", call_id,
                          branch=_branch_of(raw, 1)))
        again, _ = bob.receive_request("INVITE")
        assert again.vias[0].branch == request.vias[0].branch

        bob.answer(request, 180, "Ringing")
        ringing = alice.receive_status(100)
        assert ringing.status_code == 180 and len(ringing.vias) == 1 and ringing.vias[0].port == alice.local[1]
        bob.answer(request, 200, "OK")
        ok = alice.receive_status(200)
        assert ok.status_code == 200 and len(ok.vias) == 1
        assert ok.get_all("record-route") == [f"<sip:127.0.0.1:{server.port};lr>"]

        live = wait_for(lambda: calls_json(server)["total"] == 1 and calls_json(server))
        assert live["users"] == {"200": 1, "201": 1}
        assert live["calls"][0]["state"] == "answered" and live["calls"][0]["callee"] == "201"
        text = server.cli("calls").stdout
        assert "200 calls=1" in text and "201 calls=1" in text

        # in-dialog: ACK and BYE carry the Route from Record-Route and go to Bob's contact
        route = (f"Route: <sip:127.0.0.1:{server.port};lr>",)
        alice.send(invite(alice, bob.contact, "sip:201@fastreg.local", call_id, method="ACK", to_tag="callee1",
                          extra=route))
        ack, _ = bob.receive_request("ACK")
        assert ack.request_uri == bob.contact and ack.get("route") is None
        alice.send(invite(alice, bob.contact, "sip:201@fastreg.local", call_id, cseq=2, method="BYE",
                          to_tag="callee1", extra=route))
        bye, _ = bob.receive_request("BYE")
        bob.answer(bye, 200, "OK")
        assert alice.receive_status(200).get("cseq") == "2 BYE"

        assert wait_for(lambda: calls_json(server)["total"] == 0)
        assert calls_json(server)["users"] == {}
        rows = wait_for(lambda: cdr_rows(server))
        assert len(rows) == 1
        row = rows[0]
        assert row["call_id"] == call_id and row["caller"] == "200" and row["called"] == "201"
        assert row["callee"] == "201" and row["contact"] == bob.contact
        assert row["status"] == 200 and row["reason"] == "BYE"
        assert row["started_at"] <= row["answered_at"] <= row["ended_at"] and row["duration_s"] >= 0

        def counted():
            total = json.loads(server.cli("stats", "--json").stdout)["total"]
            return total.get("calls_started") == 1 and total.get("calls_ended") == 1 \
                and total.get("forwarded_responses") == 3 and total.get("forwarded_requests") == 4
        assert wait_for(counted)
    finally:
        alice.close()
        bob.close()


def _branch_of(raw: bytes, index: int) -> str:
    message = _pyparse.parse_message(raw)
    return message.vias[index].branch


def test_path_becomes_the_route_set_and_the_request_goes_to_the_first_hop(proxy_server):
    server = proxy_server
    sbc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sbc.bind(("127.0.0.1", 0))
    sbc.settimeout(5)
    sbc_port = sbc.getsockname()[1]
    path = f"<sip:127.0.0.1:{sbc_port};lr>"
    bob = Phone(server, "202", extra_register=[f"Path: {path}", "Supported: path"], contact_host="10.1.2.3")
    alice = Phone(server, "203")
    try:
        alice.send(invite(alice, "sip:202@fastreg.local", "sip:202@fastreg.local", "path-call@test"))
        data, _ = sbc.recvfrom(65536)
        request = _pyparse.parse_message(data)
        assert request.method == "INVITE"
        assert request.request_uri == bob.contact  # the private contact, for the SBC to resolve
        assert request.get_all("route") == [path]
        assert request.vias[0].port == server.port
    finally:
        sbc.close()
        alice.close()
        bob.close()


def test_private_contact_registered_from_elsewhere_is_reached_at_the_source(proxy_server):
    server = proxy_server
    bob = Phone(server, "204", contact_host="192.168.77.9")  # behind "NAT": the REGISTER came from 127.0.0.1
    alice = Phone(server, "205")
    try:
        alice.send(invite(alice, "sip:204@fastreg.local", "sip:204@fastreg.local", "nat-call@test"))
        request, _ = bob.receive_request("INVITE")
        assert request.request_uri == bob.contact
    finally:
        alice.close()
        bob.close()


def test_maxcalls_refuses_with_486_and_ended_calls_free_the_line(proxy_server):
    server = proxy_server
    bob = Phone(server, "209")  # maxcalls=1
    alice = Phone(server, "206")
    try:
        alice.send(invite(alice, "sip:209@fastreg.local", "sip:209@fastreg.local", "first@test"))
        first, _ = bob.receive_request("INVITE")
        bob.answer(first, 200, "OK")
        assert alice.receive_status().status_code == 200
        alice.send(invite(alice, "sip:209@fastreg.local", "sip:209@fastreg.local", "second@test"))
        busy = alice.receive_status()
        assert busy.status_code == 486 and busy.reason == "Busy Here"
        # the ACK of our own 486 is absorbed, not forwarded to Bob
        alice.send(invite(alice, "sip:209@fastreg.local", "sip:209@fastreg.local", "second@test",
                          method="ACK", to_tag=_to_tag(busy), branch=None))
        # a non-2xx final response ends a call: the callee declines a third one after the first ends
        route = (f"Route: <sip:127.0.0.1:{server.port};lr>",)
        alice.send(invite(alice, bob.contact, "sip:209@fastreg.local", "first@test", cseq=2, method="BYE",
                          to_tag="callee1", extra=route))
        bye, _ = bob.receive_request("BYE")  # not the ACK of the 486
        bob.answer(bye, 200, "OK")
        assert alice.receive_status().status_code == 200
        assert wait_for(lambda: calls_json(server)["total"] == 0)
        alice.send(invite(alice, "sip:209@fastreg.local", "sip:209@fastreg.local", "third@test"))
        third, _ = bob.receive_request("INVITE")
        bob.answer(third, 603, "Decline")
        assert alice.receive_status().status_code == 603
        assert wait_for(lambda: len(cdr_rows(server)) == 2)
        rows = {r["call_id"]: r for r in cdr_rows(server)}
        assert rows["third@test"]["status"] == 603 and rows["third@test"]["answered_at"] is None
        assert rows["third@test"]["duration_s"] is None
        assert calls_json(server)["users"] == {}
    finally:
        alice.close()
        bob.close()


def _to_tag(response: SipMessage) -> str:
    return _pyparse.parse_name_addr(response.get("to")).param("tag")


def test_cancel_takes_the_branch_of_the_invite_and_487_ends_the_call(proxy_server):
    server = proxy_server
    bob, alice = Phone(server, "207"), Phone(server, "208")
    try:
        branch = new_branch()
        alice.send(invite(alice, "sip:207@fastreg.local", "sip:207@fastreg.local", "cancel@test", branch=branch))
        request, _ = bob.receive_request("INVITE")
        alice.send(invite(alice, "sip:207@fastreg.local", "sip:207@fastreg.local", "cancel@test", branch=branch,
                          method="CANCEL"))
        cancel, _ = bob.receive_request("CANCEL")
        assert cancel.vias[0].branch == request.vias[0].branch
        bob.answer(cancel, 200, "OK")
        bob.answer(request, 487, "Request Terminated")
        statuses = {alice.receive_status().status_code, alice.receive_status().status_code}
        assert statuses == {200, 487}
        rows = wait_for(lambda: cdr_rows(server))
        assert rows[0]["call_id"] == "cancel@test" and rows[0]["status"] == 487
        assert calls_json(server)["total"] == 0
    finally:
        alice.close()
        bob.close()


def test_bad_input_on_the_proxy_path(proxy_server):
    server = proxy_server
    bob, alice = Phone(server, "200"), Phone(server, "201")
    try:
        alice.send(invite(alice, "sip:200@fastreg.local", "sip:200@fastreg.local", "mf0@test", max_forwards=0))
        response = alice.receive_status()
        assert response.status_code == 483
        alice.send(invite(alice, "sip:200@fastreg.local", "sip:200@fastreg.local", "route@test",
                          extra=("Route: <sip:127.0.0.1:1;lr",)))
        response = alice.receive_status()
        assert response.status_code == 400 and response.reason == "Malformed Route"
        # a response whose only Via is ours: nobody to relay it to, dropped and counted
        lonely = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{server.port};branch=z9hG4bK-fr0123456789abcdefabcd\r\n"
                  "From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: lonely@test\r\nCSeq: 1 INVITE\r\n"
                  "Content-Length: 0\r\n\r\n").encode()
        alice.send(lonely)
        # a response that is not ours (someone else's Via) is dropped too
        alice.send(lonely.replace(f"127.0.0.1:{server.port}".encode(), b"192.0.2.1:5060"))

        def dropped():
            total = json.loads(server.cli("stats", "--json").stdout)["total"]
            return total.get("dropped_response-no-via-left") == 1 and total.get("dropped_response") == 1
        assert wait_for(dropped)
        # unknown user: 404; known but not registered: 480
        alice.send(invite(alice, "sip:nobody@fastreg.local", "sip:nobody@fastreg.local", "404@test"))
        assert alice.receive_status().status_code == 404
        alice.send(invite(alice, "sip:203@fastreg.local", "sip:203@fastreg.local", "480@test"))
        assert alice.receive_status().status_code == 480
        assert server.alive()
    finally:
        alice.close()
        bob.close()


def test_a_request_that_comes_back_unchanged_is_a_loop(proxy_server):
    """A contact that is fastreg itself: the request spirals once (new
    Request-URI), then comes back unchanged and gets 482."""
    server = proxy_server
    caller = Phone(server, "206")
    looper = Transport("UDP", server.address)
    ua = UserAgent("205", "secret205", looper)
    contact = f"sip:205@127.0.0.1:{server.port}"
    assert ua.request("REGISTER", contacts=[f"<{contact}>"]).status_code == 200
    try:
        caller.send(invite(caller, "sip:205@fastreg.local", "sip:205@fastreg.local", "loop@test"))
        response = caller.receive_status()
        assert response.status_code == 482 and len(response.vias) == 1
        assert wait_for(lambda: calls_json(server)["total"] == 0)
    finally:
        looper.close()
        caller.close()


# -- redirect mode --------------------------------------------------------------------


@pytest.fixture
def redirect_server(tmp_path):
    users = {f"{n}": f"secret{n}" for n in range(200, 205)}
    write_regfile(tmp_path / "regfile.conf", users)
    text = (tmp_path / "regfile.conf").read_text()
    text = text.replace("[200]\npassword=secret200\n", "[200]\npassword=secret200\nalternatives=250, 251\n")
    text = text.replace("[201]\npassword=secret201\n", "[201]\npassword=secret201\nalternatives=251\n")
    (tmp_path / "regfile.conf").write_text(text)
    server = start_server(tmp_path)
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_alternatives_reach_the_user_in_redirect_mode(redirect_server):
    server = redirect_server
    first, second, caller = Phone(server, "200"), Phone(server, "201"), Phone(server, "203")
    try:
        caller.send(invite(caller, "sip:250@fastreg.local", "sip:250@fastreg.local", "alt@test"))
        response = caller.receive_status()
        assert response.status_code == 302
        assert [c.uri for c in _pyparse.parse_contacts(response.get_all("contact"))] == [first.contact]
        # a number listed by two users: the contacts of both
        caller.send(invite(caller, "sip:251@fastreg.local", "sip:251@fastreg.local", "alt2@test"))
        response = caller.receive_status()
        assert response.status_code == 302
        assert sorted(c.uri for c in _pyparse.parse_contacts(response.get_all("contact"))) == \
            sorted([first.contact, second.contact])
        # an alternative whose users are not registered: 480, not 404
        second.ua.request("REGISTER", contacts=["*"], expires=0)
        first.ua.request("REGISTER", contacts=["*"], expires=0)
        caller.send(invite(caller, "sip:250@fastreg.local", "sip:250@fastreg.local", "alt3@test"))
        assert caller.receive_status().status_code == 480
    finally:
        first.close()
        second.close()
        caller.close()


def test_following_the_302_through_the_registrar_does_not_loop(redirect_server):
    """Linphone sends the INVITE back through the registrar with the contact as
    Request-URI: it is forwarded to the contact, not redirected to itself."""
    server = redirect_server
    bob, alice = Phone(server, "202"), Phone(server, "203")
    try:
        alice.send(invite(alice, "sip:202@fastreg.local", "sip:202@fastreg.local", "follow@test"))
        redirect = alice.receive_status()
        assert redirect.status_code == 302
        target = _pyparse.parse_contacts(redirect.get_all("contact"))[0].uri
        alice.send(invite(alice, target, "sip:202@fastreg.local", "follow@test", cseq=2))
        request, _ = bob.receive_request("INVITE")
        assert request.request_uri == bob.contact and request.get("record-route") is None
        bob.answer(request, 200, "OK")
        assert alice.receive_status().status_code == 200
        assert calls_json(server)["total"] == 0  # redirect mode tracks no call
    finally:
        alice.close()
        bob.close()


def test_responses_reach_a_caller_behind_nat_and_a_caller_over_tcp(proxy_server):
    """The caller's Via names another port than the one it sends from (a
    NAT): fastreg adds received/rport before forwarding, and the responses
    come back to the real source. A caller over TCP gets them on its
    connection, while the callee is reached over UDP."""
    server = proxy_server
    bob, alice = Phone(server, "200"), Phone(server, "201")
    tcp = Transport("TCP", server.address)
    try:
        alice.send(invite(alice, "sip:200@fastreg.local", "sip:200@fastreg.local", "nat@test", via_port=9))
        request, _ = bob.receive_request("INVITE")
        assert request.vias[1].port == 9
        assert dict(request.vias[1].params)["rport"] == str(alice.local[1])
        assert dict(request.vias[1].params)["received"] == "127.0.0.1"
        bob.answer(request, 486, "Busy Here")
        assert alice.receive_status().status_code == 486

        tcp.send(invite(alice, "sip:200@fastreg.local", "sip:200@fastreg.local", "tcp@test",
                        via_port=tcp.local[1], transport="TCP"))
        request, _ = bob.receive_request("INVITE")
        assert request.vias[0].transport == "UDP" and request.vias[1].transport == "TCP"
        bob.answer(request, 180, "Ringing")
        bob.answer(request, 200, "OK")
        statuses = [tcp.receive().status_code, tcp.receive().status_code]
        assert statuses == [180, 200]
    finally:
        tcp.close()
        alice.close()
        bob.close()


def test_calls_through_two_workers_share_counts_and_cdrs(tmp_path):
    """With two workers the INVITE, its responses and the BYE land on either
    worker (the kernel spreads datagrams): the calls are counted and
    recorded once all the same."""
    server = start_server(tmp_path, PROXY_TOML, workers=2)
    bob, alice = Phone(server, "200"), Phone(server, "201")
    try:
        route = (f"Route: <sip:127.0.0.1:{server.port};lr>",)
        for n in range(10):
            call_id = f"two-workers-{n}@test"
            alice.send(invite(alice, "sip:200@fastreg.local", "sip:200@fastreg.local", call_id))
            request, _ = bob.receive_request("INVITE")
            bob.answer(request, 200, "OK")
            assert alice.receive_status().status_code == 200
            alice.send(invite(alice, bob.contact, "sip:200@fastreg.local", call_id, cseq=2, method="BYE",
                              to_tag="callee1", extra=route))
            bye, _ = bob.receive_request("BYE")
            bob.answer(bye, 200, "OK")
            assert alice.receive_status().status_code == 200
        rows = wait_for(lambda: len(cdr_rows(server)) == 10 and cdr_rows(server))
        assert sorted(r["call_id"] for r in rows) == sorted(f"two-workers-{n}@test" for n in range(10))
        assert all(r["status"] == 200 and r["reason"] == "BYE" for r in rows)
        assert calls_json(server) == {"users": {}, "total": 0, "calls": []}
    finally:
        alice.close()
        bob.close()
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_a_call_whose_final_response_never_comes_is_closed_by_the_sweeper(tmp_path):
    server = start_server(tmp_path, '[routing]\nmode = "proxy"\nmax_setup_s = 0.5\n'
                          '[location]\nsweep_interval_s = 0.2\n')
    bob, alice = Phone(server, "200"), Phone(server, "201")
    try:
        alice.send(invite(alice, "sip:200@fastreg.local", "sip:200@fastreg.local", "silent@test"))
        bob.receive_request("INVITE")  # and never answers
        rows = wait_for(lambda: cdr_rows(server), timeout=10)
        assert rows[0]["call_id"] == "silent@test" and rows[0]["reason"] == "Setup Timeout"
        assert rows[0]["status"] is None and rows[0]["answered_at"] is None
        assert calls_json(server)["users"] == {}
    finally:
        alice.close()
        bob.close()
        server.stop()
    assert "Traceback" not in server.log(), server.log()
