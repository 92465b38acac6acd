"""call_route wired into routing (a real server process): targets from the
`call_route` query and from a hook module, in redirect mode (the 302 lists
them after the bindings) and in proxy mode (the first target gets a call
for a number without binding, tracked and recorded); the CANCEL and the
ACK of a failed INVITE follow it; refusals and failures; the database down
during a lookup. And a call end to end with PostgreSQL: users, the line
tracker mirror (users.inuse) and the CDR table, next to the JSON Lines CDR."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from conftest import ROOT, json_string, start_server, write_regfile
from sipua import Transport, UserAgent, contacts_of, new_branch
from tcpproxy import TcpProxy
from test_postgres import default_queries
from test_proxy import Phone, calls_json, cdr_rows, invite, wait_for

from fastreg import _pyparse

PROXY = '[routing]\nmode = "proxy"\n'
EXAMPLE = ROOT / "conf" / "hooks_example.py"


class Gateway(Phone):
    """A call_route target: a UDP socket that receives what fastreg forwards
    and answers as a UAS (not registered anywhere)."""

    def __init__(self, server, name: str = "gw") -> None:
        self.server = server
        self.user = name
        self.transport = Transport("UDP", server.address)
        host, port = self.transport.local
        self.contact = f"sip:{name}@{host}:{port}"


def q_values(response) -> list[tuple[str, str]]:
    """(URI, q) of each Contact of a 302, in order."""
    return [(c.uri, c.param("q")) for c in _pyparse.parse_contacts(response.get_all("contact"))]


def inuse(schema) -> dict[str, int]:
    return dict(schema.execute("SELECT username, inuse FROM users ORDER BY username"))


def cdr_table(schema) -> list[tuple]:
    return schema.execute(
        "SELECT call_id, caller, called, callee, contact, status, reason, answered_at IS NOT NULL, "
        "ended_at IS NOT NULL, duration, ended_at >= answered_at FROM cdr ORDER BY id")


def stopped(server) -> None:
    server.stop()
    assert "Traceback" not in server.log(), server.log()


# -- the call_route query ------------------------------------------------------------------------

def test_redirect_302_lists_the_database_targets_after_the_bindings(pg_schema, tmp_path):
    pg_schema.add_users({"alice": "pw-a", "bob": "pw-b", "carol": "pw-c"})
    pg_schema.execute("INSERT INTO routes (called, target, priority) VALUES "
                      "('helpdesk', 'sip:alice@10.0.0.1:5060', 1), ('helpdesk', 'sip:vm@10.0.0.2', 2), "
                      "('bob', 'sip:bob-mobile@10.0.0.3', 1), ('broken', 'not a uri', 1)")
    server = start_server(tmp_path, pg_schema.toml())
    try:
        bob = UserAgent("bob", "pw-b", Transport("UDP", server.address))
        assert bob.request(contacts=["<sip:bob@10.0.0.9>;q=0.5", "<sip:bob@10.0.0.8>"]).status_code == 200
        caller = UserAgent("alice", "pw-a", Transport("UDP", server.address))
        # a number that is nobody: its targets alone, from q=1 down
        r = caller.request("INVITE", request_uri="sip:helpdesk@fastreg.local")
        assert r.status_code == 302
        assert q_values(r) == [("sip:alice@10.0.0.1:5060", "1"), ("sip:vm@10.0.0.2", "0.999")]
        # a registered user: its bindings by q, then its targets below the lowest q
        r = caller.request("INVITE", request_uri="sip:bob@fastreg.local")
        assert r.status_code == 302
        assert q_values(r) == [("sip:bob@10.0.0.8", "1"), ("sip:bob@10.0.0.9", "0.5"),
                               ("sip:bob-mobile@10.0.0.3", "0.499")]
        # any out-of-dialog request routed to a user asks (a MESSAGE too)
        r = caller.request("MESSAGE", request_uri="sip:helpdesk@fastreg.local")
        assert r.status_code == 302 and len(contacts_of(r)) == 2
        # no target, no binding: 480 for a user, 404 for nobody; a row that is no SIP URI is skipped
        assert caller.request("INVITE", request_uri="sip:carol@fastreg.local").status_code == 480
        assert caller.request("INVITE", request_uri="sip:nobody@fastreg.local").status_code == 404
        assert caller.request("INVITE", request_uri="sip:broken@fastreg.local").status_code == 404
        # a domain we do not serve is not asked (and stays 404)
    finally:
        stopped(server)
    assert "not a SIP URI" in server.log()


def test_proxy_forwards_a_number_with_only_a_route_to_its_target_and_writes_the_cdr(pg_schema, tmp_path):
    pg_schema.add_users({"alice": "pw-a"})
    server = start_server(tmp_path, pg_schema.toml(sections=PROXY))
    gateway = Gateway(server)
    alice = Phone(server, "alice", "pw-a")
    try:
        pg_schema.execute("INSERT INTO routes (called, target) VALUES ('helpdesk', %s), "
                          "('named', 'sip:x@gw.example.com')", (gateway.contact,))
        call_id = f"{os.urandom(6).hex()}@route"
        alice.send(invite(alice, "sip:helpdesk@fastreg.local", "sip:helpdesk@fastreg.local", call_id))
        request, _ = gateway.receive_request("INVITE")
        assert request.request_uri == gateway.contact and request.get("route") is None
        assert request.get_all("record-route") == [f"<sip:127.0.0.1:{server.port};lr>"]
        assert request.vias[0].branch.startswith("z9hG4bK-fr") and request.body == b"v=0\n"
        gateway.answer(request, 180, "Ringing")
        assert alice.receive_status(100).status_code == 180
        gateway.answer(request, 200, "OK")
        assert alice.receive_status(200).status_code == 200
        live = wait_for(lambda: calls_json(server)["total"] == 1 and calls_json(server))
        assert live["users"] == {"alice": 1}  # helpdesk is no user: no line of its own
        assert live["calls"][0]["called"] == "helpdesk" and live["calls"][0]["state"] == "answered"
        route = (f"Route: <sip:127.0.0.1:{server.port};lr>",)
        alice.send(invite(alice, gateway.contact, "sip:helpdesk@fastreg.local", call_id, method="ACK",
                          to_tag="callee1", extra=route))
        ack, _ = gateway.receive_request("ACK")
        assert ack.request_uri == gateway.contact
        alice.send(invite(alice, gateway.contact, "sip:helpdesk@fastreg.local", call_id, cseq=2, method="BYE",
                          to_tag="callee1", extra=route))
        bye, _ = gateway.receive_request("BYE")
        gateway.answer(bye, 200, "OK")
        assert alice.receive_status(200).get("cseq") == "2 BYE"
        rows = wait_for(lambda: [r for r in cdr_table(pg_schema) if r[8]], timeout=15)
        assert len(rows) == 1
        (cid, caller, called, callee, contact, status, reason, answered, ended, duration, ordered) = rows[0]
        assert (cid, caller, called, callee, contact, status, reason) == \
            (call_id, "alice", "helpdesk", "helpdesk", gateway.contact, 200, "BYE")
        assert answered and ended and duration >= 0 and ordered
        assert wait_for(lambda: calls_json(server)["total"] == 0)
        # a target that names a host: no DNS in the proxy, 502
        alice.send(invite(alice, "sip:named@fastreg.local", "sip:named@fastreg.local", "named@route"))
        assert alice.receive_status().status_code == 502
    finally:
        gateway.close()
        alice.close()
        stopped(server)


def test_the_database_down_during_a_lookup_is_503_but_bindings_still_route(pg_schema, tmp_path):
    pg_schema.add_users({"alice": "pw-a", "bob": "pw-b"})
    pg_schema.execute("INSERT INTO routes (called, target) VALUES ('helpdesk', 'sip:hd@10.0.0.1')")
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    server = start_server(tmp_path, pg_schema.toml(port=proxy.port))
    try:
        bob = UserAgent("bob", "pw-b", Transport("UDP", server.address))
        assert bob.request().status_code == 200
        caller = UserAgent("alice", "pw-a", Transport("UDP", server.address))
        assert caller.request("INVITE", request_uri="sip:helpdesk@fastreg.local").status_code == 302
        assert caller.request("INVITE", request_uri="sip:bob@fastreg.local").status_code == 302
        proxy.stop()
        r = caller.request("INVITE", request_uri="sip:helpdesk@fastreg.local")
        assert (r.status_code, r.reason, r.get("retry-after")) == (503, "Routing Database Unavailable", "5")
        # a registered user is still reached (cached users, bindings in LMDB), without its extra targets
        r = caller.request("INVITE", request_uri="sip:bob@fastreg.local")
        assert r.status_code == 302 and contacts_of(r) == [bob.contact_uri()]
        proxy.start()
        assert wait_for(lambda: caller.request("INVITE", request_uri="sip:helpdesk@fastreg.local").status_code
                        == 302, timeout=15)
    finally:
        proxy.stop()
        stopped(server)


# -- the call_route hook -------------------------------------------------------------------------

HOOK = """
    import asyncio
    from fastreg.hooks import Refuse

    TARGETS = {}  # called -> targets, filled from the file next to this module
    FILE = __file__.replace("routehooks.py", "targets.txt")

    async def call_route(request):
        if request.called == "raise":
            raise RuntimeError("boom")
        if request.called == "refuse":
            return Refuse(486, "Busy Here")
        if request.called == "nothing":
            return None
        await asyncio.sleep(0.2)  # slow enough that a CANCEL sent at once queues behind it
        with open(FILE) as handle:
            return [line.strip() for line in handle if line.strip()]
"""


@pytest.fixture
def hook_server(tmp_path):
    users = {f"{n}": f"secret{n}" for n in range(300, 304)}
    write_regfile(tmp_path / "regfile.conf", users)
    (tmp_path / "routehooks.py").write_text(textwrap.dedent(HOOK))
    (tmp_path / "targets.txt").write_text("")
    toml = PROXY + f'[hooks]\nmodule = "{tmp_path / "routehooks.py"}"\nfailure_status = 603\n'
    server = start_server(tmp_path, toml)
    yield server, tmp_path / "targets.txt"
    server.stop()
    log = server.log()
    assert log.count("Traceback") == log.count("hook call_route raised"), log  # only the hook's own


def test_hook_targets_refusal_and_failure_in_proxy_mode(hook_server):
    server, targets = hook_server
    gateway = Gateway(server)
    alice = Phone(server, "300")
    try:
        targets.write_text(gateway.contact + "\nsip:second@10.0.0.1\n")
        alice.send(invite(alice, "sip:fwd@fastreg.local", "sip:fwd@fastreg.local", "hook1@test"))
        request, _ = gateway.receive_request("INVITE")
        assert request.request_uri == gateway.contact  # the first target
        gateway.answer(request, 486, "Busy Here")
        assert alice.receive_status().status_code == 486
        alice.send(invite(alice, "sip:refuse@fastreg.local", "sip:refuse@fastreg.local", "hook2@test"))
        r = alice.receive_status()
        assert (r.status_code, r.reason) == (486, "Busy Here")
        alice.send(invite(alice, "sip:raise@fastreg.local", "sip:raise@fastreg.local", "hook3@test"))
        assert alice.receive_status().status_code == 603
        # None: nothing added, today's answers (480 for a user, 404 for nobody)
        alice.send(invite(alice, "sip:nothing@fastreg.local", "sip:nothing@fastreg.local", "hook4@test"))
        assert alice.receive_status().status_code == 404
        targets.write_text("")
        alice.send(invite(alice, "sip:301@fastreg.local", "sip:301@fastreg.local", "hook5@test"))
        assert alice.receive_status().status_code == 480
        assert wait_for(lambda: calls_json(server)["total"] == 0)
        assert [r["status"] for r in wait_for(lambda: cdr_rows(server))] == [486]

        def counted():  # five lookups: targets once, refused once (486), failed once (the raise)
            total = json.loads(server.cli("stats", "--json").stdout)["total"]
            return {k: total.get(f"call_route_{k}") for k in ("asked", "targets", "refused", "failed")}
        assert wait_for(lambda: counted() == {"asked": 5, "targets": 1, "refused": 1, "failed": 1}), counted()
    finally:
        gateway.close()
        alice.close()
    assert "hook call_route raised (Call-ID 'hook3@test')" in server.log()


def test_cancel_and_retransmission_queue_behind_the_lookup_and_follow_the_invite(hook_server):
    server, targets = hook_server
    gateway = Gateway(server)
    alice = Phone(server, "302")
    try:
        targets.write_text(gateway.contact + "\n")
        branch = new_branch()
        ruri = "sip:helpdesk@fastreg.local"
        alice.send(invite(alice, ruri, ruri, "queued@test", branch=branch))
        alice.send(invite(alice, ruri, ruri, "queued@test", branch=branch))  # a retransmission
        alice.send(invite(alice, ruri, ruri, "queued@test", branch=branch, method="CANCEL"))
        first, _ = gateway.receive(5)
        second, _ = gateway.receive(5)
        cancel, _ = gateway.receive(5)
        assert [first.method, second.method, cancel.method] == ["INVITE", "INVITE", "CANCEL"]
        assert first.vias[0].branch == second.vias[0].branch == cancel.vias[0].branch
        assert cancel.request_uri == gateway.contact
        gateway.answer(cancel, 200, "OK")
        gateway.answer(first, 487, "Request Terminated")
        statuses = {alice.receive_status().status_code, alice.receive_status().status_code}
        assert statuses == {200, 487}
        # the ACK of the 487 goes where the INVITE went (its call_route answer was kept)
        alice.send(invite(alice, ruri, ruri, "queued@test", branch=branch, method="ACK", to_tag="callee1"))
        ack, _ = gateway.receive_request("ACK")
        assert ack.vias[0].branch == first.vias[0].branch
        rows = wait_for(lambda: cdr_rows(server))
        assert rows[0]["call_id"] == "queued@test" and rows[0]["status"] == 487
        assert rows[0]["contact"] == gateway.contact
        # a CANCEL sent once the lookup is over goes where its INVITE went, though the
        # hook would now answer otherwise: the INVITE's answer was kept, not asked again
        branch = new_branch()
        alice.send(invite(alice, ruri, ruri, "later@test", branch=branch))
        request, _ = gateway.receive_request("INVITE")
        targets.write_text("sip:elsewhere@10.0.0.1\n")
        alice.send(invite(alice, ruri, ruri, "later@test", branch=branch, method="CANCEL"))
        cancel, _ = gateway.receive_request("CANCEL")
        assert cancel.vias[0].branch == request.vias[0].branch
        gateway.answer(cancel, 200, "OK")
        gateway.answer(request, 487, "Request Terminated")
        assert {alice.receive_status().status_code, alice.receive_status().status_code} == {200, 487}
    finally:
        gateway.close()
        alice.close()


def test_redirect_mode_with_the_hook(tmp_path):
    (tmp_path / "routehooks.py").write_text(textwrap.dedent("""
        def call_route(request):
            return ["sip:" + request.called + "@10.0.0.7", "sip:vm@10.0.0.8"]
    """))
    server = start_server(tmp_path, f'[hooks]\nmodule = "{tmp_path / "routehooks.py"}"\n')
    try:
        caller = UserAgent("alice", "alice-secret", Transport("UDP", server.address))
        r = caller.request("INVITE", request_uri="sip:7000@fastreg.local")
        assert r.status_code == 302
        assert q_values(r) == [("sip:7000@10.0.0.7", "1"), ("sip:vm@10.0.0.8", "0.999")]
        # the registrar itself (no user) and a REGISTER are not asked
        assert caller.request("OPTIONS", request_uri="sip:fastreg.local").status_code == 200
    finally:
        stopped(server)


# -- a call end to end with PostgreSQL -----------------------------------------------------------

def test_call_between_two_database_users_updates_inuse_and_writes_both_cdrs(pg_schema, tmp_path):
    pg_schema.add_users({"alice": "pw-a", "bob": "pw-b"})
    server = start_server(tmp_path, pg_schema.toml(sections=PROXY))
    alice = Phone(server, "alice", "pw-a")
    bob = Phone(server, "bob", "pw-b")
    try:
        call_id = f"{os.urandom(6).hex()}@e2e"
        alice.send(invite(alice, "sip:bob@fastreg.local", "sip:bob@fastreg.local", call_id))
        request, _ = bob.receive_request("INVITE")
        assert request.request_uri == bob.contact
        bob.answer(request, 180, "Ringing")
        assert alice.receive_status(100).status_code == 180
        bob.answer(request, 200, "OK")
        assert alice.receive_status(200).status_code == 200
        assert wait_for(lambda: inuse(pg_schema) == {"alice": 1, "bob": 1}, timeout=15), inuse(pg_schema)
        assert "alice calls=1" in server.cli("calls").stdout and "bob calls=1" in server.cli("calls").stdout
        assert calls_json(server)["users"] == {"alice": 1, "bob": 1}
        started = wait_for(lambda: cdr_table(pg_schema), timeout=15)
        assert [r[:5] for r in started] == [(call_id, "alice", "bob", "bob", bob.contact)]

        route = (f"Route: <sip:127.0.0.1:{server.port};lr>",)
        alice.send(invite(alice, bob.contact, "sip:bob@fastreg.local", call_id, method="ACK", to_tag="callee1",
                          extra=route))
        bob.receive_request("ACK")
        alice.send(invite(alice, bob.contact, "sip:bob@fastreg.local", call_id, cseq=2, method="BYE",
                          to_tag="callee1", extra=route))
        bye, _ = bob.receive_request("BYE")
        bob.answer(bye, 200, "OK")
        assert alice.receive_status(200).get("cseq") == "2 BYE"

        rows = wait_for(lambda: [r for r in cdr_table(pg_schema) if r[8]], timeout=15)
        assert len(rows) == 1
        (cid, caller, called, callee, contact, status, reason, answered, ended, duration, ordered) = rows[0]
        assert (cid, caller, called, callee, contact, status, reason) == \
            (call_id, "alice", "bob", "bob", bob.contact, 200, "BYE")
        assert answered and ended and duration is not None and duration >= 0 and ordered
        assert wait_for(lambda: inuse(pg_schema) == {"alice": 0, "bob": 0}, timeout=15), inuse(pg_schema)
        assert calls_json(server)["total"] == 0
        lines = wait_for(lambda: cdr_rows(server))
        assert [(r["call_id"], r["caller"], r["callee"], r["status"], r["reason"]) for r in lines] == \
            [(call_id, "alice", "bob", 200, "BYE")]
    finally:
        alice.close()
        bob.close()
        stopped(server)


def test_example_hook_forwards_to_another_user_at_its_binding_in_proxy_mode(tmp_path):
    """conf/hooks_example.py: helpdesk -> alice, bob (users of the called domain): the
    first with a binding is reached there; nobody-home is refused."""
    write_regfile(tmp_path / "regfile.conf", {"alice": "pw-a", "bob": "pw-b", "carol": "pw-c"})
    server = start_server(tmp_path, PROXY + f'[hooks]\nmodule = "{EXAMPLE}"\n')
    bob, carol = Phone(server, "bob", "pw-b"), Phone(server, "carol", "pw-c")
    try:
        carol.send(invite(carol, "sip:helpdesk@fastreg.local", "sip:helpdesk@fastreg.local", "desk@test"))
        request, _ = bob.receive_request("INVITE")  # alice has no binding: skipped
        assert request.request_uri == bob.contact
        bob.answer(request, 200, "OK")
        assert carol.receive_status().status_code == 200
        live = wait_for(lambda: calls_json(server)["total"] == 1 and calls_json(server))
        assert live["users"] == {"bob": 1, "carol": 1}
        assert (live["calls"][0]["called"], live["calls"][0]["callee"]) == ("helpdesk", "bob")
        carol.send(invite(carol, "sip:nobody-home@fastreg.local", "sip:nobody-home@fastreg.local", "nh@test"))
        r = carol.receive_status()
        assert (r.status_code, r.reason) == (480, "Nobody Home")
        bob.ua.request("REGISTER", contacts=["*"], expires=0)
        carol.send(invite(carol, "sip:helpdesk@fastreg.local", "sip:helpdesk@fastreg.local", "desk2@test"))
        assert carol.receive_status().status_code == 480  # no target left with a binding
    finally:
        bob.close()
        carol.close()
        stopped(server)


def test_a_database_caller_not_yet_fetched_is_fetched_before_its_call(pg_schema, tmp_path):
    """Proxy mode with users in the database and no call_route: the From user of an
    INVITE is fetched before the core too (its line is counted), not answered 503."""
    pg_schema.add_users({"bob": "pw-b", "carol": "pw-c"})
    queries = "".join(f"{name} = {json_string(text)}\n" for name, text in default_queries().items()
                      if name != "call_route")
    server = start_server(tmp_path, pg_schema.toml(queries=queries, sections=PROXY))
    bob = Phone(server, "bob", "pw-b")
    carol = Gateway(server, "carol")  # never registered here: not in the worker's cache
    try:
        carol.send(invite(carol, "sip:bob@fastreg.local", "sip:bob@fastreg.local", "fetch@test"))
        request, _ = bob.receive_request("INVITE")
        assert wait_for(lambda: calls_json(server)["users"] == {"bob": 1, "carol": 1})
        bob.answer(request, 486, "Busy Here")
        assert carol.receive_status().status_code == 486
        assert wait_for(lambda: calls_json(server)["total"] == 0)
    finally:
        bob.close()
        carol.close()
        stopped(server)


# -- the rules, without a server --------------------------------------------------------------

def test_q_of_the_targets_goes_down_below_the_bindings():
    from types import SimpleNamespace

    from fastreg.proxy import _target_contacts

    def qs(binding_qs, n):
        return [v.rsplit("q=", 1)[1] for _, v in _target_contacts([SimpleNamespace(q=q) for q in binding_qs],
                                                                   [f"sip:t{i}@10.0.0.1" for i in range(n)])]

    assert qs([], 3) == ["1", "0.999", "0.998"]
    assert qs([None, 0.7], 2) == ["0.699", "0.698"]
    assert qs([0.001], 3) == ["0", "0", "0"]  # never below 0
    assert qs([0.0], 1) == ["0"]


def test_targets_that_are_no_sip_uri_are_skipped():
    from fastreg.pgcalls import checked_targets

    assert checked_targets(["sip:a@10.0.0.1", " sips:b@h ", "tel:+123", "sip:x@h\r\nX-Evil: 1", "<sip:c@h>",
                            "garbage", ""], "called", "c1") == ["sip:a@10.0.0.1", "sips:b@h"]


@pytest.mark.parametrize("mode", ["redirect", "proxy"])
def test_which_requests_ask_call_route(mode):
    from fastreg.proxy import Proxy, ProxyPolicy

    proxy = Proxy(ProxyPolicy(mode=mode, own_addresses=frozenset({("127.0.0.1", 5060)})), None, None,
                  lambda domain: domain == "fastreg.local")

    def asks(method, ruri="sip:bob@fastreg.local", to_tag="", route="", cancel=False):
        text = (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
                f"From: <sip:alice@fastreg.local>;tag=1\r\nTo: <sip:bob@fastreg.local>{to_tag}\r\n"
                f"Call-ID: c\r\nCSeq: 1 {method}\r\n{route}Content-Length: 0\r\n\r\n")
        return proxy.wants_call_route(_pyparse.parse_message(text.encode()), cancel=cancel)

    assert asks("INVITE") and asks("MESSAGE") and asks("SUBSCRIBE") and asks("OPTIONS")
    assert not asks("BYE") and not asks("ACK") and not asks("CANCEL") and not asks("REGISTER")
    assert not asks("INVITE", to_tag=";tag=x")  # in a dialog
    assert not asks("INVITE", ruri="sip:fastreg.local")  # the registrar itself
    assert not asks("INVITE", ruri="sip:bob@elsewhere.example")  # a domain not served
    assert not asks("INVITE", ruri="tel:+123")
    assert asks("CANCEL", cancel=True) == (mode == "proxy")  # a CANCEL asks as its INVITE did (proxy mode)
    ours, other = "Route: <sip:127.0.0.1;lr>\r\n", "Route: <sip:10.9.9.9;lr>\r\n"
    assert asks("INVITE", route=ours)  # an outbound proxy's preloaded Route naming us
    assert asks("INVITE", route=other) == (mode == "redirect")  # proxy mode: loose-routed to another hop
