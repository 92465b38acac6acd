"""Bytes out: responses assembled from the request's own headers in one join.

RFC 3261 8.2.6.2 / 18.2.1: the response copies every Via (the top one gets
`received`, and `rport` filled in per RFC 3581), From, To (with a tag),
Call-ID and CSeq. The status line always says SIP/2.0, whatever the request
wrote.

`build_response` is the compiled builder `fastreg._cresponse.build_response`
(built at install, like the scanner), chosen by the same rule as the parser
(`fastreg.parser`): compiled unless FASTREG_PARSER=pure, never a silent
fallback. `build_response_pure` below is the readable reference that it is
tested against byte for byte (tests/test_response.py): a change of output
goes into both.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from email.utils import formatdate

from fastreg import parser
from fastreg.message import SipMessage, Via

SERVER_HEADER = "fastreg"


# A parameter value with one of these (or an empty one) is written quoted.
_NEEDS_QUOTES = re.compile(r'[ ;,"<>]').search


def format_param(name: str, value: str | None) -> str:
    if value is None:
        return f";{name}"
    if value == "" or _NEEDS_QUOTES(value) is not None:
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f';{name}="{escaped}"'
    return f";{name}={value}"


def top_via_for_response(via: Via, source: tuple[str, int]) -> str:
    """The top Via with received/rport set from where the request came from."""
    source_ip, source_port = source
    params = []
    for name, value in via.params:
        lowered = name.lower()
        if lowered == "received":
            continue  # ours replaces any the client wrote
        if lowered == "rport" and value is None:
            value = str(source_port)
        params.append(format_param(name, value))
    # RFC 3581: with rport, received MUST be added even when the host matches.
    host = via.host.strip("[]")
    if host != source_ip or any(name.lower() == "rport" for name, _ in via.params):
        params.append(f";received={source_ip}")
    port = f":{via.port}" if via.port is not None else ""
    return f"SIP/2.0/{via.transport} {via.host}{port}{''.join(params)}"


def response_destination(via: Via, source: tuple[str, int]) -> tuple[str, int]:
    """Where a UDP response goes (RFC 3261 18.2.2 with RFC 3581): the source
    address; its port when rport was asked for, else the sent-by port."""
    for name, _ in via.params:
        if name.lower() == "rport":
            return source
    return (source[0], via.port if via.port is not None else 5060)


def to_tag_for(request: SipMessage) -> str:
    """A To tag that is the same for a retransmission of the request, so that
    a client matching responses by tag sees one answer."""
    seed = (request.get("call-id") or "") + "\x00" + (request.get("from") or "")
    return hashlib.blake2b(seed.encode("utf-8", "surrogateescape"), digest_size=5).hexdigest()


def http_date(now: float) -> str:
    """RFC 1123 date for the Date header. It has one-second resolution, so it
    is formatted once per second, not once per response."""
    return _http_date_of_second(int(now))


@lru_cache(maxsize=4)
def _http_date_of_second(second: int) -> str:
    return formatdate(second, usegmt=True)


def build_response_pure(
    request: SipMessage,
    status: int,
    reason: str,
    source: tuple[str, int],
    headers: list[tuple[str, str]] | tuple = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> bytes:
    """Render a response to `request`. `headers` are extra (name, value)
    pairs in the order given. The request must have at least one Via."""
    vias = request.vias
    lines = [f"SIP/2.0 {status} {reason}", "Via: " + top_via_for_response(vias[0], source)]
    lines.extend("Via: " + via.raw for via in vias[1:])
    from_ = request.get("from")
    if from_ is not None:
        lines.append("From: " + from_)
    to = request.get("to")
    if to is not None:
        if status > 100 and ";tag=" not in to.replace(" ", "").lower():
            to = f"{to};tag={to_tag_for(request)}"
        lines.append("To: " + to)
    call_id = request.get("call-id")
    if call_id is not None:
        lines.append("Call-ID: " + call_id)
    cseq = request.get("cseq")
    if cseq is not None:
        lines.append("CSeq: " + cseq)
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("Server: " + SERVER_HEADER)
    if content_type is not None:
        lines.append("Content-Type: " + content_type)
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body


def _select_builder():
    _cresponse = parser.compiled_twin("_cresponse", "response builder")
    if _cresponse is None:
        return build_response_pure, "pure"
    return _cresponse.build_response, "cython"


build_response, BUILDER_IMPLEMENTATION = _select_builder()


def format_contact(uri: str, params) -> str:
    """`<uri>;name=value...` for a Contact header value."""
    return f"<{uri}>" + "".join([format_param(name, value) for name, value in params])


# The compiled twin (fastreg._cresponse.format_contact) with the compiled
# builder, by the same rule; tests/test_response.py compares the two.
format_contact_pure = format_contact
if BUILDER_IMPLEMENTATION == "cython":
    from fastreg._cresponse import format_contact  # type: ignore[no-redef]  # noqa: E402


def format_q(q: float) -> str:
    """q-value as RFC 3261 writes it: at most three decimals, no trailing zeros."""
    text = f"{q:.3f}".rstrip("0").rstrip(".")
    return text or "0"
