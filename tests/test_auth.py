"""Digest authentication (fastreg.auth): vectors, round trips, nonce checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastreg.auth import (
    ALGORITHMS,
    FUTURE_SKEW_S,
    AuthOutcome,
    AuthStatus,
    DigestAuthenticator,
    RandomPool,
    compute_ha1,
    compute_response,
    replay_key,
)
from fastreg.errors import ConfigError
from fastreg.message import Credentials
from fastreg.users import UserRecord

REALM = "fastreg.local"
KEY = b"k" * 32
OLD_KEY = b"o" * 32
NOW = 1_700_000_000.25
URI = "sip:fastreg.local"
USERS = {
    "200": UserRecord("200", password="secret200"),
    "205": UserRecord("205", ha1=compute_ha1("MD5", "205", REALM, "secret205"),
                      ha1_sha256=compute_ha1("SHA-256", "205", REALM, "secret205")),
    "206": UserRecord("206", ha1=compute_ha1("MD5", "206", REALM, "secret206")),  # MD5 HA1 only
    "207": UserRecord("207"),  # exists, no secret
}


def counter_rng():
    """A deterministic rng: distinct bytes on each call."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make_auth(**kwargs) -> DigestAuthenticator:
    kwargs.setdefault("rng", counter_rng())
    return DigestAuthenticator(REALM, kwargs.pop("keys", [KEY]), **kwargs)


def challenge_params(header_value: str) -> dict[str, str]:
    assert header_value.startswith("Digest ")
    return {m.group(1): m.group(3) if m.group(3) is not None else m.group(2)
            for m in re.finditer(r'(\w[\w-]*)=("([^"]*)"|[^,\s]+)', header_value[7:])}


def credentials(username="200", password="secret200", nonce="", algorithm="MD5", qop="auth",
                nc="00000001", cnonce="0a4f113b", method="REGISTER", uri=URI, realm=REALM,
                send_algorithm=True, **extra) -> Credentials:
    response = compute_response(algorithm, username, realm, password, method, uri, nonce,
                                nc if qop else None, cnonce, qop)
    params = [("username", username), ("realm", realm), ("nonce", nonce), ("uri", uri),
              ("response", response)]
    if send_algorithm:
        params.append(("algorithm", algorithm))
    if qop:
        params += [("qop", qop), ("nc", nc), ("cnonce", cnonce)]
    elif cnonce is not None and algorithm.endswith("-sess"):
        params.append(("cnonce", cnonce))
    params += list(extra.items())
    return Credentials("Digest", tuple(params))


def replace_param(creds: Credentials, name: str, value: str | None) -> Credentials:
    params = [(k, v) for k, v in creds.params if k != name]
    if value is not None:
        params.append((name, value))
    return Credentials(creds.scheme, tuple(params))


# -- the response computation against the RFCs' examples -------------------------

def test_rfc7616_md5_example():
    # RFC 7616 section 3.9.1, algorithm MD5.
    assert compute_response(
        "MD5", "Mufasa", "http-auth@example.org", "Circle of Life", "GET", "/dir/index.html",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth",
    ) == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc7616_sha256_example():
    # RFC 7616 section 3.9.1, algorithm SHA-256.
    assert compute_response(
        "SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life", "GET", "/dir/index.html",
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth",
    ) == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_rfc2617_example():
    # RFC 2617 section 3.5 (note "Circle Of Life" there).
    assert compute_response(
        "MD5", "Mufasa", "testrealm@host.com", "Circle Of Life", "GET", "/dir/index.html",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth",
    ) == "6629fae49393a05397450978507c4ef1"


def test_rfc2069_form_without_qop():
    ha1 = hashlib.md5(b"Mufasa:testrealm@host.com:Circle Of Life").hexdigest()
    ha2 = hashlib.md5(b"GET:/dir/index.html").hexdigest()
    expected = hashlib.md5(f"{ha1}:abc:{ha2}".encode()).hexdigest()
    assert compute_response("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life", "GET",
                            "/dir/index.html", "abc") == expected


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_verify_checks_the_rfc7616_digest_itself(algorithm):
    """verify() computes the same response as the RFC example (independent of
    compute_response): substitute our nonce into the RFC 7616 exchange."""
    auth = DigestAuthenticator("http-auth@example.org", [KEY], algorithms=ALGORITHMS, rng=counter_rng())
    nonce = auth.new_nonce(NOW)
    h = hashlib.md5 if algorithm == "MD5" else hashlib.sha256
    ha1 = h(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    ha2 = h(b"GET:/dir/index.html").hexdigest()
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    response = h(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
    creds = Credentials("Digest", (
        ("username", "Mufasa"), ("realm", "http-auth@example.org"), ("uri", "/dir/index.html"),
        ("algorithm", algorithm), ("nonce", nonce), ("nc", "00000001"), ("cnonce", cnonce),
        ("qop", "auth"), ("response", response), ("opaque", "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"),
    ))
    outcome = auth.verify(creds, "GET", NOW + 1, UserRecord("Mufasa", password="Circle of Life"))
    assert outcome.status is AuthStatus.OK, outcome.reason


# -- challenge -------------------------------------------------------------------

def test_challenge_header_shape():
    auth = make_auth(algorithms=("SHA-256", "MD5"))
    headers = auth.challenge(NOW, random_bytes=b"\x01" * 8)
    assert [name for name, _ in headers] == ["WWW-Authenticate", "WWW-Authenticate"]
    first, second = (challenge_params(value) for _, value in headers)
    assert first["algorithm"] == "SHA-256" and second["algorithm"] == "MD5"  # configured order
    assert first["nonce"] == second["nonce"]
    for params in (first, second):
        assert params["realm"] == REALM
        assert params["qop"] == "auth"
        assert params["opaque"]
        assert "stale" not in params
    value = headers[1][1]
    assert value.startswith(f'Digest realm="{REALM}", nonce="')
    assert value.endswith(', algorithm=MD5, qop="auth"')


def test_challenge_stale_flag():
    (header,) = make_auth().challenge(NOW, stale=True)
    assert header[1].endswith(", stale=true")


def test_nonce_layout():
    auth = make_auth()
    nonce = auth.new_nonce(NOW, random_bytes=b"ABCDEFGH")
    raw = base64.urlsafe_b64decode(nonce + "=")
    assert len(nonce) == 43 and "=" not in nonce
    assert len(raw) == 32
    assert int.from_bytes(raw[:8], "big") == int(NOW)
    assert raw[8:16] == b"ABCDEFGH"
    assert raw[16:] == hmac.digest(KEY, raw[:16] + REALM.encode(), "sha256")[:16]


def test_nonces_differ_and_use_the_rng():
    auth = make_auth()
    nonces = {auth.new_nonce(NOW) for _ in range(50)}
    assert len(nonces) == 50


def test_default_rng_is_os_urandom():
    auth = DigestAuthenticator(REALM, [KEY])
    assert auth.new_nonce(NOW) != auth.new_nonce(NOW)


def test_random_bytes_must_be_eight():
    with pytest.raises(ValueError):
        make_auth().challenge(NOW, random_bytes=b"short")


@pytest.mark.parametrize("kwargs", [
    {"keys": []}, {"keys": [b""]}, {"algorithms": ()}, {"algorithms": ("SHA-512",)},
    {"algorithms": ("MD5", "MD5")}, {"nonce_ttl_s": 0},
])
def test_bad_construction(kwargs):
    with pytest.raises(ConfigError):
        make_auth(**kwargs)


def test_bad_realm():
    with pytest.raises(ConfigError):
        DigestAuthenticator('a"b', [KEY])


# -- round trips ------------------------------------------------------------------

def nonce_from(auth: DigestAuthenticator, now: float = NOW, algorithm: str | None = None) -> str:
    for _, value in auth.challenge(now):
        params = challenge_params(value)
        if algorithm is None or params["algorithm"] == algorithm:
            return params["nonce"]
    raise AssertionError("algorithm not offered")


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])
@pytest.mark.parametrize("username", ["200", "205"])
def test_round_trip(algorithm, username):
    auth = make_auth(algorithms=ALGORITHMS)
    nonce = nonce_from(auth, algorithm=algorithm.removesuffix("-sess"))
    creds = credentials(username, f"secret{username}", nonce, algorithm, nc="0000000a")
    outcome = auth.verify(creds, "REGISTER", NOW + 10, USERS[username])
    assert outcome.status is AuthStatus.OK, outcome.reason
    assert outcome.ok
    assert outcome.username == username
    assert outcome.nonce == nonce
    assert outcome.nc == 10
    assert outcome.issued_at == int(NOW)
    assert outcome.expires_at == int(NOW) + 300
    assert outcome.algorithm == algorithm


@pytest.mark.parametrize("algorithm", ["MD5", "md5", "Md5-Sess", "sha-256"])
def test_algorithm_name_is_case_insensitive(algorithm):
    auth = make_auth(algorithms=ALGORITHMS)
    creds = credentials(nonce=nonce_from(auth), algorithm=algorithm.upper().replace("SESS", "sess"))
    creds = replace_param(creds, "algorithm", algorithm)
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK


def test_missing_algorithm_means_md5():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth), send_algorithm=False)
    outcome = auth.verify(creds, "REGISTER", NOW, USERS["200"])
    assert outcome.status is AuthStatus.OK
    assert outcome.algorithm == "MD5"


def test_missing_algorithm_when_only_sha256_is_configured():
    auth = make_auth(algorithms=("SHA-256",))
    creds = credentials(nonce=nonce_from(auth), send_algorithm=False)
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.UNSUPPORTED


def test_unconfigured_algorithm_is_unsupported():
    auth = make_auth(algorithms=("MD5",))
    for algorithm in ("SHA-256", "SHA-256-sess", "SHA-512-256", "bogus"):
        creds = credentials(nonce=nonce_from(auth), algorithm="SHA-256")
        creds = replace_param(creds, "algorithm", algorithm)
        outcome = auth.verify(creds, "REGISTER", NOW, USERS["200"])
        assert outcome.status is AuthStatus.UNSUPPORTED
        assert "algorithm" in outcome.reason


def test_rfc2069_client_without_qop():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth), qop=None, cnonce=None)
    outcome = auth.verify(creds, "REGISTER", NOW, USERS["200"])
    assert outcome.status is AuthStatus.OK
    assert outcome.nc == 0


def test_sess_without_qop_needs_cnonce():
    auth = make_auth()
    nonce = nonce_from(auth)
    creds = credentials(nonce=nonce, qop=None, algorithm="MD5-sess")
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK
    creds = replace_param(creds, "cnonce", None)
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.MALFORMED


def test_method_and_uri_are_covered():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth))
    assert auth.verify(creds, "INVITE", NOW, USERS["200"]).status is AuthStatus.WRONG
    tampered = replace_param(creds, "uri", "sip:elsewhere")
    assert auth.verify(tampered, "REGISTER", NOW, USERS["200"]).status is AuthStatus.WRONG


def test_uppercase_response_hex_is_accepted():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth))
    creds = replace_param(creds, "response", creds.get("response").upper())
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK


def test_uppercase_stored_ha1_is_accepted():
    auth = make_auth()
    user = UserRecord("205", ha1=USERS["205"].ha1.upper())
    creds = credentials("205", "secret205", nonce_from(auth))
    assert auth.verify(creds, "REGISTER", NOW, user).status is AuthStatus.OK


# -- wrong credentials: one outcome ---------------------------------------------------

def test_wrong_password():
    auth = make_auth()
    creds = credentials(password="guess", nonce=nonce_from(auth))
    outcome = auth.verify(creds, "REGISTER", NOW, USERS["200"])
    assert outcome.status is AuthStatus.WRONG
    assert outcome.username == "200"


def test_unknown_user_is_the_same_as_a_wrong_password():
    auth = make_auth()
    nonce = nonce_from(auth)
    wrong = auth.verify(credentials(password="guess", nonce=nonce), "REGISTER", NOW, USERS["200"])
    unknown = auth.verify(credentials(username="999", password="guess", nonce=nonce), "REGISTER", NOW, None)
    assert unknown.status is wrong.status is AuthStatus.WRONG
    assert unknown.reason == wrong.reason
    assert (unknown.nc, unknown.issued_at, unknown.expires_at, unknown.algorithm) == \
        (wrong.nc, wrong.issued_at, wrong.expires_at, wrong.algorithm)


def test_unknown_user_never_passes_even_with_the_dummy_secret():
    auth = make_auth()
    creds = credentials("999", auth._dummy_password, nonce_from(auth))
    assert auth.verify(creds, "REGISTER", NOW, None).status is AuthStatus.WRONG


def test_user_without_secret_cannot_authenticate():
    auth = make_auth()
    for password in ("", "secret207", auth._dummy_password):
        creds = credentials("207", password, nonce_from(auth))
        assert auth.verify(creds, "REGISTER", NOW, USERS["207"]).status is AuthStatus.WRONG


def test_md5_ha1_only_user_fails_with_sha256():
    auth = make_auth(algorithms=ALGORITHMS)
    nonce = nonce_from(auth)
    ok = credentials("206", "secret206", nonce, "MD5")
    assert auth.verify(ok, "REGISTER", NOW, USERS["206"]).status is AuthStatus.OK
    sha = credentials("206", "secret206", nonce, "SHA-256")
    assert auth.verify(sha, "REGISTER", NOW, USERS["206"]).status is AuthStatus.WRONG


def test_username_compared_exactly():
    auth = make_auth()
    user = UserRecord("Alice", password="pw")
    creds = credentials("alice", "pw", nonce_from(auth))
    assert auth.verify(creds, "REGISTER", NOW, user).status is AuthStatus.WRONG
    creds = credentials("Alice", "pw", nonce_from(auth))
    assert auth.verify(creds, "REGISTER", NOW, user).status is AuthStatus.OK


def test_non_ascii_response_is_wrong_not_an_exception():
    auth = make_auth()
    creds = replace_param(credentials(nonce=nonce_from(auth)), "response", "é" * 32)
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.WRONG


def test_non_ascii_username_round_trip():
    auth = make_auth()
    user = UserRecord("jürgen", password="pässword")
    creds = credentials("jürgen", "pässword", nonce_from(auth))
    assert auth.verify(creds, "REGISTER", NOW, user).status is AuthStatus.OK


def test_unencodable_text_is_malformed():
    auth = make_auth()
    creds = replace_param(credentials(nonce=nonce_from(auth)), "uri", "sip:\ud800")
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.MALFORMED


# -- nonces: forged, garbage, stale, rotated ------------------------------------------------

def flip(nonce: str, byte_index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(nonce + "="))
    raw[byte_index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize("byte_index", [0, 7, 8, 15, 16, 31])
def test_tampered_nonce_is_bad(byte_index):
    auth = make_auth()
    nonce = flip(nonce_from(auth), byte_index)
    creds = credentials(nonce=nonce)  # a correct response for the tampered nonce
    outcome = auth.verify(creds, "REGISTER", NOW, USERS["200"])
    assert outcome.status is AuthStatus.BAD_NONCE


@pytest.mark.parametrize("nonce", [
    "", "x", "not base64 at all!", "=" * 43, "A" * 43, "A" * 44, "A" * 42, "é" * 43,
    "dcd98b7102dd2f0e8b11d0f600bfb0c093", " " * 43,
])
def test_garbage_nonce_is_bad(nonce):
    auth = make_auth()
    creds = credentials(nonce=nonce)
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.BAD_NONCE


def test_nonce_in_standard_base64_alphabet_is_bad():
    auth = make_auth()
    nonces = [auth.new_nonce(NOW) for _ in range(200)]
    nonce = next(n for n in nonces if "-" in n or "_" in n)
    standard = nonce.replace("-", "+").replace("_", "/")
    assert auth.verify(credentials(nonce=standard), "REGISTER", NOW, USERS["200"]).status is AuthStatus.BAD_NONCE


def test_non_canonical_spelling_of_a_nonce_is_bad():
    """The last character carries 4 data bits and 2 zero bits: a spelling with
    those bits set decodes to the same bytes but is refused (one nonce, one
    replay key)."""
    auth = make_auth()
    nonce = auth.new_nonce(NOW)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variant = nonce[:-1] + alphabet[alphabet.index(nonce[-1]) + 1]
    assert base64.urlsafe_b64decode(variant + "=") == base64.urlsafe_b64decode(nonce + "=")
    assert auth.verify(credentials(nonce=variant), "REGISTER", NOW, USERS["200"]).status is AuthStatus.BAD_NONCE


def test_nonce_of_another_realm_is_bad():
    other = DigestAuthenticator("other.realm", [KEY], rng=counter_rng())
    auth = make_auth()
    creds = credentials(nonce=nonce_from(other))
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.BAD_NONCE


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_arbitrary_nonce_text_never_raises(nonce):
    auth = DigestAuthenticator(REALM, [KEY], rng=counter_rng())
    outcome = auth.verify(credentials(nonce=nonce), "REGISTER", NOW, USERS["200"])
    assert outcome.status is AuthStatus.BAD_NONCE


@given(st.lists(st.tuples(st.sampled_from(["username", "realm", "nonce", "uri", "response", "algorithm",
                                           "qop", "nc", "cnonce", "opaque", "userhash", "x"]),
                          st.text(max_size=20)), max_size=12),
       st.text(max_size=10))
@settings(max_examples=300)
def test_arbitrary_credentials_never_raise(params, method):
    auth = DigestAuthenticator(REALM, [KEY], algorithms=ALGORITHMS, rng=counter_rng())
    outcome = auth.verify(Credentials("Digest", tuple(params)), method, NOW, USERS["200"])
    assert isinstance(outcome, AuthOutcome)
    assert outcome.status is not AuthStatus.OK


def test_stale_nonce_with_right_response():
    auth = make_auth(nonce_ttl_s=300)
    creds = credentials(nonce=nonce_from(auth, NOW))
    assert auth.verify(creds, "REGISTER", int(NOW) + 300, USERS["200"]).status is AuthStatus.OK
    outcome = auth.verify(creds, "REGISTER", int(NOW) + 301, USERS["200"])
    assert outcome.status is AuthStatus.STALE
    assert outcome.username == "200"
    assert outcome.issued_at == int(NOW)


def test_stale_nonce_with_wrong_response_is_wrong():
    # RFC 7616 3.3: stale=true only for a valid digest.
    auth = make_auth()
    creds = credentials(password="guess", nonce=nonce_from(auth, NOW))
    assert auth.verify(creds, "REGISTER", NOW + 1000, USERS["200"]).status is AuthStatus.WRONG
    unknown = credentials("999", "guess", nonce_from(auth, NOW))
    assert auth.verify(unknown, "REGISTER", NOW + 1000, None).status is AuthStatus.WRONG


def test_nonce_from_the_future():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth, NOW + FUTURE_SKEW_S))
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK
    creds = credentials(nonce=nonce_from(auth, NOW + FUTURE_SKEW_S + 2))
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.STALE


def test_key_rotation():
    old = make_auth(keys=[OLD_KEY])
    creds = credentials(nonce=nonce_from(old))
    rotated = make_auth(keys=[KEY, OLD_KEY])
    assert rotated.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK
    dropped = make_auth(keys=[KEY])
    assert dropped.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.BAD_NONCE
    # New nonces are signed with the first key only.
    fresh = credentials(nonce=nonce_from(rotated))
    assert make_auth(keys=[KEY]).verify(fresh, "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK
    assert make_auth(keys=[OLD_KEY]).verify(fresh, "REGISTER", NOW, USERS["200"]).status is AuthStatus.BAD_NONCE


def test_another_node_with_the_same_key_verifies():
    issuer, verifier = make_auth(), make_auth()
    creds = credentials(nonce=nonce_from(issuer))
    assert verifier.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK


# -- malformed, missing, realm ----------------------------------------------------------------

def test_missing_credentials():
    auth = make_auth()
    assert auth.verify(None, "REGISTER", NOW, None).status is AuthStatus.MISSING
    basic = Credentials("Basic", (("token", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),))
    assert auth.verify(basic, "REGISTER", NOW, None).status is AuthStatus.MISSING


def test_scheme_is_case_insensitive():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth))
    assert auth.verify(Credentials("DIGEST", creds.params), "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK


@pytest.mark.parametrize("name", ["username", "realm", "nonce", "uri", "response"])
def test_missing_field_is_malformed(name):
    auth = make_auth()
    creds = replace_param(credentials(nonce=nonce_from(auth)), name, None)
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.MALFORMED


@pytest.mark.parametrize("name", ["nc", "cnonce"])
def test_qop_without_nc_or_cnonce_is_malformed(name):
    auth = make_auth()
    creds = replace_param(credentials(nonce=nonce_from(auth)), name, None)
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.MALFORMED


@pytest.mark.parametrize("nc,expected", [("00000002", 2), ("0000000A", 10), ("ffffffff", 0xFFFFFFFF)])
def test_nc_parsing(nc, expected):
    auth = make_auth()
    outcome = auth.verify(credentials(nonce=nonce_from(auth), nc=nc), "REGISTER", NOW, USERS["200"])
    assert outcome.status is AuthStatus.OK
    assert outcome.nc == expected


@pytest.mark.parametrize("nc", ["2", "0000002", "000000002", "0x000002", "0000000g", "+0000002", " 0000002",
                                "0000_002", "", "０００００００２"])
def test_bad_nc_is_malformed(nc):
    auth = make_auth()
    outcome = auth.verify(credentials(nonce=nonce_from(auth), nc=nc), "REGISTER", NOW, USERS["200"])
    assert outcome.status is AuthStatus.MALFORMED
    assert "nc" in outcome.reason


@pytest.mark.parametrize("qop", ["auth-int", "auth,auth-int", "bogus"])
def test_qop_other_than_auth_is_unsupported(qop):
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth), qop=qop)
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.UNSUPPORTED


def test_repeated_parameter_is_malformed():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth))
    doubled = Credentials("Digest", creds.params + (("username", "201"),))
    assert auth.verify(doubled, "REGISTER", NOW, USERS["200"]).status is AuthStatus.MALFORMED


def test_userhash_is_unsupported():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth), userhash="true")
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.UNSUPPORTED
    creds = credentials(nonce=nonce_from(auth), userhash="false")
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.OK


def test_realm_mismatch():
    auth = make_auth()
    creds = credentials(nonce=nonce_from(auth), realm="other.realm")
    outcome = auth.verify(creds, "REGISTER", NOW, USERS["200"])
    assert outcome.status is AuthStatus.REALM_MISMATCH
    creds = credentials(nonce=nonce_from(auth), realm=REALM.upper())
    assert auth.verify(creds, "REGISTER", NOW, USERS["200"]).status is AuthStatus.REALM_MISMATCH


# -- replay key, secrets ------------------------------------------------------------------------

def test_replay_key():
    auth = make_auth(nonce_ttl_s=300)
    nonce = nonce_from(auth)
    outcome = auth.verify(credentials(nonce=nonce, nc="00000002"), "REGISTER", NOW, USERS["200"])
    key = replay_key(outcome)
    assert key[:8] == (int(NOW) + 300).to_bytes(8, "big")
    assert key[8:] == nonce.encode()
    later = auth.verify(credentials(nonce=nonce_from(auth, NOW + 1)), "REGISTER", NOW + 1, USERS["200"])
    assert replay_key(later) > key  # ordered by expiry: a range scan purges
    with pytest.raises(ValueError):
        replay_key(AuthOutcome(AuthStatus.MISSING))


def test_secrets_stay_out_of_reprs():
    user = UserRecord("200", password="hunter2", ha1="a" * 32, ha1_sha256="b" * 64, settings={"maxcalls": "2"})
    text = repr(user)
    assert "hunter2" not in text and "a" * 32 not in text and "b" * 64 not in text
    assert "maxcalls" in text
    auth = make_auth()
    outcome = auth.verify(credentials(password="hunter3", nonce=nonce_from(auth)), "REGISTER", NOW,
                          UserRecord("200", password="hunter2"))
    assert "hunter" not in repr(outcome)
    assert "secret" not in repr(auth)


# -- the fast primitives equal the standard ones -------------------------------------------------

@pytest.mark.parametrize("key_length", [1, 16, 32, 63, 64, 65, 200])
def test_hmac_sha256_equals_the_standard_library(key_length):
    from fastreg.auth import _HmacSha256

    key = bytes((7 * i + 3) % 256 for i in range(key_length))
    mac = _HmacSha256(key)
    for msg in (b"", b"x", bytes(range(256)) * 3):
        assert mac.digest(msg) == hmac.digest(key, msg, "sha256")


def test_fast_hashes_equal_hashlib():
    from fastreg.auth import _HASHES

    data = "200:fastreg.local:pässword".encode()
    assert _HASHES["MD5"](data).hexdigest() == hashlib.md5(data).hexdigest()
    assert _HASHES["SHA-256"](data).hexdigest() == hashlib.sha256(data).hexdigest()


def test_random_pool_hands_out_fresh_bytes_and_refills():
    pool = RandomPool(draw=32)
    chunks = [pool(8) for _ in range(20)]  # crosses several refills
    assert all(len(c) == 8 for c in chunks)
    assert len(set(chunks)) == len(chunks)
    assert len(pool(100)) == 100  # a request larger than a draw


def test_random_pool_is_emptied_in_a_forked_child():
    # Workers are forked from the supervisor: bytes drawn before the fork must
    # not be handed out by two processes (equal nonces in two workers).
    pool = RandomPool()
    pool(8)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write_end, pool(8))
        os._exit(0)
    os.close(write_end)
    child_bytes = os.read(read_end, 8)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child_bytes != pool(8)


# -- the compiled twins (fastreg._cauth) agree with the pure methods -----------------------------

from fastreg import auth as auth_mod  # noqa: E402

_cauth = auth_mod._cauth
needs_cauth = pytest.mark.skipif(_cauth is None, reason="pure mode: the compiled twins are not in use")


def _result(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the twins must raise the same
        return ("raises", type(exc))


def _twin_auth(**kwargs):
    kwargs.setdefault("algorithms", ALGORITHMS)
    return make_auth(keys=kwargs.pop("keys", [KEY, OLD_KEY]), **kwargs)


@needs_cauth
def test_compiled_twins_are_installed():
    assert DigestAuthenticator.verify is _cauth.verify
    assert DigestAuthenticator.verify is not auth_mod.pure_verify
    assert auth_mod.AUTH_IMPLEMENTATION == "cython"


@needs_cauth
@pytest.mark.parametrize("key_length", [1, 16, 32, 63, 64, 65, 200])
def test_compiled_mac_keys_equal_the_standard_library(key_length):
    key = bytes((7 * i + 3) % 256 for i in range(key_length))
    keys = _cauth.MacKeys([b"x", key])
    for msg in (b"", b"x", bytes(range(256)) * 3):
        assert keys.digest(1, msg) == hmac.digest(key, msg, "sha256")


@needs_cauth
@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-10, max_value=2.0**65, allow_nan=False) | st.integers(-5, 2**65),
       st.binary(min_size=7, max_size=9))
def test_compiled_new_nonce_agrees(now, random_bytes):
    auth = _twin_auth()
    assert _result(auth.new_nonce, now, random_bytes) == _result(auth_mod.pure_new_nonce, auth, now, random_bytes)


@needs_cauth
def test_compiled_new_nonce_takes_the_rng_and_bytes_likes():
    a, b = _twin_auth(), _twin_auth()
    assert [a.new_nonce(NOW) for _ in range(5)] == [auth_mod.pure_new_nonce(b, NOW) for _ in range(5)]
    for rb in (bytearray(b"ABCDEFGH"), memoryview(b"ABCDEFGH"), "ABCDEFGH", 12345678):
        assert _result(a.new_nonce, NOW, rb) == _result(auth_mod.pure_new_nonce, a, NOW, rb)


_NONCE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=!é\udc80 "


def _mutations(nonce: str):
    return st.one_of(
        st.just(nonce),
        st.builds(lambda i, c: nonce[:i] + c + nonce[i + 1:], st.integers(0, 42), st.sampled_from(_NONCE_CHARS)),
        st.builds(lambda i, c: nonce[:i] + c + nonce[i:], st.integers(0, 43), st.sampled_from(_NONCE_CHARS)),
        st.builds(lambda i: nonce[:i] + nonce[i + 1:], st.integers(0, 42)),
    )


@needs_cauth
@settings(max_examples=500, deadline=None)
@given(st.data())
def test_compiled_nonce_check_agrees(data):
    auth = _twin_auth()
    other = DigestAuthenticator(REALM, [OLD_KEY], rng=counter_rng())
    source = data.draw(st.sampled_from([auth, other, DigestAuthenticator(REALM, [b"z"], rng=counter_rng())]))
    nonce = data.draw(st.one_of(
        st.integers(0, 2**40).flatmap(lambda t: _mutations(source.new_nonce(t))),
        st.text(_NONCE_CHARS, min_size=40, max_size=45),
        st.text(max_size=50),
    ))
    assert auth._nonce_issued_at(nonce) == auth_mod.pure_nonce_issued_at(auth, nonce)


_TEXT = st.sampled_from(["200", "205", "206", "207", "999", "", "Mufasa", "ü", "a\udcff", "\ud800", "a b"])


@st.composite
def _digest_case(draw):
    """Credentials near the valid ones: each parameter usually right, sometimes
    wrong, missing or odd text (so that every AuthStatus comes up)."""

    def pick(usual, *others):
        return usual if not others or draw(st.integers(0, 9)) < 7 else draw(st.sampled_from(others))

    auth = _twin_auth(algorithms=pick(ALGORITHMS, ("MD5",), ("SHA-256",)))
    username = pick("200", "205", "206", "207", "999", "", "ü", "a\udcff", "\ud800")
    password = pick("secret200", "secret205", "", "x\udc80", "\ud800")
    algorithm = draw(st.sampled_from(["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"]))
    qop = pick("auth", None)
    t = pick(NOW, NOW - 400, NOW + 100)
    nonce = pick(auth.new_nonce(t), auth_mod.pure_new_nonce(auth, t), draw(st.text(_NONCE_CHARS, max_size=44)))
    realm = pick(REALM, "other", "fastreg.local\udc80")
    cnonce = pick("0a4f113b", "", "é", "\ud800", None)
    uri = pick(URI, "é", "\ud800")
    method = pick("REGISTER", "", "INVITE")
    nc = pick("00000001", "0000000A", "1", "0000000g")
    try:
        response = compute_response(algorithm, username, realm, password, method, uri, nonce,
                                    nc if qop else None, cnonce, qop)
    except UnicodeEncodeError:
        response = "0" * 32
    response = pick(response, response.upper(), response[:-1], "", "é" * 32, "0" * 64)
    params = [("username", username), ("realm", realm), ("nonce", nonce), ("uri", uri), ("response", response)]
    send_algorithm = pick("as is", "absent", "lower", "bogus")
    if send_algorithm == "as is":
        params.append(("algorithm", algorithm))
    elif send_algorithm == "lower":
        params.append(("algorithm", algorithm.lower()))
    elif send_algorithm == "bogus":
        params.append(("algorithm", "SHA-512"))
    if qop:
        params += [("qop", pick("auth", "AUTH", "auth-int")), ("nc", nc)]
    if cnonce is not None:
        params.append(("cnonce", cnonce))
    params += pick([], [("userhash", "false")], [("userhash", "true")], [("opaque", "x")], [("username", username)])
    if draw(st.booleans()):
        params = draw(st.permutations(params))
    drop = pick(None, "username", "realm", "nonce", "uri", "response", "nc")
    params = [(k, v) for k, v in params if k != drop]
    creds = pick(Credentials(pick("Digest", "digest", "Basic"), tuple(params)), None)
    user = pick(UserRecord(username, password=password), None, *USERS.values(),
                UserRecord(username, ha1=compute_ha1("MD5", "205", REALM, "secret205").upper()),
                UserRecord(username, ha1="ABC", ha1_sha256="\ud800"))
    now = pick(NOW, NOW + 299, NOW + 301, NOW - 10, NOW - 3)
    return auth, creds, method, now, user


@needs_cauth
@settings(max_examples=1500, deadline=None)
@given(_digest_case())
def test_compiled_verify_agrees(case):
    auth, creds, method, now, user = case
    assert _result(auth.verify, creds, method, now, user) == _result(auth_mod.pure_verify, auth, creds, method, now, user)


@needs_cauth
@pytest.mark.parametrize("algorithm,reference", [("MD5", hashlib.md5), ("SHA-256", hashlib.sha256)])
def test_compiled_hashes_equal_hashlib(algorithm, reference):
    # every length around the padding boundaries (55/56, 63/64, 119/120) and some blocks more
    for n in range(0, 300):
        data = bytes((n * 31 + i * 7) % 256 for i in range(n))
        assert _cauth.hexdigest(algorithm, data) == reference(data).hexdigest()


class _Text(str):
    pass


@needs_cauth
@pytest.mark.parametrize("method", ["REGISTER", None, _Text("REGISTER"), 7])
def test_compiled_verify_takes_odd_arguments_as_the_pure_one(method):
    auth = _twin_auth()
    nonce = auth.new_nonce(NOW)
    for n in (nonce, _Text(nonce), _Text(nonce[:-1] + "!")):
        creds = credentials(nonce=n, method=str(method))
        user = USERS["200"]
        assert _result(auth.verify, creds, method, NOW, user) == _result(auth_mod.pure_verify, auth, creds, method,
                                                                         NOW, user)
        assert auth._nonce_issued_at(n) == auth_mod.pure_nonce_issued_at(auth, n)
    assert auth._nonce_issued_at(b"x" * 43) == auth_mod.pure_nonce_issued_at(auth, b"x" * 43)
