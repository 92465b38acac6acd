# cython: language_level=3
"""Compiled `parse_uri` for sip/sips URIs in ASCII: the twin of uri.parse_uri.

A REGISTER needs its To URI (the AOR) and every Contact URI parsed, and so
does every refresh. The caches in front of them (uri.canonical_aor,
registrar.check_contact_uri) hit for a few thousand devices, but a
registrar with tens of thousands of devices refreshing in turn misses them
all, and the pure parser costs a few microseconds per URI. This one walks
the characters in C.

Same results and the same errors as `uri.parse_uri` (the tests compare the
two on generated and mutated input). What it does not do itself it hands to
the pure one, which then decides: text with non-ASCII characters (Python's
Unicode notion of printable applies), and schemes other than sip/sips (tel,
416 for the others).
"""

from fastreg.errors import ParseError

cdef object _SipUri = None
cdef object _pure_parse_uri = None
cdef object _pure_parse_headers = None

_MALFORMED = "Malformed URI"


cdef object _pure_canonical_aor = None
cdef object _pure_host_key = None
cdef object _pure_normalize_user = None


def bind(sip_uri_class, pure_parse_uri, pure_parse_headers, pure_canonical_aor=None, host_key=None,
         normalize_user=None):
    """uri.py hands over its value class and pure functions (it imports this module)."""
    global _SipUri, _pure_parse_uri, _pure_parse_headers, _pure_canonical_aor, _pure_host_key
    global _pure_normalize_user
    _SipUri = sip_uri_class
    _pure_parse_uri = pure_parse_uri
    _pure_parse_headers = pure_parse_headers
    _pure_canonical_aor = pure_canonical_aor
    _pure_host_key = host_key
    _pure_normalize_user = normalize_user


cdef inline bint _alnum(Py_UCS4 c):
    return (c >= u'a' and c <= u'z') or (c >= u'A' and c <= u'Z') or (c >= u'0' and c <= u'9')


cdef inline bint _hex(Py_UCS4 c):
    return (c >= u'0' and c <= u'9') or (c >= u'a' and c <= u'f') or (c >= u'A' and c <= u'F')


cdef inline bint _name_char(Py_UCS4 c):
    # [A-Za-z0-9_.-]
    return _alnum(c) or c == u'_' or c == u'.' or c == u'-'


cdef bint _valid_host(str host):
    """_HOST_RE of uri.py: a hostname/IPv4 ([A-Za-z0-9_][A-Za-z0-9_.-]*) or
    a bracketed IPv6 reference ([0-9A-Fa-f:.]+ with an optional %zone)."""
    cdef Py_ssize_t n = len(host), i
    cdef Py_UCS4 c
    if n == 0:
        return False
    c = host[0]
    if c == u'[':
        if n < 3 or host[n - 1] != u']':
            return False
        i = 1
        while i < n - 1:
            c = host[i]
            if not (_hex(c) or c == u':' or c == u'.'):
                break
            i += 1
        if i == 1:
            return False
        if i == n - 1:
            return True
        if host[i] != u'%' or i + 1 >= n - 1:
            return False
        i += 1
        while i < n - 1:
            if not _name_char(host[i]):
                return False
            i += 1
        return True
    if not (_alnum(c) or c == u'_'):
        return False
    for i in range(1, n):
        if not _name_char(host[i]):
            return False
    return True


cdef object _parse_port(str text):
    cdef Py_ssize_t n = len(text), i
    cdef long port = 0
    cdef Py_UCS4 c
    if n == 0 or n > 5:
        raise ParseError(_MALFORMED)
    for i in range(n):
        c = text[i]
        if c < u'0' or c > u'9':
            raise ParseError(_MALFORMED)
        port = port * 10 + (<long> c - 48)
    if port > 65535:
        raise ParseError(_MALFORMED)
    return port


cdef tuple _parse_params(str text):
    cdef list out = []
    cdef str item, name
    cdef Py_ssize_t eq
    for item in text.split(u";"):
        eq = item.find(u"=")
        if eq < 0:
            if not item:
                raise ParseError(_MALFORMED)
            out.append((item, None))
        else:
            if eq == 0:
                raise ParseError(_MALFORMED)
            out.append((item[:eq], item[eq + 1:]))
    return tuple(out)


cdef bint _bad_escape(str userinfo):
    """A '%' not followed by two hex digits."""
    cdef Py_ssize_t n = len(userinfo), i
    for i in range(n):
        if userinfo[i] == u'%':
            if i + 2 >= n or not _hex(userinfo[i + 1]) or not _hex(userinfo[i + 2]):
                return True
    return False


def parse_uri(str text):
    """uri.parse_uri: a SipUri, or ParseError (416 for other schemes)."""
    cdef tuple fields = _scan(text)
    if fields is None:
        return _pure_parse_uri(text)
    return _SipUri(*fields)


def check_uri(str text):
    """uri.check_uri: parse_uri without building the SipUri (None, or the same ParseError)."""
    if _scan(text) is None:
        _pure_parse_uri(text)


def canonical_aor(str text):
    """uri.canonical_aor (without its cache): the AOR of a To URI, or ParseError
    (416 for tel and other schemes). sip/sips in ASCII here; the rest, IPv6
    hosts and %-escapes in the user, as the pure functions do them."""
    cdef tuple fields = _scan(text)
    cdef str user, host, key
    if fields is None:
        return _pure_canonical_aor(text)
    user = fields[1]
    host = fields[3]
    if host.startswith(u"["):
        key = _pure_host_key(host)
    else:
        key = host.lower()
    if user is None:
        return u"sip:" + key
    if user.find(u"%") >= 0:
        user = _pure_normalize_user(user)
    return u"sip:" + user + u"@" + key


cdef tuple _scan(str text):
    """The fields of a SipUri for a sip/sips URI in ASCII, ParseError if it is
    malformed, None for what the pure parser decides (non-ASCII, other schemes)."""
    cdef Py_ssize_t n = len(text), colon, i, at, q, semi, end
    cdef Py_UCS4 c
    cdef str scheme, rest, userinfo, user, host, tail
    cdef object pw, port
    if not text.isascii():
        return None
    colon = text.find(u":")
    if colon < 0 or colon == n - 1:
        raise ParseError(_MALFORMED)
    for i in range(n):
        c = text[i]
        if c <= u' ' or c >= u'\x7f':  # whitespace, control characters, DEL
            raise ParseError(_MALFORMED)
    scheme = text[:colon].lower()
    if scheme != u"sip" and scheme != u"sips":
        return None
    rest = text[colon + 1:]
    at = rest.find(u"@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1:]
        if rest.find(u"@") >= 0:
            raise ParseError(_MALFORMED)
        i = userinfo.find(u":")
        if i >= 0:
            user = userinfo[:i]
            pw = userinfo[i + 1:]
            if (<str> pw).find(u":") >= 0:
                raise ParseError(_MALFORMED)
        else:
            user = userinfo
            pw = None
        if not user:
            raise ParseError(_MALFORMED)
        if userinfo.find(u"%") >= 0 and _bad_escape(userinfo):
            raise ParseError(_MALFORMED)
    else:
        user = None
        pw = None
    headers = ()
    q = rest.find(u"?")
    if q >= 0:
        headers = _pure_parse_headers(rest[q + 1:])
        rest = rest[:q]
    params = ()
    semi = rest.find(u";")
    if semi >= 0:
        params = _parse_params(rest[semi + 1:])
        rest = rest[:semi]
    port = None
    if rest.startswith(u"["):
        end = rest.find(u"]")
        if end < 0:
            raise ParseError(_MALFORMED)
        host = rest[:end + 1]
        tail = rest[end + 1:]
        if tail:
            if tail[0] != u":":
                raise ParseError(_MALFORMED)
            port = _parse_port(tail[1:])
    else:
        i = rest.find(u":")
        if i >= 0:
            host = rest[:i]
            port = _parse_port(rest[i + 1:])
        else:
            host = rest
    if not _valid_host(host):
        raise ParseError(_MALFORMED)
    return (scheme, user, pw, host, port, params, headers)
