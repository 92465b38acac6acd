"""A bounded SIP fuzzer for fastreg: garbage, truncated, mutated, oversize and
header-less messages over UDP and TCP, with many and slow TCP connections,
while a probe registers a real user with digest every 0.5 s.

    python bench/fuzz.py --target 127.0.0.1:5060 --count 50000 --seconds 120

It starts nothing: point it at a running server (`fastreg serve -c FILE`)
whose users file has the probe user (`--user 200 --password secret200` by
default). It sends only to 127.0.0.1 or ::1 and refuses any other target,
and it stops by itself after `--count` messages or `--seconds`, whichever
comes first. The server answers to the source address of a request, so
nothing the fuzzer writes in a Via can send traffic off this host.

What runs at the same time:
- the generator: `--count` messages of the kinds in KINDS, paced at `--rate`
  per second (0: as fast as the sockets take them), spread over UDP and TCP
  (TCP-only kinds, such as messages above 64 KiB, go over TCP); TCP messages
  go through `--tcp-workers` connections that are reopened now and then and
  whenever the server closes them, and some are written in small pieces;
- "many connections": `--many` TCP connections opened at once, twice during
  the run, held a few seconds (idle, keep-alive pings, half messages, one
  OPTIONS each for some), then closed;
- "slow connections": `--slow` connections at a time, each trickling a valid
  REGISTER one byte per 100 ms until the server closes it (it should, after
  its tcp_message_timeout_s) or the run ends;
- the probe (a thread with blocking sockets): every `--probe-interval` s a full
  REGISTER / 401 / REGISTER / 200 exchange with digest, alternately over UDP
  (retransmitting like a phone: 0.5, 1, 2 s) and over one kept TCP connection.

At the end it prints what it can observe from outside (the server's own
counters are not exposed yet): messages sent per kind and transport,
responses received per status, TCP connection events, the many/slow
connection outcomes, probe successes/failures/latency, and whether the server
still answers OPTIONS over UDP and TCP (and, with --pid, whether the process
exists). Exit status: 0 when every probe succeeded and the server is alive,
1 otherwise, 2 for bad arguments.

The generator uses usernames "fuzz<N>", never the probe's, so the digest
throttle (per source and user) that the "auth-wrong" kind exercises with real
nonces and wrong responses cannot lock the probe out.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import re
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from fastreg.auth import compute_response

LOOPBACK_TARGETS = ("127.0.0.1", "::1")

# ---------------------------------------------------------------------------------------- target


def parse_target(text: str) -> tuple[str, int]:
    """`127.0.0.1:5060` or `[::1]:5060` -> (host, port). Anything that is not
    127.0.0.1 or ::1 raises ValueError: this tool never sends elsewhere."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"target {text!r}: write an IPv6 target as [::1]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"target {text!r}: expected HOST:PORT")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"target {text!r}: {host!r} is not an IP address (only 127.0.0.1 or ::1)") from None
    if str(address) not in LOOPBACK_TARGETS:
        raise ValueError(f"target {text!r}: refused, this tool sends only to 127.0.0.1 or ::1")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"target {text!r}: bad port {port_text!r}")
    return str(address), int(port_text)


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ------------------------------------------------------------------ a small blocking SIP client

COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length"}


class SipResponse:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            self.headers.append((COMPACT.get(name, name), value.strip()))

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


def parse_challenge(value: str) -> dict[str, str]:
    params = {"scheme": value.strip().split(" ", 1)[0]}
    for m in re.finditer(r'([\w-]+)\s*=\s*(?:"([^"]*)"|([^,\s]+))', value):
        params[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
    return params


# RFC 7616 response: fastreg's own implementation (the fuzzer tests robustness, not digest correctness).
digest_response = compute_response


@dataclass
class RegisterOutcome:
    ok: bool
    status: int  # final status, 0 when nothing came back
    challenge_status: int
    seconds: float
    retransmissions: int = 0
    detail: str = ""


class SipClient:
    """One phone: a UDP socket or a kept TCP connection, its own Call-ID and CSeq.
    `bind` chooses the local address (127.0.0.2 for the throttle demo)."""

    def __init__(self, target: tuple[str, int], transport: str = "UDP", bind: str | None = None,
                 timeout: float = 4.0) -> None:
        self.target = target
        self.transport = transport.upper()
        self.bind = bind or target[0]
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.call_id = f"{os.urandom(8).hex()}@probe"
        self.tag = os.urandom(4).hex()
        self.cseq = 0
        self.reconnects = 0

    # -- sockets ---------------------------------------------------------------------------
    def _socket(self) -> socket.socket:
        if self.sock is None:
            if self.transport == "UDP":
                sock = socket.socket(family_of(self.target[0]), socket.SOCK_DGRAM)
                sock.bind((self.bind, 0))
            else:
                sock = socket.create_connection(self.target, timeout=self.timeout, source_address=(self.bind, 0))
                self.buffer = b""
                self.reconnects += 1
            self.sock = sock
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    @property
    def local(self) -> tuple[str, int]:
        return self._socket().getsockname()[:2]

    def _receive(self, deadline: float) -> SipResponse | None:
        sock = self._socket()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                if self.transport == "UDP":
                    return SipResponse(sock.recvfrom(65536)[0])
                self.buffer = self.buffer.lstrip(b"\r\n")
                end = self.buffer.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", self.buffer[:end])
                    total = end + 4 + (int(m.group(1)) if m else 0)
                    if len(self.buffer) >= total:
                        raw, self.buffer = self.buffer[:total], self.buffer[total:]
                        return SipResponse(raw)
                chunk = sock.recv(65536)
                if not chunk:
                    self.close()
                    raise ConnectionError("server closed the connection")
                self.buffer += chunk
            except socket.timeout:
                return None

    def transact(self, build) -> tuple[SipResponse | None, int]:
        """Send build(branch) and wait for the final response of that CSeq; over UDP
        retransmit at 0.5, 1 and 2 s (RFC 3261 timer A). (response, retransmissions)."""
        self.cseq += 1
        cseq = f"{self.cseq} REGISTER"
        data = build(f"z9hG4bK{os.urandom(8).hex()}", self.cseq)
        sock = self._socket()
        start = time.monotonic()
        deadline = start + self.timeout
        retransmissions = 0
        sock.sendto(data, self.target) if self.transport == "UDP" else sock.sendall(data)
        next_send = start + 0.5
        interval = 0.5
        while True:
            wait_until = min(deadline, next_send) if self.transport == "UDP" else deadline
            response = self._receive(wait_until)
            if response is not None:
                if response.get("call-id") == self.call_id and response.get("cseq") == cseq and response.status >= 200:
                    return response, retransmissions
                continue
            now = time.monotonic()
            if now >= deadline:
                return None, retransmissions
            if self.transport == "UDP" and now >= next_send:
                sock.sendto(data, self.target)
                retransmissions += 1
                interval *= 2
                next_send = now + interval

    def register(self, user: str, password: str, domain: str, expires: int = 600,
                 algorithm: str | None = None) -> RegisterOutcome:
        """REGISTER, 401, REGISTER with digest; ok when the final answer is 200 and lists our contact."""
        start = time.monotonic()
        try:
            host, port = self.local
        except OSError as exc:
            self.close()
            return RegisterOutcome(False, 0, 0, time.monotonic() - start, detail=f"connect: {exc}")
        contact = f"sip:{user}@{bracket(host)}:{port}" + (";transport=tcp" if self.transport == "TCP" else "")
        ruri = f"sip:{domain}"

        def builder(auth: str | None):
            def build(branch: str, cseq: int) -> bytes:
                lines = [f"REGISTER {ruri} SIP/2.0",
                         f"Via: SIP/2.0/{self.transport} {bracket(host)}:{port};branch={branch};rport",
                         "Max-Forwards: 70", f"From: <sip:{user}@{domain}>;tag={self.tag}",
                         f"To: <sip:{user}@{domain}>", f"Call-ID: {self.call_id}", f"CSeq: {cseq} REGISTER",
                         f"Contact: <{contact}>", f"Expires: {expires}", "User-Agent: fastreg-probe"]
                if auth:
                    lines.append(f"Authorization: {auth}")
                lines.append("Content-Length: 0")
                return ("\r\n".join(lines) + "\r\n\r\n").encode()
            return build

        retransmissions = 0
        try:
            first, r = self.transact(builder(None))
            retransmissions += r
            if first is None:
                return RegisterOutcome(False, 0, 0, time.monotonic() - start, retransmissions, "no answer to REGISTER")
            if first.status != 401:
                return RegisterOutcome(first.status == 200, first.status, first.status, time.monotonic() - start,
                                       retransmissions, "not challenged")
            challenges = [parse_challenge(v) for v in first.get_all("www-authenticate")]
            wanted = (algorithm or "MD5").upper()
            challenge = next((c for c in challenges if c.get("algorithm", "MD5").upper() == wanted), challenges[0])
            algo = challenge.get("algorithm", "MD5")
            qop = "auth" if "auth" in challenge.get("qop", "").split(",") else None
            cnonce = os.urandom(4).hex()
            value = digest_response(algo, user, challenge["realm"], password, "REGISTER", ruri, challenge["nonce"],
                                    "00000001", cnonce, qop)
            auth = (f'Digest username="{user}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", '
                    f'uri="{ruri}", response="{value}", algorithm={algo}')
            if qop:
                auth += f', qop={qop}, nc=00000001, cnonce="{cnonce}"'
            if "opaque" in challenge:
                auth += f', opaque="{challenge["opaque"]}"'
            final, r = self.transact(builder(auth))
            retransmissions += r
        except (OSError, ConnectionError) as exc:
            self.close()
            return RegisterOutcome(False, 0, 0, time.monotonic() - start, retransmissions, f"socket: {exc}")
        seconds = time.monotonic() - start
        if final is None:
            return RegisterOutcome(False, 0, 401, seconds, retransmissions, "no answer to the authenticated REGISTER")
        listed = any(contact in value for value in final.get_all("contact"))
        ok = final.status == 200 and listed
        return RegisterOutcome(ok, final.status, 401, seconds, retransmissions,
                               "" if ok else f"final {final.status}{'' if listed else ' without our contact'}")

    def options(self) -> int:
        """OPTIONS to the server; its status, 0 when nothing came back."""
        try:
            host, port = self.local

            def build(branch: str, cseq: int) -> bytes:
                return (f"OPTIONS sip:{bracket(self.target[0])}:{self.target[1]} SIP/2.0\r\n"
                        f"Via: SIP/2.0/{self.transport} {bracket(host)}:{port};branch={branch};rport\r\n"
                        f"Max-Forwards: 70\r\nFrom: <sip:alive@fuzz.invalid>;tag={self.tag}\r\n"
                        f"To: <sip:{bracket(self.target[0])}>\r\nCall-ID: {self.call_id}\r\n"
                        f"CSeq: {cseq} OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()

            self.cseq += 1
            data = build(f"z9hG4bK{os.urandom(8).hex()}", self.cseq)
            sock = self._socket()
            deadline = time.monotonic() + self.timeout
            for attempt in range(3):
                sock.sendto(data, self.target) if self.transport == "UDP" else sock.sendall(data)
                response = self._receive(min(deadline, time.monotonic() + (1.0 if self.transport == "UDP" else 4.0)))
                while response is not None and response.get("cseq") != f"{self.cseq} OPTIONS":
                    response = self._receive(min(deadline, time.monotonic() + 1.0))
                if response is not None:
                    return response.status
                if self.transport == "TCP":
                    break
            return 0
        except (OSError, ConnectionError):
            self.close()
            return 0


def server_alive(target: tuple[str, int], pid: int | None = None) -> tuple[bool, str]:
    """Does the server answer OPTIONS over UDP and TCP (and does --pid exist)?"""
    notes = []
    ok = True
    for transport in ("UDP", "TCP"):
        client = SipClient(target, transport)
        status = client.options()
        client.close()
        notes.append(f"OPTIONS over {transport}: {status or 'no answer'}")
        ok = ok and status == 200
    if pid is not None:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
        running = state not in ("gone", "Z", "X")
        notes.append(f"process {pid}: {'running' if running else 'GONE (' + state + ')'}")
        ok = ok and running
    return ok, ", ".join(notes)


# ------------------------------------------------------------------------------------- the probe


class Probe(threading.Thread):
    """Registers `user` every `interval` s, alternately over UDP and TCP."""

    def __init__(self, target, user, password, domain, interval=0.5, transports=("UDP", "TCP"), bind=None):
        super().__init__(name="probe", daemon=True)
        self.clients = {t: SipClient(target, t, bind=bind) for t in transports}
        self.user, self.password, self.domain, self.interval = user, password, domain, interval
        self.stop_event = threading.Event()
        self.outcomes: list[tuple[str, RegisterOutcome]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        order = list(self.clients)
        i = 0
        while not self.stop_event.is_set():
            started = time.monotonic()
            transport = order[i % len(order)]
            i += 1
            outcome = self.clients[transport].register(self.user, self.password, self.domain)
            self.outcomes.append((transport, outcome))
            if not outcome.ok:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {transport}: {outcome.detail} "
                                     f"(status {outcome.status})")
            self.stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))
        for client in self.clients.values():
            client.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=15)

    def summary(self) -> dict:
        seconds = sorted(o.seconds for _, o in self.outcomes)
        by_transport = Counter(t for t, _ in self.outcomes)
        ok = sum(1 for _, o in self.outcomes if o.ok)
        return {
            "total": len(self.outcomes),
            "ok": ok,
            "failed": len(self.outcomes) - ok,
            "by_transport": dict(by_transport),
            "retransmissions": sum(o.retransmissions for _, o in self.outcomes),
            "p50_ms": 1000 * seconds[len(seconds) // 2] if seconds else 0.0,
            "p99_ms": 1000 * seconds[min(len(seconds) - 1, int(len(seconds) * 0.99))] if seconds else 0.0,
            "max_ms": 1000 * seconds[-1] if seconds else 0.0,
            "tcp_reconnects": max(0, self.clients["TCP"].reconnects - 1) if "TCP" in self.clients else 0,
        }


# ---------------------------------------------------------------------------------- the generator

TCP_ONLY = {"oversize-tcp"}
KINDS = [
    "valid", "garbage", "garbage-text", "bitflip", "truncated", "dup-headers", "huge-header",
    "many-headers", "oversize-tcp", "headerless", "bad-content-length", "broken-via", "nul-bytes",
    "invalid-utf8", "line-endings", "folding", "start-line", "uri-mangle", "contact-mangle",
    "auth-mangle", "auth-wrong", "response",
]
SIP_TOKENS = ["REGISTER", "INVITE", "SIP/2.0", "sip:", "sips:", "@", ":", ";", ",", "<", ">", '"', "=", " ",
              "\r\n", "\r\n\r\n", "\t", "Via", "Contact", "Content-Length", "Expires", "branch=z9hG4bK",
              "0", "1", "65536", "-1", "*", "tag=", "Digest", "[", "]", "::1", "127.0.0.1", "%", "\\"]
UTF8_BAD = [b"\xff", b"\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\x80"]


class Generator:
    def __init__(self, rng: random.Random, target: tuple[str, int], domain: str, udp_port: int,
                 nonces: list[str]) -> None:
        self.rng = rng
        self.target = target
        self.domain = domain
        self.udp_port = udp_port
        self.nonces = nonces or ["A" * 43]
        self.host = bracket(target[0])

    # -- templates ---------------------------------------------------------------------------
    def _r(self, n: int = 8) -> str:
        return "%0*x" % (n, self.rng.getrandbits(4 * n))

    def user(self) -> str:
        return f"fuzz{self.rng.randrange(300)}"

    def template(self, transport: str, method: str | None = None) -> bytes:
        method = method or self.rng.choice(["REGISTER", "REGISTER", "INVITE", "OPTIONS", "MESSAGE", "SUBSCRIBE"])
        user = self.user()
        port = self.udp_port if transport == "UDP" else 9
        via = f"SIP/2.0/{transport} {self.host}:{port};branch=z9hG4bK{self._r()};rport"
        body = b""
        extra: list[str] = []
        if method == "REGISTER":
            ruri, to = f"sip:{self.domain}", f"<sip:{user}@{self.domain}>"
            extra = [f'Contact: <sip:{user}@{self.host}:{port};transport={transport.lower()}>;expires=600;'
                     f'+sip.instance="<urn:uuid:{self._r(8)}-0000-1000-8000-{self._r(12)}>";reg-id=1;q=0.5',
                     "Expires: 600", "Supported: path", "Path: <sip:edge.invalid;lr>"]
            if self.rng.random() < 0.5:
                extra.append(f'Authorization: Digest username="{user}", realm="{self.domain}", '
                             f'nonce="{self.rng.choice(self.nonces)}", uri="sip:{self.domain}", '
                             f'response="{self._r(32)}", algorithm=MD5, cnonce="{self._r()}", qop=auth, nc=00000001')
        else:
            callee = f"fuzz{self.rng.randrange(300)}" if self.rng.random() < 0.7 else "200"
            ruri, to = f"sip:{callee}@{self.domain}", f"<sip:{callee}@{self.domain}>"
            if method == "INVITE":
                body = (f"v=0\r\no=- {self._r()} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                        "m=audio 4000 RTP/AVP 0\r\n").encode()
                extra = [f"Contact: <sip:{user}@{self.host}:{port}>", "Content-Type: application/sdp"]
            elif method == "MESSAGE":
                body = b"hello " + self._r(20).encode()
                extra = ["Content-Type: text/plain"]
            elif method == "SUBSCRIBE":
                extra = ["Event: presence", "Expires: 600"]
        lines = [f"{method} {ruri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70",
                 f"From: <sip:{user}@{self.domain}>;tag={self._r()}", f"To: {to}",
                 f"Call-ID: {self._r(16)}@fuzz", f"CSeq: {self.rng.randrange(1, 1 << 31)} {method}",
                 "User-Agent: fastreg-fuzz", *extra, f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _lines(self, transport: str) -> tuple[list[bytes], bytes]:
        head, _, body = self.template(transport).partition(b"\r\n\r\n")
        return head.split(b"\r\n"), body

    @staticmethod
    def _join(lines: list[bytes], body: bytes = b"") -> bytes:
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    # -- kinds -------------------------------------------------------------------------------
    def make(self, kind: str, transport: str) -> bytes:
        return getattr(self, "k_" + kind.replace("-", "_"))(transport)

    def k_valid(self, t):
        return self.template(t)

    def k_garbage(self, t):
        return self.rng.randbytes(self.rng.randrange(1, 1400 if t == "UDP" else 4000))

    def k_garbage_text(self, t):
        return "".join(self.rng.choice(SIP_TOKENS) for _ in range(self.rng.randrange(1, 400))).encode()

    def k_bitflip(self, t):
        data = bytearray(self.template(t))
        for _ in range(self.rng.randrange(1, 20)):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return bytes(data)

    def k_truncated(self, t):
        data = self.template(t)
        return data[:self.rng.randrange(1, len(data))]

    def k_dup_headers(self, t):
        lines, body = self._lines(t)
        out = [lines[0]]
        for line in lines[1:]:
            out.append(line)
            if self.rng.random() < 0.3:
                out.extend([line] * self.rng.randrange(1, 50))
        name = self.rng.choice([b"To", b"From", b"Call-ID", b"CSeq", b"Content-Length", b"Expires", b"Max-Forwards"])
        value = self.rng.choice([b"<sip:other@x>", b"12 REGISTER", b"7", b"0", b"abc", b"999999"])
        out.insert(self.rng.randrange(1, len(out) + 1), name + b": " + value)
        return self._join(out, body)

    def k_huge_header(self, t):
        lines, body = self._lines(t)
        size = self.rng.choice([8192, 8193, 20000, 60000])
        name = self.rng.choice([b"X-Huge", b"Via", b"Contact", b"Authorization", b"To", b"Call-ID", b"Subject"])
        value = self.rng.choice([b"a", b"sip:x@y;", b"<sip:a@b>,", b'"'])
        lines.insert(self.rng.randrange(1, len(lines) + 1), name + b": " + (value * (size // len(value)))[:size])
        return self._join(lines, body)

    def k_many_headers(self, t):
        lines, body = self._lines(t)
        count = self.rng.choice([101, 1000, 3000, 5000])
        name = self.rng.choice([b"X-H", b"Via", b"Contact", b"Route", b"Path", b"Require"])
        extra = [name + b": " + (b"SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK%d" % i if name == b"Via" else b"<sip:h%d@x>" % i)
                 for i in range(count)]
        return self._join(lines[:3] + extra + lines[3:], body)

    def k_oversize_tcp(self, t):
        size = self.rng.choice([65537, 70000, 100000, 200000])
        if self.rng.random() < 0.5:  # a large body, announced
            lines, _ = self._lines(t)
            lines = [l for l in lines if not l.lower().startswith(b"content-length")]
            body = b"x" * size
            return self._join(lines + [b"Content-Length: %d" % size], body)
        lines, body = self._lines(t)  # a header block that never ends within the limit
        return self._join(lines[:2] + [b"X-Pad-%d: %s" % (i, b"p" * 1000) for i in range(size // 1000)] + lines[2:], body)

    def k_headerless(self, t):
        method = self.rng.choice([b"REGISTER", b"INVITE", b"OPTIONS", b"ACK", b"BYE"])
        return self.rng.choice([
            method + b" sip:" + self.domain.encode() + b" SIP/2.0\r\n\r\n",
            method + b" sip:x SIP/2.0\r\n",
            method + b" sip:x SIP/2.0",
            b"\r\n\r\n",
            b"SIP/2.0 200 OK\r\n\r\n",
            method + b" sip:x SIP/2.0\r\n\r\nbody without headers",
            method + b" sip:x SIP/2.0\r\nContent-Length: 5\r\n\r\nhello",
            method + b" sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKh\r\n\r\n",
        ])

    def k_bad_content_length(self, t):
        lines, body = self._lines(t)
        lines = [l for l in lines if not l.lower().startswith(b"content-length")]
        value = self.rng.choice([b"-1", b"-99999", b"99999999999999999999999", b"abc", b"", b"1 2", b"0x10", b"+5",
                                 b"0000000000000000000000005", b"4294967296", b"1.5", b"65536", b"100"])
        lines.append(b"Content-Length: " + value)
        if self.rng.random() < 0.3:
            lines.append(b"l: " + self.rng.choice([b"0", b"7", b"-3"]))
        return self._join(lines, body + self.rng.choice([b"", b"extra bytes"]))

    def k_broken_via(self, t):
        lines, body = self._lines(t)
        broken = self.rng.choice([
            b"Via: ", b"Via: SIP/2.0/UDP", b"Via: ;;;", b"Via: SIP/2.0/UDP [::1", b"Via: SIP/3.0/XYZ host:99999",
            b"Via: SIP/2.0/UDP host;branch", b"Via: SIP/2.0/UDP 127.0.0.1:0;rport=abc", b"Via: SIP/2.0/UDP :5060",
            b"Via: SIP/2.0/UDP 127.0.0.1:-1;branch=x", b"Via: ,,,,", b"Via: SIP/2.0/UDP 127.0.0.1;received=x;rport;rport",
            b"Via: SIP/2.0/UDP " + b"a" * 5000, b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=\"unterminated",
            b"Via: SIP/2.0/TCP 127.0.0.1:65536", b"Via: sip/2.0/udp 127.0.0.1:9;branch=z9hG4bKlower",
        ])
        index = next((i for i, l in enumerate(lines) if l.startswith(b"Via:")), 1)
        if self.rng.random() < 0.5:
            lines[index] = broken
        else:
            lines.insert(self.rng.randrange(1, len(lines) + 1), broken)
        return self._join(lines, body)

    def k_nul_bytes(self, t):
        data = bytearray(self.template(t))
        for _ in range(self.rng.randrange(1, 10)):
            data.insert(self.rng.randrange(len(data)), 0)
        return bytes(data)

    def k_invalid_utf8(self, t):
        data = bytearray(self.template(t))
        targets = [m.start() for m in re.finditer(rb"[A-Za-z0-9]", bytes(data))]
        for _ in range(self.rng.randrange(1, 8)):
            pos = self.rng.choice(targets)
            data[pos:pos + 1] = self.rng.choice(UTF8_BAD)
            targets = [p for p in targets if p < len(data)]
        return bytes(data)

    def k_line_endings(self, t):
        data = self.template(t)
        choice = self.rng.randrange(4)
        if choice == 0:
            return data.replace(b"\r\n", b"\n")
        if choice == 1:
            return data.replace(b"\r\n", b"\r")
        if choice == 2:
            return data.replace(b"\r\n", self.rng.choice([b"\n", b"\r\n", b"\r"]), self.rng.randrange(1, 6))
        return data.replace(b": ", b": \r", 1)

    def k_folding(self, t):
        lines, body = self._lines(t)
        out = [lines[0]]
        if self.rng.random() < 0.3:
            out.append(b" starts with a continuation")
        for line in lines[1:]:
            if b" " in line and self.rng.random() < 0.4:
                cut = line.index(b" ") + self.rng.randrange(0, max(1, len(line) - line.index(b" ")))
                out += [line[:cut], self.rng.choice([b" ", b"\t", b"   "]) + line[cut:]]
            else:
                out.append(line)
            if self.rng.random() < 0.1:
                out.append(self.rng.choice([b" ", b"\t", b" \t "]))
        return self._join(out, body)

    def k_start_line(self, t):
        lines, body = self._lines(t)
        lines[0] = self.rng.choice([
            b"REGISTER", b"REGISTER sip:x", b"REGISTER  sip:x  SIP/2.0", b"R\x00EGISTER sip:x SIP/2.0",
            b"REGISTER sip:x SIP/2.0 extra", b"X" * 10000 + b" sip:x SIP/2.0", b"SIP/2.0 999999 X",
            b"SIP/2.0 abc OK", b"sip/2.0 200 ok", b"REGISTER sip:x SIP/1.0", b"REGISTER sip:x HTTP/1.1",
            b"GET / HTTP/1.1", b" REGISTER sip:x SIP/2.0", b"REGISTER sip:x SIP/2.0\x00", b"\xffREGISTER sip:x SIP/2.0",
            b"INVITE sip:" + b"u" * 9000 + b"@x SIP/2.0", b"ACK sip:x SIP/2.0 ", b"REGISTER\tsip:x\tSIP/2.0",
        ])
        return self._join(lines, body)

    def k_uri_mangle(self, t):
        lines, body = self._lines(t)
        uri = self.rng.choice([b"sip:", b"sip:@", b"sip:a@b:99999", b"sip:[::1", b"sips:%zz@x", b"sip:" + b"u" * 5000 + b"@x",
                               b"tel:", b"sip:a@b;;;", b"sip:a@b?x", b"sip:a@b@c", b"sip:a b@c", b"<sip:a@b>",
                               b"mailto:x@y", b"sip:a@[zz::1]", b"sip:%00@x", b"sip:a@b:", b"sip:a@-", b"sip:a@b;x=\"",
                               b"sip:a:pw:x@b", b"sip:a@b;transport=", b"*"])
        where = self.rng.randrange(3)
        if where == 0:
            parts = lines[0].split(b" ")
            if len(parts) == 3:
                lines[0] = parts[0] + b" " + uri + b" " + parts[2]
        else:
            name = b"To: " if where == 1 else b"From: "
            lines = [name + self.rng.choice([uri, b"<" + uri + b">", b'"x" <' + uri + b">;tag=1"])
                     if l.startswith(name) else l for l in lines]
        return self._join(lines, body)

    def k_contact_mangle(self, t):
        lines, body = self._lines(t)
        lines[0] = b"REGISTER sip:" + self.domain.encode() + b" SIP/2.0"
        lines = [l for l in lines if not l.startswith((b"Contact:", b"CSeq:"))]
        lines.append(b"CSeq: 1 REGISTER")
        contact = self.rng.choice([
            b"<", b"<sip:a@b", b"*, *", b"*", b"<sip:a@b>;expires=99999999999999999999", b"<sip:a@b>;q=1e999",
            b", ".join(b"<sip:c%d@h>" % i for i in range(500)), b"<sip:a@[::1>", b'"unterminated <sip:a@b>',
            b"<>", b"<sip:a@b>;expires=", b"<sip:a@b>;q=", b"<sip:a@b>;;;", b"<sip:a@b>;+sip.instance=\"<urn",
            b"<sip:a@b>;reg-id=99999999999999", b"<sip:a@b>;expires=-5", b"sip:a@b;expires=0, *", b"<sip:a@b>>",
            b",,,,", b"<sip:a@b>;q=0.5;q=0.7;expires=1;expires=2",
        ])
        lines.insert(self.rng.randrange(1, len(lines) + 1), b"Contact: " + contact)
        if self.rng.random() < 0.5:
            lines.append(b"Expires: " + self.rng.choice([b"0", b"30", b"abc", b"99999999999999999999", b"-1"]))
        return self._join(lines, body)

    def k_auth_mangle(self, t):
        lines, body = self._lines(t)
        lines[0] = b"REGISTER sip:" + self.domain.encode() + b" SIP/2.0"
        lines = [l for l in lines if not l.startswith((b"Authorization:", b"CSeq:"))]
        lines.append(b"CSeq: 2 REGISTER")
        nonce = self.rng.choice(self.nonces).encode()
        auth = self.rng.choice([
            b'Digest username="fuzz1, realm="x"', b"Digest " + b", ".join(b"p%d=v" % i for i in range(1000)),
            b"Digest username", b"Digest username=", b'Digest username="a", username="b"', b"Digest ,,,,,",
            b"Digest", b"", b"Basic Zm9vOmJhcg==", b'Digest username="fuzz1", realm="fastreg.local", nonce="' + nonce
            + b'", uri="sip:x", response="zz", nc=zzzzzzzz, qop=auth, cnonce="c"', b'Digest nonce="' + b"N" * 10000 + b'"',
            b'Digest username="fuzz1", realm="fastreg.local", nonce="' + nonce + b'", uri="sip:x", response="00",'
            b' qop=auth-int, nc=00000001, cnonce="c", algorithm=SHA-512-256',
            b'Digest username="fuzz1", realm="fastreg.local", nonce="' + nonce + b'", uri="sip:x", response="00",'
            b' userhash=true', b'Digest username="\\', b'Digest username="a\\"b", realm="fastreg.local"',
            b'Digest username="\xff\xfe", realm="fastreg.local", nonce="' + nonce + b'", uri="sip:x", response="0"',
        ])
        lines.insert(self.rng.randrange(1, len(lines) + 1), b"Authorization: " + auth)
        return self._join(lines, body)

    def k_auth_wrong(self, t):
        """A well-formed REGISTER with a real nonce and a wrong response: the digest path
        and the failure throttle (usernames fuzz<N>, never the probe's)."""
        user = self.user()
        port = self.udp_port if t == "UDP" else 9
        return (f"REGISTER sip:{self.domain} SIP/2.0\r\nVia: SIP/2.0/{t} {self.host}:{port};branch=z9hG4bK{self._r()};"
                f"rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{self.domain}>;tag={self._r()}\r\n"
                f"To: <sip:{user}@{self.domain}>\r\nCall-ID: {self._r(16)}@fuzz\r\nCSeq: 2 REGISTER\r\n"
                f"Contact: <sip:{user}@{self.host}:{port}>\r\nAuthorization: Digest username=\"{user}\", "
                f"realm=\"{self.domain}\", nonce=\"{self.rng.choice(self.nonces)}\", uri=\"sip:{self.domain}\", "
                f"response=\"{self._r(32)}\", algorithm=MD5, cnonce=\"{self._r()}\", qop=auth, "
                f"nc={self.rng.randrange(1, 9):08x}\r\nContent-Length: 0\r\n\r\n").encode()

    def k_response(self, t):
        port = self.udp_port if t == "UDP" else 9
        status = self.rng.choice([b"100 Trying", b"180 Ringing", b"200 OK", b"401 Unauthorized", b"302 Moved", b"999 X"])
        data = (b"SIP/2.0 " + status + b"\r\nVia: SIP/2.0/" + t.encode() + b" " + self.host.encode() + b":%d" % port
                + b";branch=z9hG4bK" + self._r().encode() + b";rport\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKup\r\n"
                b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: " + self._r().encode()
                + b"\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
        if self.rng.random() < 0.5:
            data = bytearray(data)
            for _ in range(self.rng.randrange(1, 6)):
                data[self.rng.randrange(len(data))] = self.rng.randrange(256)
            data = bytes(data)
        return data


# ------------------------------------------------------------------------------------ the engine


@dataclass
class Options:
    target: tuple[str, int]
    count: int = 50000
    seconds: float = 120.0
    rate: float = 1000.0  # messages per second; 0 = as fast as possible
    user: str = "200"
    password: str = "secret200"
    domain: str = "fastreg.local"
    tcp_workers: int = 32
    many: int = 500  # TCP connections opened at once (twice)
    many_hold_s: float = 5.0
    slow: int = 20  # trickling connections at a time
    probe_interval: float = 0.5
    seed: int | None = None
    pid: int | None = None
    quiet: bool = False


@dataclass
class Result:
    sent: Counter = field(default_factory=Counter)  # (kind, transport) -> messages
    responses: Counter = field(default_factory=Counter)  # (transport, status) -> responses seen
    tcp: Counter = field(default_factory=Counter)  # connection events
    many: Counter = field(default_factory=Counter)
    slow_closed_after: list[float] = field(default_factory=list)
    slow: Counter = field(default_factory=Counter)
    probe: dict = field(default_factory=dict)
    probe_failures: list[str] = field(default_factory=list)
    alive: bool = False
    alive_detail: str = ""
    elapsed: float = 0.0
    final_register: dict = field(default_factory=dict)

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def passed(self) -> bool:
        return (self.alive and self.probe.get("failed", 1) == 0 and self.probe.get("total", 0) > 0
                and all(self.final_register.values()))


STATUS_RE = re.compile(rb"(?:^|\n)SIP/2\.0 (\d{3}) ")


class UdpCounter(asyncio.DatagramProtocol):
    def __init__(self, result: Result) -> None:
        self.result = result

    def datagram_received(self, data, addr) -> None:
        m = STATUS_RE.match(data)
        self.result.responses["UDP", m.group(1).decode() if m else "other"] += 1

    def error_received(self, exc) -> None:
        self.result.responses["UDP", "icmp-error"] += 1


async def _count_stream(reader: asyncio.StreamReader, result: Result, bucket: Counter, transport="TCP") -> str:
    """Read until EOF, counting response status lines. 'eof' or 'reset'."""
    tail = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                bucket["closed-by-server"] += 1
                return "eof"
            data = tail + chunk
            for m in STATUS_RE.finditer(data):
                result.responses[transport, m.group(1).decode()] += 1
            tail = data[-64:]
    except (ConnectionError, OSError):
        bucket["reset-by-server"] += 1
        return "reset"
    except asyncio.CancelledError:
        return "cancelled"


class Engine:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.result = Result()
        self.host, self.port = options.target
        self.family = family_of(self.host)
        self.stopping = False

    async def _connect(self, bucket: Counter, timeout: float = 3.0):
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, family=self.family), timeout)
        except (OSError, asyncio.TimeoutError):
            bucket["connect-failed"] += 1
            return None
        bucket["opened"] += 1
        return reader, writer

    # -- TCP workers ---------------------------------------------------------------------------
    async def tcp_worker(self, queue: asyncio.Queue) -> None:
        conn = None
        counter = None
        tcp = self.result.tcp
        while True:
            item = await queue.get()
            if item is None:
                break
            data = item
            if conn is not None and (counter.done() or self.rng.random() < 0.25):
                conn[1].close()
                counter.cancel()
                conn = None
            if conn is None:
                conn = await self._connect(tcp)
                if conn is None:
                    continue
                counter = asyncio.ensure_future(_count_stream(conn[0], self.result, tcp))
            writer = conn[1]
            try:
                if self.rng.random() < 0.2 and len(data) > 4:  # written in small pieces
                    cuts = sorted(self.rng.sample(range(1, len(data)), min(len(data) - 1, self.rng.randrange(2, 6))))
                    for a, b in zip([0] + cuts, cuts + [len(data)]):
                        writer.write(data[a:b])
                        await asyncio.wait_for(writer.drain(), 3)
                        await asyncio.sleep(0.002)
                else:
                    writer.write(data)
                    await asyncio.wait_for(writer.drain(), 3)
            except (OSError, ConnectionError, asyncio.TimeoutError, RuntimeError):
                # (uvloop raises RuntimeError when writing to a transport the server closed)
                tcp["write-failed"] += 1
                writer.close()
                conn = None
        if conn is not None:
            await asyncio.sleep(0.2)  # let the last answers arrive
            conn[1].close()
            counter.cancel()

    # -- many connections at once -----------------------------------------------------------------
    async def many_connections(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.stopping:
            return
        many = self.result.many
        many["rounds"] += 1
        conns = await asyncio.gather(*(self._connect(many, timeout=10) for _ in range(self.o.many)))
        live = [c for c in conns if c is not None]

        async def behave(i, reader, writer):
            what = i % 4
            try:
                if what == 1:  # RFC 5626 keep-alive
                    writer.write(b"\r\n\r\n")
                    many["ping-sent"] += 1
                    if await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n":
                        many["pong"] += 1
                elif what == 2:  # half a message, never finished
                    writer.write(Generator(self.rng, self.o.target, self.o.domain, 9, []).template("TCP")[:40])
                    many["half-message"] += 1
                elif what == 3:  # a real request
                    writer.write(f"OPTIONS sip:{bracket(self.host)}:{self.port} SIP/2.0\r\nVia: SIP/2.0/TCP "
                                 f"{bracket(self.host)}:9;branch=z9hG4bKm{i}{os.urandom(3).hex()};rport\r\n"
                                 f"From: <sip:m{i}@x>;tag=1\r\nTo: <sip:{bracket(self.host)}>\r\n"
                                 f"Call-ID: many{i}{os.urandom(4).hex()}\r\nCSeq: 1 OPTIONS\r\n"
                                 f"Content-Length: 0\r\n\r\n".encode())
                    many["options-sent"] += 1
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    if head.startswith(b"SIP/2.0 200 "):
                        many["options-200"] += 1
                else:
                    many["idle"] += 1
                await asyncio.sleep(self.o.many_hold_s)
                if reader.at_eof():
                    many["closed-by-server"] += 1
            except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, RuntimeError):
                many["errors"] += 1
            finally:
                writer.close()

        await asyncio.gather(*(behave(i, r, w) for i, (r, w) in enumerate(live)))

    # -- slow connections ------------------------------------------------------------------------
    async def trickle(self, index: int) -> None:
        slow = self.result.slow
        gen = Generator(random.Random(index), self.o.target, self.o.domain, 9, [])
        while not self.stopping:
            conn = await self._connect(slow)
            if conn is None:
                await asyncio.sleep(0.5)
                continue
            reader, writer = conn
            slow["connections"] += 1
            data = gen.template("TCP", "REGISTER")
            started = time.monotonic()
            closed = asyncio.ensure_future(_count_stream(reader, self.result, Counter()))
            try:
                for byte in data:
                    if self.stopping or closed.done():
                        break
                    writer.write(bytes([byte]))
                    try:
                        await asyncio.wait_for(asyncio.shield(closed), 0.1)
                    except asyncio.TimeoutError:
                        pass
            except (OSError, ConnectionError, RuntimeError):
                pass
            if closed.done():
                self.result.slow_closed_after.append(time.monotonic() - started)
                slow["closed-by-server"] += 1
            elif not self.stopping:
                slow["completed"] += 1  # the whole message went through before any timeout
            closed.cancel()
            writer.close()

    # -- nonces for the auth kinds ---------------------------------------------------------------
    def fetch_nonces(self, n: int = 8) -> list[str]:
        nonces = []
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        sock.bind((self.host, 0))
        sock.settimeout(1.0)
        port = sock.getsockname()[1]
        try:
            for i in range(n):
                msg = (f"REGISTER sip:{self.o.domain} SIP/2.0\r\nVia: SIP/2.0/UDP {bracket(self.host)}:{port};"
                       f"branch=z9hG4bKn{i}{os.urandom(4).hex()};rport\r\nFrom: <sip:fuzz{i}@{self.o.domain}>;tag=1\r\n"
                       f"To: <sip:fuzz{i}@{self.o.domain}>\r\nCall-ID: nonce{i}{os.urandom(4).hex()}\r\n"
                       f"CSeq: 1 REGISTER\r\nContact: <sip:fuzz@{bracket(self.host)}:9>\r\nContent-Length: 0\r\n\r\n")
                sock.sendto(msg.encode(), self.o.target)
                try:
                    response = SipResponse(sock.recvfrom(65536)[0])
                except socket.timeout:
                    continue
                for value in response.get_all("www-authenticate"):
                    nonce = parse_challenge(value).get("nonce")
                    if nonce:
                        nonces.append(nonce)
        finally:
            sock.close()
        return nonces

    # -- the run -----------------------------------------------------------------------------------
    async def run_async(self) -> Result:
        loop = asyncio.get_running_loop()
        o = self.o
        udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpCounter(self.result), local_addr=(self.host, 0), family=self.family)
        udp_sock = udp_transport.get_extra_info("socket")
        try:
            udp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        except OSError:
            pass
        gen = Generator(self.rng, o.target, o.domain, udp_transport.get_extra_info("sockname")[1],
                        await loop.run_in_executor(None, self.fetch_nonces))
        queue: asyncio.Queue = asyncio.Queue(maxsize=4 * o.tcp_workers)
        workers = [asyncio.ensure_future(self.tcp_worker(queue)) for _ in range(o.tcp_workers)]
        side = [asyncio.ensure_future(self.trickle(i)) for i in range(o.slow)]
        rounds = [0.1, 0.5] if o.many else []  # "many connections" at 10 % and 50 % of the run
        start = time.monotonic()
        deadline = start + o.seconds
        interval = 1.0 / o.rate if o.rate else 0.0
        kinds = KINDS
        for i in range(o.count):
            now = time.monotonic()
            if now >= deadline:
                break
            if rounds and (i >= rounds[0] * o.count or now - start >= rounds[0] * o.seconds):
                rounds.pop(0)
                side.append(asyncio.ensure_future(self.many_connections(0)))
            kind = self.rng.choice(kinds)
            transport = "TCP" if kind in TCP_ONLY else self.rng.choice(("UDP", "TCP"))
            data = gen.make(kind, transport)
            if transport == "UDP":
                data = data[:65000]
                try:
                    udp_transport.sendto(data, o.target)
                except OSError:
                    self.result.responses["UDP", "send-error"] += 1
                if udp_transport.get_write_buffer_size() > (1 << 20):
                    await asyncio.sleep(0.01)
            else:
                await queue.put(data)
            self.result.sent[kind, transport] += 1
            if interval:
                ahead = start + (i + 1) * interval - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif i % 64 == 0:
                await asyncio.sleep(0)
        self.stopping = True
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        await asyncio.wait_for(asyncio.gather(*side, return_exceptions=True), o.many_hold_s + 30)
        self.result.elapsed = time.monotonic() - start
        await asyncio.sleep(0.3)
        udp_transport.close()
        return self.result


class ProbeUnusable(Exception):
    """The probe user cannot register before the run starts."""


def run(options: Options) -> Result:
    """Run the fuzzer with its probe and return what was observed (blocking)."""
    probe = Probe(options.target, options.user, options.password, options.domain, options.probe_interval)
    # The probe must work before we start: otherwise the run proves nothing.
    first = SipClient(options.target, "UDP").register(options.user, options.password, options.domain)
    if not first.ok:
        raise ProbeUnusable(f"the probe user cannot register before fuzzing: {first.detail} (status {first.status});"
                           " check --user/--password/--domain and the server's users file")
    probe.start()
    engine = Engine(options)
    try:
        try:
            import uvloop
            result = uvloop.run(engine.run_async())
        except ImportError:
            result = asyncio.run(engine.run_async())
    finally:
        probe.stop()
    result.probe = probe.summary()
    result.probe_failures = probe.failures
    for transport in ("UDP", "TCP"):
        client = SipClient(options.target, transport)
        result.final_register[transport] = client.register(options.user, options.password, options.domain).ok
        client.close()
    result.alive, result.alive_detail = server_alive(options.target, options.pid)
    return result


def report(result: Result, options: Options, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    total = result.total_sent
    p(f"fuzz: {total} messages in {result.elapsed:.1f} s ({total / max(result.elapsed, 1e-9):.0f}/s) "
      f"to {bracket(options.target[0])}:{options.target[1]}, seed {options.seed}")
    p(f"  {'kind':<20} {'UDP':>7} {'TCP':>7}")
    for kind in KINDS:
        p(f"  {kind:<20} {result.sent[kind, 'UDP']:>7} {result.sent[kind, 'TCP']:>7}")
    for transport in ("UDP", "TCP"):
        seen = {s: n for (t, s), n in result.responses.items() if t == transport}
        p(f"responses seen over {transport}: {sum(seen.values())} "
          + (" ".join(f"{s}:{n}" for s, n in sorted(seen.items())) or "-"))
    tcp = result.tcp
    p(f"tcp connections (generator): opened {tcp['opened']}, connect failures {tcp['connect-failed']}, "
      f"closed by server {tcp['closed-by-server']}, reset by server {tcp['reset-by-server']}, "
      f"write failures {tcp['write-failed']}")
    m = result.many
    p(f"many connections: {m['rounds']} round(s) of {options.many}: opened {m['opened']}, connect failures "
      f"{m['connect-failed']}, keep-alive pongs {m['pong']}/{m['ping-sent']}, OPTIONS 200 "
      f"{m['options-200']}/{m['options-sent']}, half messages {m['half-message']}, idle {m['idle']}, "
      f"closed by server {m['closed-by-server']}, errors {m['errors']}")
    s = result.slow
    times = result.slow_closed_after
    p(f"slow connections (1 byte / 100 ms): {s['connections']} trickled, closed by server {s['closed-by-server']}"
      + (f" after {min(times):.1f}/{statistics.median(times):.1f}/{max(times):.1f} s (min/median/max)" if times else "")
      + f", completed before any timeout {s['completed']}, connect failures {s['connect-failed']}")
    pr = result.probe
    p(f"probe ({options.user}, every {options.probe_interval} s): {pr.get('total', 0)} registrations "
      f"{pr.get('by_transport', {})}: {pr.get('ok', 0)} ok, {pr.get('failed', 0)} failed, "
      f"{pr.get('retransmissions', 0)} UDP retransmissions, TCP reconnects {pr.get('tcp_reconnects', 0)}, "
      f"latency p50 {pr.get('p50_ms', 0):.1f} ms p99 {pr.get('p99_ms', 0):.1f} ms max {pr.get('max_ms', 0):.1f} ms")
    for failure in result.probe_failures[:20]:
        p(f"  probe failure: {failure}")
    final = ", ".join(f"{t} {'ok' if ok else 'FAILED'}" for t, ok in result.final_register.items())
    p(f"after the run: REGISTER {final}")
    p(f"server alive: {'yes' if result.alive else 'NO'} ({result.alive_detail})")
    p(f"result: {'PASS' if result.passed else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:5060", help="127.0.0.1:PORT or [::1]:PORT (nothing else)")
    ap.add_argument("--count", type=int, default=50000, help="generated messages (default 50000)")
    ap.add_argument("--seconds", type=float, default=120.0, help="stop after this long at most (default 120)")
    ap.add_argument("--rate", type=float, default=1000.0, help="messages per second, 0 = unpaced (default 1000)")
    ap.add_argument("--user", default="200")
    ap.add_argument("--password", default="secret200")
    ap.add_argument("--domain", default="fastreg.local")
    ap.add_argument("--tcp-workers", type=int, default=32)
    ap.add_argument("--many", type=int, default=500, help="TCP connections opened at once, twice (default 500)")
    ap.add_argument("--slow", type=int, default=20, help="trickling connections at a time (default 20)")
    ap.add_argument("--probe-interval", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--pid", type=int, default=None, help="the server's process id, checked at the end")
    args = ap.parse_args(argv)
    try:
        target = parse_target(args.target)
    except ValueError as exc:
        print(f"fuzz: {exc}", file=sys.stderr)
        return 2
    if args.count < 1 or args.seconds <= 0 or args.rate < 0:
        print("fuzz: --count must be >= 1, --seconds > 0, --rate >= 0", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    options = Options(target, args.count, args.seconds, args.rate, args.user, args.password, args.domain,
                      args.tcp_workers, args.many, 5.0, args.slow, args.probe_interval, seed, args.pid)
    try:
        result = run(options)
    except ProbeUnusable as exc:
        print(f"fuzz: {exc}", file=sys.stderr)
        return 1
    report(result, options)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
