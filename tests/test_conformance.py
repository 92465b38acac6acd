"""Black-box conformance: RFC 3261 section 10 (registrars), RFC 7616 (digest),
RFC 3327 (Path), RFC 5626 (instance / reg-id), RFC 3581 (rport), over UDP
and over TCP, against real `fastreg serve` processes.

Everything here goes over the wire: requests are written byte by byte and
responses are read with a small parser of this file, independent of
fastreg's own. One main server is started per module (default
configuration, users from a regfile.conf); a second one carries the
settings a few checks need (`domains`, `algorithms = ["SHA-256", "MD5"]`,
`nonce_ttl = 10`, `min_expires = 1`). Each test uses its own users and
Call-IDs, so the tests do not interfere and can run in any order.

Every check runs twice: with users from the regfile (`backend = "file"`)
and with users from PostgreSQL (`backend = "postgres"`, the default queries
of conf/fastreg-postgres.toml, in a schema of its own in database `test`).

The one check that needs time to pass (a stale nonce, the expiry sweep) gets
its nonce and its short binding when the second server starts, and waits
only for what is left of the 11 s by the time it runs (nothing, usually).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from email.utils import parsedate_to_datetime

import pytest

from sipua import digest_response

from conftest import TEST_USERS, start_server

DOMAIN = "fastreg.local"
REALM = "fastreg.local"
KINDS = ["UDP", "TCP"]

# 200..219 as in conftest, plus a pool that hands every test its own users.
POOL = {str(n): f"pw-{n}-x" for n in range(3000, 5000)}
USERS = {**TEST_USERS, **POOL}
_pool = iter(sorted(POOL))

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
           "k": "supported", "c": "content-type", "s": "subject", "e": "content-encoding", "o": "event",
           "u": "allow-events", "r": "refer-to"}

pytestmark = pytest.mark.parametrize("kind", KINDS)


def next_user() -> str:
    return next(_pool)


def uid() -> str:
    return os.urandom(6).hex()


# -- a small response parser of our own ----------------------------------------------------

def split_commas(value: str) -> list[str]:
    """Split a header value at commas outside quotes and angle brackets."""
    parts, depth, quoted, escaped, start = [], 0, False, False, 0
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def split_params(text: str) -> list[str]:
    """Split at ';' outside quotes."""
    parts, quoted, start = [], False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_contact(entry: str) -> tuple[str, dict[str, str | None]]:
    """(uri, header params with lower-case names) of one Contact / Path entry."""
    entry = entry.strip()
    if "<" in entry:
        uri = entry[entry.index("<") + 1:entry.index(">")]
        rest = entry[entry.index(">") + 1:]
    else:
        uri, _, rest = entry.partition(";")
        rest = ";" + rest if rest else ""
    params: dict[str, str | None] = {}
    for item in split_params(rest)[1:]:
        name, sep, value = item.partition("=")
        if name.strip():
            params[name.strip().lower()] = value.strip() if sep else None
    return uri.strip(), params


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """(scheme, params) of a WWW-Authenticate value; params keep whether they were quoted
    in `params['<name>:quoted']`."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    for m in re.finditer(r'([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))', rest):
        name = m.group(1).lower()
        params[name] = m.group(2) if m.group(2) is not None else m.group(3)
        params[name + ":quoted"] = "yes" if m.group(2) is not None else ""
    return scheme, params


class Response:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        self.start_line = lines[0]
        self.version, code, self.reason = (lines[0].split(" ", 2) + ["", ""])[:3]
        self.status = int(code) if code.isdigit() else -1
        unfolded: list[str] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and unfolded:
                unfolded[-1] += " " + line.strip()
            else:
                unfolded.append(line)
        self.headers: list[tuple[str, str]] = []
        for line in unfolded:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            self.headers.append((COMPACT.get(name, name), value.strip()))

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def values(self, name: str) -> list[str]:
        """Every comma-separated entry of every `name` header, in order."""
        return [part for value in self.get_all(name) for part in split_commas(value)]

    @property
    def contacts(self) -> dict[str, dict[str, str | None]]:
        return dict(parse_contact(entry) for entry in self.values("contact"))

    @property
    def contact_list(self) -> list[tuple[str, dict[str, str | None]]]:
        return [parse_contact(entry) for entry in self.values("contact")]

    @property
    def challenges(self) -> list[dict[str, str]]:
        out = []
        for value in self.get_all("www-authenticate"):
            scheme, params = parse_challenge(value)
            params["scheme"] = scheme
            out.append(params)
        return out

    def expires_of(self, uri: str) -> int:
        return int(self.contacts[uri]["expires"])

    def __repr__(self) -> str:
        return f"<Response {self.start_line!r}>"


# -- transports ---------------------------------------------------------------------------

class Conn:
    """One client socket: a UDP socket or a TCP connection."""

    def __init__(self, kind: str, server: tuple[str, int], bind: str = "127.0.0.1") -> None:
        self.kind = kind
        self.server = server
        if kind == "UDP":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((bind, 0))
        else:
            self.sock = socket.create_connection(server, timeout=5, source_address=(bind, 0))
        self.local = self.sock.getsockname()[:2]
        self.buffer = b""

    def send(self, data: bytes) -> None:
        if self.kind == "UDP":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float = 3.0) -> Response:
        self.sock.settimeout(timeout)
        if self.kind == "UDP":
            return Response(self.sock.recvfrom(65536)[0])
        deadline = time.monotonic() + timeout
        while True:
            self.buffer = self.buffer.lstrip(b"\r\n")
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buffer[:end].decode("utf-8", "replace")
                m = re.search(r"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
                total = end + 4 + (int(m.group(1)) if m else 0)
                if len(self.buffer) >= total:
                    raw, self.buffer = self.buffer[:total], self.buffer[total:]
                    return Response(raw)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def new_branch() -> str:
    return "z9hG4bK" + uid()


def digest(algorithm: str, user: str, realm: str, password: str, method: str, uri: str, nonce: str,
           nc: str | None, cnonce: str | None, qop: str | None) -> str:
    # The test client's own RFC 7616 computation (tests/sipua.py), never the registrar's.
    return digest_response(user, realm, password, method, uri, nonce, nc, cnonce, qop, algorithm)


class Phone:
    """One user's client on one connection, with its own Call-ID and CSeq."""

    def __init__(self, conn: Conn, user: str, password: str | None = None, domain: str = DOMAIN) -> None:
        self.conn = conn
        self.user = user
        self.password = USERS.get(user, "nope") if password is None else password
        self.domain = domain
        self.call_id = f"{uid()}@conformance"
        self.tag = uid()
        self.cseq = 0
        self.last_challenge: dict[str, str] | None = None
        self.last_auth: dict[str, str] | None = None
        self.last_request = b""

    @property
    def kind(self) -> str:
        return self.conn.kind

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def contact(self, n: int = 1, user: str | None = None) -> str:
        """A contact URI of this device (not its socket: the registrar never uses it)."""
        return f"sip:{user or self.user}@192.0.2.{n}:5060"

    def via(self, branch: str | None = None, rport: bool = True) -> str:
        host, port = self.conn.local
        return f"SIP/2.0/{self.kind} {host}:{port};branch={branch or new_branch()}" + (";rport" if rport else "")

    def build(self, method: str = "REGISTER", *, ruri: str | None = None, contacts=None, expires=None,
              headers=(), auth: str | None = None, cseq: int | None = None, branch: str | None = None,
              call_id: str | None = None, to: str | None = None, from_: str | None = None,
              vias: list[str] | None = None, body: bytes = b"", content_length: bool = True,
              max_forwards: int | None = 70, version: str = "SIP/2.0") -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        lines = [f"{method} {ruri or 'sip:' + self.domain} {version}"]
        lines += [f"Via: {v}" for v in (vias if vias is not None else [self.via(branch)])]
        if max_forwards is not None:
            lines.append(f"Max-Forwards: {max_forwards}")
        lines.append(f"From: {from_ or f'<{self.aor}>'};tag={self.tag}")
        lines.append(f"To: {to or f'<{self.aor}>'}")
        lines.append(f"Call-ID: {call_id or self.call_id}")
        lines.append(f"CSeq: {cseq} {method}")
        for contact in contacts or ():
            lines.append(f"Contact: {contact}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if auth is not None:
            lines.append(f"Authorization: {auth}")
        lines.extend(headers)
        if content_length:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def send(self, data: bytes) -> None:
        self.last_request = data
        self.conn.send(data)

    def transact(self, data: bytes, timeout: float = 3.0) -> Response:
        self.send(data)
        while True:
            response = self.conn.recv(timeout)
            if response.status >= 200:
                return response

    def request(self, method: str = "REGISTER", **kw) -> Response:
        return self.transact(self.build(method, **kw))

    def authorization(self, challenge: dict[str, str], method: str = "REGISTER", uri: str | None = None,
                      nc: int = 1, password: str | None = None, algorithm: str | None = None,
                      qop: str | None = "auth", cnonce: str | None = None, username: str | None = None,
                      realm: str | None = None, nonce: str | None = None, with_algorithm: bool = True,
                      response: str | None = None, extra: str = "") -> str:
        uri = uri or f"sip:{self.domain}"
        algorithm = algorithm or challenge.get("algorithm", "MD5")
        cnonce = cnonce or uid()
        nonce = nonce or challenge["nonce"]
        realm = realm or challenge["realm"]
        nc_text = f"{nc:08x}"
        value = response if response is not None else digest(algorithm, username or self.user, realm, password or self.password, method,
                                   uri, nonce, nc_text if qop else None, cnonce, qop)
        parts = [f'username="{username or self.user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"',
                 f'response="{value}"']
        if with_algorithm:
            parts.append(f"algorithm={algorithm}")
        if qop:
            parts += [f'cnonce="{cnonce}"', f"qop={qop}", f"nc={nc_text}"]
        elif algorithm.upper().endswith("-SESS"):
            parts.append(f'cnonce="{cnonce}"')
        if "opaque" in challenge:
            parts.append(f'opaque="{challenge["opaque"]}"')
        self.last_auth = {"nonce": nonce, "cnonce": cnonce, "nc": nc_text, "uri": uri, "algorithm": algorithm}
        return "Digest " + ", ".join(parts) + extra

    def challenge(self, method: str = "REGISTER", **kw) -> dict[str, str]:
        response = self.request(method, **kw)
        assert response.status == 401, response.raw
        self.last_challenge = response.challenges[0]
        return self.last_challenge

    def register(self, contacts=None, expires=None, *, algorithm: str | None = None,
                 auth_kw: dict | None = None, **kw) -> Response:
        """REGISTER; when challenged, again with credentials. The final response."""
        ruri = kw.get("ruri")
        first = self.request(contacts=contacts, expires=expires, **kw)
        if first.status != 401:
            return first
        challenges = first.challenges
        if algorithm:
            base = algorithm.upper().removesuffix("-SESS")
            challenges = [c for c in challenges if c.get("algorithm", "MD5").upper() == base] or challenges
        self.last_challenge = challenges[0]
        auth = self.authorization(challenges[0], uri=ruri, algorithm=algorithm, **(auth_kw or {}))
        return self.request(contacts=contacts, expires=expires, auth=auth, **kw)

    def query(self, **kw) -> Response:
        return self.register(None, **kw)

    def bindings(self) -> dict[str, dict[str, str | None]]:
        response = self.query()
        assert response.status == 200, response.raw
        return response.contacts


# -- servers ------------------------------------------------------------------------------

SECOND_TOML = """
[registrar]
domains = ["fastreg.local"]
min_expires = 1
[auth]
algorithms = ["SHA-256", "MD5"]
nonce_ttl = 10
"""


@pytest.fixture(scope="module", params=["file", "postgres"])
def backend(request):
    """The users backend of this round of checks: "file", or the PostgreSQL schema."""
    if request.param == "file":
        return None
    schema = request.getfixturevalue("pg_test").new_schema()
    schema.add_users(USERS)
    return schema


def users_toml(backend, sections: str = "") -> str:
    return sections if backend is None else backend.toml(sections=sections)


@pytest.fixture(scope="module")
def srv2(tmp_path_factory, backend):
    server = start_server(tmp_path_factory.mktemp("second"), users_toml(backend, SECOND_TOML), users=USERS)
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def early(srv2):
    """Taken when the second server starts: a challenge per transport (to be stale later)
    and a binding of 2 s per transport (to be swept later)."""
    state = {"at": time.monotonic(), "nonces": {}, "short": {}}
    for kind in KINDS:
        conn = Conn(kind, srv2.address)
        phone = Phone(conn, next_user())
        state["nonces"][kind] = (phone.user, phone.challenge(contacts=[f"<{phone.contact()}>"]))
        short = Phone(conn, next_user())
        r = short.register([f"<{short.contact()}>"], 2, algorithm="MD5")
        assert r.status == 200, r.raw
        state["short"][kind] = short.user
        conn.close()
    return state


@pytest.fixture(scope="module")
def srv(tmp_path_factory, early, backend):
    server = start_server(tmp_path_factory.mktemp("main"), users_toml(backend), users=USERS)
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def conns():
    opened: list[Conn] = []
    yield opened
    for conn in opened:
        conn.close()


@pytest.fixture
def mk(srv, kind, conns):
    """mk() -> a Phone for a fresh user on a fresh connection to the main server."""
    def make(user: str | None = None, server=None, conn: Conn | None = None, **kw) -> Phone:
        if conn is None:
            conn = Conn(kind, (server or srv).address)
            conns.append(conn)
        return Phone(conn, user or next_user(), **kw)
    return make


@pytest.fixture
def mk2(srv2, mk):
    def make(user: str | None = None, **kw) -> Phone:
        return mk(user, server=srv2, **kw)
    return make


def assert_silent_then(phone: Phone) -> None:
    """Nothing was answered to what was sent before: the next thing received on this
    connection is the answer to a fresh OPTIONS."""
    call_id = f"probe-{uid()}"
    response = phone.request("OPTIONS", call_id=call_id, contacts=None)
    assert response.get("call-id") == call_id, f"unexpected answer: {response.raw!r}"
    assert response.status == 200


def not_ok(response: Response) -> bool:
    """A refusal that is neither success nor a server failure."""
    return 400 <= response.status < 500


# == RFC 7616: the challenge ===================================================================

def test_challenge_format(mk):
    phone = mk()
    response = phone.request(contacts=[f"<{phone.contact()}>"])
    assert response.status == 401 and response.version == "SIP/2.0"
    assert len(response.get_all("www-authenticate")) == 1  # MD5 only by default
    value = response.get("www-authenticate")
    assert value.startswith("Digest ")
    c = response.challenges[0]
    assert c["realm"] == REALM and c["realm:quoted"]
    assert c["nonce"] and c["nonce:quoted"]
    assert c["qop"] == "auth" and c["qop:quoted"]  # RFC 7616 3.3: quoted list
    assert c["algorithm"] == "MD5" and not c["algorithm:quoted"]
    if "opaque" in c:
        assert c["opaque:quoted"]
    assert c.get("stale", "false").lower() == "false"


def test_challenge_nonce_is_fresh_each_time(mk):
    phone = mk()
    nonces = {phone.challenge(contacts=[f"<{phone.contact()}>"])["nonce"] for _ in range(3)}
    assert len(nonces) == 3


def test_challenge_echoes_transaction_headers(mk):
    phone = mk()
    data = phone.build(contacts=[f"<{phone.contact()}>"])
    response = phone.transact(data)
    sent = Response(data)  # the request parses with the same header reader
    assert response.get("call-id") == sent.get("call-id")
    assert response.get("cseq") == sent.get("cseq")
    assert response.get("from") == sent.get("from")
    assert response.get("to").startswith(sent.get("to")) and ";tag=" in response.get("to")


def test_register_md5_qop_auth(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"])
    assert response.status == 200
    assert phone.contact() in response.contacts


def test_register_md5_sess(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"], algorithm="MD5-sess")
    assert response.status == 200


def test_register_rfc2069_without_qop(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"], auth_kw={"qop": None})
    assert response.status == 200


def test_wrong_password_is_rechallenged_and_binds_nothing(mk):
    phone = mk()
    nonce = phone.challenge(contacts=[f"<{phone.contact()}>"])["nonce"]
    auth = phone.authorization(phone.last_challenge, password="wrong")
    response = phone.request(contacts=[f"<{phone.contact()}>"], auth=auth)
    assert response.status in (401, 403)
    if response.status == 401:
        assert response.challenges[0]["nonce"] != nonce
    assert phone.bindings() == {}


def test_unknown_user_looks_like_wrong_password(mk):
    known = mk()
    known.challenge(contacts=[f"<{known.contact()}>"])
    wrong = known.request(contacts=[f"<{known.contact()}>"],
                          auth=known.authorization(known.last_challenge, password="wrong"))
    stranger = mk(f"nosuchuser{uid()}", password="whatever")
    stranger.challenge(contacts=[f"<{stranger.contact()}>"])
    unknown = stranger.request(contacts=[f"<{stranger.contact()}>"],
                               auth=stranger.authorization(stranger.last_challenge))
    assert (unknown.status, unknown.reason) == (wrong.status, wrong.reason)
    assert [sorted(c) for c in unknown.challenges] == [sorted(c) for c in wrong.challenges]
    assert [h for h, _ in unknown.headers] == [h for h, _ in wrong.headers]


def test_forged_nonce_gets_fresh_challenge(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    forged = "A" * len(challenge["nonce"])
    response = phone.request(contacts=[f"<{phone.contact()}>"],
                             auth=phone.authorization(challenge, nonce=forged))
    assert response.status == 401
    fresh = response.challenges[0]
    assert fresh["nonce"] not in (forged, challenge["nonce"])
    assert fresh.get("stale", "false").lower() == "false"


def test_garbled_nonce_gets_fresh_challenge(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    nonce = challenge["nonce"]
    for garbled in (nonce[:-1], nonce + "x", nonce[:10] + ("B" if nonce[10] != "B" else "C") + nonce[11:], ""):
        response = phone.request(contacts=[f"<{phone.contact()}>"],
                                 auth=phone.authorization(challenge, nonce=garbled or "x"))
        assert response.status == 401, (garbled, response.raw)
    assert phone.bindings() == {}


def test_garbled_response_is_refused(mk):
    phone = mk()
    for garbled in ("zz" * 16, "0" * 32, "abc", "", "0" * 64, "é" * 32):
        challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
        response = phone.request(contacts=[f"<{phone.contact()}>"],
                                 auth=phone.authorization(challenge, response=garbled))
        assert not_ok(response), (garbled, response.raw)
    assert phone.bindings() == {}


def test_replayed_nonce_nc_with_other_contact_is_refused(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact(1)}>"]).status == 200
    auth_line = [l for l in phone.last_request.decode().split("\r\n") if l.startswith("Authorization:")][0]
    replay = phone.build(contacts=[f"<{phone.contact(2)}>"], headers=[auth_line])
    response = phone.transact(replay)
    assert response.status != 200 and response.status < 500
    assert set(phone.bindings()) == {phone.contact(1)}


def test_replayed_credentials_same_cseq_other_contact_refused(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact(1)}>"]).status == 200
    original = phone.last_request.decode()
    cseq = re.search(r"CSeq: (\d+)", original).group(1)
    auth_line = [l for l in original.split("\r\n") if l.startswith("Authorization:")][0]
    replay = phone.build(contacts=[f"<{phone.contact(3)}>"], headers=[auth_line], cseq=int(cseq))
    response = phone.transact(replay)
    assert response.status != 200 and response.status < 500
    assert set(phone.bindings()) == {phone.contact(1)}


def test_higher_nc_on_same_nonce_is_accepted(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"]).status == 200
    challenge = phone.last_challenge
    for nc in (2, 3, 7):
        response = phone.request(contacts=[f"<{phone.contact()}>"], expires=1800,
                                 auth=phone.authorization(challenge, nc=nc))
        assert response.status == 200, (nc, response.raw)
        assert 1790 <= response.expires_of(phone.contact()) <= 1800


def test_retransmission_gets_200_with_same_bindings(mk):
    phone = mk()
    first = phone.register([f"<{phone.contact(1)}>", f"<{phone.contact(2)}>"])
    assert first.status == 200
    again = phone.transact(phone.last_request)  # same Call-ID, CSeq, branch, credentials
    assert again.status == 200
    assert set(again.contacts) == set(first.contacts) == {phone.contact(1), phone.contact(2)}
    assert again.get("cseq") == first.get("cseq")


def test_retransmission_of_unregister_gets_200(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"]).status == 200
    first = phone.register([f"<{phone.contact()}>"], 0)
    assert first.status == 200 and first.contacts == {}
    again = phone.transact(phone.last_request)
    assert again.status == 200 and again.contacts == {}


def test_wrong_realm_is_rechallenged(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    response = phone.request(contacts=[f"<{phone.contact()}>"],
                             auth=phone.authorization(challenge, realm="other.realm"))
    assert response.status == 401 and response.challenges[0]["realm"] == REALM
    assert phone.bindings() == {}


def test_credentials_for_another_user_than_to_get_403(mk):
    victim = mk()
    attacker = mk()
    attacker.challenge(contacts=[f"<{attacker.contact()}>"], to=f"<{victim.aor}>")
    response = attacker.request(contacts=[f"<{attacker.contact()}>"], to=f"<{victim.aor}>",
                                auth=attacker.authorization(attacker.last_challenge))
    assert response.status == 403
    assert victim.bindings() == {}


def test_digest_scheme_and_quoting_variants(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    auth = phone.authorization(challenge)
    auth = "digest" + auth[len("Digest"):]  # scheme names are case-insensitive
    auth = auth.replace("algorithm=MD5", 'algorithm="MD5"').replace("qop=auth", 'qop="auth"')
    response = phone.request(contacts=[f"<{phone.contact()}>"], auth=auth)
    assert response.status == 200, response.raw


def test_auth_params_in_any_order_with_unknown_ones_and_spaces(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    params = phone.authorization(challenge)[len("Digest "):].split(", ")
    params.reverse()
    params.insert(2, 'x-extension="a, b"')
    params = [p.replace("=", " = ", 1) if p.startswith("nc") else p for p in params]
    response = phone.request(contacts=[f"<{phone.contact()}>"], auth="Digest " + " ,  ".join(params))
    assert response.status == 200, response.raw


def test_credentials_without_spaces_and_a_first_nc_above_one(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    auth = phone.authorization(challenge, nc=10).replace(", ", ",")
    response = phone.request(contacts=[f"<{phone.contact()}>"], auth=auth)
    assert response.status == 200, response.raw


def test_authorization_for_other_realm_first_is_skipped(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    other = phone.authorization(challenge, realm="elsewhere.example", password="x")
    ours = phone.authorization(challenge)
    response = phone.request(contacts=[f"<{phone.contact()}>"], auth=other, headers=[f"Authorization: {ours}"])
    assert response.status == 200, response.raw


def test_query_requires_authentication(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"]).status == 200
    response = phone.request(contacts=None)
    assert response.status == 401 and "contact" not in dict(response.headers)


def test_incomplete_credentials_are_refused(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    full = phone.authorization(challenge)
    for drop in ("nc=", "cnonce=", "response=", "nonce=", "username="):
        auth = "Digest " + ", ".join(p for p in full[len("Digest "):].split(", ") if not p.startswith(drop))
        response = phone.request(contacts=[f"<{phone.contact()}>"], auth=auth)
        assert not_ok(response), (drop, response.raw)
    response = phone.request(contacts=[f"<{phone.contact()}>"], auth=full.replace("qop=auth", "qop=auth-int"))
    assert not_ok(response)
    assert phone.bindings() == {}


def test_unoffered_algorithm_is_refused(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    response = phone.request(contacts=[f"<{phone.contact()}>"],
                             auth=phone.authorization(challenge, algorithm="SHA-256"))
    assert not_ok(response)
    assert phone.bindings() == {}


def test_stale_nonce_gets_stale_true(kind, srv2, early, mk2):
    user, challenge = early["nonces"][kind]
    wait = 11.5 - (time.monotonic() - early["at"])
    if wait > 0:
        time.sleep(wait)
    phone = mk2(user)
    response = phone.request(contacts=[f"<{phone.contact()}>"], auth=phone.authorization(challenge))
    assert response.status == 401
    fresh = response.challenges
    assert [c["algorithm"] for c in fresh] == ["SHA-256", "MD5"]
    assert all(c.get("stale", "").lower() == "true" for c in fresh)
    assert fresh[0]["nonce"] != challenge["nonce"]
    # A wrong password with the expired nonce is not told stale=true (RFC 7616 3.3).
    wrong = phone.request(contacts=[f"<{phone.contact()}>"], auth=phone.authorization(challenge, password="bad"))
    assert wrong.status in (401, 403)
    assert all(c.get("stale", "false").lower() == "false" for c in wrong.challenges)
    # The client retries with the new nonce and succeeds.
    ok = phone.request(contacts=[f"<{phone.contact()}>"], auth=phone.authorization(fresh[0]))
    assert ok.status == 200


def test_expired_binding_is_gone(kind, srv2, early, mk2):
    wait = 4.0 - (time.monotonic() - early["at"])
    if wait > 0:
        time.sleep(wait)
    phone = mk2(early["short"][kind])
    response = phone.register(None, algorithm="MD5")
    assert response.status == 200 and response.contacts == {}


# == RFC 8760: several algorithms ================================================================

def test_sha256_server_offers_one_challenge_per_algorithm_in_order(mk2):
    phone = mk2()
    response = phone.request(contacts=[f"<{phone.contact()}>"])
    assert response.status == 401
    challenges = response.challenges
    assert [c["algorithm"] for c in challenges] == ["SHA-256", "MD5"]
    for c in challenges:
        assert c["scheme"] == "Digest" and c["realm"] == REALM and c["qop"] == "auth" and c["nonce"]


@pytest.mark.parametrize("algorithm", ["SHA-256", "SHA-256-sess", "MD5", "MD5-sess"])
def test_sha256_server_accepts_each_offered_algorithm(mk2, algorithm):
    phone = mk2()
    response = phone.register([f"<{phone.contact()}>"], algorithm=algorithm)
    assert response.status == 200, response.raw
    assert phone.last_auth["algorithm"] == algorithm


# == RFC 3261 10.3 steps 1-2: domain, Require =====================================================

def test_foreign_domain_gets_404(mk2):
    phone = mk2(domain="foreign.example")
    response = phone.request(contacts=[f"<{phone.contact()}>"])
    assert response.status == 404
    assert not response.get_all("www-authenticate")


def test_foreign_domain_in_to_gets_404(mk2):
    phone = mk2()
    response = phone.request(contacts=[f"<{phone.contact()}>"], to=f"<sip:{phone.user}@foreign.example>")
    assert response.status == 404


def test_require_unsupported_gets_420_with_unsupported(mk):
    phone = mk()
    response = phone.request(contacts=[f"<{phone.contact()}>"], headers=["Require: foo"])
    assert response.status == 420
    assert [t.strip() for t in response.get("unsupported").split(",")] == ["foo"]
    response = phone.request(contacts=[f"<{phone.contact()}>"], headers=["Require: path, foo, bar"])
    assert response.status == 420
    assert sorted(t.strip() for t in ",".join(response.get_all("unsupported")).split(",")) == ["bar", "foo"]
    assert phone.bindings() == {}


def test_require_unsupported_on_other_requests_gets_420(mk):
    """RFC 3261 8.2.2.3: the registrar answering OPTIONS, and the redirect server, are UASs."""
    callee = mk()
    assert callee.register([f"<{callee.contact()}>"]).status == 200
    phone = mk()
    for method, ruri in (("OPTIONS", "sip:fastreg.local"), ("INVITE", callee.aor), ("OPTIONS", callee.aor)):
        response = phone.request(method, ruri=ruri, to=f"<{ruri}>", headers=["Require: foo"])
        assert response.status == 420, (method, response.raw)
        assert response.get("unsupported") == "foo"
    # Require is ignored in CANCEL (RFC 3261 8.2.2.3).
    response = phone.request("CANCEL", ruri=callee.aor, to=f"<{callee.aor}>", headers=["Require: foo"])
    assert response.status == 481


def test_unsupported_request_uri_scheme_gets_416(mk):
    phone = mk()
    for method, ruri in (("OPTIONS", "nobodyKnowsThisScheme:totallyopaquecontent"), ("INVITE", "mailto:a@b.example"),
                         ("MESSAGE", "tel:+15551234567"), ("REGISTER", "http://fastreg.local/")):
        response = phone.request(method, ruri=ruri, contacts=[f"<{phone.contact()}>"])
        assert response.status == 416, (method, ruri, response.raw)


def test_require_path_is_accepted(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"],
                              headers=["Require: path", "Supported: path", "Path: <sip:edge.example;lr>"])
    assert response.status == 200


# == RFC 3261 10.3 steps 6-8: bindings ============================================================

def test_add_binding(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"], 600)
    assert response.status == 200
    assert list(response.contacts) == [phone.contact()]
    assert 595 <= response.expires_of(phone.contact()) <= 600


def test_refresh_keeps_one_binding(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"], 600).status == 200
    response = phone.register([f"<{phone.contact()}>"], 1200)
    assert response.status == 200 and list(response.contacts) == [phone.contact()]
    assert 1195 <= response.expires_of(phone.contact()) <= 1200


def test_several_contacts_in_headers_and_lists(mk):
    phone = mk()
    uris = [phone.contact(n) for n in range(1, 5)]
    response = phone.register([f"<{uris[0]}>", f"<{uris[1]}>, <{uris[2]}>", f'"Dev 4" <{uris[3]}>'], 600)
    assert response.status == 200 and set(response.contacts) == set(uris)


def test_contacts_of_several_devices_accumulate(mk):
    first = mk()
    second = mk(first.user)  # another device of the same AOR: its own Call-ID
    assert first.register([f"<{first.contact(1)}>"]).status == 200
    response = second.register([f"<{second.contact(2)}>"])
    assert response.status == 200 and set(response.contacts) == {first.contact(1), first.contact(2)}


def test_q_values_are_kept_and_echoed(mk):
    phone = mk()
    q = {phone.contact(1): "0.5", phone.contact(2): "1.0", phone.contact(3): "0", phone.contact(4): "0.123"}
    response = phone.register([f"<{uri}>;q={value}" for uri, value in q.items()], 600)
    assert response.status == 200
    for uri, value in q.items():
        assert float(response.contacts[uri]["q"]) == float(value), response.raw
    assert float(phone.bindings()[phone.contact(1)]["q"]) == 0.5


def test_expires_param_beats_expires_header(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact(1)}>;expires=120", f"<{phone.contact(2)}>"], 600)
    assert response.status == 200
    assert 115 <= response.expires_of(phone.contact(1)) <= 120
    assert 595 <= response.expires_of(phone.contact(2)) <= 600


def test_default_expires(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"])
    assert response.status == 200 and 3590 <= response.expires_of(phone.contact()) <= 3600


def test_too_brief_gets_423_with_min_expires(mk):
    phone = mk()
    for contacts, expires in (([f"<{phone.contact()}>"], 30), ([f"<{phone.contact()}>;expires=10"], 600),
                              ([f"<{phone.contact(1)}>;expires=600", f"<{phone.contact(2)}>;expires=59"], None)):
        response = phone.register(contacts, expires)
        assert response.status == 423, response.raw
        assert response.get("min-expires") == "60"
    assert phone.bindings() == {}


def test_max_expires_shortens(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact(1)}>", f"<{phone.contact(2)}>;expires=86400"], 7200)
    assert response.status == 200
    assert 3590 <= response.expires_of(phone.contact(1)) <= 3600
    assert 3590 <= response.expires_of(phone.contact(2)) <= 3600


def test_expires_beyond_32_bits_is_taken_as_maximum(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"], 99999999999)  # RFC 3261 20.19: not an error
    assert response.status == 200 and 3590 <= response.expires_of(phone.contact()) <= 3600


def test_expires_header_zero_removes_that_contact(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact(1)}>", f"<{phone.contact(2)}>"]).status == 200
    response = phone.register([f"<{phone.contact(1)}>"], 0)
    assert response.status == 200 and list(response.contacts) == [phone.contact(2)]


def test_expires_param_zero_removes_one_contact(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact(1)}>", f"<{phone.contact(2)}>"]).status == 200
    response = phone.register([f"<{phone.contact(2)}>;expires=0", f"<{phone.contact(3)}>"], 600)
    assert response.status == 200 and set(response.contacts) == {phone.contact(1), phone.contact(3)}


def test_removing_an_unknown_contact_is_ok(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact(1)}>"]).status == 200
    response = phone.register([f"<{phone.contact(9)}>"], 0)
    assert response.status == 200 and list(response.contacts) == [phone.contact(1)]


def test_star_with_expires_zero_removes_all(mk):
    phone = mk()
    other = mk(phone.user)
    assert phone.register([f"<{phone.contact(1)}>", f"<{phone.contact(2)}>"]).status == 200
    assert other.register([f"<{other.contact(3)}>"]).status == 200
    response = phone.register(["*"], 0)
    assert response.status == 200 and response.contacts == {}
    assert phone.bindings() == {}


def test_star_with_other_expires_is_400(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"]).status == 200
    for expires in (60, 3600, None):
        response = phone.register(["*"], expires)
        assert response.status == 400, (expires, response.raw)
    assert list(phone.bindings()) == [phone.contact()]


def test_star_mixed_with_contacts_is_400(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"]).status == 200
    for contacts in (["*", f"<{phone.contact(2)}>"], [f"<{phone.contact(2)}>, *"], ["*, *"]):
        response = phone.register(contacts, 0)
        assert response.status == 400, (contacts, response.raw)
    assert list(phone.bindings()) == [phone.contact()]


def test_query_without_contact_lists_and_changes_nothing(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact(1)}>;q=0.3", f"<{phone.contact(2)}>"], 900).status == 200
    response = phone.query()
    assert response.status == 200
    assert set(response.contacts) == {phone.contact(1), phone.contact(2)}
    assert float(response.contacts[phone.contact(1)]["q"]) == 0.3
    assert 890 <= response.expires_of(phone.contact(2)) <= 900


def test_expires_zero_without_contact_is_only_a_query(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"], 600).status == 200
    response = phone.register(None, 0)
    assert response.status == 200 and list(response.contacts) == [phone.contact()]


def test_removal_matches_by_uri_equality(mk):
    phone = mk()
    assert phone.register([f"<sip:u{phone.user}@HOST.example:5070;transport=tcp>"]).status == 200
    response = phone.register([f"<sip:u{phone.user}@host.example:5070;transport=TCP;foo=bar>"], 0)
    assert response.status == 200 and response.contacts == {}


def test_query_without_bindings(mk):
    phone = mk()
    response = phone.query()
    assert response.status == 200 and not response.get_all("contact")


def test_new_call_id_replaces_binding(mk):
    phone = mk()
    phone.cseq = 100
    assert phone.register([f"<{phone.contact()}>"], 600).status == 200
    rebooted = mk(phone.user)  # a new Call-ID and a CSeq starting low
    response = rebooted.register([f"<{phone.contact()}>"], 1800)
    assert response.status == 200 and list(response.contacts) == [phone.contact()]
    assert 1790 <= response.expires_of(phone.contact()) <= 1800


def test_new_call_id_with_expires_zero_removes(mk):
    phone = mk()
    phone.cseq = 100
    assert phone.register([f"<{phone.contact()}>"]).status == 200
    other = mk(phone.user)
    response = other.register([f"<{phone.contact()}>"], 0)
    assert response.status == 200 and response.contacts == {}


def test_lower_cseq_same_call_id_is_refused(mk):
    phone = mk()
    phone.cseq = 50
    assert phone.register([f"<{phone.contact()}>"], 600).status == 200
    phone.cseq = 10
    response = phone.register([f"<{phone.contact()}>"], 1800)
    assert not_ok(response), response.raw
    bindings = phone.bindings()
    assert list(bindings) == [phone.contact()] and int(bindings[phone.contact()]["expires"]) <= 600


def test_equal_cseq_with_another_branch_is_refused(mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"], 600).status == 200
    cseq = phone.cseq
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    response = phone.request(contacts=[f"<{phone.contact()}>"], expires=1800, cseq=cseq,
                             auth=phone.authorization(challenge))
    assert not_ok(response), response.raw
    assert int(phone.bindings()[phone.contact()]["expires"]) <= 600


def test_contact_expires_uri_parameter_is_not_the_header_parameter(mk):
    phone = mk()
    uri = f"{phone.contact()};expires=30"
    response = phone.register([f"<{uri}>"], 600)
    assert response.status == 200, response.raw
    assert 595 <= response.expires_of(uri) <= 600


def test_contact_without_angle_brackets_takes_header_params(mk):
    phone = mk()
    response = phone.register([f"{phone.contact()};expires=120;q=0.7"], 600)
    assert response.status == 200
    assert 115 <= response.expires_of(phone.contact()) <= 120
    assert float(response.contacts[phone.contact()]["q"]) == 0.7


def test_display_name_with_comma_is_one_contact(mk):
    phone = mk()
    response = phone.register([f'"Doe, John" <{phone.contact()}>;expires=600'])
    assert response.status == 200 and list(response.contacts) == [phone.contact()]


def test_quoted_contact_param_with_comma_is_one_contact(mk):
    phone = mk()
    response = phone.register([f'<{phone.contact()}>;+org.linphone.specs="groupchat/1.1,lime";expires=600'])
    assert response.status == 200 and list(response.contacts) == [phone.contact()]


def test_too_many_contacts_apply_nothing(mk):
    phone = mk()
    response = phone.register([", ".join(f"<{phone.contact(n)}>" for n in range(1, 41))], 600)
    if response.status == 200:
        assert len(response.contacts) == 40
    else:
        assert 400 <= response.status < 600 and response.status != 500
        assert phone.bindings() == {}


# == RFC 3261 10.3 step 5: the address-of-record ====================================================

@pytest.mark.parametrize("to", ["<sip:{u}@fastreg.local:5060>", "<sip:{u}@fastreg.local;transport=udp;user=phone>",
                                "<sip:{u}@FastReg.LOCAL>", "<sips:{u}@fastreg.local>",
                                '"Display" <sip:{u}@fastreg.local>;x-param=1', "sip:{u}@fastreg.local"])
def test_aor_is_canonical(mk, to):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"], to=to.format(u=phone.user))
    assert response.status == 200, response.raw
    plain = mk(phone.user)
    assert list(plain.bindings()) == [phone.contact()]


def test_aor_escaped_user_is_unescaped(mk):
    phone = mk()
    escaped = "".join(f"%{ord(c):02X}" if i == 0 else c for i, c in enumerate(phone.user))
    response = phone.register([f"<{phone.contact()}>"], to=f"<sip:{escaped}@fastreg.local>")
    assert response.status == 200, response.raw
    assert list(mk(phone.user).bindings()) == [phone.contact()]


# == RFC 3261 19.1.4: contact comparison ============================================================

def test_contact_host_and_param_value_case_insensitive(mk):
    phone = mk()
    assert phone.register([f"<sip:a{phone.user}@HOST.example:5060;transport=udp>"]).status == 200
    response = phone.register([f"<sip:a{phone.user}@host.example:5060;transport=UDP>"])
    assert response.status == 200 and len(response.contacts) == 1


def test_contact_user_is_case_sensitive(mk):
    phone = mk()
    assert phone.register([f"<sip:alice{phone.user}@h.example>"]).status == 200
    response = phone.register([f"<sip:Alice{phone.user}@h.example>"])
    assert response.status == 200 and len(response.contacts) == 2


def test_contact_port_is_significant(mk):
    phone = mk()
    assert phone.register([f"<sip:{phone.user}@h.example>"]).status == 200
    response = phone.register([f"<sip:{phone.user}@h.example:5060>"])
    assert response.status == 200 and len(response.contacts) == 2


def test_contact_transport_on_one_side_only_differs(mk):
    phone = mk()
    assert phone.register([f"<sip:{phone.user}@h.example:5060>"]).status == 200
    response = phone.register([f"<sip:{phone.user}@h.example:5060;transport=tcp>"])
    assert response.status == 200 and len(response.contacts) == 2


def test_contact_other_param_on_one_side_is_ignored(mk):
    phone = mk()
    assert phone.register([f"<sip:{phone.user}@h.example:5060;line=abc>"]).status == 200
    response = phone.register([f"<sip:{phone.user}@h.example:5060>"])
    assert response.status == 200 and len(response.contacts) == 1


def test_contact_param_order_and_escapes_do_not_matter(mk):
    phone = mk()
    assert phone.register([f"<sip:%61b{phone.user}@h.example:5060;transport=udp;lr>"]).status == 200
    response = phone.register([f"<sip:ab{phone.user}@h.example:5060;lr;transport=udp>"])
    assert response.status == 200 and len(response.contacts) == 1


# == RFC 3327 Path, RFC 5626 instance / reg-id =======================================================

def test_path_is_echoed_in_order_with_supported_path(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"],
                              headers=["Supported: path", "Path: <sip:p1.example;lr>, <sip:p2.example;lr>",
                                       "Path: <sip:p3.example;lr>"])
    assert response.status == 200
    assert [parse_contact(p)[0] for p in response.values("path")] == [
        "sip:p1.example;lr", "sip:p2.example;lr", "sip:p3.example;lr"]


def test_path_is_not_echoed_without_supported_path(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"], headers=["Path: <sip:p1.example;lr>"])
    assert response.status == 200 and not response.get_all("path")


def test_path_is_stored_with_the_binding(srv, mk):
    phone = mk()
    assert phone.register([f"<{phone.contact()}>"],
                          headers=["Supported: path", "Path: <sip:edge.example;lr>"]).status == 200
    rows = json.loads(srv.cli("contacts", phone.aor, "--json").stdout)
    assert [row["path"] for row in rows] == [["<sip:edge.example;lr>"]]


def test_instance_and_reg_id_are_echoed(mk):
    phone = mk()
    instance = '"<urn:uuid:00000000-0000-1000-8000-00a0c91e6bf6>"'
    response = phone.register([f"<{phone.contact()}>;+sip.instance={instance};reg-id=1"])
    assert response.status == 200
    params = response.contacts[phone.contact()]
    assert params["+sip.instance"] == instance and params["reg-id"] == "1"


def test_same_instance_and_reg_id_replace_the_flow(mk):
    phone = mk()
    instance = f'"<urn:uuid:{uid()}-0000-1000-8000-00a0c91e6bf6>"'
    assert phone.register([f"<{phone.contact(1)}>;+sip.instance={instance};reg-id=1"]).status == 200
    response = phone.register([f"<{phone.contact(2)}>;+sip.instance={instance};reg-id=1"])
    assert response.status == 200 and list(response.contacts) == [phone.contact(2)]


# == the 200 OK and every response ==================================================================

def test_200_has_date_and_expires_per_contact(mk):
    phone = mk()
    other = mk(phone.user)
    assert other.register([f"<{other.contact(5)}>"], 900).status == 200
    response = phone.register([f"<{phone.contact(1)}>"], 600)
    assert response.status == 200
    date = parsedate_to_datetime(response.get("date"))
    assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT", response.get("date"))
    assert abs(date.timestamp() - time.time()) < 5
    for uri, params in response.contacts.items():
        assert params["expires"] is not None and params["expires"].isdigit()
    assert set(response.contacts) == {phone.contact(1), phone.contact(5)}


def test_via_gets_received_and_rport(mk):
    phone = mk()
    response = phone.request(contacts=[f"<{phone.contact()}>"])
    top = response.values("via")[0]
    params = dict(p.partition("=")[::2] for p in split_params(top)[1:])
    assert params.get("rport") == str(phone.conn.local[1])
    assert params.get("received") == "127.0.0.1"


def test_via_gets_received_when_sent_by_differs(mk):
    phone = mk()
    branch = new_branch()
    response = phone.request(contacts=[f"<{phone.contact()}>"],
                             vias=[f"SIP/2.0/{phone.kind} phone.invalid:{phone.conn.local[1]};branch={branch};rport"])
    top = response.values("via")[0]
    assert "phone.invalid" in top and ";received=127.0.0.1" in top and f"branch={branch}" in top


def test_response_goes_to_via_port_without_rport(mk, conns, kind):
    phone = mk()
    if kind == "UDP":
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.1", 0))
        other.settimeout(3)
        try:
            via = f"SIP/2.0/UDP 127.0.0.1:{other.getsockname()[1]};branch={new_branch()}"
            phone.send(phone.build(contacts=[f"<{phone.contact()}>"], vias=[via]))
            response = Response(other.recvfrom(65536)[0])  # RFC 3261 18.2.2: to the sent-by port
        finally:
            other.close()
    else:
        via = f"SIP/2.0/TCP 127.0.0.1:9;branch={new_branch()}"
        response = phone.transact(phone.build(contacts=[f"<{phone.contact()}>"], vias=[via]))  # same connection
    assert response.status == 401


def test_to_tag_on_every_final_response(mk):
    phone = mk()
    for response in (phone.request(contacts=[f"<{phone.contact()}>"]),
                     phone.register([f"<{phone.contact()}>"]),
                     phone.request(contacts=[f"<{phone.contact()}>"], headers=["Require: foo"]),
                     phone.request("OPTIONS", contacts=None)):
        assert ";tag=" in response.get("to").replace(" ", ""), response.raw


def test_status_line_is_sip_2_0_whatever_the_request_wrote(mk):
    phone = mk()
    response = phone.request(contacts=[f"<{phone.contact()}>"], version="sip/2.0")
    assert response.start_line.startswith("SIP/2.0 ") and response.status == 401


def test_unsupported_version_gets_505(mk):
    phone = mk()
    response = phone.request(contacts=[f"<{phone.contact()}>"], version="SIP/3.0")
    assert response.status == 505 and response.start_line.startswith("SIP/2.0 ")


def test_multiple_vias_are_kept_in_order(mk):
    phone = mk()
    top = phone.via()
    vias = [top, "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKaa, SIP/2.0/TCP 192.0.2.2:5070;branch=z9hG4bKbb;received=192.0.2.9",
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKcc;rport=5062"]
    response = phone.request(contacts=[f"<{phone.contact()}>"], vias=vias)
    got = response.values("via")
    assert len(got) == 4
    assert got[0].startswith(top.split(";rport")[0])
    assert got[1:] == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKaa",
                       "SIP/2.0/TCP 192.0.2.2:5070;branch=z9hG4bKbb;received=192.0.2.9",
                       "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKcc;rport=5062"]


def test_response_content_length_is_right(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"])
    assert response.get("content-length") == str(len(response.body))


# == malformed requests =============================================================================

def assert_400_nothing_applied(phone: Phone, data: bytes, reason_word: str | None = None) -> None:
    response = phone.transact(data)
    assert response.status == 400, response.raw
    if reason_word:
        assert reason_word.lower() in response.reason.lower(), response.reason


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "60 s", "0x10", ""])
def test_malformed_expires_is_400(mk, value):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"], value)
    assert response.status == 400, response.raw
    assert phone.bindings() == {}


def test_malformed_contact_params_are_400(mk):
    phone = mk()
    for contact in (f"<{phone.contact()}>;expires=soon", f"<{phone.contact()}>;q=2", f"<{phone.contact()}>;q=abc",
                    f"<{phone.contact()}>;q=-0.5", "<sip:@>", f"<{phone.contact()}"):
        response = phone.register([contact], 600)
        assert response.status == 400, (contact, response.raw)
    assert phone.bindings() == {}


@pytest.mark.parametrize("cseq", ["abc REGISTER", "1 INVITE", "1", "REGISTER", "-1 REGISTER", "99999999999 REGISTER"])
def test_malformed_cseq_is_400(mk, cseq):
    phone = mk()
    data = phone.build(contacts=[f"<{phone.contact()}>"]).decode()
    data = re.sub(r"CSeq: [^\r]*", f"CSeq: {cseq}", data)
    response = phone.transact(data.encode())
    assert response.status == 400, response.raw


@pytest.mark.parametrize("header", ["Call-ID", "From", "To", "CSeq"])
def test_missing_mandatory_header_is_400(mk, header):
    phone = mk()
    data = phone.build(contacts=[f"<{phone.contact()}>"]).decode()
    data = re.sub(rf"{header}: [^\r]*\r\n", "", data)
    response = phone.transact(data.encode())
    assert response.status == 400, response.raw
    if header != "CSeq":
        assert header.lower().split("-")[0] in response.reason.lower(), response.reason


def test_malformed_to_is_400(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"], to="<sip:bad uri@>")
    assert response.status == 400


def test_signed_malformed_request_applies_nothing(mk):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    response = phone.request(contacts=[f"<{phone.contact()}>", f"<{phone.contact(2)}>;q=7"],
                             auth=phone.authorization(challenge))
    assert response.status == 400
    assert phone.bindings() == {}


def test_missing_via_is_dropped(mk):
    phone = mk()
    phone.send(phone.build(contacts=[f"<{phone.contact()}>"], vias=[]))
    assert_silent_then(phone)


def test_udp_content_length_beyond_datagram_is_400(mk, kind):
    phone = mk()
    data = phone.build(contacts=[f"<{phone.contact()}>"], content_length=False)
    data = data.replace(b"\r\n\r\n", b"\r\nContent-Length: 40\r\n\r\n", 1) + b"short"
    if kind == "TCP":
        # On a stream the server waits for the rest: send it, the request is then whole.
        data += b"v=0\r\n" + b"x" * 30
    response = phone.transact(data)
    assert response.status == (400 if kind == "UDP" else 401), response.raw


# == requests other than REGISTER ===================================================================

def test_options_to_registrar_gets_200_with_allow(mk, srv):
    phone = mk()
    for ruri in ("sip:fastreg.local", f"sip:127.0.0.1:{srv.port}"):
        response = phone.request("OPTIONS", ruri=ruri, to=f"<{ruri}>", contacts=None)
        assert response.status == 200
        allowed = {m.strip() for m in ",".join(response.get_all("allow")).split(",")}
        assert {"REGISTER", "OPTIONS"} <= allowed


def register_three(phone: Phone) -> None:
    r = phone.register([f"<{phone.contact(1)}>;q=0.1", f"<{phone.contact(2)}>;q=0.9", f"<{phone.contact(3)}>;q=0.5",
                        f"<{phone.contact(4)}>"])
    assert r.status == 200


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE", "SUBSCRIBE", "OPTIONS"])
def test_request_to_registered_user_is_redirected_by_q(mk, method):
    callee = mk()
    register_three(callee)
    caller = mk()
    target = callee.aor
    response = caller.request(method, ruri=target, to=f"<{target}>", contacts=[f"<{caller.contact()}>"],
                              headers=["Event: presence"] if method == "SUBSCRIBE" else [])
    assert response.status == 302, response.raw
    listed = response.contact_list
    assert [uri for uri, _ in listed] == [callee.contact(4), callee.contact(2), callee.contact(3), callee.contact(1)]
    assert [float(p["q"]) for _, p in listed] == [1.0, 0.9, 0.5, 0.1]


def test_request_uri_of_user_is_canonicalised(mk):
    callee = mk()
    assert callee.register([f"<{callee.contact()}>"]).status == 200
    caller = mk()
    target = f"sip:{callee.user}@FASTREG.local:5060;user=phone"
    response = caller.request("INVITE", ruri=target, to=f"<{target}>")
    assert response.status == 302 and [u for u, _ in response.contact_list] == [callee.contact()]


def test_request_to_unknown_user_is_404(mk):
    caller = mk()
    target = f"sip:nobody{uid()}@fastreg.local"
    assert caller.request("INVITE", ruri=target, to=f"<{target}>").status == 404


def test_request_to_unregistered_user_is_480(mk):
    caller = mk()
    target = f"sip:{next_user()}@fastreg.local"
    assert caller.request("MESSAGE", ruri=target, to=f"<{target}>").status == 480


def test_max_forwards_zero_is_483(mk):
    callee = mk()
    assert callee.register([f"<{callee.contact()}>"]).status == 200
    caller = mk()
    response = caller.request("INVITE", ruri=callee.aor, to=f"<{callee.aor}>", max_forwards=0)
    assert response.status == 483


def test_ack_gets_no_response(mk):
    phone = mk()
    phone.send(phone.build("ACK", ruri=f"sip:{phone.user}@fastreg.local", to=f"<{phone.aor}>;tag=x", cseq=1))
    assert_silent_then(phone)


def test_unknown_method_gets_501_or_405_with_allow(mk):
    phone = mk()
    for ruri in ("sip:fastreg.local", f"sip:{phone.user}@fastreg.local"):
        response = phone.request("FOOBAR", ruri=ruri)
        assert response.status in (405, 501), response.raw
        assert response.get("allow"), response.raw


def test_method_not_allowed_at_registrar_lists_allow(mk):
    phone = mk()
    response = phone.request("MESSAGE", ruri="sip:fastreg.local", to="<sip:fastreg.local>")
    assert response.status == 405
    allowed = {m.strip() for m in response.get("allow").split(",")}
    assert "REGISTER" in allowed and "MESSAGE" not in allowed


def test_cancel_without_transaction_is_481(mk):
    phone = mk()
    response = phone.request("CANCEL", ruri=f"sip:{phone.user}@fastreg.local", to=f"<{phone.aor}>")
    assert response.status == 481


def test_response_sent_to_registrar_is_dropped(mk):
    phone = mk()
    via = phone.via()
    phone.send((f"SIP/2.0 200 OK\r\nVia: {via}\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKup\r\n"
                f"From: <{phone.aor}>;tag=a\r\nTo: <{phone.aor}>;tag=b\r\nCall-ID: {uid()}\r\n"
                "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode())
    assert_silent_then(phone)


# == real clients as they are =======================================================================

def test_linphone_quirks(mk, srv, kind):
    phone = mk()
    ruri = f"sip:127.0.0.1:{srv.port}"
    user_aor = f"<sip:{phone.user}@127.0.0.1>"  # the port dropped from From/To
    contact = (f'<sip:{phone.user}@192.0.2.7:5060;transport={kind.lower()}>;+sip.instance='
               f'"<urn:uuid:{uid()}-aaaa-bbbb-cccc-000000000000>";+org.linphone.specs="groupchat/1.1,lime"')

    def send(auth=None):
        data = phone.build(ruri=ruri, contacts=[contact], expires=600, from_=user_aor, to=user_aor,
                           content_length=(kind == "TCP"),
                           headers=[f"Authorization:  {auth}"] if auth else [])  # two spaces
        return phone.transact(data)

    first = send()
    assert first.status == 401
    challenge = first.challenges[0]
    assert send(phone.authorization(challenge, uri=ruri)).status == 200
    refresh = send(phone.authorization(challenge, uri=ruri, nc=2))  # reuses the nonce with nc=2
    assert refresh.status == 200 and len(refresh.contacts) == 1
    query = mk(phone.user, domain=f"127.0.0.1:{srv.port}")
    assert len(query.bindings()) == 1


def test_baresip_leaves_algorithm_out(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()};transport=udp>;expires=600"],
                              auth_kw={"with_algorithm": False})
    assert response.status == 200 and 595 <= response.expires_of(f"{phone.contact()};transport=udp") <= 600


def test_sipp_digest_uri_differs_from_request_uri(mk, srv):
    phone = mk()
    challenge = phone.challenge(contacts=[f"<{phone.contact()}>"])
    response = phone.request(contacts=[f"<{phone.contact()}>"],
                             auth=phone.authorization(challenge, uri=f"sip:127.0.0.1:{srv.port}"))
    assert response.status == 200


# == syntax variants =================================================================================

def test_compact_header_forms(mk):
    phone = mk()
    host, port = phone.conn.local

    def compact(auth=None):
        phone.cseq += 1
        lines = ["REGISTER sip:fastreg.local SIP/2.0", f"v: SIP/2.0/{phone.kind} {host}:{port};branch={new_branch()};rport",
                 f"f: <{phone.aor}>;tag={phone.tag}", f"t: <{phone.aor}>", f"i: {phone.call_id}",
                 f"CSeq: {phone.cseq} REGISTER", f"m: <{phone.contact()}>;expires=600", "k: path",
                 "Max-Forwards: 70"]
        if auth:
            lines.append(f"Authorization: {auth}")
        lines.append("l: 0")
        return phone.transact(("\r\n".join(lines) + "\r\n\r\n").encode())

    first = compact()
    assert first.status == 401
    response = compact(phone.authorization(first.challenges[0]))
    assert response.status == 200 and list(response.contacts) == [phone.contact()]


def test_header_folding(mk):
    phone = mk()
    host, port = phone.conn.local

    def folded(auth=None):
        phone.cseq += 1
        text = (f"REGISTER sip:fastreg.local SIP/2.0\r\n"
                f"Via: SIP/2.0/{phone.kind} {host}:{port}\r\n ;branch={new_branch()};rport\r\n"
                f"From: <{phone.aor}>\r\n\t;tag={phone.tag}\r\nTo:\r\n <{phone.aor}>\r\nCall-ID: {phone.call_id}\r\n"
                f"CSeq: {phone.cseq}\r\n REGISTER\r\n"
                f"Contact: <{phone.contact(1)}>,\r\n <{phone.contact(2)}>\r\nExpires:\r\n   600\r\n"
                + (f"Authorization: {auth.replace(', ', ',' + chr(13) + chr(10) + '  ', 2)}\r\n" if auth else "")
                + "Content-Length: 0\r\n\r\n")
        return phone.transact(text.encode())

    first = folded()
    assert first.status == 401
    response = folded(phone.authorization(first.challenges[0]))
    assert response.status == 200
    assert set(response.contacts) == {phone.contact(1), phone.contact(2)}
    assert 595 <= response.expires_of(phone.contact(1)) <= 600


def test_header_names_case_and_whitespace(mk):
    phone = mk()
    data = phone.build(contacts=None).decode()
    data = (data.replace("Call-ID:", "cALL-iD :").replace("CSeq:", "CSEQ:\t").replace("Content-Length:", "content-length:")
            .replace("\r\n\r\n", f"\r\ncOnTaCt:<{phone.contact()}>\r\nEXPIRES :   700\r\n\r\n"))
    first = phone.transact(data.encode())
    assert first.status == 401
    auth = phone.authorization(first.challenges[0])
    data2 = data.replace(f"CSEQ:\t{phone.cseq} ", f"CSEQ:\t{phone.cseq + 1} ").replace(
        "\r\n\r\n", f"\r\nauthorization: {auth}\r\n\r\n").replace(re.search(r"branch=([^;\r]+)", data).group(1),
                                                                  new_branch())
    phone.cseq += 1
    response = phone.transact(data2.encode())
    assert response.status == 200 and 695 <= response.expires_of(phone.contact()) <= 700


def test_leading_crlf_before_request_is_ignored(mk):
    phone = mk()
    response = phone.transact(b"\r\n\r\n" + phone.build(contacts=[f"<{phone.contact()}>"])
                              if phone.kind == "UDP" else b"\r\n" + phone.build(contacts=[f"<{phone.contact()}>"]))
    assert response.status == 401


def test_unknown_headers_and_a_body_are_ignored(mk):
    phone = mk()
    response = phone.register([f"<{phone.contact()}>"],
                              headers=["X-Anything: 1;a=b", "Subject: hello, world", "Content-Type: text/plain",
                                       "User-Agent: conformance/1.0", "Accept: */*"], body=b"hello")
    assert response.status == 200


def test_rfc2543_branch_is_answered(mk):
    phone = mk()
    host, port = phone.conn.local
    response = phone.request(contacts=[f"<{phone.contact()}>"],
                             vias=[f"SIP/2.0/{phone.kind} {host}:{port};branch=old{uid()};rport"])
    assert response.status == 401


def test_udp_bytes_after_content_length_are_discarded(mk, kind):
    phone = mk()
    data = phone.build(contacts=[f"<{phone.contact()}>"])
    if kind == "UDP":
        response = phone.transact(data + b"garbage after the message")
        assert response.status == 401
    else:
        # On a stream the next message starts there: a CRLF keep-alive ping gets a pong first.
        phone.conn.send(b"\r\n\r\n")
        phone.conn.sock.settimeout(3)
        assert phone.conn.sock.recv(2) == b"\r\n"
        assert phone.transact(data).status == 401
