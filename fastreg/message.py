"""Value objects of the wire format: what the scanner produces.

Both parsers (`_cparse` compiled, `_pyparse` pure reference) build exactly
these objects, so their results compare with `==` in differential tests.
Header names are stored in canonical form: lower case, long form (the compact
forms `v f t i m l k s c e o r u` are expanded by the scanner).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# RFC 3261 7.3.3 compact forms, plus RFC 3265 (o, u) and RFC 3515 (r).
COMPACT_FORMS: dict[str, str] = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "k": "supported",
    "s": "subject",
    "c": "content-type",
    "e": "content-encoding",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "x": "session-expires",
}

# How header names are written on the way out (responses echo these).
DISPLAY_NAMES: dict[str, str] = {
    "via": "Via",
    "from": "From",
    "to": "To",
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "contact": "Contact",
    "expires": "Expires",
    "authorization": "Authorization",
    "max-forwards": "Max-Forwards",
    "content-length": "Content-Length",
    "path": "Path",
    "supported": "Supported",
    "require": "Require",
    "route": "Route",
    "user-agent": "User-Agent",
    "www-authenticate": "WWW-Authenticate",
}

Params = tuple[tuple[str, "str | None"], ...]


def param_value(params: Params, name: str) -> str | None:
    """Value of the first parameter called `name` (case-insensitive); None if absent or valueless."""
    name = name.lower()
    for key, value in params:
        if key.lower() == name:
            return value
    return None


def has_param(params: Params, name: str) -> bool:
    name = name.lower()
    return any(key.lower() == name for key, _ in params)


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm: `SIP/2.0/UDP host:port;branch=...;rport`."""

    transport: str  # upper case, e.g. "UDP"
    host: str  # as written; IPv6 references keep their brackets
    port: int | None
    params: Params  # in order, names as written, values unquoted
    raw: str  # the via-parm text as received (stripped)

    @property
    def branch(self) -> str | None:
        return param_value(self.params, "branch")


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A name-addr or addr-spec with its header parameters (Contact, To, From, Path, Route)."""

    display: str | None  # display name without quotes, or None
    uri: str  # the URI text between < > (or the bare addr-spec)
    params: Params  # header parameters (after '>' or after the addr-spec)
    raw: str  # the entry as received (stripped)

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)


@dataclass(frozen=True, slots=True)
class Credentials:
    """An Authorization header: scheme and its auth-params (quotes removed)."""

    scheme: str  # as written, e.g. "Digest"
    params: tuple[tuple[str, str], ...]  # names lower-cased, values unquoted

    def get(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class SipMessage:
    """A scanned SIP message. Requests have `method`; responses have `status_code`."""

    method: str | None = None
    request_uri: str | None = None
    status_code: int | None = None
    reason: str | None = None
    version: str = "SIP/2.0"  # as written in the start line
    headers: list[tuple[str, str]] = field(default_factory=list)  # (canonical name, value)
    vias: list[Via] = field(default_factory=list)  # every via-parm of every Via header, in order
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str) -> str | None:
        """The value of the first header called `name` (canonical form)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """The values of every header line called `name`, in order (not comma-split)."""
        return [value for key, value in self.headers if key == name]

    @property
    def call_id(self) -> str | None:
        return self.get("call-id")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a request came from: the address the transport saw, and the transport."""

    host: str  # IP literal without brackets
    port: int
    transport: str  # "UDP" | "TCP"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(slots=True)
class Reply:
    """What the core decided to answer: status, reason and extra headers.
    The adapter renders it with `response.build_response`."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
