"""The parts behind proxy mode, without a server process: the LMDB line
tracker, the JSON Lines CDR sink, the call-event queue and its critical-sink
hook, the [routing] configuration, regfile alternatives, and the sans-IO
proxy (branches, loops, Route handling, response relaying)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time

import pytest

from fastreg import config, parser
from fastreg.bindings import ContactUpdate, SaveRequest
from fastreg.callevents import CallEventQueue
from fastreg.calls import CallRecord, CdrSink
from fastreg.cdr_file import JsonLinesCdrSink, cdr_line
from fastreg.core import SipCore
from fastreg.errors import ConfigError, LineBusy
from fastreg.linetracker import LmdbLineTracker, TrackedCall
from fastreg.location import MemoryLocation
from fastreg.message import Source
from fastreg.proxy import BRANCH_PREFIX, CallEvent, Forward, Hop, Proxy, ProxyPolicy
from fastreg.stats import Counters
from fastreg.store_lmdb import LmdbLocation
from fastreg.users import UserRecord, alternatives_index, parse_alternatives
from fastreg.users.file import parse_regfile

NOW = 1_800_000_000.0
US = ("192.0.2.1", 5060)
SRC = Source("198.51.100.7", 5062, "UDP")


def record(call_id="c1", caller="200", callee="201", started_at=NOW) -> CallRecord:
    return CallRecord(call_id, caller, callee, callee, f"sip:{callee}@198.51.100.9", "198.51.100.7:5062", started_at)


# -- the line tracker ---------------------------------------------------------------


@pytest.fixture
def tracker(tmp_path):
    location = LmdbLocation(str(tmp_path / "location"))
    yield LmdbLineTracker(location)
    location.close()


def test_tracker_counts_a_call_once_per_user_and_forgets_it_at_the_end(tracker):
    assert tracker.start(record(), ("200", "201"), {}) is True
    assert tracker.start(record(), ("200", "201"), {}) is False  # retransmitted INVITE
    assert tracker.counts() == {"200": 1, "201": 1}
    answered = tracker.answer("c1", 200, NOW + 1)
    assert answered.record.answered_at == NOW + 1 and answered.record.status == 200
    assert tracker.answer("c1", 200, NOW + 2) is None  # a retransmitted 200 answers nothing new
    # a non-2xx final response after the answer is a re-INVITE's: the call goes on
    assert tracker.end("c1", NOW + 3, 491, "Request Pending", only_unanswered=True) is None
    ended = tracker.end("c1", NOW + 10, None, "BYE")
    assert ended.record.ended_at == NOW + 10 and ended.record.status == 200 and ended.record.reason == "BYE"
    assert ended.record.duration_s == 9 and ended.users == ("200", "201")
    assert tracker.end("c1", NOW + 11, None, "BYE") is None
    assert tracker.counts() == {} and list(tracker.calls()) == []


def test_tracker_refuses_a_call_past_maxcalls_and_writes_nothing(tracker):
    tracker.start(record("a"), ("200", "201"), {"201": 2})
    tracker.start(record("b", caller="202"), ("202", "201"), {"201": 2})
    with pytest.raises(LineBusy) as busy:
        tracker.start(record("c", caller="203"), ("203", "201"), {"201": 2})
    assert busy.value.status == 486 and busy.value.username == "201"
    assert tracker.counts() == {"200": 1, "201": 2, "202": 1}
    tracker.end("a", NOW, 603, "Decline", only_unanswered=True)
    assert tracker.start(record("c", caller="203"), ("203", "201"), {"201": 2}) is True


def test_tracker_expires_calls_with_no_end_seen(tracker):
    tracker.start(record("ringing", started_at=NOW - 400), ("201",), {})
    tracker.start(record("talking", started_at=NOW - 8000), ("202",), {})
    tracker.answer("talking", 200, NOW - 7990)
    tracker.start(record("fresh", started_at=NOW - 10), ("203",), {})
    ended = {c.record.call_id: c.record.reason for c in tracker.expire(NOW, 7200, 300)}
    assert ended == {"ringing": "Setup Timeout", "talking": "Maximum Duration Exceeded"}
    assert tracker.counts() == {"203": 1}


def test_tracker_takes_long_call_ids(tracker):
    long_id = "x" * 2000
    assert tracker.start(record(long_id), ("201",), {}) is True
    assert tracker.end(long_id, NOW, None, "BYE").record.call_id == long_id


def _start_calls(path: str, prefix: str, n: int) -> None:
    location = LmdbLocation(path)
    tracker = LmdbLineTracker(location)
    for i in range(n):
        tracker.start(record(f"{prefix}-{i}", caller=prefix), (prefix, "shared"), {})
    location.close()


def test_tracker_counts_are_shared_by_processes(tmp_path):
    path = str(tmp_path / "location")
    LmdbLocation(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_start_calls, args=(path, f"p{i}", 50)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    location = LmdbLocation(path)
    try:
        counts = LmdbLineTracker(location).counts()
    finally:
        location.close()
    assert counts == {"p0": 50, "p1": 50, "p2": 50, "shared": 150}


# -- the CDR file ---------------------------------------------------------------------


def finished(call_id="c1") -> CallRecord:
    return CallRecord(call_id, "200", "250", "201", "sip:201@h", "h:1", NOW, NOW + 2, NOW + 62, 200, "BYE")


def test_cdr_line_holds_the_whole_call():
    row = json.loads(cdr_line(finished()))
    assert row == {"call_id": "c1", "caller": "200", "called": "250", "callee": "201", "contact": "sip:201@h",
                   "address": "h:1", "started_at": NOW, "answered_at": NOW + 2, "ended_at": NOW + 62,
                   "duration_s": 60.0, "status": 200, "reason": "BYE"}


def test_file_sink_appends_one_line_per_call_and_rotates_by_size(tmp_path):
    path = tmp_path / "cdr" / "cdr.jsonl"
    sink = JsonLinesCdrSink(str(path), max_bytes=4096, keep=2)
    assert isinstance(sink, CdrSink)

    async def run():
        for i in range(100):
            await sink.initialize(finished(f"call-{i}"))
            await sink.update(finished(f"call-{i}"))
            await sink.finalize(finished(f"call-{i}"))
        await sink.close()
    asyncio.run(run())
    files = sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock"))
    assert files == ["cdr.jsonl", "cdr.jsonl.1", "cdr.jsonl.2"]  # older ones dropped past keep
    for name in files:
        assert (path.parent / name).stat().st_size <= 4096 + 300
        for line in (path.parent / name).read_text().splitlines():
            json.loads(line)
    newest = [json.loads(line)["call_id"] for line in path.read_text().splitlines()]
    assert newest[-1] == "call-99"


def _write_cdrs(path: str, prefix: str, n: int) -> None:
    sink = JsonLinesCdrSink(path, max_bytes=20000, keep=50)
    for i in range(n):
        sink.write(finished(f"{prefix}-{i}"))


def test_file_sink_lines_of_several_processes_never_interleave(tmp_path):
    path = str(tmp_path / "cdr.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_cdrs, args=(path, f"w{i}", 300)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = []
    for name in os.listdir(tmp_path):
        if name.startswith("cdr.jsonl") and not name.endswith(".lock"):
            ids += [json.loads(line)["call_id"] for line in (tmp_path / name).read_text().splitlines()]
    assert sorted(ids) == sorted(f"w{i}-{n}" for i in range(3) for n in range(300))


def test_file_sink_refuses_an_unwritable_place_at_start(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        JsonLinesCdrSink(str(tmp_path / "file" / "cdr.jsonl"))


# -- the event queue -----------------------------------------------------------------------


class Recorder:
    def __init__(self, fail=False):
        self.seen, self.fail, self.closed = [], fail, False

    async def initialize(self, record):
        await self._step("initialize", record)

    async def update(self, record):
        await self._step("update", record)

    async def finalize(self, record):
        await self._step("finalize", record)

    async def _step(self, name, record):
        await asyncio.sleep(0)  # a database sink waits: order must hold anyway
        if self.fail:
            raise OSError("disk full")
        self.seen.append((name, record.call_id))

    async def close(self):
        self.closed = True


class Mirror:
    def __init__(self):
        self.steps = []

    async def initialize(self):
        self.steps.append("init")

    async def increment(self, username):
        self.steps.append(("+", username))

    async def decrement(self, username):
        self.steps.append(("-", username))


def test_event_queue_feeds_sinks_in_order_and_a_failing_critical_sink_refuses_calls():
    good, bad, mirror = Recorder(), Recorder(fail=True), Mirror()
    health = []
    counters = Counters()
    call = TrackedCall(record(), ("200", "201"))

    async def run():
        queue = CallEventQueue([(good, False), (bad, True)], mirror, counters, health.append)
        await queue.initialize([TrackedCall(record("up"), ("201",))])
        queue.start()
        queue.put([CallEvent("start", call), CallEvent("answer", call), CallEvent("end", call)])
        await asyncio.sleep(0.05)
        bad.fail = False
        queue.put([CallEvent("start", TrackedCall(record("c2"), ("200",)))])
        await queue.close()
    asyncio.run(run())
    assert good.seen == [("initialize", "c1"), ("update", "c1"), ("finalize", "c1"), ("initialize", "c2")]
    assert health == ["CDR Sink Recorder Failing", None]  # refused while failing, accepted again after
    assert mirror.steps == ["init", ("+", "201"), ("+", "200"), ("+", "201"), ("-", "200"), ("-", "201"), ("+", "200")]
    assert counters.calls["cdr-failures"] == 3 and counters.calls["started"] == 2
    assert good.closed and bad.closed


def test_a_failing_critical_sink_is_rechecked_when_no_call_writes_to_it():
    # With no call up, nothing is written to the sink: only its check() can
    # end the refusal (the worker calls recheck() once a second).
    class Checked(Recorder):
        async def check(self):
            return not self.fail

    bad, health = Checked(fail=True), []

    async def run():
        queue = CallEventQueue([(bad, True)], None, Counters(), health.append)
        queue.start()
        queue.put([CallEvent("end", TrackedCall(record(), ("200",)))])
        await asyncio.sleep(0.05)
        await queue.recheck()  # still failing: the refusal stays
        still_refused = list(health)
        bad.fail = False
        await queue.recheck()
        await queue.close()
        return still_refused
    assert asyncio.run(run()) == ["CDR Sink Checked Failing"]
    assert health == ["CDR Sink Checked Failing", None]


# -- configuration and users --------------------------------------------------------------


def test_routing_configuration_is_validated():
    assert config.Config().routing.mode == "redirect"
    cfg = config.from_mapping({"routing": {"mode": "proxy", "advertise": "[2001:db8::1]:5070"}})
    assert cfg.routing.advertise == "[2001:db8::1]:5070"
    for bad, key in ((({"mode": "stateful"}), "routing.mode"), ({"advertise": "nohost"}, "routing.advertise"),
                     ({"max_calls_per_user": -1}, "routing.max_calls_per_user"),
                     ({"cdr_keep": 0}, "routing.cdr_keep"), ({"record_rout": True}, "routing.record_rout")):
        with pytest.raises(ConfigError, match=key):
            config.from_mapping({"routing": bad})
    with pytest.raises(ConfigError, match="routing.advertise: required"):
        config.from_mapping({"server": {"listen": ["udp:0.0.0.0:5060"]}, "routing": {"mode": "proxy"}})
    assert config.Config().cdr_path == os.path.join("var", "cdr.jsonl")
    assert config.from_mapping({"routing": {"cdr_file": "-"}}).cdr_path is None


def test_alternatives_are_indexed_from_the_regfile():
    users = parse_regfile("[200]\npassword=a\nalternatives=250, 251,,\n[201]\npassword=b\nalternatives=251\n[202]\n")
    assert parse_alternatives(" 1 ,2,, 3 ") == ("1", "2", "3")
    assert alternatives_index(users.values()) == {"250": ("200",), "251": ("200", "201")}


# -- the sans-IO proxy -------------------------------------------------------------------------


class Users:
    def __init__(self, *records):
        self.records = {r.username: r for r in records}
        self.alternatives = alternatives_index(self.records.values())

    def lookup(self, username):
        return self.records.get(username)

    def users_with_alternative(self, number):
        return self.alternatives.get(number, ())


def register(location, user, contact, path=(), received=("198.51.100.9", 5060), q=None, now=NOW):
    location.save(SaveRequest(f"sip:{user}@example.com", f"reg-{user}-{contact}", 1, None,
                              (ContactUpdate(contact, 3600, q, None, None, ()),), False, tuple(path), received,
                              "UDP", None, now))


def make_proxy(mode="proxy", tracker=None, **policy):
    location = MemoryLocation()
    users = Users(UserRecord("200", "a"), UserRecord("201", "b", settings={"alternatives": "250"}),
                  UserRecord("202", "c"))
    proxy = Proxy(ProxyPolicy(mode=mode, advertise=(("UDP", *US), ("TCP", *US)), own_addresses=frozenset({US}),
                              **policy), location, users, lambda domain: True, tracker=tracker)
    core = SipCore(None, proxy, Counters())
    return core, proxy, location


def request(method="INVITE", ruri="sip:201@example.com", to="<sip:201@example.com>", extra=(), branch="z9hG4bKabc",
            max_forwards="70", cseq=1):
    lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/UDP 198.51.100.7:5062;branch={branch};rport",
             f"Max-Forwards: {max_forwards}", "From: <sip:200@example.com>;tag=f1", f"To: {to}",
             "Call-ID: call-1", f"CSeq: {cseq} {method}", *extra, "Content-Length: 0", "", ""]
    return parser.parse_message("\r\n".join(lines).encode())


def forwarded(outcome) -> tuple:
    assert isinstance(outcome, Forward), outcome
    return parser.parse_message(outcome.data), outcome.hop


def test_branch_is_stable_for_retransmission_cancel_and_ack_and_differs_per_transaction():
    core, _, location = make_proxy()
    register(location, "201", "sip:201@198.51.100.9:5070")
    invite, hop = forwarded(core.handle_routed(request(), SRC, NOW))
    assert hop == Hop("198.51.100.9", 5070, "UDP")
    assert invite.request_uri == "sip:201@198.51.100.9:5070"
    branch = invite.vias[0].branch
    assert branch.startswith(BRANCH_PREFIX) and invite.vias[0].host == "192.0.2.1"
    again, _ = forwarded(core.handle_routed(request(), SRC, NOW))
    cancel, _ = forwarded(core.handle_routed(request("CANCEL"), SRC, NOW))
    ack, _ = forwarded(core.handle_routed(request("ACK", to="<sip:201@example.com>;tag=t9"), SRC, NOW))
    other, _ = forwarded(core.handle_routed(request(branch="z9hG4bKdef"), SRC, NOW))
    assert again.vias[0].branch == cancel.vias[0].branch == ack.vias[0].branch == branch
    assert other.vias[0].branch != branch


def test_max_forwards_is_decremented_or_added_and_zero_gets_483():
    core, _, location = make_proxy()
    register(location, "201", "sip:201@198.51.100.9")
    message, _ = forwarded(core.handle_routed(request(max_forwards="5"), SRC, NOW))
    assert message.get("max-forwards") == "4"
    no_mf = request()
    no_mf.headers = [h for h in no_mf.headers if h[0] != "max-forwards"]
    message, _ = forwarded(core.handle_routed(no_mf, SRC, NOW))
    assert message.get("max-forwards") == "70"
    response = parser.parse_message(core.handle_routed(request(max_forwards="0"), SRC, NOW))
    assert response.status_code == 483


def test_best_contact_wins_and_path_becomes_route():
    core, _, location = make_proxy()
    register(location, "201", "sip:201@198.51.100.9:1", q=0.5)
    register(location, "201", "sip:201@10.0.0.8:2", path=["<sip:203.0.113.5:5062;lr>"], q=0.9)
    message, hop = forwarded(core.handle_routed(request(), SRC, NOW))
    assert message.request_uri == "sip:201@10.0.0.8:2"
    assert message.get_all("route") == ["<sip:203.0.113.5:5062;lr>"]
    assert hop == Hop("203.0.113.5", 5062, "UDP")
    assert message.get_all("record-route") == ["<sip:192.0.2.1:5060;lr>"]


def test_loose_routing_pops_our_route_and_forwards_to_the_next():
    core, _, _ = make_proxy()
    bye = request("BYE", ruri="sip:200@198.51.100.7:5062", to="<sip:201@example.com>;tag=t1",
                  extra=("Route: <sip:192.0.2.1:5060;lr>, <sip:203.0.113.9;lr>",))
    message, hop = forwarded(core.handle_routed(bye, SRC, NOW))
    assert message.get_all("route") == ["<sip:203.0.113.9;lr>"]
    assert message.request_uri == "sip:200@198.51.100.7:5062" and hop == Hop("203.0.113.9", 5060, "UDP")
    # only our route: to the Request-URI, even for a party that is not registered here
    bye = request("BYE", ruri="sip:200@198.51.100.7:5062", to="<sip:201@example.com>;tag=t1",
                  extra=("Route: <sip:192.0.2.1;lr>",))
    message, hop = forwarded(core.handle_routed(bye, SRC, NOW))
    assert message.get("route") is None and hop == Hop("198.51.100.7", 5062, "UDP")
    # a next hop we cannot resolve (no DNS in the core): 502; a host name is
    # not taken for us because we serve every domain
    bye = request("BYE", to="<sip:201@example.com>;tag=t1",
                  extra=("Route: <sip:192.0.2.1;lr>, <sip:sbc.example.net;lr>",))
    response = parser.parse_message(core.handle_routed(bye, SRC, NOW))
    assert response.status_code == 502 and response.reason == "Next Hop Is Not An IP Address"


def test_a_request_with_our_via_and_the_same_identity_is_a_loop():
    core, _, location = make_proxy()
    register(location, "201", "sip:201@198.51.100.9")
    message, _ = forwarded(core.handle_routed(request(), SRC, NOW))
    ours = message.vias[0].raw
    looped = request(extra=(f"Via: {ours}",))
    assert parser.parse_message(core.handle_routed(looped, SRC, NOW)).status_code == 482
    # a spiral (another Request-URI) is not a loop
    spiral = request(ruri="sip:201@198.51.100.9", extra=(f"Via: {ours}",))
    assert isinstance(core.handle_routed(spiral, SRC, NOW), Forward)


def test_responses_are_relayed_by_the_next_via_and_others_dropped():
    core, _, location = make_proxy()
    register(location, "201", "sip:201@198.51.100.9")
    message, _ = forwarded(core.handle_routed(request(), SRC, NOW))
    vias = "\r\n".join(f"Via: {v.raw}" for v in message.vias)
    response = parser.parse_message((f"SIP/2.0 180 Ringing\r\n{vias}\r\nFrom: <sip:200@example.com>;tag=f1\r\n"
                                     "To: <sip:201@example.com>;tag=t1\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\n"
                                     "Content-Length: 0\r\n\r\n").encode())
    outcome = core.handle_response(response, Source("198.51.100.9", 5060, "UDP"), NOW)
    relayed = parser.parse_message(outcome.data)
    assert [v.raw for v in relayed.vias] == [message.vias[1].raw]
    assert outcome.hop == Hop("198.51.100.7", 5062, "UDP")  # rport: the port the request came from
    assert relayed.status_code == 180 and relayed.reason == "Ringing"
    response.vias = response.vias[:1]
    assert core.handle_response(response, SRC, NOW) is None
    assert core.counters.dropped["response-no-via-left"] == 1


def test_redirect_mode_302_lists_alternatives_and_forwards_to_a_registered_contact():
    core, _, location = make_proxy(mode="redirect")
    register(location, "201", "sip:201@198.51.100.9:5070")
    response = parser.parse_message(core.handle_routed(request(ruri="sip:250@example.com",
                                                               to="<sip:250@example.com>"), SRC, NOW))
    assert response.status_code == 302
    assert [c.uri for c in parser.parse_contacts(response.get_all("contact"))] == ["sip:201@198.51.100.9:5070"]
    # the caller follows the 302 back to us: forwarded, not redirected to itself
    outcome = core.handle_routed(request(ruri="sip:201@198.51.100.9:5070", to="<sip:250@example.com>"), SRC, NOW)
    message, hop = forwarded(outcome)
    assert hop == Hop("198.51.100.9", 5070, "UDP") and message.get("record-route") is None
    # the ACK of our own 302 ends here; a CANCEL for a redirected INVITE gets 481
    tag = parser.parse_name_addr(response.get("to")).param("tag")
    assert core.handle_routed(request("ACK", ruri="sip:250@example.com", to=f"<sip:250@example.com>;tag={tag}"),
                              SRC, NOW) is None
    cancel = parser.parse_message(core.handle_routed(request("CANCEL", ruri="sip:250@example.com",
                                                             to="<sip:250@example.com>"), SRC, NOW))
    assert cancel.status_code == 481


def test_gruu_request_uri_selects_the_instance():
    core, _, location = make_proxy()
    location.save(SaveRequest("sip:201@example.com", "r1", 1, None, (
        ContactUpdate("sip:201@198.51.100.9:1", 3600, 1.0, "<urn:uuid:aaa>", 1, ()),
        ContactUpdate("sip:201@198.51.100.9:2", 3600, 0.1, "<urn:uuid:bbb>", 1, ())), False, (),
        ("198.51.100.9", 1), "UDP", None, NOW))
    message, hop = forwarded(core.handle_routed(request(ruri="sip:201@example.com;gr=urn:uuid:bbb"), SRC, NOW))
    assert hop.port == 2 and message.request_uri == "sip:201@example.com;gr=urn:uuid:bbb"


def test_calls_are_started_refused_and_ended_through_the_core(tmp_path):
    location_db = LmdbLocation(str(tmp_path / "location"))
    try:
        tracker = LmdbLineTracker(location_db)
        core, proxy, location = make_proxy(tracker=tracker, max_calls_per_user=1)
        register(location, "201", "sip:201@198.51.100.9")
        outcome = core.handle_routed(request(), SRC, NOW)
        assert [e.kind for e in outcome.events] == ["start"]
        assert outcome.events[0].call.users == ("200", "201")
        busy = parser.parse_message(core.handle_routed(_with_call_id(request(branch="z9hG4bKx"), "call-2"), SRC, NOW))
        assert busy.status_code == 486
        proxy.refuse_new_calls = "CDR Sink Failing"
        refused = parser.parse_message(core.handle_routed(_with_call_id(request(), "call-3"), SRC, NOW))
        assert refused.status_code == 503 and refused.reason == "CDR Sink Failing"
        bye = request("BYE", ruri="sip:201@198.51.100.9", to="<sip:201@example.com>;tag=t1",
                      extra=("Route: <sip:192.0.2.1;lr>",), cseq=2)
        outcome = core.handle_routed(bye, SRC, NOW + 5)
        assert [e.kind for e in outcome.events] == ["end"] and outcome.events[0].call.record.reason == "BYE"
        assert tracker.counts() == {}
    finally:
        location_db.close()


def _with_call_id(message, call_id):
    message.headers = [(n, call_id if n == "call-id" else v) for n, v in message.headers]
    return message


def test_authenticate_callers_asks_untrusted_sources_for_the_from_users_digest():
    from fastreg.auth import DigestAuthenticator
    from sipua import digest_response, parse_challenge

    for mode in ("proxy", "redirect"):
        core, proxy, location = make_proxy(mode=mode, authenticate_callers=True)
        proxy.authenticator = DigestAuthenticator("example.com", [b"k" * 32], 300, ("MD5",))
        proxy.is_trusted = lambda ip: ip == "203.0.113.1"
        register(location, "201", "sip:201@198.51.100.9")
        challenge = parser.parse_message(core.handle_routed(request(), SRC, NOW))
        assert challenge.status_code == 407
        params = parse_challenge(challenge.get("proxy-authenticate"))

        def signed(user, password):
            uri = "sip:201@example.com"
            response = digest_response(user, "example.com", password, "INVITE", uri, params["nonce"], "00000001",
                                       "c0ffee")
            return request(extra=(f'Proxy-Authorization: Digest username="{user}", realm="example.com", '
                                  f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", algorithm=MD5, '
                                  'cnonce="c0ffee", qop=auth, nc=00000001',))
        outcome = core.handle_routed(signed("200", "a"), SRC, NOW)
        if mode == "proxy":
            message, _ = forwarded(outcome)
            assert message.get("proxy-authorization") is None  # consumed here
        else:
            assert parser.parse_message(outcome).status_code == 302
        # another user's valid credentials do not make the call theirs; a wrong password neither
        assert parser.parse_message(core.handle_routed(signed("202", "c"), SRC, NOW)).status_code == 407
        assert parser.parse_message(core.handle_routed(signed("200", "bad"), SRC, NOW)).status_code == 407
        # a trusted peer (the SBC) and in-dialog requests are not challenged
        outcome = core.handle_routed(request(), Source("203.0.113.1", 5060, "UDP"), NOW)
        assert isinstance(outcome, Forward) if mode == "proxy" else parser.parse_message(outcome).status_code == 302


def test_routes_to_other_hosts_are_followed_only_in_our_dialogs_or_from_trusted_peers():
    core, proxy, _ = make_proxy()
    preloaded = request(extra=("Route: <sip:203.0.113.9;lr>",))
    response = parser.parse_message(core.handle_routed(preloaded, SRC, NOW))
    assert response.status_code == 403 and response.reason == "Relaying Denied"
    # our Route entry but no dialog (no To tag): still no relay
    ours = request(ruri="sip:x@203.0.113.50", extra=("Route: <sip:192.0.2.1;lr>",))
    assert parser.parse_message(core.handle_routed(ours, SRC, NOW)).status_code in (403, 404)
    proxy.is_trusted = lambda ip: ip == SRC.host  # the SBC's preloaded route
    message, hop = forwarded(core.handle_routed(request(extra=("Route: <sip:203.0.113.9;lr>",)), SRC, NOW))
    assert hop == Hop("203.0.113.9", 5060, "UDP")


def test_a_response_whose_next_via_is_a_host_name_is_dropped_not_resolved():
    core, _, _ = make_proxy()
    ours = f"SIP/2.0/UDP 192.0.2.1:5060;branch={BRANCH_PREFIX}00112233445566778899"
    response = parser.parse_message((f"SIP/2.0 200 OK\r\nVia: {ours}\r\nVia: SIP/2.0/UDP phone.example.net:5062;"
                                     "branch=z9hG4bKp\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\n"
                                     "Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode())
    assert core.handle_response(response, SRC, NOW) is None
    assert core.counters.dropped["response-unroutable"] == 1
    # with received= (RFC 3261 18.2.1 added it on the way in) it goes there
    response.vias[1] = parser.parse_vias("SIP/2.0/UDP phone.example.net:5062;branch=z9hG4bKp;received=198.51.100.4")[0]
    assert core.handle_response(response, SRC, NOW).hop == Hop("198.51.100.4", 5062, "UDP")
