"""Locust: SIP phones registering over UDP with digest authentication.

    locust -f bench/locustfile.py --headless -u 200 -r 50 -t 30s --host udp://127.0.0.1:5060
    locust -f bench/locustfile.py --host udp://127.0.0.1:5060          # web UI on :8089
    locust -f bench/locustfile.py --users-csv var/bench-users.csv ...   # or LOCUST_USERS_CSV=...

Each locust user is a phone with its own UDP socket and one SIP user (taken
round-robin from the users). Its tasks report to locust's statistics with
request type REGISTER and the task's name:

  register    a new registration: REGISTER, 401, REGISTER with credentials, 200
  refresh     the same Call-ID, the next CSeq and the cached credentials
              (nc + 1); a 401 is answered with fresh credentials (weight 4:
              refreshes are most of a registrar's traffic)
  query       a REGISTER without Contact (the 200 lists the bindings)
  unregister  Expires: 0 for its Contact; the next refresh registers anew

The response time is the whole exchange, from the first REGISTER to the final
answer, 401 round trip included. A final answer other than 200, or no answer
within --sip-timeout seconds (UDP retransmissions: T1 = 500 ms doubling up to
4 s), is a failure named by its status.

Users: --users-csv PATH (or LOCUST_USERS_CSV) is a SIPp injection CSV
(user;password;domain, bench/gen_users.py writes one); without it, the users
of conf/regfile.conf: 200..204 with passwords secret200..secret204. Locust
users that share a SIP user share its Contact (sip:USER@LOCAL_IP:PORT with a
port derived from the user), so that more phones than SIP users do not pile
up bindings past max_contacts.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import time

from locust import User, between, events, task

from bench.regload import parse_target  # run from the repository root, as bench/README says
from fastreg import parser as sip_parser
from fastreg.errors import ParseError

T1 = 0.5
T2 = 4.0
DEFAULT_USERS = [(f"{n}", f"secret{n}", "fastreg.local") for n in range(200, 205)]
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


@events.init_command_line_parser.add_listener
def _options(parser, **_kwargs):
    parser.add_argument("--users-csv", type=str, env_var="LOCUST_USERS_CSV", default="",
                           help="SIPp injection CSV of SIP users (user;password;domain); default: conf/regfile.conf's 200..204")
    parser.add_argument("--sip-timeout", type=float, env_var="LOCUST_SIP_TIMEOUT", default=32.0,
                           help="seconds without a final answer before a transaction fails (64*T1 = 32)")
    parser.add_argument("--sip-expires", type=int, env_var="LOCUST_SIP_EXPIRES", default=3600,
                           help="Expires of register and refresh")


def load_users(path: str) -> list[tuple[str, str, str]]:
    if not path:
        return list(DEFAULT_USERS)
    users = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line or line.startswith("#") or (number == 1 and line.strip().upper() in ("SEQUENTIAL", "RANDOM", "USER")):
                continue
            fields = line.split(";")
            users.append((fields[0], fields[1] if len(fields) > 1 else "", fields[2] if len(fields) > 2 and fields[2] else "fastreg.local"))
    if not users:
        raise SystemExit(f"{path}: no users")
    return users


_USERS: list | None = None
_NEXT = itertools.count()


class SipFailure(Exception):
    pass


def parse_host(host: str) -> tuple[str, int]:
    """locust's --host (udp://HOST:PORT), read as regload reads its target."""
    return parse_target(host or "udp://127.0.0.1:5060")


class SipPhone(User):
    """One phone: a UDP socket, a SIP user, its registration dialog and cached credentials."""

    wait_time = between(0.5, 1.5)

    def on_start(self):
        global _USERS
        if _USERS is None:
            _USERS = load_users(self.environment.parsed_options.users_csv)
        opts = self.environment.parsed_options
        self.timeout = opts.sip_timeout
        self.expires = opts.sip_expires
        slot = next(_NEXT) % len(_USERS)
        self.user, self.password, self.domain = _USERS[slot]
        self.rhost, self.rport = parse_host(self.host)
        family = socket.AF_INET6 if ":" in self.rhost else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.sock.connect((self.rhost, self.rport))
        self.lhost, self.lport = self.sock.getsockname()[:2]
        fmt = "[{}]:{}" if family == socket.AF_INET6 else "{}:{}"
        self.ruri = "sip:" + fmt.format(self.rhost, self.rport)
        self.via_host = fmt.format(self.lhost, self.lport)
        self.contact = f"<sip:{self.user}@" + fmt.format(self.lhost, 20000 + slot % 40000) + ";transport=udp>"
        self.tag = f"lc{os.getpid():x}{slot:x}{id(self) & 0xFFFF:x}"
        self.counter = 0
        self.call_id = None
        self.cseq = 0
        self.challenge = None  # (realm, nonce, opaque, qop, algorithm, hash)
        self.nc = 0
        self.register_new("register")

    def on_stop(self):
        self.sock.close()

    # -- tasks -----------------------------------------------------------

    @task(1)
    def register(self):
        self.register_new("register")

    @task(4)
    def refresh(self):
        if self.call_id is None:
            self.register_new("register")
            return
        self.exchange("refresh", contact=True, expires=self.expires, cached=True)

    @task(1)
    def query(self):
        if self.call_id is None:
            self.call_id = self.new_call_id()
            self.cseq = 0
        self.exchange("query", contact=False, expires=None, cached=self.challenge is not None)

    @task(1)
    def unregister(self):
        if self.call_id is None:
            return
        self.exchange("unregister", contact=True, expires=0, cached=self.challenge is not None)
        self.call_id = None  # the next refresh registers anew

    # -- SIP -------------------------------------------------------------

    def new_call_id(self) -> str:
        self.counter += 1
        return f"{self.tag}-{self.counter}@locust"

    def register_new(self, name: str):
        self.call_id = self.new_call_id()
        self.cseq = 0
        self.challenge = None
        self.exchange(name, contact=True, expires=self.expires, cached=False)

    def exchange(self, name: str, contact: bool, expires: int | None, cached: bool):
        started = time.perf_counter()
        length = 0
        exception = None
        try:
            auth = self.authorization() if cached and self.challenge else None
            code, msg, length = self.transaction(contact, expires, auth)
            if code in (401, 407):
                self.challenge = self.read_challenge(msg)
                self.nc = 0
                if self.challenge is None:
                    raise SipFailure(f"{code} without a usable digest challenge")
                code, msg, n = self.transaction(contact, expires, self.authorization())
                length += n
            if code != 200:
                raise SipFailure(f"{code} {msg.reason or ''}".strip())
        except SipFailure as error:
            exception = error
        except OSError as error:
            exception = SipFailure(f"socket error: {error}")
        self.environment.events.request.fire(
            request_type="REGISTER",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exception,
            context={"user": self.user},
        )

    def build(self, contact: bool, expires: int | None, auth: str | None) -> bytes:
        self.counter += 1
        self.cseq += 1
        lines = [
            f"REGISTER {self.ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.via_host};branch=z9hG4bK{self.tag}.{self.counter};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{self.domain}>;tag={self.tag}",
            f"To: <sip:{self.user}@{self.domain}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
        ]
        if contact:
            lines.append(f"Contact: {self.contact}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if auth:
            lines.append(auth)
        lines += ["User-Agent: fastreg-locust", "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def transaction(self, contact: bool, expires: int | None, auth: str | None):
        """Send one REGISTER, retransmit per RFC 3261 17.1.2.2, return (status, message, bytes)."""
        data = self.build(contact, expires, auth)
        cseq = self.cseq
        start = time.monotonic()
        interval = T1
        self.sock.send(data)
        next_send = start + interval
        while True:
            now = time.monotonic()
            if now - start >= self.timeout:
                raise SipFailure("timeout")
            self.sock.settimeout(max(0.001, min(next_send, start + self.timeout) - now))
            try:
                raw = self.sock.recv(65535)
            except socket.timeout:
                if time.monotonic() >= next_send:
                    self.sock.send(data)
                    interval = min(interval * 2, T2)
                    next_send = time.monotonic() + interval
                continue
            except ConnectionRefusedError:
                raise SipFailure("ICMP port unreachable") from None
            try:
                msg = sip_parser.parse_message(raw)
            except ParseError:
                continue
            if msg.status_code is None or msg.get("call-id") != self.call_id:
                continue
            try:
                if int((msg.get("cseq") or "").split()[0]) != cseq:
                    continue
            except (IndexError, ValueError):
                continue
            if msg.status_code < 200:
                interval = T2
                next_send = time.monotonic() + interval
                continue
            return msg.status_code, msg, len(raw)

    @staticmethod
    def read_challenge(msg):
        for value in msg.get_all("www-authenticate") + msg.get_all("proxy-authenticate"):
            try:
                creds = sip_parser.parse_credentials(value)
            except ParseError:
                continue
            params = dict(creds.params)
            algorithm = (params.get("algorithm") or "MD5").upper()
            if creds.scheme.lower() != "digest" or algorithm not in _HASHES or "nonce" not in params:
                continue
            qop = params.get("qop")
            if qop is not None and "auth" not in [q.strip().lower() for q in qop.split(",")]:
                continue
            return (params.get("realm", ""), params["nonce"], params.get("opaque"),
                    "auth" if qop is not None else None, algorithm, _HASHES[algorithm])
        return None

    def authorization(self) -> str:
        realm, nonce, opaque, qop, algorithm, h = self.challenge
        ha1 = h(f"{self.user}:{realm}:{self.password}".encode()).hexdigest()
        ha2 = h(f"REGISTER:{self.ruri}".encode()).hexdigest()
        self.nc += 1
        if qop:
            nc = f"{self.nc:08x}"
            cnonce = f"{self.counter:x}{id(self) & 0xFFFFFF:x}"
            response = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
            tail = f', cnonce="{cnonce}", qop=auth, nc={nc}'
        else:
            response = h(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
            tail = ""
        opaque_part = f', opaque="{opaque}"' if opaque is not None else ""
        return (f'Authorization: Digest username="{self.user}", realm="{realm}", nonce="{nonce}", '
                f'uri="{self.ruri}", response="{response}", algorithm={algorithm}{tail}{opaque_part}')
