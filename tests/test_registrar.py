"""The registrar core without sockets: one test (or a few) per RFC 3261 10.3 step."""

from __future__ import annotations

import hashlib

import pytest

from fastreg import parser
from fastreg.auth import DigestAuthenticator
from fastreg.core import SipCore
from fastreg.location import MemoryLocation
from fastreg.message import Source
from fastreg.registrar import Registrar, RegistrarPolicy
from fastreg.proxy import Proxy, ProxyPolicy
from fastreg.stats import Counters
from fastreg.throttle import AuthThrottle, MemoryFailureCounter
from fastreg.users import UserRecord

from sipua import digest_response, parse_challenge

REALM = "fastreg.local"
NOW = 1_800_000_000.0
SRC = Source("192.0.2.10", 5062, "UDP")


class Users:
    def __init__(self, records):
        self.records = {r.username: r for r in records}

    def lookup(self, username):
        return self.records.get(username)


def make_core(**policy):
    counters = Counters()
    location = MemoryLocation()
    users = Users([
        UserRecord("alice", password="wonderland"),
        UserRecord("bob", password="builder"),
        UserRecord("carol", ha1=hashlib.md5(f"carol:{REALM}:pw".encode()).hexdigest()),
        UserRecord("dave"),  # exists, cannot authenticate
    ])
    auth = DigestAuthenticator(REALM, [b"k" * 32], 300, policy.pop("algorithms", ("MD5",)))
    throttle = AuthThrottle(MemoryFailureCounter(), max_failures=policy.pop("max_failures", 20))
    pol = RegistrarPolicy(realm=REALM, **policy)
    registrar = Registrar(pol, location, users, auth, throttle, counters)
    # requests for users go through the proxy in redirect mode, as in the worker
    core = SipCore(registrar, Proxy(ProxyPolicy(), location, users, pol.serves_domain), counters)
    return core, location, counters


class Client:
    """Builds REGISTERs as a phone would, against the core directly."""

    def __init__(self, core, user="alice", password="wonderland", domain=REALM, call_id="cid-1@host",
                 source=SRC):
        self.core, self.user, self.password, self.domain = core, user, password, domain
        self.call_id, self.cseq, self.source, self.branch_n = call_id, 0, source, 0

    def raw(self, method="REGISTER", headers=(), ruri=None, to=None, cseq=None, branch=None, call_id=None):
        self.branch_n += 1
        lines = [f"{method} {ruri or 'sip:' + self.domain} SIP/2.0",
                 f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch={branch or 'z9hG4bK' + str(self.branch_n)};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{self.user}@{self.domain}>;tag=ft",
                 f"To: <{to or 'sip:' + self.user + '@' + self.domain}>",
                 f"Call-ID: {call_id or self.call_id}",
                 f"CSeq: {self.cseq if cseq is None else cseq} {method}"]
        lines += list(headers)
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def send(self, data, now=NOW):
        out = self.core.handle_request(parser.parse_message(data), self.source, now)
        return None if out is None else parser.parse_message(out)

    def register(self, headers=(), now=NOW, password=None, nc=1, challenge=None, **kw):
        """REGISTER, 401, REGISTER with credentials: the final response."""
        if challenge is None:
            self.cseq += 1
            first = self.send(self.raw(headers=headers, **kw), now)
            if first.status_code != 401:
                return first
            challenge = parse_challenge(first.get("www-authenticate"))
        self.cseq += 1
        uri = kw.get("ruri") or f"sip:{self.domain}"
        resp = digest_response(self.user, challenge["realm"], password or self.password, "REGISTER", uri,
                               challenge["nonce"], f"{nc:08x}", "cn", "auth", challenge.get("algorithm", "MD5"))
        self.last_challenge = challenge
        auth = (f'Digest username="{self.user}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", '
                f'uri="{uri}", response="{resp}", algorithm={challenge.get("algorithm", "MD5")}, cnonce="cn", '
                f'qop=auth, nc={nc:08x}')
        return self.send(self.raw(headers=list(headers) + [f"Authorization: {auth}"], **kw), now)


def contacts(response):
    return [(c.uri, dict((k.lower(), v) for k, v in c.params))
            for c in parser.parse_contacts(response.get_all("contact")) or []]


@pytest.fixture
def core():
    return make_core()[0]


# -- step 3: authentication ---------------------------------------------------

def test_register_without_credentials_is_challenged(core):
    r = Client(core).send(Client(core).raw(headers=["Contact: <sip:alice@192.0.2.10:5062>"]))
    assert r.status_code == 401
    ch = parse_challenge(r.get("www-authenticate"))
    assert ch["realm"] == REALM and ch["qop"] == "auth" and ch["algorithm"] == "MD5"
    assert r.version == "SIP/2.0" and ";tag=" in r.get("to")


def test_register_with_credentials_binds_and_lists(core):
    r = Client(core).register(["Contact: <sip:alice@192.0.2.10:5062>"])
    assert r.status_code == 200
    assert contacts(r) == [("sip:alice@192.0.2.10:5062", {"expires": "3600"})]
    assert r.get("date")


def test_wrong_password_and_unknown_user_look_the_same(core):
    wrong = Client(core).register(["Contact: <sip:alice@h>"], password="nope")
    unknown = Client(core, user="mallory", password="x").register(["Contact: <sip:m@h>"])
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.reason == unknown.reason


def test_user_without_password_cannot_register(core):
    assert Client(core, user="dave", password="").register(["Contact: <sip:d@h>"]).status_code == 401


def test_ha1_user_registers(core):
    assert Client(core, user="carol", password="pw").register(["Contact: <sip:c@h>"]).status_code == 200


def test_stale_nonce_gets_stale_challenge(core):
    c = Client(core)
    c.cseq += 1
    ch = parse_challenge(c.send(c.raw(headers=["Contact: <sip:a@h>"])).get("www-authenticate"))
    r = c.register(["Contact: <sip:a@h>"], challenge=ch, now=NOW + 1000)
    assert r.status_code == 401 and "stale=true" in r.get("www-authenticate").lower()


def test_forged_nonce_gets_fresh_challenge(core):
    c = Client(core)
    r = c.register(["Contact: <sip:a@h>"], challenge={"realm": REALM, "nonce": "AAAAforged"})
    assert r.status_code == 401 and "stale" not in r.get("www-authenticate").lower()


def test_replayed_nonce_count_does_not_change_bindings(core):
    c = Client(core)
    assert c.register(["Contact: <sip:a@h1>"]).status_code == 200
    ch = c.last_challenge
    # The same nonce and nc again with another Contact: refused.
    r = c.register(["Contact: <sip:a@h2>"], challenge=ch, nc=1)
    assert r.status_code == 401
    # A higher nc on the same nonce is legitimate (Linphone refreshes that way).
    r = c.register(["Contact: <sip:a@h2>"], challenge=ch, nc=2)
    assert r.status_code == 200 and {u for u, _ in contacts(r)} == {"sip:a@h1", "sip:a@h2"}


def test_sha256_challenge_and_response():
    core = make_core(algorithms=("SHA-256", "MD5"))[0]
    c = Client(core)
    c.cseq += 1
    first = c.send(c.raw(headers=["Contact: <sip:a@h>"]))
    algs = [parse_challenge(v)["algorithm"] for v in first.get_all("www-authenticate")]
    assert algs == ["SHA-256", "MD5"]
    assert c.register(["Contact: <sip:a@h>"]).status_code == 200


def test_malformed_authorization_is_400(core):
    c = Client(core)
    c.cseq = 5
    r = c.send(c.raw(headers=["Contact: <sip:a@h>", 'Authorization: Digest username="alice", realm="x']))
    assert r.status_code == 400


def test_throttle_blocks_one_user_from_one_source_only():
    core = make_core(max_failures=3)[0]
    for _ in range(3):
        assert Client(core).register(["Contact: <sip:a@h>"], password="bad").status_code == 401
    assert Client(core).register(["Contact: <sip:a@h>"]).status_code == 403
    other = Client(core, source=Source("192.0.2.99", 5060, "UDP"))
    assert other.register(["Contact: <sip:a@h>"]).status_code == 200
    assert Client(core, user="bob", password="builder").register(["Contact: <sip:b@h>"]).status_code == 200


# -- step 4: authorization ----------------------------------------------------

def test_user_may_not_register_another_aor(core):
    r = Client(core).register(["Contact: <sip:a@h>"], to="sip:bob@" + REALM)
    assert r.status_code == 403


def test_third_party_allowed_when_configured():
    core = make_core(allow_third_party=True)[0]
    assert Client(core).register(["Contact: <sip:a@h>"], to="sip:bob@" + REALM).status_code == 200


# -- steps 1, 2, 5 ------------------------------------------------------------

def test_foreign_domain_is_404():
    core = make_core(domains=frozenset({"example.com"}))[0]
    assert Client(core, domain="other.net").register(["Contact: <sip:a@h>"]).status_code == 404


def test_served_domain_and_ip_request_uri():
    core = make_core(domains=frozenset({"example.com"}))[0]
    c = Client(core, domain="Example.COM")
    assert c.register(["Contact: <sip:a@h>"], ruri="sip:127.0.0.1:5060").status_code == 200


def test_unsupported_require_is_420(core):
    r = Client(core).register(["Contact: <sip:a@h>", "Require: path, foo"])
    assert r.status_code == 420 and r.get("unsupported") == "foo"


def test_aor_is_canonical_to_uri(core):
    c = Client(core)
    assert c.register(["Contact: <sip:a@h>"], to="sip:alice@FASTREG.local:5060;transport=udp").status_code == 200
    _, location, _ = None, core.registrar.location, None
    assert [b.contact for b in location.lookup(f"sip:alice@{REALM}", NOW)] == ["sip:a@h"]


# -- step 6: contacts and expiry ------------------------------------------------

def test_several_contacts_q_values_and_expires_param(core):
    r = Client(core).register(["Contact: <sip:a@h1>;q=0.5, <sip:a@h2>;q=1.0;expires=120",
                               "Contact: \"Alice, A.\" <sip:a@h3>", "Expires: 600"])
    got = {u: p for u, p in contacts(r)}
    assert got["sip:a@h1"] == {"expires": "600", "q": "0.5"}
    assert got["sip:a@h2"] == {"expires": "120", "q": "1"}
    assert got["sip:a@h3"] == {"expires": "600"}
    assert [u for u, _ in contacts(r)][0] == "sip:a@h2"  # highest q first


def test_below_min_expires_is_423(core):
    r = Client(core).register(["Contact: <sip:a@h>;expires=10"])
    assert r.status_code == 423 and r.get("min-expires") == "60"


def test_above_max_expires_is_shortened(core):
    r = Client(core).register(["Contact: <sip:a@h>", "Expires: 99999999999"])
    assert contacts(r)[0][1]["expires"] == "3600"


def test_expires_zero_removes_one_binding(core):
    c = Client(core)
    c.register(["Contact: <sip:a@h1>, <sip:a@h2>"])
    r = c.register(["Contact: <sip:a@h1>;expires=0"])
    assert [u for u, _ in contacts(r)] == ["sip:a@h2"]


def test_star_with_expires_zero_removes_all(core):
    c = Client(core)
    c.register(["Contact: <sip:a@h1>, <sip:a@h2>"])
    r = c.register(["Contact: *", "Expires: 0"])
    assert r.status_code == 200 and contacts(r) == []


@pytest.mark.parametrize("headers", [["Contact: *"], ["Contact: *", "Expires: 5"],
                                     ["Contact: *, <sip:a@h>", "Expires: 0"]])
def test_star_otherwise_is_400(core, headers):
    assert Client(core).register(headers).status_code == 400


def test_register_without_contact_is_a_query(core):
    c = Client(core)
    c.register(["Contact: <sip:a@h1>"])
    r = c.register([], now=NOW + 100)
    assert contacts(r) == [("sip:a@h1", {"expires": "3500"})]


@pytest.mark.parametrize("header", ["Expires: soon", "Expires: -1", "Contact: <sip:a@h>;expires=x",
                                    "Contact: <sip:a@h>;q=2", "Contact: <sip:a@h>;q=abc", "Contact: <sip:@>"])
def test_malformed_values_are_400_and_nothing_applied(core, header):
    c = Client(core)
    headers = [header] if header.startswith("Contact") else ["Contact: <sip:a@h>", header]
    c.cseq = 7
    r = c.send(c.raw(headers=headers))
    assert r.status_code == 400
    assert core.registrar.location.lookup(f"sip:alice@{REALM}", NOW) == ()


@pytest.mark.parametrize("drop", ["Call-ID", "CSeq", "From", "To"])
def test_missing_mandatory_header_is_400(core, drop):
    c = Client(core)
    data = b"\r\n".join(l for l in c.raw(headers=["Contact: <sip:a@h>"]).split(b"\r\n")
                        if not l.startswith(drop.encode() + b":"))
    r = c.send(data)
    assert r.status_code == 400 and drop.lower() in r.reason.lower()


def test_malformed_cseq_is_400(core):
    c = Client(core)
    assert c.send(c.raw(cseq="x")).status_code == 400
    data = c.raw().replace(b"1 REGISTER", b"1 INVITE").replace(b"CSeq: 0 REGISTER", b"CSeq: 1 INVITE")
    assert c.send(data).status_code == 400


# -- step 7: Call-ID and CSeq -----------------------------------------------------

def test_same_call_id_lower_cseq_fails(core):
    c = Client(core)
    c.register(["Contact: <sip:a@h>"])
    c.cseq = 0
    r = c.register(["Contact: <sip:a@h>;expires=0"])
    assert r.status_code == 400
    assert len(core.registrar.location.lookup(f"sip:alice@{REALM}", NOW)) == 1


def test_different_call_id_replaces(core):
    Client(core, call_id="one").register(["Contact: <sip:a@h>"])
    r = Client(core, call_id="two").register(["Contact: <sip:a@h>;expires=0"])
    assert contacts(r) == []


def fresh_authorization(c: Client) -> str:
    """Get a challenge and answer it once (nc=1): an Authorization header
    line to put into hand-built REGISTERs, for tests that resend one exactly."""
    c.cseq += 1
    ch = parse_challenge(c.send(c.raw(headers=["Contact: <sip:a@h>"])).get("www-authenticate"))
    c.cseq += 1
    uri = f"sip:{REALM}"
    resp = digest_response(c.user, REALM, c.password, "REGISTER", uri, ch["nonce"], "00000001", "cn")
    return (f'Authorization: Digest username="{c.user}", realm="{REALM}", nonce="{ch["nonce"]}", uri="{uri}", '
            f'response="{resp}", cnonce="cn", qop=auth, nc=00000001')


def test_exact_retransmission_gets_200_again(core):
    c = Client(core)
    auth = fresh_authorization(c)
    data = c.raw(headers=["Contact: <sip:a@h>", auth], branch="z9hG4bKsame")
    assert c.send(data).status_code == 200
    again = c.send(data, now=NOW + 1)
    assert again.status_code == 200 and [u for u, _ in contacts(again)] == ["sip:a@h"]


# -- Path, RFC 5626, stored details ---------------------------------------------------

def test_path_is_stored_and_echoed_when_supported(core):
    r = Client(core).register(["Contact: <sip:a@h>", "Path: <sip:sbc1.example.net;lr>", "Supported: path"])
    assert r.get_all("path") == ["<sip:sbc1.example.net;lr>"]
    b = core.registrar.location.lookup(f"sip:alice@{REALM}", NOW)[0]
    assert b.path == ("<sip:sbc1.example.net;lr>",)
    assert b.received == ("192.0.2.10", 5062) and b.transport == "UDP"


def test_path_not_echoed_without_supported(core):
    r = Client(core).register(["Contact: <sip:a@h>", "Path: <sip:sbc1.example.net;lr>"])
    assert r.get_all("path") == []


def test_instance_and_reg_id_are_kept_and_echoed(core):
    r = Client(core).register(['Contact: <sip:a@h>;+sip.instance="<urn:uuid:1234>";reg-id=1', "User-Agent: X/1"])
    params = contacts(r)[0][1]
    assert params["+sip.instance"] == "<urn:uuid:1234>" and params["reg-id"] == "1"
    b = core.registrar.location.lookup(f"sip:alice@{REALM}", NOW)[0]
    assert (b.instance_id, b.reg_id, b.user_agent) == ("<urn:uuid:1234>", 1, "X/1")


def test_response_via_gets_received_and_rport(core):
    c = Client(core)
    out = core.handle_request(parser.parse_message(c.raw()), Source("198.51.100.7", 40000, "UDP"), NOW)
    r = parser.parse_message(out)
    assert r.vias[0].branch and ("rport", "40000") in r.vias[0].params and ("received", "198.51.100.7") in r.vias[0].params


def test_status_line_always_sip_2_0(core):
    c = Client(core)
    data = c.raw().replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1)
    out = core.handle_request(parser.parse_message(data), SRC, NOW)
    assert out.startswith(b"SIP/2.0 ")


# -- other methods -----------------------------------------------------------

def test_options_to_registrar(core):
    c = Client(core)
    r = c.send(c.raw("OPTIONS", cseq=1))
    assert r.status_code == 200 and "REGISTER" in r.get("allow")


def test_invite_redirected_by_q(core):
    c = Client(core)
    c.register(["Contact: <sip:a@h1>;q=0.1, <sip:a@h2>;q=0.9"])
    caller = Client(core, user="bob")
    r = caller.send(caller.raw("INVITE", ruri=f"sip:alice@{REALM}", cseq=1))
    assert r.status_code == 302
    assert contacts(r) == [("sip:a@h2", {"q": "0.9"}), ("sip:a@h1", {"q": "0.1"})]


def test_invite_unknown_user_404_unregistered_480(core):
    c = Client(core, user="bob")
    assert c.send(c.raw("INVITE", ruri=f"sip:nobody@{REALM}", cseq=1)).status_code == 404
    assert c.send(c.raw("MESSAGE", ruri=f"sip:alice@{REALM}", cseq=1)).status_code == 480


def test_max_forwards_zero_is_483(core):
    c = Client(core, user="bob")
    data = c.raw("INVITE", ruri=f"sip:alice@{REALM}", cseq=1).replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert c.send(data).status_code == 483


def test_ack_gets_nothing_and_unknown_method_501(core):
    c = Client(core)
    assert c.send(c.raw("ACK", ruri=f"sip:alice@{REALM}", cseq=1)) is None
    r = c.send(c.raw("FROBNICATE", ruri=f"sip:alice@{REALM}", cseq=1))
    assert r.status_code == 501 and r.get("allow")
    r = c.send(c.raw("INVITE", cseq=1))
    assert r.status_code == 405 and r.get("allow") == "REGISTER, OPTIONS"


def test_unsupported_version_is_505(core):
    c = Client(core)
    data = c.raw("OPTIONS", cseq=1).replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)
    r = parser.parse_message(core.handle_request(parser.parse_message(data), SRC, NOW))
    assert r.status_code == 505 and r.version == "SIP/2.0"


def test_retransmitted_unregister_gets_200_not_a_challenge(core):
    """A REGISTER that removed every binding leaves no binding to carry its
    branch; its retransmission is still recognised by its credentials."""
    c = Client(core)
    assert c.register(["Contact: <sip:a@h>"]).status_code == 200
    auth = fresh_authorization(c)
    data = c.raw(headers=["Contact: <sip:a@h>;expires=0", auth], branch="z9hG4bKbye")
    assert contacts(c.send(data)) == []
    again = c.send(data, now=NOW + 1)
    assert again.status_code == 200 and contacts(again) == []
    # The same credentials on another REGISTER are still a replay.
    other = c.raw(headers=["Contact: <sip:a@h2>", auth], branch="z9hG4bKother")
    assert c.send(other).status_code == 401


def test_unoffered_algorithm_gets_a_fresh_challenge_not_400(core):
    c = Client(core)
    c.cseq += 1
    ch = parse_challenge(c.send(c.raw(headers=["Contact: <sip:a@h>"])).get("www-authenticate"))
    ch["algorithm"] = "SHA-256"  # we offered MD5 only
    r = c.register(["Contact: <sip:a@h>"], challenge=ch)
    assert r.status_code == 401 and "algorithm=MD5" in r.get("www-authenticate")


# -- register_headers: the compiled twin (fastreg._cregistrar) agrees with the pure one ---------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastreg import registrar as registrar_mod  # noqa: E402
from fastreg.errors import ParseError  # noqa: E402
from fastreg.message import SipMessage  # noqa: E402

_COMPILED_HEADERS = registrar_mod.register_headers is not registrar_mod.pure_register_headers


def _headers_outcome(fn, request):
    try:
        first, cseq = fn(request)
    except ParseError as error:
        return ("error", type(error), error.status, error.reason)
    return (list(first.items()), cseq, type(cseq))


_HEADER_TEXT = st.text(alphabet=" \t\x0b\x0c\x1c\x1f\xa0\u20030123456789REGISTERinvite-x", max_size=14)
_CSEQ_TEXT = st.one_of(
    _HEADER_TEXT,
    st.builds(lambda pre, n, mid, m, post: f"{pre}{n}{mid}{m}{post}",
              st.sampled_from(["", " ", "\t", "\x1c"]),
              st.sampled_from(["1", "0", "2147483647", "2147483648", "9999999999", "12345678901", "00000000001",
                               "", "1a", "١"]),
              st.sampled_from([" ", "  ", "\t", " \t "]),
              st.sampled_from(["REGISTER", "register", "INVITE", "", "REGISTER x", "REGÍSTER"]),
              st.sampled_from(["", " ", "\x1f", "\u2003"])),
)
_NAMES = ["to", "from", "call-id", "max-forwards", "cseq", "via", "contact"]


@st.composite
def _header_lists(draw):
    headers = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(_NAMES))
        if name == "cseq":
            value = draw(_CSEQ_TEXT)
        elif name == "max-forwards":
            value = draw(st.one_of(_HEADER_TEXT, st.sampled_from(["70", " 255 ", "256", "0000000070", "", "7 0"])))
        else:
            value = draw(st.one_of(st.sampled_from(["<sip:a@b>", "x"]), _HEADER_TEXT))
        headers.append((name, value))
    if draw(st.booleans()):  # a complete request, so that the later checks are reached too
        cseq = draw(st.one_of(st.sampled_from(["1 REGISTER", " 2147483647  REGISTER\t", "7 INVITE"]), _CSEQ_TEXT))
        complete = [("to", "<sip:a@b>"), ("from", "<sip:a@b>"), ("call-id", "c"), ("cseq", cseq)]
        headers = complete + headers if draw(st.booleans()) else headers + complete
    return draw(st.permutations(headers)) if draw(st.booleans()) else headers


@pytest.mark.skipif(not _COMPILED_HEADERS, reason="pure mode: the compiled twin is not in use")
@settings(max_examples=1000, deadline=None)
@given(_header_lists(), st.sampled_from(["REGISTER", "INVITE", "register", ""]))
def test_compiled_register_headers_agree_with_the_pure_ones(headers, method):
    request = SipMessage(method=method, request_uri="sip:b", headers=headers)
    compiled = _headers_outcome(registrar_mod.register_headers, request)
    assert compiled == _headers_outcome(registrar_mod.pure_register_headers, request)


@pytest.mark.skipif(not _COMPILED_HEADERS, reason="pure mode: the compiled twin is not in use")
@pytest.mark.parametrize("headers", [
    (("to", "t"), ("from", "f"), ("call-id", "c"), ("cseq", "1 REGISTER")),  # a tuple of headers
    [["to", "t"], ("from", "f"), ("call-id", "c"), ("cseq", "1 REGISTER")],  # a list as a pair
    [("to", "t", "x")],  # not a pair: dict() refuses it
    [("to", "t"), ("from", "f"), ("call-id", "c"), ("cseq", "1 REGISTER"), ("max-forwards", 70)],
])
def test_compiled_register_headers_odd_shapes(headers):
    request = SipMessage(method="REGISTER", request_uri="sip:b", headers=headers)

    def outcome(fn):
        try:
            return _headers_outcome(fn, request)
        except Exception as exc:  # noqa: BLE001 - the twins must raise the same
            return ("raises", type(exc))

    assert outcome(registrar_mod.register_headers) == outcome(registrar_mod.pure_register_headers)


def _delta_outcome(fn, text):
    try:
        value = fn(text, "Expires")
    except ParseError as error:
        return ("error", error.status, error.reason)
    return (value, type(value))


@pytest.mark.skipif(not _COMPILED_HEADERS, reason="pure mode: the compiled twin is not in use")
@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(alphabet=" \t\x1c\x0b0123456789٣x-+\u2003", max_size=14),
    st.integers(0, 2**70).map(str),
    st.sampled_from(["4294967295", "4294967296", "0004294967296", " 3600 ", "", " ", "1 2", "+1", "-1", "1e3"]),
))
def test_compiled_parse_delta_seconds_agrees(text):
    assert _delta_outcome(registrar_mod.parse_delta_seconds, text) == \
        _delta_outcome(registrar_mod.pure_parse_delta_seconds, text)
