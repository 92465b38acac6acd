"""fastreg.uri: parsing, RFC 3261 19.1.4 comparison, canonical AOR."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastreg import uri as uri_mod
from fastreg.errors import ParseError
from fastreg.uri import (
    SipUri,
    aor_domain,
    aor_user,
    canonical_aor,
    contacts_equal,
    parse_uri,
    pure_parse_uri,
    uris_equal,
)

# ------------------------------------------------------------------ parsing


def test_parse_full_sip_uri():
    u = parse_uri("SIP:alice:secretword@Atlanta.com:5061;transport=TCP;lr?subject=project%20x&priority=urgent")
    assert u == SipUri(
        scheme="sip",
        user="alice",
        password="secretword",
        host="Atlanta.com",
        port=5061,
        params=(("transport", "TCP"), ("lr", None)),
        headers=(("subject", "project%20x"), ("priority", "urgent")),
    )


def test_parse_minimal_and_sips():
    assert parse_uri("sips:example.com") == SipUri("sips", None, None, "example.com", None, (), ())
    assert parse_uri("sip:192.0.2.4").host == "192.0.2.4"


def test_parse_user_with_user_unreserved_and_escapes():
    u = parse_uri("sip:alice;day=tuesday@atlanta.com")
    assert u.user == "alice;day=tuesday" and u.host == "atlanta.com" and u.params == ()
    u = parse_uri("sip:%61lice@atlanta.com")
    assert u.user == "%61lice"  # escapes kept as written
    u = parse_uri("sip:+1-212-555-1212:1234@gateway.com;user=phone")
    assert (u.user, u.password, u.params) == ("+1-212-555-1212", "1234", (("user", "phone"),))


def test_parse_ipv6():
    u = parse_uri("sip:alice@[2001:db8::10]:5070;transport=tcp")
    assert (u.host, u.port) == ("[2001:db8::10]", 5070)
    u = parse_uri("sip:[::1]")
    assert (u.host, u.port) == ("[::1]", None)


def test_parse_tel():
    u = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert (u.scheme, u.user, u.host, u.port) == ("tel", "+1-201-555-0123", "", None)
    assert u.params == (("phone-context", "example.com"),)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice@example.com",  # no scheme
        "sip:",
        "sip:@example.com",  # empty user
        "sip:alice@",  # empty host
        "sip:alice@:5060",
        "sip:alice@example.com:",  # empty port
        "sip:alice@example.com:50a0",
        "sip:alice@example.com:65536",
        "sip:alice@example.com:-1",
        "sip:alice@exa mple.com",
        "sip:alice@example.com\r\n",
        "sip:alice@bob@example.com",
        "sip:al%6@example.com",  # bad escape
        "sip:alice@[2001:db8::1",  # unterminated IPv6
        "sip:alice@[2001:db8::1]x",
        "sip:alice@exa<mple.com",
        "sip:alice@example.com;;lr",  # empty parameter name
        "sip:alice@example.com;=x",
        "sip:alice@example.com?=x",
        "tel:",
        "tel:abc xyz",
        "1sip:alice@example.com",
    ],
)
def test_parse_malformed(text):
    with pytest.raises(ParseError) as ei:
        parse_uri(text)
    assert ei.value.status == 400
    assert ei.value.reason == "Malformed URI"


def test_unsupported_scheme_is_416():
    with pytest.raises(ParseError) as ei:
        parse_uri("mailto:alice@example.com")
    assert ei.value.status == 416


def test_sipuri_is_frozen_value():
    u = parse_uri("sip:alice@example.com")
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.user = "bob"  # type: ignore[misc]
    assert dataclasses.replace(u, user="bob").user == "bob"
    assert pickle.loads(pickle.dumps(u)) == u
    assert hash(u) == hash(parse_uri("sip:alice@example.com"))
    assert SipUri(scheme="sip", user=None, password=None, host="h", port=None, params=(), headers=()).host == "h"
    with pytest.raises(TypeError):
        SipUri("sip", None)  # type: ignore[call-arg]


# ------------------------------------------- RFC 3261 19.1.4, the examples

RFC_EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
]

RFC_NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),  # different usernames
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),  # can resolve to different ports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),  # different transports
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),  # port and transport
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),  # header component
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),  # even if that is what it resolves to
]


@pytest.mark.parametrize("a,b", RFC_EQUAL)
def test_rfc3261_equal_examples(a, b):
    assert uris_equal(parse_uri(a), parse_uri(b))
    assert uris_equal(parse_uri(b), parse_uri(a))
    assert contacts_equal(a, b)


@pytest.mark.parametrize("a,b", RFC_NOT_EQUAL)
def test_rfc3261_not_equal_examples(a, b):
    assert not uris_equal(parse_uri(a), parse_uri(b))
    assert not uris_equal(parse_uri(b), parse_uri(a))
    assert not contacts_equal(a, b)


def test_equality_is_not_transitive():
    # RFC 3261 19.1.4: on ~ plain ~ off, but on !~ off
    on, plain, off = "sip:carol@chicago.com;security=on", "sip:carol@chicago.com", "sip:carol@chicago.com;security=off"
    assert contacts_equal(on, plain) and contacts_equal(plain, off)
    assert not contacts_equal(on, off)


@pytest.mark.parametrize(
    "a,b,equal",
    [
        ("sip:alice@example.com", "sips:alice@example.com", False),  # scheme
        ("sip:alice@example.com", "sip:example.com", False),  # user in only one
        ("sip:alice:pw@example.com", "sip:alice@example.com", False),  # password in only one
        ("sip:alice:pw@example.com", "sip:alice:PW@example.com", False),  # password case-sensitive
        ("sip:alice:p%77@example.com", "sip:alice:pw@example.com", True),
        ("sip:alice@example.com;ttl=1", "sip:alice@example.com", False),
        ("sip:alice@example.com;user=phone", "sip:alice@example.com", False),
        ("sip:alice@example.com;method=INVITE", "sip:alice@example.com", False),
        ("sip:alice@example.com;maddr=239.255.255.1", "sip:alice@example.com", False),
        ("sip:alice@example.com;maddr=239.255.255.1", "sip:alice@example.com;MADDR=239.255.255.1", True),
        ("sip:alice@example.com;lr", "sip:alice@example.com;lr", True),
        ("sip:alice@example.com;foo=BAR", "sip:alice@example.com;FOO=bar", True),  # values case-insensitive
        ("sip:alice@example.com;foo=1", "sip:alice@example.com;foo=2", False),
        ("sip:alice@example.com;foo=%41", "sip:alice@example.com;foo=a", True),
        ("sip:alice@example.com:5060", "sip:alice@EXAMPLE.com:5060", True),
        ("sip:alice@example.com:5060", "sip:alice@example.com:5061", False),
        ("sip:alice@[2001:DB8::1]", "sip:alice@[2001:db8:0:0::1]", True),
        ("sip:alice@example.com?Subject=a", "sip:alice@example.com?subject=a", True),
        ("sip:alice@example.com?subject=a", "sip:alice@example.com?subject=A", False),
        ("tel:+1-201-555-0123", "tel:+12015550123", True),
        ("tel:+1-201-555-0123", "tel:+12015550124", False),
        ("tel:7042;phone-context=example.com", "tel:7042;Phone-Context=EXAMPLE.com", True),
        ("tel:7042;phone-context=example.com", "tel:7042", False),
        ("tel:+12015550123", "sip:+12015550123@example.com", False),
    ],
)
def test_equality_rules(a, b, equal):
    assert uris_equal(parse_uri(a), parse_uri(b)) is equal
    assert uris_equal(parse_uri(b), parse_uri(a)) is equal


def test_contacts_equal_falls_back_to_exact_compare():
    assert contacts_equal("not a uri", "not a uri")
    assert not contacts_equal("not a uri", "not  a uri")
    assert not contacts_equal("sip:alice@example.com", "garbage")


_user = st.text(alphabet="abcdefgxyzABC0123456789-_.!~*'()+", min_size=1, max_size=8)
_host = st.sampled_from(["example.com", "192.0.2.1", "[2001:db8::1]", "Host-1.example.org"])
_param = st.tuples(st.sampled_from(["transport", "lr", "ob", "foo", "user"]), st.sampled_from(["udp", "TCP", "x", None]))


@st.composite
def _uris(draw):
    user = draw(st.none() | _user)
    host = draw(_host)
    port = draw(st.none() | st.integers(1, 65535))
    params = draw(st.lists(_param, max_size=3, unique_by=lambda p: p[0]))
    text = "sip:" + (user + "@" if user else "") + host + (f":{port}" if port else "")
    for n, v in params:
        text += f";{n}" + (f"={v}" if v is not None else "")
    return text


@given(_uris())
def test_uri_equal_to_itself_and_to_case_variants(text):
    u = parse_uri(text)
    assert uris_equal(u, u)
    # host, scheme and parameters are case-insensitive; the user is not
    user_part, at, rest = text[4:].rpartition("@")
    variant = "SIP:" + user_part + at + rest.upper()
    assert uris_equal(u, parse_uri(variant))


@given(_uris(), _uris())
def test_uri_equality_is_symmetric(a, b):
    assert uris_equal(parse_uri(a), parse_uri(b)) == uris_equal(parse_uri(b), parse_uri(a))


@given(st.text(max_size=40))
def test_parse_uri_raises_only_parse_error(text):
    try:
        parse_uri(text)
    except ParseError:
        pass
    try:
        canonical_aor(text)
    except ParseError:
        pass


# ---------------------------------------------------- canonical AOR (10.3)


@pytest.mark.parametrize(
    "to_uri,aor",
    [
        ("sip:alice@example.com", "sip:alice@example.com"),
        ("sip:alice@EXAMPLE.com", "sip:alice@example.com"),  # host lower-cased
        ("sip:Alice@example.com", "sip:Alice@example.com"),  # user case kept
        ("sip:alice@example.com:5060", "sip:alice@example.com"),  # no port
        ("sip:alice@example.com:5080;transport=tcp;user=phone", "sip:alice@example.com"),  # no params
        ("sip:alice@example.com?subject=x", "sip:alice@example.com"),  # no headers
        ("sips:alice@example.com", "sip:alice@example.com"),  # sips is the same AOR
        ("SIP:alice@example.com", "sip:alice@example.com"),
        ("sip:alice:secret@example.com", "sip:alice@example.com"),  # password dropped
        ("sip:%61lice@example.com", "sip:alice@example.com"),  # unreserved escapes decoded
        ("sip:%2B4930123@example.com;user=phone", "sip:+4930123@example.com"),  # user-unreserved too
        ("sip:a%40b@example.com", "sip:a%40b@example.com"),  # '@' must stay escaped
        ("sip:a%3ab@example.com", "sip:a%3Ab@example.com"),  # kept, hex upper-cased
        ("sip:a%20b@example.com", "sip:a%20b@example.com"),
        ("sip:example.com", "sip:example.com"),  # no user part
        ("sip:Example.COM:5060;lr", "sip:example.com"),
        ("sip:bob@[2001:DB8:0::1]:5060", "sip:bob@[2001:db8::1]"),
        ("sip:bob@192.0.2.1", "sip:bob@192.0.2.1"),
    ],
)
def test_canonical_aor(to_uri, aor):
    assert canonical_aor(to_uri) == aor


@pytest.mark.parametrize("text", ["sip:alice@", "alice@example.com", "sip:alice@example.com:x", ""])
def test_canonical_aor_malformed(text):
    with pytest.raises(ParseError):
        canonical_aor(text)


def test_canonical_aor_refuses_tel():
    with pytest.raises(ParseError) as ei:
        canonical_aor("tel:+4930123")
    assert ei.value.status == 416


def test_aor_parts():
    assert aor_domain("sip:alice@example.com") == "example.com"
    assert aor_user("sip:alice@example.com") == "alice"
    assert aor_domain("sip:example.com") == "example.com"
    assert aor_user("sip:example.com") is None
    assert aor_user("sip:a;b=c@example.com") == "a;b=c"
    assert aor_domain(canonical_aor("sip:bob@[2001:db8::1]:5060")) == "[2001:db8::1]"


@given(_uris())
def test_canonical_aor_is_idempotent(text):
    aor = canonical_aor(text)
    assert canonical_aor(aor) == aor
    assert aor.startswith("sip:") and ";" not in aor.partition("@")[2]


# ------------------------------------------- the compiled twin (fastreg._curi)

_curi = pytest.importorskip("fastreg._curi") if parse_uri is not pure_parse_uri else None
_URI_ALPHABET = "sipSIPtel:@;=?&%[]._-+!~*'()/$,AaFf0123456789 \t\x00\x7fé"


def _outcome(fn, text):
    try:
        return fn(text)
    except ParseError as error:
        return ("error", error.status, error.reason)


@st.composite
def _mutated_uris(draw):
    text = draw(_uris())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from(_URI_ALPHABET))
        if op == "insert":
            text = text[:at] + ch + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + 1:]
        else:
            text = text[:at] + ch + text[at + 1:]
    return text


_EDGE_CASES = [
    "sip:", "sip:@", "sip:a@", "sip:@h", "sip:h:", "sip:h:0", "sip:h:65535", "sip:h:65536", "sip:h:123456",
    "sip:h:-1", "sip:[::1]", "sip:[::1]:5", "sip:[::1]x", "sip:[::1", "sip:[]", "sip:[%z]", "sip:[::1%]",
    "sip:[fe80::1%eth0]", "sip:[fe80::1%eth0]:5060", "sip:a%4@h", "sip:a%zz@h", "sip:a%41@h", "sip:a:b:c@h",
    "sip:a:@h", "sip::b@h", "sip:a@b@h", "sip:h;", "sip:h;=x", "sip:h;a=", "sip:h;a;b=c", "sip:h?", "sip:h?a",
    "sip:h?=b", "sip:h?a=b&c=d", "sips:H_1.example", "sip:_h", "sip:-h", "sip:.h", "tel:+1-555", "mailto:x@y",
    "1sip:h", "sip:h h", "sip:h\t", "sip:hé", "SIP:Alice@EXAMPLE.com", "sip:a@h:5;x?y=z", "sip:a;b@h",
]


@pytest.mark.skipif(_curi is None, reason="pure mode: the compiled twin is not in use")
@pytest.mark.parametrize("text", _EDGE_CASES)
def test_compiled_parse_uri_agrees_with_the_pure_one_on_edge_cases(text):
    assert _outcome(parse_uri, text) == _outcome(pure_parse_uri, text)


@pytest.mark.skipif(_curi is None, reason="pure mode: the compiled twin is not in use")
@given(_mutated_uris() | st.text(alphabet=_URI_ALPHABET, max_size=30))
def test_compiled_parse_uri_agrees_with_the_pure_one(text):
    assert _outcome(parse_uri, text) == _outcome(pure_parse_uri, text)


@pytest.mark.skipif(_curi is None, reason="pure mode: the compiled twin is not in use")
@pytest.mark.parametrize("text", _EDGE_CASES + ["sip:%61lice@h", "sip:a%2b%40@H", "sips:[::0001]:5", "sip:[FE80::1]",
                                                 "tel:+1", "sip:Ab@EXAMPLE.COM;x?y=z", "sip:é@h"])
def test_compiled_canonical_aor_and_check_uri_agree_on_edge_cases(text):
    assert uri_mod.canonical_aor is not uri_mod.pure_canonical_aor
    assert _outcome(uri_mod.canonical_aor.__wrapped__, text) == _outcome(uri_mod.pure_canonical_aor, text)
    assert _outcome(uri_mod.check_uri, text) == _outcome(uri_mod.pure_check_uri, text)


@pytest.mark.skipif(_curi is None, reason="pure mode: the compiled twin is not in use")
@given(_mutated_uris() | st.text(alphabet=_URI_ALPHABET, max_size=30))
def test_compiled_canonical_aor_and_check_uri_agree(text):
    assert _outcome(uri_mod.canonical_aor.__wrapped__, text) == _outcome(uri_mod.pure_canonical_aor, text)
    assert _outcome(uri_mod.check_uri, text) == _outcome(uri_mod.pure_check_uri, text)
