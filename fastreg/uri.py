"""SIP URIs: parsing, RFC 3261 19.1.4 comparison, and the address-of-record.

Wire layer, pure: strings in, values out, nothing global but one small
`functools.lru_cache` on `canonical_aor` (the To URI of a device repeats on
every refresh; a hit costs about a tenth of a parse).

Accepted schemes:

* ``sip`` and ``sips``: the full RFC 3261 19.1.1 shape
  ``scheme:user:password@host:port;params?headers``.  The user part may hold
  ``;`` and ``?`` (user-unreserved), so the userinfo is split off at the ``@``
  first; the grammar allows exactly one unescaped ``@``.
* ``tel`` (RFC 3966), parsed minimally: ``user`` is the number as written,
  ``host`` is ``""``, ``port`` None, ``params`` the ``;`` parameters.  Two tel
  URIs are equal when their numbers are equal without visual separators
  (``-`` ``.`` ``(`` ``)``, hex digits case-insensitive) and they carry the
  same parameters in any order.  `canonical_aor` refuses tel URIs (416).
* Any other syntactically valid scheme raises ``ParseError("Unsupported URI
  Scheme", status=416)`` (a `ParseError`, so callers catching ParseError
  still catch it); anything malformed raises ``ParseError("Malformed URI")``
  (400).

What is malformed: no scheme, whitespace or control characters anywhere, a
second ``@``, an empty user or host, a host that is not a hostname / IPv4 /
bracketed IPv6 reference, an empty or non-numeric port or one above 65535, a
``%`` not followed by two hex digits in the userinfo, an empty parameter or
header name.  Parameter values are not checked beyond that (devices put odd
things there, and a Contact must not be refused for them).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from fastreg.errors import ParseError

__all__ = [
    "SipUri",
    "parse_uri",
    "uris_equal",
    "contacts_equal",
    "canonical_aor",
    "check_uri",
    "aor_domain",
    "aor_user",
    "fast_frozen_init",
]

Params = tuple[tuple[str, "str | None"], ...]


def fast_frozen_init(cls: type) -> type:
    """Give a frozen, slotted dataclass a faster ``__init__`` with the same signature.

    The generated ``__init__`` of a frozen dataclass assigns every field with
    ``object.__setattr__(self, "name", value)``; this one calls each slot's
    descriptor directly, which halves the cost of building a record (these
    classes are built several times per REGISTER).  Equality, hashing,
    repr, `dataclasses.replace`, pickling and immutability are unchanged.
    Only plain defaults are supported (no default_factory, no __post_init__).

    With the compiled scanner (fastreg.parser's rule) the generated
    ``__init__`` hands its bound arguments to one call of fastreg._cslots,
    which stores them into the slots without a descriptor call per field;
    the all-Python one stays its reference (in `pure_inits`).
    """
    from dataclasses import MISSING, fields

    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__")
    flds = [f for f in fields(cls) if f.init]
    ns: dict[str, object] = {"MISSING": MISSING}
    params = []
    body = []
    for i, f in enumerate(flds):
        if f.default_factory is not MISSING:  # type: ignore[misc]
            raise TypeError(f"{cls.__name__}.{f.name} has a default_factory")
        if f.default is not MISSING:
            ns[f"_d{i}"] = f.default
            params.append(f"{f.name}=_d{i}")
        else:
            params.append(f.name)
        ns[f"_s{i}"] = cls.__dict__[f.name].__set__
        body.append(f"    _s{i}(self, {f.name})")
    head = f"def __init__(self, {', '.join(params)}):\n"
    inits = {}
    cslots = _compiled_slots()
    variants = [("pure", "\n".join(body or ["    pass"]))]
    if cslots is not None and flds:
        # the same signature (so the same argument errors), one C call for the stores
        ns["_set_slots"] = cslots.slot_setter(cls, [f.name for f in flds])
        variants.append(("compiled", f"    _set_slots(self, {', '.join(f.name for f in flds)})"))
    for kind, text in variants:
        exec(head + text + "\n", ns)  # noqa: S102 - generated from the dataclass's own field names
        init = ns.pop("__init__")
        init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
        init.__doc__ = cls.__init__.__doc__  # type: ignore[misc]
        inits[kind] = init
    pure_inits[cls] = inits["pure"]
    cls.__init__ = inits.get("compiled", inits["pure"])  # type: ignore[misc]
    return cls


# class -> the generated Python __init__ (the compiled one's reference)
pure_inits: dict[type, object] = {}


def _compiled_slots():
    from fastreg import parser

    return parser.compiled_twin("_cslots", "record initialiser")


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str  # "sip", "sips" or "tel", lower-cased
    user: str | None  # as written, %-escapes kept; the number for tel
    password: str | None
    host: str  # as written (case kept); IPv6 references keep their brackets; "" for tel
    port: int | None
    params: Params  # uri-parameters in order, names and values as written
    headers: tuple[tuple[str, str], ...]  # ?name=value&... in order, as written


_MALFORMED = "Malformed URI"

# hostname / IPv4address (RFC 3261 25.1, a little lenient: '_' is accepted, as
# seen in the wild) and a bracketed IPv6 reference (with an optional %zone).
_HOST_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*)|\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.\-]+)?\]")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TEL_RE = re.compile(r"[0-9A-Fa-f*#+\-.()]+")
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})")

# Characters an AOR user part may hold unescaped: unreserved (alphanum and
# mark) plus user-unreserved.  Their escapes are decoded by canonical_aor.
_USER_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "-_.!~*'()"  # mark
    "&=+$,;?/"  # user-unreserved
)
_VISUAL_SEPARATORS = str.maketrans("", "", "-.()")


def _malformed() -> ParseError:
    return ParseError(_MALFORMED)


def parse_uri(text: str) -> SipUri:
    """Parse a SIP/SIPS (or tel) URI; raise ParseError on anything malformed."""
    scheme, sep, rest = text.partition(":")
    if not sep or not rest:
        raise _malformed()
    if not text.isprintable() or " " in text:
        raise _malformed()
    scheme_l = scheme.lower()
    if scheme_l == "sip" or scheme_l == "sips":
        return _parse_sip(scheme_l, rest)
    if scheme_l == "tel":
        return _parse_tel(rest)
    if _SCHEME_RE.fullmatch(scheme):
        raise ParseError("Unsupported URI Scheme", status=416)
    raise _malformed()


def _parse_sip(scheme: str, rest: str) -> SipUri:
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        if "@" in rest:
            raise _malformed()
        user, sep, password = userinfo.partition(":")
        if not user or (sep and ":" in password):
            raise _malformed()
        if "%" in userinfo and _BAD_ESCAPE_RE.search(userinfo):
            raise _malformed()
        pw: str | None = password if sep else None
    else:
        user = None
        pw = None
    headers: tuple[tuple[str, str], ...] = ()
    q = rest.find("?")
    if q >= 0:
        headers = _parse_headers(rest[q + 1 :])
        rest = rest[:q]
    params: Params = ()
    semi = rest.find(";")
    if semi >= 0:
        params = _parse_params(rest[semi + 1 :])
        rest = rest[:semi]
    # rest is now hostport
    port: int | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise _malformed()
        host = rest[: end + 1]
        tail = rest[end + 1 :]
        if tail:
            if tail[0] != ":":
                raise _malformed()
            port = _parse_port(tail[1:])
    else:
        host, sep, port_text = rest.partition(":")
        if sep:
            port = _parse_port(port_text)
    if not host or _HOST_RE.fullmatch(host) is None:
        raise _malformed()
    return SipUri(scheme, user, pw, host, port, params, headers)


def _parse_port(text: str) -> int:
    if not text or len(text) > 5 or not text.isdigit() or not text.isascii():
        raise _malformed()
    port = int(text)
    if port > 65535:
        raise _malformed()
    return port


def _parse_params(text: str) -> Params:
    out = []
    for item in text.split(";"):
        name, sep, value = item.partition("=")
        if not name:
            raise _malformed()
        out.append((name, value if sep else None))
    return tuple(out)


def _parse_headers(text: str) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    out = []
    for item in text.split("&"):
        name, _sep, value = item.partition("=")
        if not name:
            raise _malformed()
        out.append((name, value))
    return tuple(out)


def _parse_tel(rest: str) -> SipUri:
    number, sep, ptext = rest.partition(";")
    if not number or _TEL_RE.fullmatch(number) is None:
        raise _malformed()
    params = _parse_params(ptext) if sep else ()
    return SipUri("tel", number, None, "", None, params, ())


# ---------------------------------------------------------------- comparison


def _unescape(text: str) -> str:
    if "%" not in text:
        return text
    # surrogateescape keeps escapes of invalid UTF-8 distinct from each other
    return unquote(text, errors="surrogateescape")


def _host_key(host: str) -> str:
    if host.startswith("["):
        try:
            return "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
        except ValueError:
            return host.lower()
    return host.lower()


# A port, transport, ttl, user, method or maddr present in one URI must be
# present in the other (RFC 3261 19.1.4).
_MUST_BOTH = ("transport", "ttl", "user", "method", "maddr")


def _param_map(params: Params) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name, value in params:
        key = name.lower()
        if key not in out:  # the first occurrence counts, as message.param_value
            out[key] = None if value is None else _unescape(value).lower()
    return out


def _header_key(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return sorted((_unescape(n).lower(), _unescape(v)) for n, v in headers)


def uris_equal(a: SipUri, b: SipUri) -> bool:
    """RFC 3261 19.1.4 equality (RFC 3966 section 4 for tel URIs).

    Userinfo is compared case-sensitively after %HH unescaping; the host
    case-insensitively (IPv6 references as addresses); port and the transport,
    ttl, user, method and maddr parameters must be absent from both or equal;
    other parameters count only when present in both (names and values
    case-insensitive); header components must all match (names
    case-insensitive, values case-sensitive, order ignored).  Not transitive,
    as the RFC says.
    """
    if a.scheme != b.scheme:
        return False
    if a.scheme == "tel":
        return _tel_equal(a, b)
    if a.user != b.user:
        if a.user is None or b.user is None or _unescape(a.user) != _unescape(b.user):
            return False
    if a.password != b.password:
        if a.password is None or b.password is None or _unescape(a.password) != _unescape(b.password):
            return False
    if a.port != b.port:
        return False
    if a.host != b.host and _host_key(a.host) != _host_key(b.host):
        return False
    if a.params or b.params:
        pa = _param_map(a.params)
        pb = _param_map(b.params)
        for name in _MUST_BOTH:
            if (name in pa) != (name in pb):
                return False
        for name, value in pa.items():
            if name in pb and pb[name] != value:
                return False
    if a.headers or b.headers:
        if _header_key(a.headers) != _header_key(b.headers):
            return False
    return True


def _tel_equal(a: SipUri, b: SipUri) -> bool:
    na = (a.user or "").translate(_VISUAL_SEPARATORS).lower()
    nb = (b.user or "").translate(_VISUAL_SEPARATORS).lower()
    if na != nb:
        return False
    pa = _param_map(a.params)
    pb = _param_map(b.params)
    return pa == pb


def contacts_equal(a: str, b: str) -> bool:
    """uris_equal on two URI texts; an exact string compare when either does not parse."""
    if a == b:
        return True
    try:
        ua = parse_uri(a)
        ub = parse_uri(b)
    except ParseError:
        return False
    return uris_equal(ua, ub)


# ------------------------------------------------------------------------ AOR


def _normalize_user(user: str) -> str:
    if "%" not in user:
        return user

    def repl(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _USER_SAFE else "%" + m.group(1).upper()

    return _ESCAPE_RE.sub(repl, user)


@lru_cache(maxsize=4096)
def canonical_aor(text: str) -> str:
    """The address-of-record of a To URI (RFC 3261 10.3 step 5).

    ``sip:user@host`` (``sip:host`` without a user part): ``sips`` becomes
    ``sip`` (one AOR for both), the password, port, parameters and headers are
    dropped, the host is lower-cased (IPv6 in compressed form, in brackets),
    the user keeps its case and has the escapes of every character that the
    user part may carry unescaped (unreserved and user-unreserved: ``%61`` →
    ``a``, ``%2B`` → ``+``) decoded; the escapes that must stay (``%40``,
    ``%3A``, ``%20``, ``%25``, non-ASCII, …) are kept with upper-case hex.
    Raises ParseError on a malformed URI, and 416 for tel and other schemes.
    """
    uri = parse_uri(text)
    if uri.scheme == "tel":
        raise ParseError("Unsupported URI Scheme", status=416)
    host = _host_key(uri.host)
    if uri.user is None:
        return "sip:" + host
    return "sip:" + _normalize_user(uri.user) + "@" + host


def aor_domain(aor: str) -> str:
    """The host of a canonical AOR (``sip:alice@example.com`` → ``example.com``)."""
    return aor[aor.index(":") + 1 :].rpartition("@")[2]


def aor_user(aor: str) -> str | None:
    """The user of a canonical AOR (escapes kept), or None for ``sip:host``."""
    user, sep, _host = aor[aor.index(":") + 1 :].rpartition("@")
    return user if sep else None


# ------------------------------------------------------------- compiled twin

pure_parse_uri = parse_uri
pure_canonical_aor = canonical_aor.__wrapped__


def pure_check_uri(text: str) -> None:
    """Raise the ParseError parse_uri raises for `text`, else None (a Contact
    URI is only checked: nothing of it is kept)."""
    pure_parse_uri(text)


def _select_parse_uri():
    """The compiled parse_uri, check_uri and canonical_aor (fastreg._curi)
    with the compiled scanner; the pure ones above with FASTREG_PARSER=pure
    (the same rule as fastreg.parser)."""
    from fastreg import parser

    _curi = parser.compiled_twin("_curi", "URI parser")
    if _curi is None:
        return pure_parse_uri, pure_check_uri, canonical_aor
    _curi.bind(SipUri, pure_parse_uri, _parse_headers, pure_canonical_aor, _host_key, _normalize_user)
    # the same cache in front as the pure one's (a few thousand devices: hits)
    return _curi.parse_uri, _curi.check_uri, lru_cache(maxsize=4096)(_curi.canonical_aor)


# canonical_aor and contacts_equal look parse_uri up here at call time.
parse_uri, check_uri, canonical_aor = _select_parse_uri()
