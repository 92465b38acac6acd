"""Differential property tests: the compiled scanner and its pure twin agree.

(a) On generated valid messages both parse without error to equal results.
(b) On mutated messages, arbitrary bytes and arbitrary header text both give
    equal results or raise the same ParseError subclass with the same reason
    (and equal `partial`); nothing else may escape.
"""

from __future__ import annotations

import ipaddress
import re
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastreg import _cparse, _pyparse
from fastreg.errors import ParseError
from fastreg.message import COMPACT_FORMS

# Budget: the whole file runs in about 20 s; generating messages is what costs.
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=100)

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
# Characters that steer the grammars, so that random text hits their edges.
STRUCTURAL = ' \t\r\n:;,="<>\\/[]@*.'
ODD_CHARS = ["\u00e9", "\u4e2d", "\U0001f600", "\udcff", "\x00", "\x7f", "\x85"]


def outcome(module, name: str, *args, **kwargs):
    """The result, or the error's class, reason and partial. Anything else escapes."""
    try:
        return ("ok", getattr(module, name)(*args, **kwargs))
    except ParseError as exc:
        return ("error", type(exc), exc.reason, exc.partial)


def agree(name: str, *args, **kwargs):
    pure = outcome(_pyparse, name, *args, **kwargs)
    compiled = outcome(_cparse, name, *args, **kwargs)
    assert pure == compiled, (name, args, kwargs)
    return pure


def check_values(msg) -> None:
    """Run every value grammar over the header values of a parsed message."""
    for name, value in msg.headers:
        agree("split_list", value)
        if name == "via":
            agree("parse_vias", value)
        elif name in ("from", "to"):
            agree("parse_name_addr", value)
        elif name == "authorization":
            agree("parse_credentials", value)
    agree("parse_contacts", msg.get_all("contact"))


# ------------------------------------------------------------------ generators

token = st.text(TOKEN_CHARS, min_size=1, max_size=8)
ws = st.text(" \t", max_size=2)
ws1 = st.text(" \t", min_size=1, max_size=2)


@st.composite
def any_case(draw, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(word, flips))


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


quoted_text = st.text(st.sampled_from(list(string.ascii_letters + ' ,<>;="\\@:') + ODD_CHARS[:3]), max_size=12)

label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6)
hostname = st.lists(label, min_size=1, max_size=3).map(".".join)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: "[" + str(ipaddress.IPv6Address(n)) + "]")
host = st.one_of(hostname, ipv4, ipv6)


@st.composite
def param(draw) -> str:
    name = draw(st.sampled_from(["branch", "rport", "received", "expires", "q", "tag", "lr", "+sip.instance"]) | token)
    text = draw(ws) + ";" + draw(ws) + name
    if draw(st.booleans()):
        value = draw(st.one_of(token, ipv4, ipv6.map(lambda h: h[1:-1]), quoted_text.map(quoted)))
        text += draw(ws) + "=" + draw(ws) + value
    return text


params = st.lists(param(), max_size=3).map("".join)


@st.composite
def via_parm(draw, sloppy: bool = False) -> str:
    """A via-parm; sloppy: at most one part just outside the grammar."""
    defect = draw(st.sampled_from(["none", "version", "host", "port", "sep"])) if sloppy else "none"

    def slash() -> str:
        return draw(ws) + (draw(st.sampled_from(["", " ", "//"])) if defect == "sep" else "/") + draw(ws)

    protocol = draw(any_case("sip"))
    version = draw(st.sampled_from(["2.00", "3.0", "", "2"])) if defect == "version" else "2.0"
    transport = draw(st.sampled_from(["UDP", "tcp", "TLS", "ws", "WSS", "SCTP"]) | token)
    sent_by = draw(st.sampled_from(["", "[::1", "[1.2.3.4]", "[]", "h\u00e9", "[::1]x"])) if defect == "host" else draw(host)
    if defect == "port":
        port = draw(st.sampled_from(["0", "1", "65535", "65536", "99999", "100000", "000080", "", "8o", "-1"]))
        sent_by += draw(ws) + ":" + draw(ws) + port
    elif draw(st.booleans()):
        sent_by += draw(ws) + ":" + draw(ws) + str(draw(st.integers(1, 65535)))
    return protocol + slash() + version + slash() + transport + draw(ws1) + sent_by + draw(params)


@st.composite
def uri(draw) -> str:
    scheme = draw(st.sampled_from(["sip", "sips", "SIP", "tel", "urn"]))
    user = draw(st.text(string.ascii_letters + string.digits + "+-_.!~", max_size=6))
    return scheme + ":" + (user + "@" if user else "") + draw(host)


@st.composite
def name_addr(draw) -> str:
    kind = draw(st.sampled_from(["quoted", "words", "angle", "bare"]))
    if kind == "bare":
        return draw(uri()) + draw(params)
    inner = draw(ws) + draw(uri()) + draw(st.sampled_from(["", ";transport=tcp", ";lr"])) + draw(ws)
    if kind == "quoted":
        display = quoted(draw(quoted_text)) + draw(ws)
    elif kind == "words":
        word = st.text(st.sampled_from(list(TOKEN_CHARS) + ODD_CHARS[:2]), min_size=1, max_size=6)
        words = draw(st.lists(word, min_size=1, max_size=3))
        display = "".join(w + draw(ws1) for w in words[:-1]) + words[-1] + draw(ws)
    else:
        display = ""
    return display + "<" + inner + ">" + draw(params)


def comma_list(element) -> st.SearchStrategy[str]:
    @st.composite
    def build(draw) -> str:
        items = draw(st.lists(element, min_size=1, max_size=3))
        return "".join(item + draw(ws) + "," + draw(ws) for item in items[:-1]) + items[-1]

    return build()


@st.composite
def credentials(draw, sloppy: bool = False) -> str:
    """Digest credentials; sloppy: names may repeat, in any case."""
    names = draw(st.lists(st.sampled_from(["username", "realm", "nonce", "uri", "response", "algorithm",
                                           "cnonce", "qop", "nc", "opaque"]) | token.map(str.lower),
                          min_size=1, max_size=6, unique=not sloppy))
    parts = []
    for name in names:
        value = draw(st.one_of(token, quoted_text.map(quoted), st.just('"sip:example.com"')))
        parts.append(draw(any_case(name)) + draw(ws) + "=" + draw(ws) + value)
    separator = draw(ws) + "," + draw(ws)
    return draw(any_case("digest")) + draw(ws1) + separator.join(parts)


generic_value = st.text(st.sampled_from(list(string.printable[:94] + " \t") + ODD_CHARS[:3]), max_size=20).map(
    lambda v: v.strip(" \t"))

# Headers whose values the tests parse: generic headers must not take these names.
PARSED = {"via", "contact", "from", "to", "authorization", "content-length"}
COMPACT_OF = {long: short for short, long in COMPACT_FORMS.items()}


@st.composite
def header_name(draw, canonical: str) -> str:
    if canonical in COMPACT_OF and draw(st.booleans()):
        return draw(any_case(COMPACT_OF[canonical]))
    return draw(any_case(canonical))


@st.composite
def header(draw) -> tuple[str, str]:
    """(canonical name, value) of a well-formed header."""
    kind = draw(st.sampled_from(["via", "contact", "from", "to", "authorization", "call-id", "cseq",
                                 "expires", "generic", "star"]))
    if kind == "via":
        return "via", draw(comma_list(via_parm()))
    if kind == "contact":
        return "contact", draw(comma_list(name_addr()))
    if kind == "star":
        return "contact", "*"
    if kind in ("from", "to"):
        return kind, draw(name_addr())
    if kind == "authorization":
        return "authorization", draw(credentials())
    if kind == "call-id":
        return "call-id", draw(token) + "@" + draw(hostname)
    if kind == "cseq":
        return "cseq", str(draw(st.integers(0, 2**31))) + " " + draw(st.sampled_from(["REGISTER", "INVITE"]))
    if kind == "expires":
        return "expires", str(draw(st.integers(0, 10**6)))
    name = draw(token.map(str.lower).filter(lambda n: COMPACT_FORMS.get(n, n) not in PARSED))
    return COMPACT_FORMS.get(name, name), draw(generic_value)


def fold(draw, value: str) -> str:
    """Turn some whitespace runs of the value into line folds (same meaning)."""
    out, last = [], 0
    for run in re.finditer(r"[ \t]+", value):
        if draw(st.integers(0, 3)) == 0:
            out.append(value[last:run.start()] + draw(st.sampled_from(["\r\n", "\n"])) + draw(ws1))
            last = run.end()
    return "".join(out) + value[last:]


@st.composite
def start_line(draw, sloppy: bool = False) -> str:
    """A request or status line; sloppy: at most one part just outside the grammar."""
    defect = draw(st.sampled_from(["none", "space", "version", "method", "code", "reason"])) if sloppy else "none"
    spaces = [" ", " ", draw(st.sampled_from(["  ", "\t", "", " \t"])) if defect == "space" else " "]
    order = draw(st.permutations(spaces))

    version = draw(any_case("sip")) + "/" + (
        draw(st.sampled_from(["1.10", "2", ".0", "2.", "20", "2.0x", "x.0"])) if defect == "version" else "2.0")
    if draw(st.booleans()):
        method = draw(st.sampled_from(["REGISTER", "INVITE", "OPTIONS"]) | token)
        if defect == "method":
            method = draw(st.sampled_from(["", "REG@STER", "SIP/2.0", "R\u00c9G"]))
        return method + order[0] + draw(uri()) + order[1] + version
    code = str(draw(st.integers(100, 699)))
    if defect == "code":
        code = draw(st.sampled_from(["099", "700", "2000", "20", "2x0", "", "\u0661\u0660\u0660"]))
    reason = draw(generic_value)
    if defect == "reason":
        reason = draw(st.sampled_from([" ", "\t"])) + reason
    if not reason and draw(st.booleans()):
        return version + order[0] + code
    return version + order[0] + code + order[1] + reason


@st.composite
def message(draw, min_headers: int = 0) -> tuple[bytes, dict]:
    """A valid message and what the generator knows about it."""
    start = draw(start_line())
    headers = draw(st.lists(header(), min_size=min_headers, max_size=8))
    body = draw(st.binary(max_size=20))
    framed = draw(st.booleans())
    if framed:  # leading zeros, and sometimes a second Content-Length that agrees
        for _ in range(draw(st.integers(1, 2))):
            value = "0" * draw(st.integers(0, 3)) + str(len(body))
            headers.insert(draw(st.integers(0, len(headers))), ("content-length", value))
    lines = [start]
    for canonical, value in headers:
        name = draw(header_name(canonical))
        lines.append(name + draw(ws) + ":" + draw(ws) + fold(draw, value) + draw(ws))
    text = draw(st.sampled_from(["", "\r\n", "\r\n\r\n", "\n"]))
    for line in lines + [""]:
        text += line + draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    data = text.encode("utf-8", "surrogateescape") + body
    info = {"headers": len(headers), "body": body, "framed": framed,
            "vias": sum(len(_pyparse.split_list(v)) for n, v in headers if n == "via")}
    return data, info


# ------------------------------------------------------------------ (a) valid messages


@FEWER
@given(message())
def test_valid_messages_agree(generated):
    data, info = generated
    result = agree("parse_message", data)
    assert result[0] == "ok", result
    msg = result[1]
    assert len(msg.headers) == info["headers"]
    assert len(msg.vias) == info["vias"]
    assert msg.body == info["body"]
    for name, value in msg.headers:
        assert agree("split_list", value)[0] == "ok"
        if name == "via":
            assert agree("parse_vias", value)[0] == "ok"
        elif name in ("from", "to"):
            assert agree("parse_name_addr", value)[0] == "ok"
        elif name == "authorization":
            assert agree("parse_credentials", value)[0] == "ok"
    contacts = msg.get_all("contact")
    if contacts.count("*") <= 1 and (len(contacts) == 1 or "*" not in contacts):
        assert agree("parse_contacts", contacts)[0] == "ok"
    else:
        assert agree("parse_contacts", contacts)[2] == "Contact '*' must be alone"
    if info["framed"]:
        assert agree("frame_length", data + b"OPTIONS sip:next SIP/2.0\r\n") == ("ok", len(data))


@SETTINGS
@given(st.lists(via_parm(), min_size=1, max_size=3))
def test_valid_vias_agree(parms):
    result = agree("parse_vias", ", ".join(parms))
    assert result[0] == "ok"
    assert [via.raw for via in result[1]] == [parm.strip(" \t") for parm in parms]


@SETTINGS
@given(name_addr())
def test_valid_name_addrs_agree(value):
    assert agree("parse_name_addr", value)[0] == "ok"


# ------------------------------------------------------------------ (b) mutations and noise

@st.composite
def mutated(draw, data: bytes, max_edits: int = 3, skip_first_line: bool = False) -> bytes:
    """data after a few random byte flips, truncations, insertions and deletions.
    skip_first_line: mostly leave the start line alone, so that edits reach the headers."""
    low = 0
    if skip_first_line and draw(st.integers(0, 3)) != 3:  # hypothesis favours 0
        low = data.find(b"\n", len(data) - len(data.lstrip(b"\r\n"))) + 1
    for _ in range(draw(st.integers(1, max_edits))):
        if len(data) <= low:
            break
        kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete"]))
        at = draw(st.integers(low, len(data) - 1))
        if kind == "flip":
            byte = draw(st.sampled_from(list(STRUCTURAL.encode())) | st.integers(0, 255))
            data = data[:at] + bytes([byte]) + data[at + 1 :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            extra = draw(st.binary(min_size=1, max_size=4) | st.sampled_from(
                [b"\r\n", b"\r\n\r\n", b"\r\n ", b" ", b",", b'"', b"<", b":", b";", b"\xff"]))
            data = data[:at] + extra + data[at:]
        else:
            data = data[:at] + data[at + draw(st.integers(1, 8)) :]
    return data


# Mostly the default limits, so that mutations reach the header grammars; sometimes one tight one.
limits = st.one_of(
    st.just({}), st.just({}), st.just({}),
    st.fixed_dictionaries({"max_size": st.integers(0, 700)}),
    st.fixed_dictionaries({"max_headers": st.integers(0, 6)}),
    st.fixed_dictionaries({"max_line": st.integers(10, 150)}),
)


def check_message_bytes(data: bytes, kwargs: dict) -> None:
    result = agree("parse_message", data, **kwargs)
    if result[0] == "ok":
        check_values(result[1])
    elif result[3] is not None:
        check_values(result[3])
    agree("frame_length", data)
    agree("frame_length", data, max_size=kwargs.get("max_size", 65536))


@FEWER
@given(message(min_headers=2).flatmap(lambda generated: mutated(generated[0], skip_first_line=True)), limits)
def test_mutated_messages_agree(data, kwargs):
    check_message_bytes(data, kwargs)


@SETTINGS
@given(st.sampled_from([b"", b"REGISTER sip:a SIP/2.0\r\n", b"SIP/2.0 200 OK\n"]),
       st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"\r\n", b"\n", b" ", b"\t", b":", b"INVITE sip:a SIP/2.0", b"SIP/2.0 200 OK", b"Via", b"v", b"l",
     b"SIP/2.0 ", b"sip/1.10", b"200", b"099", b"REGISTER", b"sip:a", b"\r\nVia: ", b"\r\nl: 0",
     b"Content-Length: 0007", b"SIP/2.0/TCP [::1]:65536",
     b"Content-Length", b"0", b"12", b"SIP/2.0/UDP h", b";", b",", b'"', b"<", b">", b"\xff"]),
    max_size=40).map(b"".join), limits)
def test_arbitrary_bytes_agree(prefix, data, kwargs):
    check_message_bytes(prefix + data, kwargs)


@st.composite
def odd_line(draw) -> str:
    """A header line that may be broken, or a fold, or a limit-tester."""
    kind = draw(st.sampled_from(["header", "header", "via", "via", "fold", "no-colon", "bad-name",
                                 "content-length", "long"]))
    if kind == "header":
        canonical, value = draw(header())
        return draw(header_name(canonical)) + draw(ws) + ":" + draw(ws) + value
    if kind == "via":
        return draw(header_name("via")) + ":" + draw(ws) + draw(comma_list(via_parm(sloppy=True)))
    if kind == "fold":
        return draw(ws1) + draw(generic_value)
    if kind == "no-colon":
        return draw(token)
    if kind == "bad-name":
        return draw(st.sampled_from(["Bad Name: x", "B@d: x", ": x", "N\u00e4me: x"]))
    if kind == "content-length":
        value = draw(st.sampled_from(["0", "007", "5", "x", "", "1 2", "9" * 25, "0" * 20 + "3"]))
        return draw(header_name("content-length")) + ":" + draw(ws) + value
    return "X-Long: " + "y" * draw(st.integers(60, 140))


@st.composite
def line_soup(draw) -> bytes:
    """A start line and header lines near the grammar's edges, ended or not."""
    lines = [draw(start_line(sloppy=True))] + draw(st.lists(odd_line(), max_size=6))
    text = "".join(line + draw(st.sampled_from(["\r\n", "\n"])) for line in lines)
    ending = draw(st.sampled_from(["\r\n", "\r\n", "", "\r"]))
    return text.encode("utf-8", "surrogateescape") + ending.encode() + draw(st.binary(max_size=8))


noise_text = st.text(st.sampled_from(list(STRUCTURAL + "abSIPsip2.0UDP=") + ODD_CHARS) | st.characters(), max_size=40)


@SETTINGS
@given(noise_text, st.lists(noise_text, max_size=3))
def test_arbitrary_text_agrees(value, values):
    agree("split_list", value)
    agree("parse_vias", value)
    agree("parse_name_addr", value)
    agree("parse_credentials", value)
    agree("parse_contacts", values)
    agree("parse_contacts", [value])


@FEWER
@given(line_soup(), limits)
def test_line_soup_agrees(data, kwargs):
    check_message_bytes(data, kwargs)


# How a header block can fail while a Via is still pending (it might be folded),
# with the limits that make it fail.
FAILING_TAILS = [
    (b"\r\n", {}),
    (b"\r\nNo colon\r\n\r\n", {}),
    (b"\r\n folded, SIP/2.0/UDP x\r\n", {}),
    (b"\r\nX-Long: " + b"y" * 200 + b"\r\n\r\n", {"max_line": 150}),
    (b"\r\nCall-ID: a\r\n\r\n", {"max_headers": 1}),
    (b"\r\nl: x\r\n\r\n", {}),
    (b"\r\n\r\n", {}),
]


@SETTINGS
@given(st.lists(via_parm(sloppy=True), min_size=1, max_size=3), st.sampled_from(FAILING_TAILS))
def test_failure_after_a_via_agrees(parms, tail):
    """partial.vias holds the via-parms that parse before the first bad one, in both."""
    data = b"REGISTER sip:a SIP/2.0\r\nVia: " + ", ".join(parms).encode("utf-8", "surrogateescape") + tail[0]
    check_message_bytes(data, tail[1])


@FEWER
@given(comma_list(via_parm(sloppy=True)), credentials(sloppy=True))
def test_near_valid_values_agree(vias, creds):
    agree("parse_vias", vias)
    agree("parse_credentials", creds)


@SETTINGS
@given(st.one_of(comma_list(via_parm(sloppy=True)), name_addr(), credentials())
       .flatmap(lambda value: mutated(value.encode("utf-8", "surrogateescape"), 2)))
def test_mutated_values_agree(raw):
    text = raw.decode("utf-8", "surrogateescape")
    agree("split_list", text)
    agree("parse_vias", text)
    agree("parse_name_addr", text)
    agree("parse_credentials", text)
    agree("parse_contacts", [text])
