"""Pure-Python reference twin of the compiled SIP scanner `fastreg._cparse`.

It exists to be read and to test the compiled scanner against (differential
and property tests), and runs only when asked for (FASTREG_PARSER=pure).
Both modules give equal results and raise the same error class with the same
reason for every input. The rules they share, beyond RFC 3261:

- Header text is decoded as UTF-8 with errors="surrogateescape": valid UTF-8
  display names come out readable, any other byte still decodes (and
  `.encode("utf-8", "surrogateescape")` gives the original bytes back).
- Lines end at LF; a CR just before the LF is dropped. Any CR/LF bytes before
  the start line are skipped. Line lengths are counted without CR/LF.
- `max_headers` counts header fields; continuation lines do not count.
- Folded values are the stripped pieces that are not empty, joined with one
  space.
- Errors are raised in the order their bytes are met. A header is finished
  (Via parsed, Content-Length noted) when the line after it shows it does not
  continue; Content-Length is checked after the blank line.
- Content-Length values are compared as numbers (leading zeros ignored);
  digit strings of more than 18 significant digits count as "larger than any
  message" (no big-int parsing of attacker-sized numbers).
- A Via header with no via-parm, and an Authorization with no auth-param,
  are malformed. Authorization parameters may not repeat (RFC 7616 3.4).
- Unquoted parameter values are liberal: any run of characters other than
  controls, SP, HT and `;,"<>` (Authorization: other than controls, SP, HT,
  `,` and `"`). An unquoted display name may hold token characters,
  whitespace and non-ASCII characters.
"""

from __future__ import annotations

import re
from string import ascii_letters, digits, hexdigits
from typing import NoReturn

from fastreg.errors import HeaderTooLong, MessageTooLarge, ParseError
from fastreg.message import COMPACT_FORMS, Credentials, NameAddr, Params, SipMessage, Via

# The reasons are part of the contract: _cparse uses the same strings.
R_TOO_LARGE = "Message Too Large"
R_EMPTY = "Empty message"
R_TRUNCATED = "Truncated message (no end of headers)"
R_START_LINE = "Malformed start line"
R_START_LINE_LONG = "Start line too long"
R_HEADER_LINE_LONG = "Header line too long"
R_TOO_MANY_HEADERS = "Too many headers"
R_HEADER_LINE = "Malformed header line"
R_VIA = "Malformed Via"
R_CONTENT_LENGTH = "Malformed Content-Length"
R_CONTENT_LENGTH_CONFLICT = "Conflicting Content-Length"
R_CONTENT_LENGTH_EXCEEDS = "Content-Length exceeds message"
R_NAME_ADDR = "Malformed name-addr"
R_CONTACT = "Malformed Contact"
R_CONTACT_STAR = "Contact '*' must be alone"
R_AUTHORIZATION = "Malformed Authorization"

_TOKEN = ascii_letters + digits + "-.!%*_+`'~"  # RFC 3261 25.1 token
_TOKEN_CHARS = frozenset(_TOKEN)
_TOKEN_BYTES = frozenset(_TOKEN.encode("ascii"))
_HOST_CHARS = frozenset(ascii_letters + digits + "-._")
_IPV6_CHARS = frozenset(hexdigits + ":.")
_DIGITS = frozenset(digits)
_SCHEME_CHARS = frozenset(ascii_letters + digits + "+-.")
_WS = " \t"
_WS_BYTES = b" \t"
_VERSION = re.compile(rb"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
# Above any 18-digit number, below 2**63: what an oversized Content-Length counts as.
_HUGE = 10**18


# ---------------------------------------------------------------- characters


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _is_token_bytes(raw: bytes) -> bool:
    return bool(raw) and all(c in _TOKEN_BYTES for c in raw)


def _is_visible(c: str) -> bool:
    """Not a control character and not whitespace (non-ASCII counts as visible)."""
    return c > " " and c != "\x7f"


def _is_param_value_char(c: str) -> bool:
    return _is_visible(c) and c not in ';,"<>'


def _is_auth_value_char(c: str) -> bool:
    return _is_visible(c) and c not in ',"'


def _is_display_char(c: str) -> bool:
    return c in _TOKEN_CHARS or c in _WS or c >= "\x80"


# ---------------------------------------------------------------- str cursor


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _scan_set(s: str, i: int, chars: frozenset[str]) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _scan_pred(s: str, i: int, pred) -> int:
    while i < len(s) and pred(s[i]):
        i += 1
    return i


def _scan_quoted(s: str, i: int) -> tuple[str, int] | None:
    """Unquote the quoted-string at s[i] == '"': (text, index after the closing quote),
    or None if it is not terminated. A backslash escapes any character."""
    out: list[str] = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            i += 1
            if i == len(s):
                return None
            c = s[i]
        out.append(c)
        i += 1
    return None


def _parse_params(s: str, i: int, value_char=_is_param_value_char) -> Params | None:
    """`*( SEMI name [EQUAL value] )` from s[i] to the end; None if anything else is there."""
    params: list[tuple[str, str | None]] = []
    while True:
        i = _skip_ws(s, i)
        if i == len(s):
            return tuple(params)
        if s[i] != ";":
            return None
        i = _skip_ws(s, i + 1)
        end = _scan_set(s, i, _TOKEN_CHARS)
        if end == i:
            return None
        name = s[i:end]
        i = _skip_ws(s, end)
        value: str | None = None
        if i < len(s) and s[i] == "=":
            got = _scan_value(s, _skip_ws(s, i + 1), value_char)
            if got is None:
                return None
            value, i = got
        params.append((name, value))


def _scan_value(s: str, i: int, value_char) -> tuple[str, int] | None:
    """A quoted string (unquoted) or a non-empty run of value characters."""
    if i < len(s) and s[i] == '"':
        return _scan_quoted(s, i)
    end = _scan_pred(s, i, value_char)
    if end == i:
        return None
    return s[i:end], end


# ---------------------------------------------------------------- lists


def split_list(value: str) -> list[str]:
    """Split on commas outside quoted strings and outside <...>; strip; drop empty items."""
    items: list[str] = []
    start = 0
    quoted = angle = False
    i = 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1  # the escaped character cannot end the quote
            elif c == '"':
                quoted = False
        elif angle:
            if c == ">":
                angle = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ",":
            items.append(value[start:i])
            start = i + 1
        i += 1
    items.append(value[start:])
    stripped = (item.strip(_WS) for item in items)
    return [item for item in stripped if item]


# ---------------------------------------------------------------- Via


def parse_vias(value: str) -> list[Via]:
    """Every via-parm of one Via header value, in order."""
    items = split_list(value)
    if not items:
        raise ParseError(R_VIA)
    vias: list[Via] = []
    for item in items:
        via = _parse_via_parm(item)
        if via is None:
            raise ParseError(R_VIA)
        vias.append(via)
    return vias


def _parse_via_parm(text: str) -> Via | None:
    """`SIP / 2.0 / transport LWS host [: port] *(; param)`; None if malformed."""
    s = text
    words: list[str] = []
    i = 0
    for k in range(3):
        if k:
            i = _skip_ws(s, i)
            if i == len(s) or s[i] != "/":
                return None
            i = _skip_ws(s, i + 1)
        end = _scan_set(s, i, _TOKEN_CHARS)
        if end == i:
            return None
        words.append(s[i:end])
        i = end
    protocol, version, transport = words
    if protocol.upper() != "SIP" or version != "2.0":
        return None
    host_at = _skip_ws(s, i)
    if host_at == i:
        return None
    got = _scan_host(s, host_at)
    if got is None:
        return None
    host, i = got
    port: int | None = None
    colon = _skip_ws(s, i)
    if colon < len(s) and s[colon] == ":":
        start = _skip_ws(s, colon + 1)
        end = _scan_set(s, start, _DIGITS)
        if end == start or end - start > 5:
            return None
        port = int(s[start:end])
        if not 1 <= port <= 65535:
            return None
        i = end
    params = _parse_params(s, i)
    if params is None:
        return None
    return Via(transport.upper(), host, port, params, text)


def _scan_host(s: str, i: int) -> tuple[str, int] | None:
    """A hostname or IPv4 address, or an IPv6 reference with its brackets."""
    if i < len(s) and s[i] == "[":
        close = s.find("]", i)
        if close < 0:
            return None
        inner = s[i + 1 : close]
        if ":" not in inner or any(c not in _IPV6_CHARS for c in inner):
            return None
        return s[i : close + 1], close + 1
    end = _scan_set(s, i, _HOST_CHARS)
    if end == i:
        return None
    return s[i:end], end


# ---------------------------------------------------------------- name-addr


def parse_name_addr(value: str) -> NameAddr:
    addr = _parse_name_addr(value.strip(_WS))
    if addr is None:
        raise ParseError(R_NAME_ADDR)
    return addr


def _parse_name_addr(raw: str) -> NameAddr | None:
    if not raw:
        return None
    if raw[0] == '"':
        got = _scan_quoted(raw, 0)
        if got is None:
            return None
        display, i = got
        i = _skip_ws(raw, i)
        if i == len(raw) or raw[i] != "<":
            return None
        return _angle_addr(raw, display, i)
    i = _scan_pred(raw, 0, _is_display_char)
    if i < len(raw) and raw[i] == "<":
        # raw is stripped, so a non-empty display part has a non-blank first char
        return _angle_addr(raw, raw[:i].rstrip(_WS) or None, i)
    # A bare addr-spec: everything after its first ';' is header params (RFC 3261 20.10).
    semi = raw.find(";")
    uri = raw if semi < 0 else raw[:semi].rstrip(_WS)
    if not _valid_uri(uri):
        return None
    params = () if semi < 0 else _parse_params(raw, semi)
    if params is None:
        return None
    return NameAddr(None, uri, params, raw)


def _angle_addr(raw: str, display: str | None, i: int) -> NameAddr | None:
    """raw[i] is '<': the URI up to the first '>', then header params to the end."""
    close = raw.find(">", i + 1)
    if close < 0:
        return None
    uri = raw[i + 1 : close].strip(_WS)
    if not _valid_uri(uri):
        return None
    params = _parse_params(raw, close + 1)
    if params is None:
        return None
    return NameAddr(display, uri, params, raw)


def _valid_uri(uri: str) -> bool:
    """A scheme (letter, then letters, digits, + - .), a ':', and no blank, control, < > or "."""
    colon = uri.find(":")
    if colon < 1 or uri[0] not in ascii_letters:
        return False
    if any(c not in _SCHEME_CHARS for c in uri[1:colon]):
        return False
    return all(_is_visible(c) and c not in '<>"' for c in uri)


def parse_contacts(values: list[str]) -> list[NameAddr] | None:
    """Every Contact header line's entries; None for the lone '*' (remove all bindings)."""
    items = [item for value in values for item in split_list(value)]
    if "*" in items:
        if len(items) == 1:
            return None
        raise ParseError(R_CONTACT_STAR)
    contacts: list[NameAddr] = []
    for item in items:
        addr = _parse_name_addr(item)
        if addr is None:
            raise ParseError(R_CONTACT)
        contacts.append(addr)
    return contacts


# ---------------------------------------------------------------- Authorization


def parse_credentials(value: str) -> Credentials:
    creds = _parse_credentials(value)
    if creds is None:
        raise ParseError(R_AUTHORIZATION)
    return creds


def _parse_credentials(s: str) -> Credentials | None:
    start = _skip_ws(s, 0)
    end = _scan_set(s, start, _TOKEN_CHARS)
    if end == start or end == len(s) or s[end] not in _WS:
        return None
    scheme = s[start:end]
    params: list[tuple[str, str]] = []
    i = end
    while True:
        i = _skip_ws(s, i)
        if i == len(s):
            break
        if s[i] == ",":  # empty list elements are allowed (RFC 3261 7.3.1)
            i += 1
            continue
        got = _scan_auth_param(s, i)
        if got is None:
            return None
        name, value, i = got
        if any(name == seen for seen, _ in params):
            return None
        params.append((name, value))
        i = _skip_ws(s, i)
        if i < len(s):
            if s[i] != ",":
                return None
            i += 1
    if not params:
        return None
    return Credentials(scheme, tuple(params))


def _scan_auth_param(s: str, i: int) -> tuple[str, str, int] | None:
    """`name = value` at s[i]: (lower-cased name, unquoted value, index after it)."""
    end = _scan_set(s, i, _TOKEN_CHARS)
    if end == i:
        return None
    name = s[i:end].lower()
    i = _skip_ws(s, end)
    if i == len(s) or s[i] != "=":
        return None
    got = _scan_value(s, _skip_ws(s, i + 1), _is_auth_value_char)
    if got is None:
        return None
    value, i = got
    return name, value, i


# ---------------------------------------------------------------- message


def _skip_crlf(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] in b"\r\n":
        pos += 1
    return pos


def _next_line(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """(the line at pos without its CR LF or LF, the offset after it), or None if unterminated."""
    eol = data.find(b"\n", pos)
    if eol < 0:
        return None
    end = eol - 1 if eol > pos and data[eol - 1] == 0x0D else eol
    return data[pos:end], eol + 1


def _parse_start_line(line: bytes) -> SipMessage | None:
    first, space, _ = line.partition(b" ")
    if space and _VERSION.fullmatch(first):
        return _parse_status_line(line)
    return _parse_request_line(line)


def _parse_status_line(line: bytes) -> SipMessage | None:
    version, _, rest = line.partition(b" ")
    code, reason = rest[:3], rest[3:]
    if len(code) != 3 or not code.isdigit():
        return None
    if reason:
        if reason[:1] != b" " or reason[1:2] in (b" ", b"\t"):
            return None
        reason = reason[1:]
    status = int(code)
    if not 100 <= status <= 699:
        return None
    return SipMessage(status_code=status, reason=_decode(reason), version=_decode(version))


def _parse_request_line(line: bytes) -> SipMessage | None:
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, uri, version = parts
    if not _is_token_bytes(method) or not _VERSION.fullmatch(version):
        return None
    if not uri or any(c <= 0x20 or c == 0x7F for c in uri):
        return None
    return SipMessage(method=_decode(method), request_uri=_decode(uri), version=_decode(version))


def _parse_header_line(line: bytes) -> tuple[str, bytes] | None:
    """(canonical name, stripped value) of `name *WS : value`, or None."""
    colon = line.find(b":")
    if colon < 0:
        return None
    name = line[:colon].rstrip(_WS_BYTES)
    if not _is_token_bytes(name):
        return None
    key = name.decode("ascii").lower()
    return COMPACT_FORMS.get(key, key), line[colon + 1 :].strip(_WS_BYTES)


def _join_pieces(pieces: list[bytes]) -> str:
    return " ".join(_decode(piece) for piece in pieces if piece)


def _content_length(values: list[str]) -> int | None:
    """The Content-Length the message announces, None if it has none; raises if malformed."""
    length: int | None = None
    digits_seen = ""
    for value in values:
        if not (value.isascii() and value.isdigit()):
            raise ParseError(R_CONTENT_LENGTH)
        significant = value.lstrip("0")
        if length is not None and significant != digits_seen:
            raise ParseError(R_CONTENT_LENGTH_CONFLICT)
        digits_seen = significant
        length = int(significant or "0") if len(significant) <= 18 else _HUGE
    return length


class _HeaderScan:
    """The header block after the start line: the header being folded is only
    finished (added, and its Via parsed) once the next line shows it ends."""

    def __init__(self, msg: SipMessage) -> None:
        self.msg = msg
        self.name: str | None = None
        self.pieces: list[bytes] = []
        self.count = 0
        self.lengths: list[str] = []

    def fail(self, error: type[ParseError], reason: str) -> NoReturn:
        """Raise with what was scanned so far; a request can still be answered 400."""
        self.finish(quiet=True)
        raise error(reason, partial=self.msg if self.msg.is_request else None)

    def finish(self, quiet: bool = False) -> None:
        """Add the pending header. quiet: we are failing already, keep the vias that parse."""
        if self.name is None:
            return
        name, value = self.name, _join_pieces(self.pieces)
        self.name = None
        self.msg.headers.append((name, value))
        if name == "content-length":
            self.lengths.append(value)
        elif name == "via":
            self.add_vias(value, quiet)

    def add_vias(self, value: str, quiet: bool) -> None:
        items = split_list(value)
        if not items and not quiet:
            self.fail(ParseError, R_VIA)
        for item in items:
            via = _parse_via_parm(item)
            if via is None:
                if quiet:
                    return
                self.fail(ParseError, R_VIA)
            self.msg.vias.append(via)

    def run(self, data: bytes, pos: int, max_headers: int, max_line: int) -> int:
        """Scan header lines from pos; return the offset after the blank line."""
        while True:
            got = _next_line(data, pos)
            if got is None:
                self.fail(ParseError, R_TRUNCATED)
            line, pos = got
            if len(line) > max_line:
                self.fail(HeaderTooLong, R_HEADER_LINE_LONG)
            if not line:
                self.finish()
                return pos
            if line[0] in _WS_BYTES:  # folding (RFC 3261 7.3.1)
                if self.name is None:
                    self.fail(ParseError, R_HEADER_LINE)
                self.pieces.append(line.strip(_WS_BYTES))
                continue
            self.finish()
            if self.count == max_headers:
                self.fail(HeaderTooLong, R_TOO_MANY_HEADERS)
            parsed = _parse_header_line(line)
            if parsed is None:
                self.fail(ParseError, R_HEADER_LINE)
            self.name, first = parsed
            self.pieces = [first]
            self.count += 1


def parse_message(data, max_size: int = 65536, max_headers: int = 100, max_line: int = 8192) -> SipMessage:
    """One datagram, or one framed stream message."""
    data = bytes(data)
    if len(data) > max_size:
        raise MessageTooLarge(R_TOO_LARGE)
    pos = _skip_crlf(data, 0)  # RFC 3261 7.5
    if pos == len(data):
        raise ParseError(R_EMPTY)
    got = _next_line(data, pos)
    if got is None:
        raise ParseError(R_TRUNCATED)
    line, pos = got
    if len(line) > max_line:
        raise HeaderTooLong(R_START_LINE_LONG)
    msg = _parse_start_line(line)
    if msg is None:
        raise ParseError(R_START_LINE)
    scan = _HeaderScan(msg)
    pos = scan.run(data, pos, max_headers, max_line)
    partial = msg if msg.is_request else None
    try:
        length = _content_length(scan.lengths)
    except ParseError as exc:
        raise ParseError(exc.reason, partial=partial) from None
    if length is None:
        msg.body = data[pos:]  # UDP without Content-Length: the datagram ends the body
    elif length > len(data) - pos:
        raise ParseError(R_CONTENT_LENGTH_EXCEEDS, partial=partial)
    else:
        msg.body = data[pos : pos + length]  # bytes after it are ignored
    return msg


def frame_length(buf, max_size: int = 65536) -> int | None:
    """Length of the stream message at the start of buf, None until all of it is there."""
    data = bytes(buf)
    got = _next_line(data, _skip_crlf(data, 0))  # the start line: parse_message judges it
    lengths: list[list[bytes]] = []
    pieces: list[bytes] | None = None  # the Content-Length being folded, if any
    while got is not None:
        got = _next_line(data, got[1])
        if got is None:
            break
        line, pos = got
        if not line:
            total = pos + (_content_length([_join_pieces(p) for p in lengths]) or 0)
            if total > max_size:
                raise MessageTooLarge(R_TOO_LARGE)
            return total if total <= len(data) else None
        if line[0] in _WS_BYTES:
            if pieces is not None:
                pieces.append(line.strip(_WS_BYTES))
            continue
        parsed = _parse_header_line(line)
        pieces = None
        if parsed is not None and parsed[0] == "content-length":
            pieces = [parsed[1]]
            lengths.append(pieces)
    if len(data) > max_size:  # the header block alone is too large
        raise MessageTooLarge(R_TOO_LARGE)
    return None
