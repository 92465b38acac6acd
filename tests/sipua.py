"""A small blocking SIP user agent for the tests: builds requests, sends them
over real UDP or TCP sockets, answers digest challenges. Written from RFC
3261/7616, independent of the registrar's code except the message parser."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import socket
import time
from dataclasses import dataclass, field

from fastreg import _pyparse
from fastreg.message import SipMessage

_counter = itertools.count(1)


def new_branch() -> str:
    return f"z9hG4bK{os.urandom(6).hex()}{next(_counter)}"


def digest_response(username, realm, password, method, uri, nonce, nc, cnonce, qop="auth", algorithm="MD5"):
    h = hashlib.sha256 if algorithm.upper().startswith("SHA-256") else hashlib.md5
    ha1 = h(f"{username}:{realm}:{password}".encode()).hexdigest()
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode()).hexdigest()
    ha2 = h(f"{method}:{uri}".encode()).hexdigest()
    if qop:
        return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest()
    return h(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()


def parse_challenge(value: str) -> dict[str, str]:
    params = {}
    for match in re.finditer(r'(\w[\w-]*)\s*=\s*("([^"]*)"|[^,\s]+)', value):
        params[match.group(1).lower()] = match.group(3) if match.group(3) is not None else match.group(2)
    return params


class Transport:
    def __init__(self, kind: str, server: tuple[str, int], local_host: str = "127.0.0.1") -> None:
        self.kind = kind.upper()
        self.server = server
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        if self.kind == "UDP":
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            self.sock.bind((local_host if family == socket.AF_INET else "::1", 0))
        else:
            self.sock = socket.create_connection(server, timeout=5,
                                                 source_address=(local_host, 0) if family == socket.AF_INET else None)
        self.sock.settimeout(5)
        self.local = self.sock.getsockname()[:2]
        self.buffer = b""

    def send(self, data: bytes) -> None:
        if self.kind == "UDP":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def receive(self, timeout: float = 5.0) -> SipMessage:
        self.sock.settimeout(timeout)
        if self.kind == "UDP":
            data, _ = self.sock.recvfrom(65536)
            return _pyparse.parse_message(data)
        while True:
            while self.buffer.startswith(b"\r\n"):
                self.buffer = self.buffer[2:]
            if self.buffer:
                length = _pyparse.frame_length(self.buffer)
                if length is not None:
                    message, self.buffer = self.buffer[:length], self.buffer[length:]
                    return _pyparse.parse_message(message)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


@dataclass
class UserAgent:
    """One AOR's client: keeps Call-ID and CSeq like a phone does."""

    user: str
    password: str
    transport: Transport
    domain: str = "fastreg.local"
    call_id: str = field(default_factory=lambda: f"{os.urandom(8).hex()}@test")
    cseq: int = 0
    from_tag: str = field(default_factory=lambda: os.urandom(4).hex())
    contact_user: str | None = None
    algorithm: str | None = None  # None: take the first challenge

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    def contact_uri(self) -> str:
        host, port = self.transport.local
        host = f"[{host}]" if ":" in host else host
        transport = ";transport=tcp" if self.transport.kind == "TCP" else ""
        return f"sip:{self.contact_user or self.user}@{host}:{port}{transport}"

    def build(self, method: str = "REGISTER", contacts: list[str] | None = None, expires: int | None = None,
              extra: list[str] | None = None, authorization: str | None = None, request_uri: str | None = None,
              branch: str | None = None, cseq: int | None = None, to_uri: str | None = None) -> bytes:
        host, port = self.transport.local
        host = f"[{host}]" if ":" in host else host
        lines = [
            f"{method} {request_uri or 'sip:' + self.domain} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.kind} {host}:{port};branch={branch or new_branch()};rport",
            "Max-Forwards: 70",
            f"From: <{self.aor}>;tag={self.from_tag}",
            f"To: <{to_uri or self.aor}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq if cseq is None else cseq} {method}",
        ]
        if contacts is None and method == "REGISTER":
            contacts = [f"<{self.contact_uri()}>"]
        for contact in contacts or []:
            lines.append(f"Contact: {contact}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines.extend(extra or [])
        lines.append("Content-Length: 0")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def authorization(self, challenge: dict[str, str], method: str, uri: str, nc: int = 1,
                      password: str | None = None) -> str:
        algorithm = challenge.get("algorithm", "MD5")
        cnonce = os.urandom(4).hex()
        nc_text = f"{nc:08x}"
        response = digest_response(self.user, challenge["realm"], password or self.password, method, uri,
                                   challenge["nonce"], nc_text, cnonce, "auth", algorithm)
        return (f'Digest username="{self.user}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", '
                f'uri="{uri}", response="{response}", algorithm={algorithm}, cnonce="{cnonce}", '
                f'qop=auth, nc={nc_text}')

    def request(self, method: str = "REGISTER", password: str | None = None, **kwargs) -> SipMessage:
        """Send, and if challenged, send again with credentials; return the final response."""
        self.cseq += 1
        self.transport.send(self.build(method, **kwargs))
        response = self.receive_final()
        if response.status_code != 401:
            return response
        challenges = [parse_challenge(v) for v in response.get_all("www-authenticate")]
        if self.algorithm:
            challenges = [c for c in challenges if c.get("algorithm", "MD5") == self.algorithm] or challenges
        self.last_challenge = challenges[0]
        uri = kwargs.get("request_uri") or f"sip:{self.domain}"
        self.cseq += 1
        auth = self.authorization(challenges[0], method, uri, password=password)
        self.transport.send(self.build(method, authorization=auth, **kwargs))
        return self.receive_final()

    def receive_final(self, timeout: float = 5.0) -> SipMessage:
        deadline = time.monotonic() + timeout
        while True:
            message = self.transport.receive(max(0.1, deadline - time.monotonic()))
            if message.status_code and message.status_code >= 200:
                return message


def contacts_of(response: SipMessage) -> list[str]:
    return [entry.uri for entry in _pyparse.parse_contacts(response.get_all("contact")) or []]
