"""Response assembly: the compiled builder (fastreg._cresponse) gives exactly
the bytes of the pure reference (response.build_response_pure), and the
reference follows RFC 3261 18.2.1 / RFC 3581 for the top Via.

The differential tests import both builders directly, so they run the same
whatever FASTREG_PARSER says; the requests are scanned with the pure parser
(its objects are equal to the compiled scanner's, test_parser_properties).
"""

from __future__ import annotations

import ipaddress
import string
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastreg import _cresponse, _pyparse, response
from fastreg.message import SipMessage, Via
from fastreg.response import build_response_pure, to_tag_for

SOURCE = ("198.51.100.7", 40123)


def request(*vias: str, to: str = "Bob <sip:bob@example.com>", extra: str = "") -> SipMessage:
    lines = ["REGISTER sip:example.com SIP/2.0", *(f"Via: {v}" for v in vias),
             "From: Bob <sip:bob@example.com>;tag=456248", f"To: {to}",
             "Call-ID: 843817637684230@998sdasdh09", "CSeq: 1826 REGISTER"]
    data = "\r\n".join(lines) + "\r\n" + extra + "Content-Length: 0\r\n\r\n"
    return _pyparse.parse_message(data.encode())


def both(*args, **kwargs) -> bytes:
    """The reference's bytes, after checking that the compiled builder gives the same."""
    expected = build_response_pure(*args, **kwargs)
    assert _cresponse.build_response(*args, **kwargs) == expected
    return expected


def top_via(data: bytes) -> str:
    return data.split(b"\r\n")[1].decode()


# ------------------------------------------------------------------ RFC 3581 and friends

def test_rport_is_filled_and_received_added_even_when_the_host_matches():
    # RFC 3581 4: with rport, received MUST be added even if it equals the sent-by host.
    req = request("SIP/2.0/UDP 198.51.100.7:5060;rport;branch=z9hG4bKnashds7")
    assert top_via(both(req, 200, "OK", SOURCE)) == (
        "Via: SIP/2.0/UDP 198.51.100.7:5060;rport=40123;branch=z9hG4bKnashds7;received=198.51.100.7")


def test_rfc3581_example():
    # RFC 3581 section 4's example: the client at 10.1.1.1:5060 behind a NAT seen as 192.0.2.1:9988.
    req = request("SIP/2.0/UDP 10.1.1.1:4540;rport;branch=z9hG4bKkjshdyff")
    assert top_via(both(req, 200, "OK", ("192.0.2.1", 9988))) == (
        "Via: SIP/2.0/UDP 10.1.1.1:4540;rport=9988;branch=z9hG4bKkjshdyff;received=192.0.2.1")


def test_received_only_when_the_host_differs_without_rport():
    differs = request("SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1")
    assert top_via(both(differs, 200, "OK", SOURCE)) == (
        "Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK1;received=198.51.100.7")
    same = request("SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK1")
    assert top_via(both(same, 200, "OK", SOURCE)) == "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK1"


def test_client_received_is_replaced_and_an_rport_value_kept():
    req = request("SIP/2.0/TCP 10.0.0.1:5060;Received=1.2.3.4;RPORT=5070;branch=z9hG4bK2")
    assert top_via(both(req, 200, "OK", SOURCE)) == (
        "Via: SIP/2.0/TCP 10.0.0.1:5060;RPORT=5070;branch=z9hG4bK2;received=198.51.100.7")


def test_ipv6_sent_by_matches_the_source_without_brackets():
    req = request("SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK3")
    assert top_via(both(req, 200, "OK", ("2001:db8::9", 5060))) == "Via: SIP/2.0/UDP [2001:db8::9]:5060;branch=z9hG4bK3"
    req = request("SIP/2.0/UDP [2001:db8::9];branch=z9hG4bK3;rport")
    assert top_via(both(req, 200, "OK", ("2001:db8::1", 6000))) == (
        "Via: SIP/2.0/UDP [2001:db8::9];branch=z9hG4bK3;rport=6000;received=2001:db8::1")


def test_quoted_and_empty_param_values_are_requoted():
    req = request('SIP/2.0/UDP h.example.com;x="a \\"b\\" ;c";y="";z=back\\slash;branch=z9hG4bK4')
    assert top_via(both(req, 200, "OK", SOURCE)) == (
        'Via: SIP/2.0/UDP h.example.com;x="a \\"b\\" ;c";y="";z=back\\slash;branch=z9hG4bK4'
        ";received=198.51.100.7")


def test_whole_response_lower_vias_raw_and_tag():
    req = request("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK5;rport", "SIP/2.0/TCP  proxy.example.com:5061 ;branch=z9hG4bKp")
    data = both(req, 200, "OK", SOURCE, [("Contact", "<sip:bob@10.0.0.1>;expires=3600"), ("Date", "x")],
                body=b"hello", content_type="text/plain")
    tag = to_tag_for(req)
    assert data == (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK5;rport=40123;received=198.51.100.7\r\n"
        "Via: SIP/2.0/TCP  proxy.example.com:5061 ;branch=z9hG4bKp\r\n"
        "From: Bob <sip:bob@example.com>;tag=456248\r\n"
        f"To: Bob <sip:bob@example.com>;tag={tag}\r\n"
        "Call-ID: 843817637684230@998sdasdh09\r\n"
        "CSeq: 1826 REGISTER\r\n"
        "Contact: <sip:bob@10.0.0.1>;expires=3600\r\n"
        "Date: x\r\n"
        "Server: fastreg\r\n"
        "Content-Type: text/plain\r\n"
        "Content-Length: 5\r\n\r\nhello").encode()


@pytest.mark.parametrize("to, tagged", [
    ("<sip:bob@example.com>;tag=abc", False),
    ("<sip:bob@example.com> ; TAG = abc", False),  # spaces ignored, any case
    ("<sip:bob@example.com>;\ttag=abc", True),  # only spaces are ignored, as in the reference
    ("<sip:bob@example.com>;;tag=abc", False),
    ("<sip:bob@example.com>;tagx=abc", True),
    ("<sip:bob@example.com;tag=in-uri>", False),  # the reference's rule: ';tag=' anywhere
    ("\u00c9mile <sip:bob@example.com>", True),
])
def test_to_tag_added_only_when_missing_and_not_for_100(to, tagged):
    req = request("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK6", to=to)
    line = both(req, 401, "Unauthorized", SOURCE).split(b"\r\n")[3].decode()
    assert line == "To: " + to + (f";tag={to_tag_for(req)}" if tagged else "")
    assert both(req, 100, "Trying", SOURCE).split(b"\r\n")[3].decode() == "To: " + to


def test_missing_and_repeated_headers():
    req = _pyparse.parse_message(b"OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP 10.0.0.1\r\nt: <sip:a@b>\r\n"
                                 b"To: <sip:second@b>\r\nl: 0\r\n\r\n")
    data = both(req, 200, "OK", SOURCE)
    assert b"To: <sip:a@b>;tag=" in data and b"second" not in data and b"From" not in data


def test_to_tag_is_stable_and_the_cache_bounded():
    _cresponse.tag_cache_clear()
    req = request("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK7")
    first = both(req, 401, "Unauthorized", SOURCE)
    assert _cresponse.tag_cache_len() == 1
    assert both(req, 200, "OK", SOURCE).split(b"\r\n")[3] == first.split(b"\r\n")[3]
    for n in range(_cresponse.TAG_CACHE_SIZE + 10):
        call_id = f"c{n}"
        assert _cresponse.to_tag(call_id, "f") == to_tag_for(SipMessage(headers=[("call-id", call_id), ("from", "f")]))
    assert _cresponse.tag_cache_len() <= _cresponse.TAG_CACHE_SIZE
    long_call_id = "x" * (_cresponse.TAG_CACHE_KEY_MAX + 1)
    _cresponse.tag_cache_clear()
    assert _cresponse.to_tag(long_call_id, None) == to_tag_for(SipMessage(headers=[("call-id", long_call_id)]))
    assert _cresponse.tag_cache_len() == 0
    assert _cresponse.to_tag(None, None) == to_tag_for(SipMessage())


def test_generic_inputs_take_the_generic_path():
    class Message(SipMessage):
        pass

    req = request("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK8;rport")
    sub = Message(method=req.method, request_uri=req.request_uri, headers=req.headers, vias=tuple(req.vias))
    both(sub, 200, "OK", SOURCE, (("Expires", 3600), ("Min-Expires", 60.5)), body=bytearray(b"ab"))
    both(req, 200, "OK", ["198.51.100.7", 7], [["X", "y"]], body=memoryview(b"xyz"))


def test_no_via_raises_like_the_reference():
    with pytest.raises(IndexError):
        build_response_pure(SipMessage(method="OPTIONS"), 200, "OK", SOURCE)
    with pytest.raises(IndexError):
        _cresponse.build_response(SipMessage(method="OPTIONS"), 200, "OK", SOURCE)


def test_server_header_is_the_same():
    assert _cresponse.SERVER_HEADER == response.SERVER_HEADER


# ------------------------------------------------------------------ selection

def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env})


def test_compiled_builder_by_default_pure_only_on_request():
    code = "from fastreg import response; print(response.BUILDER_IMPLEMENTATION, response.build_response.__module__)"
    assert run_python(code, {"FASTREG_PARSER": ""}).stdout.split() == ["cython", "fastreg._cresponse"]
    assert run_python(code, {"FASTREG_PARSER": "pure"}).stdout.split() == ["pure", "fastreg.response"]


def test_missing_compiled_builder_is_reported_never_silently_replaced():
    result = run_python("import sys; sys.modules['fastreg._cresponse'] = None\nimport fastreg.response",
                        {"FASTREG_PARSER": ""})
    assert result.returncode != 0
    assert "fastreg._cresponse is not built" in result.stderr and "FASTREG_PARSER=pure" in result.stderr


# ------------------------------------------------------------------ differential (hypothesis)

TOKEN = string.ascii_letters + string.digits + "-.!%*_+`'~"
token = st.text(TOKEN, min_size=1, max_size=8)
label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6)
hostname = st.lists(label, min_size=1, max_size=3).map(".".join)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
quoted_text = st.text(st.sampled_from(list(string.ascii_letters + ' ,<>;="\\@:') + ["\u00e9", "\u4e2d"]),
                      max_size=10)


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def via_param(draw) -> str:
    name = draw(st.sampled_from(["branch", "rport", "Rport", "RPORT", "received", "RECEIVED", "maddr", "ttl"])
                | token)
    text = ";" + name
    if draw(st.booleans()):
        text += "=" + draw(st.one_of(token, ipv4, st.integers(0, 70000).map(str), quoted_text.map(quoted)))
    return text


@st.composite
def via_parm(draw, ip: str) -> str:
    transport = draw(st.sampled_from(["UDP", "tcp", "TLS", "ws"]))
    kind = draw(st.sampled_from(["source", "name", "ipv4", "ipv6"]))
    host = {"source": f"[{ip}]" if ":" in ip else ip, "name": draw(hostname), "ipv4": draw(ipv4),
            "ipv6": f"[{draw(ipv6)}]"}[kind]
    if draw(st.booleans()):
        host += ":" + str(draw(st.integers(1, 65535)))
    return f"SIP/2.0/{transport} {host}" + "".join(draw(st.lists(via_param(), max_size=4)))


@st.composite
def responses(draw):
    """(request, build_response arguments) for a generated request."""
    ip = draw(st.one_of(ipv4, ipv6))
    source = (ip, draw(st.integers(1, 65535)))
    lines = [draw(st.sampled_from(["REGISTER sip:example.com SIP/2.0", "OPTIONS sip:b@example.com SIP/2.0"]))]
    for _ in range(draw(st.integers(1, 3))):
        parms = draw(st.lists(via_parm(ip), min_size=1, max_size=2))
        lines.append(draw(st.sampled_from(["Via", "v", "VIA"])) + ": " + ", ".join(parms))
    display = draw(st.sampled_from(["", "Bob ", '"B\u00f6b" ', "\u00c9mile "]))
    if draw(st.booleans()):
        lines.append(f"From: {display}<sip:bob@example.com>;tag={draw(token)}")
    if draw(st.booleans()):
        to_params = draw(st.sampled_from(["", ";tag=x", " ; TAG = y", ";tagx=1", ";\ttag=z"]))
        lines.append(f"{draw(st.sampled_from(['To', 't']))}: {display}<sip:bob@example.com>{to_params}")
    if draw(st.booleans()):
        lines.append(f"Call-ID: {draw(token)}@{draw(hostname)}")
    if draw(st.booleans()):
        lines.append(f"CSeq: {draw(st.integers(0, 2**31))} REGISTER")
    lines.append("Content-Length: 0")
    req = _pyparse.parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    status = draw(st.sampled_from([100, 180, 200, 302, 401, 423, 500]) | st.integers(100, 699))
    reason = draw(st.sampled_from(["OK", "Trying", "Interval Too Brief", "Malformed Via", "D\u00e9j\u00e0 vu"]))
    header_value = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20) | st.just(
        "<sip:bob@10.0.0.1>;expires=3600;q=0.5")
    headers = draw(st.lists(st.tuples(st.sampled_from(["Contact", "Date", "Expires", "Min-Expires", "X-\u00e9"]),
                                      header_value), max_size=4))
    body = draw(st.binary(max_size=40))
    content_type = draw(st.none() | st.just("application/sdp"))
    return req, (status, reason, source, headers, body, content_type)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_compiled_and_pure_builders_agree(generated):
    req, args = generated
    both(req, *args)


value_text = st.text(st.characters(blacklist_categories=("Cc",)) | st.sampled_from(list(' ;,"<>\\\udc80\udcff')),
                     max_size=12)


@st.composite
def direct_messages(draw):
    """Value objects built directly (not scanned): any text, surrogate escapes included."""
    params = tuple(draw(st.lists(st.tuples(st.sampled_from(["rport", "received", "Rport", "branch"]) | token,
                                           st.none() | value_text), max_size=4)))
    host = draw(st.one_of(hostname, ipv4, ipv6.map(lambda h: f"[{h}]"), st.just("[[1.2.3.4]]")))
    port = draw(st.none() | st.integers(1, 65535))
    vias = [Via(draw(st.sampled_from(["UDP", "TCP"])), host, port, params, "raw")]
    vias += [Via("UDP", "h", None, (), draw(value_text)) for _ in range(draw(st.integers(0, 2)))]
    names = st.sampled_from(["from", "to", "call-id", "cseq", "contact", "x"])
    headers = draw(st.lists(st.tuples(names, value_text), max_size=8))
    source = (draw(st.sampled_from([host.strip("[]"), "10.0.0.1"])), draw(st.integers(1, 65535)))
    return SipMessage(method="REGISTER", headers=headers, vias=vias), source


@settings(max_examples=300)
@given(direct_messages(), st.integers(100, 699), value_text,
       st.lists(st.tuples(value_text, value_text), max_size=3), st.binary(max_size=8))
def test_compiled_and_pure_builders_agree_on_any_text(generated, status, reason, headers, body):
    req, source = generated
    try:
        expected = build_response_pure(req, status, reason, source, headers, body)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            _cresponse.build_response(req, status, reason, source, headers, body)
        return
    assert _cresponse.build_response(req, status, reason, source, headers, body) == expected


# -- format_contact: the compiled twin gives the pure one's text ------------------------------

_PARAM_TEXT = st.text(alphabet=' ;,"<>\\=abcXYZ09.-é\udc80', max_size=8)


@given(st.text(alphabet="sip:@.abc019;=<>é", max_size=20),
       st.lists(st.tuples(st.text(alphabet="abcq+.-", min_size=1, max_size=6), st.none() | _PARAM_TEXT), max_size=4))
def test_compiled_format_contact_agrees_with_the_pure_one(uri, params):
    assert _cresponse.format_contact(uri, params) == response.format_contact_pure(uri, params)
    assert _cresponse.format_contact(uri, tuple(params)) == response.format_contact_pure(uri, tuple(params))


def test_format_contact_is_the_compiled_one_with_the_compiled_builder():
    if response.BUILDER_IMPLEMENTATION == "cython":
        assert response.format_contact is _cresponse.format_contact
    else:
        assert response.format_contact is response.format_contact_pure
