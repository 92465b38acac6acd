"""Digest authentication for REGISTER, sans-IO.

RFC 7616 with qop=auth, compatible with RFC 2617 and with RFC 2069 clients
that send no qop; the algorithms of RFC 8760 that SIP devices use: MD5 and
SHA-256, and their -sess variants in responses.

Nothing here reads a clock, a socket or a global: `now` is an argument, and
the only impure call is the random source for new nonces (`rng`, by default
a `RandomPool` over `os.urandom`, injectable for tests and benchmarks).

Nonces carry their own proof, so nothing about a challenge is stored and any
worker or node holding the same key verifies a nonce another one issued::

    nonce = base64url-nopad(issued_at (8 bytes, big-endian integer seconds)
                            || random (8 bytes)
                            || HMAC-SHA256(key, issued_at || random || realm)[:16])

54 characters. `keys[0]` signs new nonces; every key in `keys` verifies, so
a rotated-out key stays in second place for one nonce lifetime.

What verify() answers (`AuthStatus`) and what the caller does with it:

    OK              the request is authenticated as `outcome.username`; check
                    the replay store with `replay_key(outcome)` and `nc`.
    MISSING         no Digest credentials: 401 with `challenge(now)`.
    MALFORMED       a required parameter is missing or bad (`outcome.reason`
                    says which): 400 with the reason.
    UNSUPPORTED     an algorithm, qop or userhash we do not offer: 401 with a
                    fresh challenge, which lists what we do offer.
    REALM_MISMATCH  credentials for another realm: 401 with a fresh challenge.
    BAD_NONCE       the nonce was not issued under any of our keys (forged,
                    garbled, or signed with a key dropped since): 401 with a
                    fresh challenge, stale=false.
    STALE           the nonce is genuine but expired (or issued too far in
                    the future) AND the response is right for it: 401 with
                    `challenge(now, stale=True)`, so the client retries with
                    the same credentials without prompting its user.
                    (RFC 7616 section 3.3: stale=true only for a valid digest;
                    an expired nonce with a wrong response answers WRONG.)
    WRONG           unknown user, or wrong password, or a user without a
                    usable secret: indistinguishable by result and, as far as
                    Python allows, by timing (an unknown user is checked
                    against a dummy secret). 401 or 403, and count it in the
                    throttle. Only WRONG is a guess: the throttle should not
                    count the other statuses.

Decisions:
- An algorithm the authenticator is not configured for (for example SHA-256
  when only MD5 is) is UNSUPPORTED, not WRONG: it says nothing about the
  password and must not feed the failure throttle; the client gets a fresh
  challenge naming the algorithms we offer. A missing `algorithm`
  parameter means MD5 (baresip leaves it out).
- The `uri` parameter is used as sent; it is not compared with the
  Request-URI (SIPp sends uri="sip:REMOTE_IP:REMOTE_PORT"). `opaque` is sent
  but not checked (it carries no state).
- Strings are turned into bytes as UTF-8 with "surrogateescape", so that a
  parser decoding the wire as UTF-8/surrogateescape gets back the exact bytes
  the client hashed. A string that cannot be encoded that way is MALFORMED.
- A user record with a stored HA1 for the algorithm in use is checked with
  it; otherwise with its plain password; a record with neither (for example
  only `ha1` when the client used SHA-256) is WRONG.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import os
import struct
import weakref
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

from fastreg.errors import ConfigError
from fastreg.message import Credentials
from fastreg.users import UserRecord

ALGORITHMS = ("MD5", "SHA-256")

NONCE_RANDOM_BYTES = 8
NONCE_MAC_BYTES = 16
NONCE_RAW_BYTES = 8 + NONCE_RANDOM_BYTES + NONCE_MAC_BYTES  # 32
NONCE_LENGTH = 43  # base64url characters for 32 bytes, no padding
# A nonce stamped this many seconds in our future is treated as expired: it
# comes from a node whose clock is ahead, or from before a clock step back.
FUTURE_SKEW_S = 5

# Hash constructors. For the short inputs of digest authentication CPython's
# built-in implementations are about twice as fast as hashlib's OpenSSL 3
# ones (whose per-object setup dominates: about 0.26 vs 0.5 us for MD5 here).
# They are private modules, so fall back to hashlib when absent; the tests
# check that both give the same digests.
try:
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - CPython built without its own hashes
    _md5 = hashlib.md5
try:
    from _sha2 import sha256 as _sha256  # CPython >= 3.12
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # CPython 3.10, 3.11
    except ImportError:  # pragma: no cover
        _sha256 = hashlib.sha256

_HASHES = {"MD5": _md5, "SHA-256": _sha256}


class _HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, with the inner and outer pad
    states hashed once. Equal to hmac.digest(key, msg, "sha256") (tested) and
    about 3x cheaper here: with OpenSSL 3, hmac.digest() and hmac.new() set up
    a MAC context on every call (2.7 us against 0.8 us)."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = _sha256(key).digest()
        key = key.ljust(64, b"\x00")
        self._inner = _sha256(bytes(b ^ 0x36 for b in key))
        self._outer = _sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_HEX_DIGITS = "0123456789abcdefABCDEF"
# To the standard alphabet for binascii; '+' and '/' in the input are mapped
# to a character a2b_base64 drops, so they shorten the result and fail the
# length test. (bytes.translate: str.translate with a dict costs ~2 us.)
_FROM_URLSAFE = bytes.maketrans(b"-_+/", b"+/!!")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
# The last base64 character of 32 bytes carries 4 bits and 2 zero bits: only
# these characters encode them canonically (one nonce, one spelling).
_CANONICAL_LAST = frozenset("AEIMQUYcgkosw048")
_unpack_issued_at = struct.Struct(">Q").unpack_from  # 3x cheaper than int.from_bytes


class AuthStatus(enum.Enum):
    OK = "ok"
    MISSING = "missing"
    MALFORMED = "malformed"
    UNSUPPORTED = "unsupported"  # an algorithm, qop or userhash we do not offer: challenge again
    REALM_MISMATCH = "realm mismatch"
    BAD_NONCE = "bad nonce"
    STALE = "stale"
    WRONG = "wrong"


class AuthOutcome(NamedTuple):
    """The result of `DigestAuthenticator.verify` (immutable).

    `username`, `nonce`, `nc`, `algorithm` are filled as far as they were read
    (None / 0 otherwise); `issued_at` and `expires_at` (issued_at + nonce
    lifetime, absolute seconds) are set once the nonce verified (OK, STALE,
    WRONG). `nc` is 0 when the client sent no qop. `reason` is a short
    human-readable text for MALFORMED (and a hint for the others): safe to log
    and to put in a reason phrase, it never holds a secret.

    A NamedTuple rather than a frozen dataclass: building a frozen slotted
    dataclass costs about 2 us on CPython 3.11 (one object.__setattr__ per
    field), a fifth of a whole verify(); a NamedTuple about 0.3 us.
    """

    status: AuthStatus
    username: str | None = None
    nonce: str | None = None
    nc: int = 0
    issued_at: int = 0
    expires_at: int = 0
    algorithm: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK


def replay_key(outcome: AuthOutcome) -> bytes:
    """The replay-store key of an OK outcome's nonce: 8-byte big-endian
    expiry time (issued_at + nonce lifetime) followed by the nonce text.

    The store keeps the nc values (or the highest one) used under this key,
    refuses a (nonce, nc) seen before, and purges by a range scan of keys up
    to `int(now).to_bytes(8, "big")`: past its expiry the nonce is STALE, so
    its entry is no longer needed. The nonce text is canonical (verify refuses
    any other spelling of the same bytes), so one nonce has one key.
    """
    if outcome.nonce is None or outcome.expires_at <= 0:
        raise ValueError("replay_key needs an outcome whose nonce verified")
    return outcome.expires_at.to_bytes(8, "big") + outcome.nonce.encode("ascii")


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class RandomPool:
    """os.urandom in 4 KiB draws, handed out a few bytes at a time.

    A challenge needs 8 random bytes; one getrandom(2) call per challenge
    was ~3 % of a worker's time under load. The pool is emptied in a forked
    child (os.register_at_fork), so two workers never hand out the same
    bytes from a pool filled before the fork.
    """

    __slots__ = ("_draw", "_buffer", "_offset", "__weakref__")

    def __init__(self, draw: int = 4096) -> None:
        self._draw = draw
        self._buffer = b""
        self._offset = 0
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (pool := ref()) is not None and pool._empty())

    def _empty(self) -> None:
        self._buffer = b""
        self._offset = 0

    def __call__(self, n: int) -> bytes:
        start = self._offset
        end = start + n
        if end > len(self._buffer):
            self._buffer = os.urandom(max(self._draw, n))
            start, end = 0, n
        self._offset = end
        return self._buffer[start:end]


@dataclass(frozen=True, slots=True)
class _Variant:
    name: str  # canonical spelling, e.g. "SHA-256-sess"
    base: str  # "MD5" | "SHA-256"
    hash: Callable[[bytes], "hashlib._Hash"]
    sess: bool


_MISSING = AuthOutcome(AuthStatus.MISSING, reason="no Digest credentials")


class DigestAuthenticator:
    """Issues challenges and verifies Digest credentials for one realm."""

    __slots__ = (
        "realm", "nonce_ttl_s", "algorithms", "_realm_b", "_rng",
        "_variants", "_default_variant", "_challenge_parts", "_dummy_password", "_macs", "_ckeys",
    )

    def __init__(
        self,
        realm: str,
        keys: Sequence[bytes],
        nonce_ttl_s: int = 300,
        algorithms: Sequence[str] = ("MD5",),
        rng: Callable[[int], bytes] | None = None,
    ) -> None:
        if not realm or any(c in realm for c in '"\\\r\n'):
            raise ConfigError("digest realm: must be a non-empty string without quotes, backslashes or line breaks")
        keys = tuple(keys)
        if not keys or not all(isinstance(k, (bytes, bytearray)) and len(k) > 0 for k in keys):
            raise ConfigError("digest keys: need at least one non-empty bytes key")
        if int(nonce_ttl_s) != nonce_ttl_s or nonce_ttl_s < 1:
            raise ConfigError("digest nonce lifetime: must be a whole number of seconds >= 1")
        algorithms = tuple(algorithms)
        if not algorithms or len(set(algorithms)) != len(algorithms):
            raise ConfigError("digest algorithms: need one or more, each once")
        for name in algorithms:
            if name not in ALGORITHMS:
                raise ConfigError(f"digest algorithms: {name!r} is not one of {', '.join(ALGORITHMS)}")

        self.realm = realm
        self.nonce_ttl_s = int(nonce_ttl_s)
        self.algorithms = algorithms
        self._realm_b = _encode(realm)
        self._macs = tuple(_HmacSha256(bytes(k)) for k in keys)
        # the same keys for the compiled twins (C pad states), None in pure mode
        self._ckeys = None if _cauth is None else _cauth.MacKeys(keys)
        self._rng = rng = rng if rng is not None else RandomPool()

        # Accepted `algorithm` parameter values (lower-cased) -> variant.
        self._variants: dict[str, _Variant] = {}
        for name in algorithms:
            for variant in (_Variant(name, name, _HASHES[name], False),
                            _Variant(name + "-sess", name, _HASHES[name], True)):
                self._variants[variant.name.lower()] = variant
        self._default_variant = self._variants.get("md5")  # no algorithm= means MD5

        # opaque carries no state (it is not checked); derive it from the key
        # so that every node with the same key sends the same value.
        opaque = _b64url(self._macs[0].digest(b"fastreg opaque\x00" + self._realm_b)[:12])
        self._challenge_parts = tuple(
            (f'Digest realm="{realm}", nonce="', f'", opaque="{opaque}", algorithm={name}, qop="auth"')
            for name in algorithms
        )
        # Secret checked for unknown users, so they cost what a known one costs.
        self._dummy_password = rng(16).hex()

    # -- nonces ---------------------------------------------------------------

    def new_nonce(self, now: float, random_bytes: bytes | None = None) -> str:
        """A nonce stamped with int(now), signed with keys[0]."""
        if random_bytes is None:
            random_bytes = self._rng(NONCE_RANDOM_BYTES)
        if len(random_bytes) != NONCE_RANDOM_BYTES:
            raise ValueError(f"random_bytes: need exactly {NONCE_RANDOM_BYTES} bytes")
        head = int(now).to_bytes(8, "big") + random_bytes
        mac = self._macs[0].digest(head + self._realm_b)
        return _b64url(head + mac[:NONCE_MAC_BYTES])

    def _nonce_issued_at(self, nonce: str) -> int | None:
        """issued_at of a nonce signed by one of our keys, else None (never raises)."""
        if len(nonce) != NONCE_LENGTH or nonce[-1] not in _CANONICAL_LAST:
            return None
        try:
            raw = binascii.a2b_base64(nonce.encode("ascii").translate(_FROM_URLSAFE) + b"=")
        except (binascii.Error, UnicodeEncodeError):
            return None
        if len(raw) != NONCE_RAW_BYTES:
            return None
        msg = raw[:16] + self._realm_b
        tag = raw[16:]
        for mac in self._macs:
            if hmac.compare_digest(mac.digest(msg)[:NONCE_MAC_BYTES], tag):
                return _unpack_issued_at(raw)[0]
        return None

    # -- challenge --------------------------------------------------------------

    def challenge(self, now: float, stale: bool = False, random_bytes: bytes | None = None) -> list[tuple[str, str]]:
        """One WWW-Authenticate header per configured algorithm, in configured
        order, all with the same fresh nonce. `random_bytes` (8 bytes) replaces
        the random part of the nonce (tests); by default it comes from `rng`."""
        nonce = self.new_nonce(now, random_bytes)
        tail = ", stale=true" if stale else ""
        return [("WWW-Authenticate", f"{prefix}{nonce}{suffix}{tail}") for prefix, suffix in self._challenge_parts]

    # -- verification -----------------------------------------------------------

    def verify(self, creds: Credentials | None, method: str, now: float, user: UserRecord | None) -> AuthOutcome:
        """Check `creds` (the parsed Authorization header, or None) of a
        request with `method`, for `user` = the directory's record for the
        credentials' username (None if there is no such user). Never raises
        on anything a client can send."""
        if creds is None or creds.scheme.lower() != "digest":
            return _MISSING
        params = creds.params
        p = dict(params)
        get = p.get
        username = get("username")
        if len(p) != len(params):
            return AuthOutcome(AuthStatus.MALFORMED, username, reason="repeated digest parameter")
        realm = get("realm")
        nonce = get("nonce")
        uri = get("uri")
        response = get("response")
        if username is None or realm is None or nonce is None or uri is None or response is None:
            return AuthOutcome(AuthStatus.MALFORMED, username, nonce,
                               reason="digest needs username, realm, nonce, uri and response")

        algorithm = get("algorithm")
        if algorithm is None:
            variant = self._default_variant
        else:
            variant = self._variants.get(algorithm.lower())
        if variant is None:
            return AuthOutcome(AuthStatus.UNSUPPORTED, username, nonce, algorithm=algorithm,
                               reason="unsupported digest algorithm")
        userhash = get("userhash")
        if userhash is not None and userhash.lower() != "false":
            return AuthOutcome(AuthStatus.UNSUPPORTED, username, nonce, algorithm=variant.name,
                               reason="userhash is not supported")

        qop = get("qop")
        cnonce = get("cnonce")
        if qop is not None:
            if qop.lower() != "auth":
                return AuthOutcome(AuthStatus.UNSUPPORTED, username, nonce, algorithm=variant.name,
                                   reason="unsupported qop")
            nc_text = get("nc")
            if nc_text is None or cnonce is None:
                return AuthOutcome(AuthStatus.MALFORMED, username, nonce, algorithm=variant.name,
                                   reason="qop=auth needs nc and cnonce")
            if len(nc_text) != 8 or nc_text.strip(_HEX_DIGITS):
                return AuthOutcome(AuthStatus.MALFORMED, username, nonce, algorithm=variant.name,
                                   reason="nc must be 8 hex digits")
            nc = int(nc_text, 16)
        else:
            nc_text = None
            nc = 0
            if variant.sess and cnonce is None:
                return AuthOutcome(AuthStatus.MALFORMED, username, nonce, algorithm=variant.name,
                                   reason="a -sess algorithm needs cnonce")

        if realm != self.realm:
            return AuthOutcome(AuthStatus.REALM_MISMATCH, username, nonce, nc, algorithm=variant.name,
                               reason="credentials for another realm")

        issued_at = self._nonce_issued_at(nonce)
        if issued_at is None:
            return AuthOutcome(AuthStatus.BAD_NONCE, username, nonce, nc, algorithm=variant.name,
                               reason="nonce not issued here")
        expires_at = issued_at + self.nonce_ttl_s

        # The digest. Every path below computes the same number of hashes for
        # a known and an unknown user (stored-HA1 users save one).
        h = variant.hash
        secret_usable = True
        ha1 = None
        if user is not None and user.username == username:
            ha1 = user.ha1 if variant.base == "MD5" else user.ha1_sha256
            if ha1 is not None:
                ha1 = ha1.lower()
                password = None
            else:
                password = user.password
                if password is None:
                    password, secret_usable = self._dummy_password, False
        else:
            password, secret_usable = self._dummy_password, False
        try:
            if ha1 is None:
                ha1 = h(f"{username}:{realm}:{password}".encode("utf-8", "surrogateescape")).hexdigest()
            if variant.sess:
                ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode("utf-8", "surrogateescape")).hexdigest()
            ha2 = h(f"{method}:{uri}".encode("utf-8", "surrogateescape")).hexdigest()
            if nc_text is not None:
                expected = h(f"{ha1}:{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}".encode("utf-8", "surrogateescape")).hexdigest()
            else:
                expected = h(f"{ha1}:{nonce}:{ha2}".encode("utf-8", "surrogateescape")).hexdigest()
        except UnicodeEncodeError:
            return AuthOutcome(AuthStatus.MALFORMED, username, nonce, nc, algorithm=variant.name,
                               reason="credentials are not valid text")
        given = response.lower()
        if not given.isascii():  # compare_digest refuses non-ASCII str
            given = ""
        if not (hmac.compare_digest(expected, given) and secret_usable):
            return AuthOutcome(AuthStatus.WRONG, username, nonce, nc, issued_at, expires_at, variant.name,
                               reason="wrong credentials")
        if now - issued_at > self.nonce_ttl_s or issued_at - now > FUTURE_SKEW_S:
            return AuthOutcome(AuthStatus.STALE, username, nonce, nc, issued_at, expires_at, variant.name,
                               reason="nonce expired")
        return AuthOutcome(AuthStatus.OK, username, nonce, nc, issued_at, expires_at, variant.name)


# ------------------------------------------------------------- compiled twins
#
# The methods above are the readable reference. With the compiled scanner
# (fastreg.parser's rule: FASTREG_PARSER=pure selects the pure code, never a
# silent fallback) verify, new_nonce and _nonce_issued_at are replaced by
# their twins in fastreg._cauth, which tests/test_auth.py compares with these.

pure_verify = DigestAuthenticator.verify
pure_new_nonce = DigestAuthenticator.new_nonce
pure_nonce_issued_at = DigestAuthenticator._nonce_issued_at


def _select_cauth():
    from fastreg import parser

    _cauth = parser.compiled_twin("_cauth", "digest check")
    if _cauth is None:
        return None
    _cauth.bind(AuthOutcome, AuthStatus, _MISSING, _HEX_DIGITS, FUTURE_SKEW_S, pure_nonce_issued_at)
    return _cauth


_cauth = _select_cauth()
if _cauth is not None:
    DigestAuthenticator.verify = _cauth.verify
    DigestAuthenticator.new_nonce = _cauth.new_nonce
    DigestAuthenticator._nonce_issued_at = _cauth.nonce_issued_at
AUTH_IMPLEMENTATION = "pure" if _cauth is None else "cython"


def _b64url(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


def compute_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None = None,
    cnonce: str | None = None,
    qop: str | None = None,
) -> str:
    """The digest `response` a client computes (RFC 7616 section 3.4.1), for
    tests and for tools that play the client. `algorithm` is one of MD5,
    SHA-256, MD5-sess, SHA-256-sess; without qop the RFC 2069 form is used."""
    base, sess = (algorithm[:-5], True) if algorithm.endswith("-sess") else (algorithm, False)
    h = _HASHES[base]
    ha1 = h(_encode(f"{username}:{realm}:{password}")).hexdigest()
    if sess:
        ha1 = h(_encode(f"{ha1}:{nonce}:{cnonce}")).hexdigest()
    ha2 = h(_encode(f"{method}:{uri}")).hexdigest()
    if qop is None:
        return h(_encode(f"{ha1}:{nonce}:{ha2}")).hexdigest()
    return h(_encode(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")).hexdigest()


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """The HA1 to store in a user record (`ha1` for MD5, `ha1_sha256` for SHA-256)."""
    return _HASHES[algorithm](_encode(f"{username}:{realm}:{password}")).hexdigest()


__all__ = [
    "ALGORITHMS", "AuthStatus", "AuthOutcome", "DigestAuthenticator", "replay_key",
    "compute_response", "compute_ha1", "FUTURE_SKEW_S",
]
