"""Unit tests of the wire-format parser, run against both implementations."""

from __future__ import annotations

import pytest

from fastreg import _cparse, _pyparse
from fastreg.errors import HeaderTooLong, MessageTooLarge, ParseError
from fastreg.message import Credentials, NameAddr, Via


@pytest.fixture(params=[_pyparse, _cparse], ids=["pure", "cython"])
def p(request):
    return request.param


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# A REGISTER as Linphone sends it after a 401 (no Content-Length over UDP,
# two spaces after "Authorization:").
LINPHONE = crlf(
    "REGISTER sip:example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK.Yc3pZ8~;rport\n"
    "From: <sip:alice@example.com>;tag=Kp3vR9x\n"
    "To: sip:alice@example.com\n"
    "CSeq: 21 REGISTER\n"
    "Call-ID: 6g7Jk-Lw2N\n"
    "Max-Forwards: 70\n"
    "Supported: replaces, outbound, gruu\n"
    "Contact: <sip:alice@192.0.2.10;transport=udp>;+sip.instance=\"<urn:uuid:2d9f2a3c-1111-2222>\""
    ";reg-id=1;expires=3600\n"
    "Expires: 3600\n"
    "User-Agent: Linphone/5.2.0 (belle-sip/5.2.0)\n"
    "Authorization:  Digest realm=\"example.com\", nonce=\"AAABkZ1x0abcdef\", algorithm=MD5,"
    " opaque=\"+GNywA==\", username=\"alice\",  uri=\"sip:example.com\","
    " response=\"0f3a9c6b1e2d4f5a6b7c8d9e0f1a2b3c\", cnonce=\"x8Yq\", nc=00000001, qop=auth\n"
    "\n"
)


# ------------------------------------------------------------------ parse_message


def test_typical_register(p):
    msg = p.parse_message(LINPHONE)
    assert msg.method == "REGISTER"
    assert msg.request_uri == "sip:example.com"
    assert msg.version == "SIP/2.0"
    assert msg.status_code is None and msg.reason is None
    assert [name for name, _ in msg.headers] == [
        "via", "from", "to", "cseq", "call-id", "max-forwards", "supported", "contact",
        "expires", "user-agent", "authorization",
    ]
    assert msg.get("call-id") == "6g7Jk-Lw2N"
    assert msg.get("authorization").startswith("Digest realm=")
    assert msg.vias == [
        Via("UDP", "192.0.2.10", 5060, (("branch", "z9hG4bK.Yc3pZ8~"), ("rport", None)),
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK.Yc3pZ8~;rport")
    ]
    assert msg.vias[0].branch == "z9hG4bK.Yc3pZ8~"
    assert msg.body == b""


def test_both_implementations_agree_on_typical_register():
    assert _pyparse.parse_message(LINPHONE) == _cparse.parse_message(LINPHONE)


def test_response(p):
    msg = p.parse_message(crlf("SIP/2.0 401 Unauthorized\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nContent-Length: 0\n\n"))
    assert (msg.method, msg.status_code, msg.reason, msg.version) == (None, 401, "Unauthorized", "SIP/2.0")
    assert not msg.is_request
    assert msg.vias[0].host == "h"


@pytest.mark.parametrize("line, reason", [
    ("SIP/2.0 200 OK", "OK"),
    ("SIP/2.0 200 ", ""),
    ("SIP/2.0 200", ""),
    ("sip/2.0 180 Ringing  now ", "Ringing  now "),
    ("SIP/2.0 699 x", "x"),
])
def test_status_lines(p, line, reason):
    msg = p.parse_message(line.encode() + b"\r\n\r\n")
    assert msg.reason == reason
    assert msg.version == line.split(" ")[0]


@pytest.mark.parametrize("line", [
    "SIP/2.0 099 Too low", "SIP/2.0 700 Too high", "SIP/2.0 20 OK", "SIP/2.0 2000 OK",
    "SIP/2.0  200 OK", "SIP/2.0 200  OK", "SIP/2.0 200\tOK", "SIP/2.0 200 \tOK", "SIP/2.0 2x0 OK",
    "REGISTER sip:a SIP/2.0 ", "REGISTER  sip:a SIP/2.0", "REGISTER sip:a  SIP/2.0",
    "REGISTER sip:a", "REGISTER sip:a SIP/2", "REGISTER sip:a SIP/2.0x", "REGISTER sip:a HTTP/1.1",
    "REG@STER sip:a SIP/2.0", " REGISTER sip:a SIP/2.0", "REGISTER sip:a\tb SIP/2.0",
    "REGISTER", "SIP/2.0", "GET / HTTP/1.1", "REGISTER sip:a SIP/.0", "REGISTER sip:a SIP/2.",
])
def test_malformed_start_lines(p, line):
    with pytest.raises(ParseError) as info:
        p.parse_message(line.encode() + b"\r\nVia: SIP/2.0/UDP h\r\n\r\n")
    assert type(info.value) is ParseError
    assert info.value.reason == "Malformed start line"
    assert info.value.partial is None


def test_version_kept_as_written(p):
    msg = p.parse_message(b"OPTIONS sip:a sip/2.0\r\n\r\n")
    assert msg.version == "sip/2.0"
    assert p.parse_message(b"X-CUSTOM.1 tel:+123 SIP/12.34\r\n\r\n").method == "X-CUSTOM.1"


def test_leading_crlf_and_bare_lf(p):
    msg = p.parse_message(b"\r\n\r\n\nOPTIONS sip:a SIP/2.0\nVia: SIP/2.0/TCP h:5061\nCall-ID: x\r\n\nbody")
    assert msg.method == "OPTIONS"
    assert msg.get_all("call-id") == ["x"]
    assert msg.body == b"body"


def test_empty_and_truncated(p):
    for data in (b"", b"\r\n\r\n", b"\n"):
        with pytest.raises(ParseError, match="Empty message"):
            p.parse_message(data)
    with pytest.raises(ParseError) as info:
        p.parse_message(b"OPTIONS sip:a SIP/2.0")
    assert info.value.reason == "Truncated message (no end of headers)"
    assert info.value.partial is None
    with pytest.raises(ParseError) as info:
        p.parse_message(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nCall-ID: x\r\n")
    assert info.value.reason == "Truncated message (no end of headers)"
    assert info.value.partial.headers == [("via", "SIP/2.0/UDP h"), ("call-id", "x")]
    assert info.value.partial.vias[0].host == "h"


def test_header_names_canonical(p):
    msg = p.parse_message(crlf(
        "INVITE sip:b SIP/2.0\nv: SIP/2.0/UDP h\nVIA: SIP/2.0/UDP i\nf: <sip:a@b>\nT: <sip:c@d>\n"
        "I: id\nm: <sip:e@f>\nl: 0\nk: path\ns: hi\nc: text/plain\ne: gzip\no: reg\nr: <sip:x>\n"
        "u: talk\nx: 90\nCSeq: 1 INVITE\nX-Custom-Header: a\nA: b\n\n"))
    assert [name for name, _ in msg.headers] == [
        "via", "via", "from", "to", "call-id", "contact", "content-length", "supported",
        "subject", "content-type", "content-encoding", "event", "refer-to", "allow-events",
        "session-expires", "cseq", "x-custom-header", "a",
    ]
    assert [via.host for via in msg.vias] == ["h", "i"]


def test_header_whitespace(p):
    msg = p.parse_message(b"OPTIONS sip:a SIP/2.0\r\nSubject \t :  \t hello world \t\r\nEmpty:\r\nE2:   \r\n\r\n")
    assert msg.headers == [("subject", "hello world"), ("empty", ""), ("e2", "")]


def test_folding(p):
    msg = p.parse_message(crlf(
        "OPTIONS sip:a SIP/2.0\nSubject: one\n two\n\t three  \n \nVia: SIP/2.0/UDP h,\n  SIP/2.0/TCP k\n"
        "Empty:\n  filled\n\n"))
    assert msg.headers == [
        ("subject", "one two three"), ("via", "SIP/2.0/UDP h, SIP/2.0/TCP k"), ("empty", "filled")]
    assert [via.transport for via in msg.vias] == ["UDP", "TCP"]


@pytest.mark.parametrize("lines", [
    ["Bad\tName: x"],
    ["NoColonHere"],
    [": empty name"],
    ["Bad Name: x"],
    ["Bad@Name: x"],
    ["Na\xefme: x"],
])
def test_malformed_header_lines(p, lines):
    data = ("REGISTER sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n"
            + "".join(line + "\r\n" for line in lines) + "\r\n").encode("latin-1")
    with pytest.raises(ParseError) as info:
        p.parse_message(data)
    assert info.value.reason == "Malformed header line"
    partial = info.value.partial
    assert partial.method == "REGISTER" and partial.request_uri == "sip:a"
    assert partial.headers == [("via", "SIP/2.0/UDP h;branch=z9hG4bKa")]
    assert partial.vias[0].branch == "z9hG4bKa"


def test_continuation_right_after_start_line(p):
    with pytest.raises(ParseError) as info:
        p.parse_message(b"REGISTER sip:a SIP/2.0\r\n Via: SIP/2.0/UDP h\r\n\r\n")
    assert info.value.reason == "Malformed header line"
    assert info.value.partial.headers == [] and info.value.partial.vias == []


def test_response_errors_have_no_partial(p):
    with pytest.raises(ParseError) as info:
        p.parse_message(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nbad\r\n\r\n")
    assert info.value.partial is None


def test_message_too_large(p):
    data = LINPHONE + b"x" * 100
    assert p.parse_message(data, max_size=len(data)).body == b"x" * 100
    with pytest.raises(MessageTooLarge) as info:
        p.parse_message(data, max_size=len(data) - 1)
    assert info.value.reason == "Message Too Large"
    assert info.value.status == 413


def test_line_limits(p):
    line = b"Subject: " + b"y" * 91  # 100 bytes without CRLF
    data = b"OPTIONS sip:a SIP/2.0\r\n" + line + b"\r\n\r\n"
    assert p.parse_message(data, max_line=100).get("subject") == "y" * 91
    with pytest.raises(HeaderTooLong) as info:
        p.parse_message(data, max_line=99)
    assert info.value.reason == "Header line too long" and info.value.status == 513
    assert info.value.partial.method == "OPTIONS"
    with pytest.raises(HeaderTooLong) as info:
        p.parse_message(data, max_line=20)
    assert info.value.reason == "Start line too long"
    assert info.value.partial is None
    # folding does not add up: each physical line is measured
    folded = b"OPTIONS sip:a SIP/2.0\r\nSubject: " + b"a" * 20 + b"\r\n " + b"b" * 28 + b"\r\n\r\n"
    assert len(p.parse_message(folded, max_line=30).get("subject")) == 49


def test_header_count_limit(p):
    data = b"OPTIONS sip:a SIP/2.0\r\n" + b"A: 1\r\n B: folded\r\n" * 3 + b"\r\n"
    assert len(p.parse_message(data, max_headers=3).headers) == 3
    with pytest.raises(HeaderTooLong) as info:
        p.parse_message(data, max_headers=2)
    assert info.value.reason == "Too many headers"
    assert len(info.value.partial.headers) == 2


def test_content_length_body(p):
    head = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 5\r\n\r\n"
    assert p.parse_message(head + b"hello").body == b"hello"
    assert p.parse_message(head + b"hello, trailing junk").body == b"hello"
    assert p.parse_message(b"MESSAGE sip:a SIP/2.0\r\nl:   007 \r\nCONTENT-LENGTH: 7\r\n\r\n1234567").body == b"1234567"
    assert p.parse_message(b"MESSAGE sip:a SIP/2.0\r\nContent-Length:\r\n 3\r\n\r\nabcdef").body == b"abc"
    assert p.parse_message(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 0\r\n\r\nabc").body == b""
    assert p.parse_message(b"MESSAGE sip:a SIP/2.0\r\n\r\nno length").body == b"no length"


@pytest.mark.parametrize("value, reason", [
    ("x", "Malformed Content-Length"),
    ("", "Malformed Content-Length"),
    ("-1", "Malformed Content-Length"),
    ("5 5", "Malformed Content-Length"),
    ("+5", "Malformed Content-Length"),
    ("\u0665", "Malformed Content-Length"),  # an Arabic-Indic five is not a digit here
    ("6", "Content-Length exceeds message"),
    ("9" * 30, "Content-Length exceeds message"),
    ("9" * 5000, "Content-Length exceeds message"),
])
def test_content_length_errors(p, value, reason):
    data = ("MESSAGE sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nContent-Length: " + value + "\r\n\r\nhello").encode()
    with pytest.raises(ParseError) as info:
        p.parse_message(data)
    assert info.value.reason == reason
    assert info.value.partial.vias[0].host == "h"
    assert info.value.partial.get("content-length") == value


def test_conflicting_content_length(p):
    with pytest.raises(ParseError, match="Conflicting Content-Length"):
        p.parse_message(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab")
    huge = b"1" + b"0" * 30
    with pytest.raises(ParseError, match="Conflicting Content-Length"):
        p.parse_message(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: " + huge + b"\r\nl: " + huge + b"1\r\n\r\nab")
    with pytest.raises(ParseError, match="Content-Length exceeds message"):
        p.parse_message(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: " + huge + b"\r\nl: 000" + huge + b"\r\n\r\nab")


def test_malformed_via_keeps_earlier_vias(p):
    data = crlf("REGISTER sip:a SIP/2.0\nVia: SIP/2.0/UDP first;branch=z9hG4bK1\n"
                "Via: SIP/2.0/TCP second, SIP/2.0/UDP\nCall-ID: x\n\n")
    with pytest.raises(ParseError) as info:
        p.parse_message(data)
    assert info.value.reason == "Malformed Via"
    partial = info.value.partial
    assert [via.host for via in partial.vias] == ["first", "second"]
    assert [name for name, _ in partial.headers] == ["via", "via"]


def test_failure_keeps_the_vias_of_a_pending_via_that_parse(p):
    # the Via is still pending (it could be folded) when the truncation is found
    with pytest.raises(ParseError) as info:
        p.parse_message(b"REGISTER sip:a SIP/2.0\r\nVia: SIP/2.0/UDP a, SIP/2.0/UDP b:0, SIP/2.0/UDP c\r\n")
    assert info.value.reason == "Truncated message (no end of headers)"
    assert [via.host for via in info.value.partial.vias] == ["a"]


def test_empty_via_is_malformed(p):
    with pytest.raises(ParseError, match="Malformed Via"):
        p.parse_message(b"OPTIONS sip:a SIP/2.0\r\nVia: , \r\n\r\n")


def test_buffer_types_and_undecodable_bytes(p):
    data = b"OPTIONS sip:\xff@a SIP/2.0\r\nFrom: \"Jos\xc3\xa9 \xff\" <sip:j@a>\r\n\r\n\xfe"
    for form in (data, bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        msg = p.parse_message(form)
        assert msg.request_uri == "sip:\udcff@a"
        assert msg.get("from") == "\"Jos\u00e9 \udcff\" <sip:j@a>"
        assert msg.get("from").encode("utf-8", "surrogateescape") == b"\"Jos\xc3\xa9 \xff\" <sip:j@a>"
        assert msg.body == b"\xfe"
        assert type(msg.body) is bytes


def test_reason_constants_agree():
    names = [name for name in dir(_pyparse) if name.startswith("R_")]
    assert len(names) >= 16
    for name in names:
        assert getattr(_cparse, name) == getattr(_pyparse, name), name


# ------------------------------------------------------------------ frame_length


def test_frame_length_complete_and_partial(p):
    msg = b"MESSAGE sip:a SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nContent-Length: 5\r\n\r\nhello"
    assert p.frame_length(msg) == len(msg)
    assert p.frame_length(msg + b"OPTIONS sip:a") == len(msg)
    for cut in range(len(msg)):
        assert p.frame_length(msg[:cut]) is None, cut
    assert p.frame_length(bytearray(msg)) == len(msg)
    assert p.frame_length(memoryview(msg)) == len(msg)


def test_frame_length_without_content_length(p):
    msg = b"OPTIONS sip:a SIP/2.0\nCall-ID: x\n\n"
    assert p.frame_length(msg + b"more") == len(msg)


def test_frame_length_header_variants(p):
    for header in (b"l: 3", b"CONTENT-length :3", b"Content-Length:\r\n  3", b"content-length: 003",
                   b"L:3\r\nContent-Length: 3"):
        msg = b"MESSAGE sip:a SIP/2.0\r\n" + header + b"\r\n\r\nabc"
        assert p.frame_length(msg + b"xyz") == len(msg), header
        assert p.parse_message(msg + b"xyz").body == b"abc"
    # a header that only looks like Content-Length does not frame
    msg = b"MESSAGE sip:a SIP/2.0\r\nX-Content-Length: 3\r\nContent-Lengths: 3\r\n\r\n"
    assert p.frame_length(msg + b"abc") == len(msg)


def test_frame_length_skips_leading_crlf(p):
    msg = b"\r\n\r\nOPTIONS sip:a SIP/2.0\r\nl: 2\r\n\r\nok"
    assert p.frame_length(msg) == len(msg)
    assert p.parse_message(msg[: p.frame_length(msg)]).body == b"ok"
    assert p.frame_length(b"\r\n\r\n") is None


def test_frame_length_limits(p):
    msg = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 100\r\n\r\n"
    assert p.frame_length(msg, max_size=len(msg) + 100) is None
    with pytest.raises(MessageTooLarge, match="Message Too Large"):
        p.frame_length(msg, max_size=len(msg) + 99)
    endless = b"MESSAGE sip:a SIP/2.0\r\n" + b"X: y\r\n" * 100
    assert p.frame_length(endless, max_size=len(endless)) is None
    with pytest.raises(MessageTooLarge):
        p.frame_length(endless, max_size=len(endless) - 1)
    with pytest.raises(ParseError, match="Malformed Content-Length"):
        p.frame_length(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: ten\r\n\r\n")
    with pytest.raises(ParseError, match="Conflicting Content-Length"):
        p.frame_length(b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab")


# ------------------------------------------------------------------ split_list


@pytest.mark.parametrize("value, items", [
    ("", []),
    ("a", ["a"]),
    (" a , b ,, c,", ["a", "b", "c"]),
    ('"Doe, John" <sip:j@a>, <sip:k@a;x=1,2>', ['"Doe, John" <sip:j@a>', "<sip:k@a;x=1,2>"]),
    (r'"a \" , b" <sip:x>, c', [r'"a \" , b" <sip:x>', "c"]),
    (r'"a \\", b', [r'"a \\"', "b"]),
    ('"<,>" <sip:x>, y', ['"<,>" <sip:x>', "y"]),
    ("<sip:a, \"b>, c", ['<sip:a, "b>', "c"]),
    ('"unterminated, x', ['"unterminated, x']),
    ("<unterminated, x", ["<unterminated, x"]),
    ("\t a\t,\tb", ["a", "b"]),
])
def test_split_list(p, value, items):
    assert p.split_list(value) == items


# ------------------------------------------------------------------ parse_vias


def test_parse_vias(p):
    vias = p.parse_vias(
        'SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport;received=10.0.0.2, '
        'sip / 2.0 / tls [2001:db8::1]:5061 ; branch = "z9hG4bK \\"q\\"" ;maddr=[::1],'
        'SIP/2.0/WS  df7jal23ls0d.invalid;branch=z9hG4bKy;alias')
    assert vias == [
        Via("UDP", "10.0.0.1", 5060, (("branch", "z9hG4bKx"), ("rport", None), ("received", "10.0.0.2")),
            "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport;received=10.0.0.2"),
        Via("TLS", "[2001:db8::1]", 5061, (("branch", 'z9hG4bK "q"'), ("maddr", "[::1]")),
            'sip / 2.0 / tls [2001:db8::1]:5061 ; branch = "z9hG4bK \\"q\\"" ;maddr=[::1]'),
        Via("WS", "df7jal23ls0d.invalid", None, (("branch", "z9hG4bKy"), ("alias", None)),
            "SIP/2.0/WS  df7jal23ls0d.invalid;branch=z9hG4bKy;alias"),
    ]


def test_via_port_and_host_forms(p):
    assert p.parse_vias("SIP/2.0/UDP h : 65535")[0].port == 65535
    assert p.parse_vias("SIP/2.0/UDP h:00080")[0].port == 80
    assert p.parse_vias("SIP/2.0/TCP my_host-1.example.com")[0].host == "my_host-1.example.com"
    assert p.parse_vias("SIP/2.0/UDP [::ffff:192.0.2.1]:5060")[0].host == "[::ffff:192.0.2.1]"
    assert p.parse_vias("SIP/2.0/udp h;received=2001:db8::9;rport=5060")[0].params == (
        ("received", "2001:db8::9"), ("rport", "5060"))


@pytest.mark.parametrize("value", [
    "", ",", "SIP/2.0/UDP", "SIP/2.0/UDP ", "SIP/2.0/UDPh", "SIP/2.0 UDP h", "SIP/2.0/ h",
    "SIP/3.0/UDP h", "HTTP/2.0/UDP h", "SIPS/2.0/UDP h", "SIP/2.0/UDP h:0", "SIP/2.0/UDP h:65536",
    "SIP/2.0/UDP h:123456", "SIP/2.0/UDP h:", "SIP/2.0/UDP h:x", "SIP/2.0/UDP h extra",
    "SIP/2.0/UDP [::1", "SIP/2.0/UDP []", "SIP/2.0/UDP [1.2.3.4]", "SIP/2.0/UDP [::g]",
    "SIP/2.0/UDP h;", "SIP/2.0/UDP h;=x", "SIP/2.0/UDP h;branch=", "SIP/2.0/UDP h;branch=\"x",
    "SIP/2.0/UDP h;branch=a b", "SIP/2.0/UDP h,SIP/2.0/UDP", "SIP/2.0/UDP h/x", "SIP/2.0/UDP h\u00e9",
    "SIP/2.0/UDP h;branch=<x>",
])
def test_malformed_vias(p, value):
    with pytest.raises(ParseError) as info:
        p.parse_vias(value)
    assert info.value.reason == "Malformed Via"


# ------------------------------------------------------------------ parse_name_addr


@pytest.mark.parametrize("value, display, uri, params", [
    ('"Alice Liddell" <sip:alice@example.com>;tag=1', "Alice Liddell", "sip:alice@example.com", (("tag", "1"),)),
    ('"A, <b> \\"c\\" \\\\" <sip:a@b>', 'A, <b> "c" \\', "sip:a@b", ()),
    ('""<sip:a@b>', "", "sip:a@b", ()),
    ("Alice  Liddell <sip:a@b> ; expires = 60 ;ob", "Alice  Liddell", "sip:a@b", (("expires", "60"), ("ob", None))),
    ("J\u00f6rg <sip:j@b>", "J\u00f6rg", "sip:j@b", ()),
    ("<sip:a@b;transport=tcp>;q=0.5", None, "sip:a@b;transport=tcp", (("q", "0.5"),)),
    ("< sip:a@b >", None, "sip:a@b", ()),
    ("sip:a@b;transport=tcp;expires=0", None, "sip:a@b", (("transport", "tcp"), ("expires", "0"))),
    ("sip:a@b ;tag=x", None, "sip:a@b", (("tag", "x"),)),
    ("tel:+15551234", None, "tel:+15551234", ()),
    ("  <urn:uuid:1234>  ", None, "urn:uuid:1234", ()),
    ('<sip:a@b>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1',
     None, "sip:a@b", (("+sip.instance", "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"), ("reg-id", "1"))),
])
def test_parse_name_addr(p, value, display, uri, params):
    assert p.parse_name_addr(value) == NameAddr(display, uri, params, value.strip(" \t"))


@pytest.mark.parametrize("value", [
    "", "  ", "*", '"unterminated <sip:a@b>', '"Alice" sip:a@b', "<sip:a@b", "<>", "< >",
    "<alice>", "<:a>", "<1sip:a>", "Alice sip:a@b", "sip:a b@c", "<sip:a@b> x", "<sip:a@b>;",
    "<sip:a@b>;tag=", '<sip:a@b>;tag="x', "<sip:a\x01@b>", "Al@ce <sip:a@b>", '<sip:"a"@b>',
    'Alice "Bob" <sip:a@b>', "<sip:a@b>>",
])
def test_malformed_name_addr(p, value):
    with pytest.raises(ParseError) as info:
        p.parse_name_addr(value)
    assert info.value.reason == "Malformed name-addr"


# ------------------------------------------------------------------ parse_contacts


def test_parse_contacts(p):
    contacts = p.parse_contacts(['"Doe, J" <sip:j@a>;expires=60, <sip:k@a>', "sip:l@a;q=0.1"])
    assert [(c.display, c.uri, c.param("expires"), c.param("q")) for c in contacts] == [
        ("Doe, J", "sip:j@a", "60", None), (None, "sip:k@a", None, None), (None, "sip:l@a", None, "0.1")]
    assert p.parse_contacts([]) == []
    assert p.parse_contacts([""]) == []


def test_parse_contacts_star(p):
    assert p.parse_contacts(["*"]) is None
    assert p.parse_contacts(["  *\t"]) is None
    for values in (["*, <sip:a@b>"], ["<sip:a@b>", "*"], ["*", "*"], ["bad", "*"]):
        with pytest.raises(ParseError) as info:
            p.parse_contacts(values)
        assert info.value.reason == "Contact '*' must be alone"
    with pytest.raises(ParseError) as info:
        p.parse_contacts(["*;expires=0"])
    assert info.value.reason == "Malformed Contact"


def test_parse_contacts_malformed(p):
    with pytest.raises(ParseError) as info:
        p.parse_contacts(["<sip:a@b>, <sip:c@d"])
    assert info.value.reason == "Malformed Contact"


# ------------------------------------------------------------------ parse_credentials


def test_parse_credentials_linphone(p):
    creds = p.parse_credentials(p.parse_message(LINPHONE).get("authorization"))
    assert creds.scheme == "Digest"
    assert creds.params == (
        ("realm", "example.com"), ("nonce", "AAABkZ1x0abcdef"), ("algorithm", "MD5"),
        ("opaque", "+GNywA=="), ("username", "alice"), ("uri", "sip:example.com"),
        ("response", "0f3a9c6b1e2d4f5a6b7c8d9e0f1a2b3c"), ("cnonce", "x8Yq"), ("nc", "00000001"),
        ("qop", "auth"))
    assert creds.get("nc") == "00000001"


def test_parse_credentials_forms(p):
    assert p.parse_credentials('  Digest USERNAME = "a\\"b" ,Realm="r" ,, nc=1,') == Credentials(
        "Digest", (("username", 'a"b'), ("realm", "r"), ("nc", "1")))
    assert p.parse_credentials("digest\tusername=\"\"") == Credentials("digest", (("username", ""),))
    assert p.parse_credentials("Digest opaque=abc==") == Credentials("Digest", (("opaque", "abc=="),))
    assert p.parse_credentials('Digest username="J\u00f6rg"').get("username") == "J\u00f6rg"
    assert p.parse_credentials("Digest realm=a,, ,").params == (("realm", "a"),)


@pytest.mark.parametrize("value", [
    "", "Digest", "Digest ", "Digest,username=a", " , username=a", "Digest username", "Digest username=",
    'Digest username="a', "Digest username=a b", "Digest =a",
    'Digest username="a", username="b"', 'Digest username="a", USERNAME="a"',
    "Dig\u00e9st username=a", 'Digest username="a"realm="b"',
])
def test_malformed_credentials(p, value):
    with pytest.raises(ParseError) as info:
        p.parse_credentials(value)
    assert info.value.reason == "Malformed Authorization"
