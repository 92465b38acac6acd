# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled SIP scanner: the hot path of fastreg.

Same functions, results, error classes and reasons as the pure twin
`fastreg._pyparse`, whose docstring lists the rules beyond RFC 3261 that both
follow. The differential tests hold them together, so a change of behaviour
goes into both files.

The message is read through the buffer protocol (bytes, bytearray,
memoryview: no copy) and scanned once with C pointers: memchr finds each line
end, header names are lower-cased into a stack buffer and matched against a
table of known names, so that the common headers reuse one interned str and
only values become new Python objects. The header-value grammars (Via,
name-addr, Authorization) scan the decoded str with PyUnicode_READ, so no
code point is boxed into a Python object.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyObject, PyObject_GenericSetAttr, PyTypeObject
from cpython.unicode cimport (
    PyUnicode_DATA,
    PyUnicode_DecodeLatin1,
    PyUnicode_DecodeUTF8,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_READ,
    PyUnicode_Substring,
)
from libc.string cimport memchr, memcmp

import dataclasses

from fastreg.errors import HeaderTooLong, MessageTooLarge, ParseError
from fastreg.message import COMPACT_FORMS, DISPLAY_NAMES, Credentials, NameAddr, SipMessage, Via

# The reasons are part of the contract: _pyparse uses the same strings.
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

cdef enum:
    CR = 13
    LF = 10
    SP = 32
    HT = 9
    CH_QUOTE = 34
    CH_COMMA = 44
    CH_DOT = 46
    CH_SLASH = 47
    CH_ZERO = 48
    CH_COLON = 58
    CH_SEMI = 59
    CH_LT = 60
    CH_EQ = 61
    CH_GT = 62
    CH_LBRACKET = 91
    CH_BACKSLASH = 92
    CH_RBRACKET = 93

# Character classes, one bit each (see the predicates in _pyparse).
cdef enum:
    C_TOKEN = 1
    C_WS = 2
    C_DIGIT = 4
    C_HOST = 8
    C_IPV6 = 16
    C_SCHEME = 32
    C_PVALUE = 64     # unquoted param value
    C_AVALUE = 128    # unquoted auth-param value
    C_DISPLAY = 256   # unquoted display name
    C_VISIBLE = 512   # no control, no blank
    C_ALPHA = 1024
    C_UPPER = 2048    # A-Z: what lower()/upper() would change

# Every character above 0x7F is visible, allowed in values and display names, nothing else.
cdef unsigned short NONASCII = C_PVALUE | C_AVALUE | C_DISPLAY | C_VISIBLE
cdef unsigned short CLS[256]
cdef unsigned char LOWER[256]

# Above any 18-digit number, below 2**63: what an oversized Content-Length counts as.
cdef long long HUGE = 1000000000000000000LL

cdef enum:
    H_OTHER = 0
    H_VIA = 1
    H_CONTENT_LENGTH = 2

cdef enum:
    MAX_KNOWN = 64  # entries of the known-name table
    NAME_BUF = 64   # longer names are not in the table: lower-cased by Python

cdef int n_known = 0
cdef const char* KNOWN_PTR[MAX_KNOWN]
cdef Py_ssize_t KNOWN_LEN[MAX_KNOWN]
cdef PyObject* KNOWN_OBJ[MAX_KNOWN]
cdef int KNOWN_KIND[MAX_KNOWN]
# hash chains over the table: a name is compared with one or two entries
cdef int KNOWN_HEAD[128]
cdef int KNOWN_NEXT[MAX_KNOWN]
cdef PyObject* COMPACT_OBJ[128]
cdef int COMPACT_KIND[128]


cdef int _init_classes() except -1:
    cdef int c
    cdef unsigned short k
    for c in range(256):
        k = 0
        LOWER[c] = c
        if c >= 128:
            k = NONASCII
        else:
            if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in b"-.!%*_+`'~":
                k |= C_TOKEN | C_DISPLAY
            if c == SP or c == HT:
                k |= C_WS | C_DISPLAY
            if 48 <= c <= 57:
                k |= C_DIGIT
            if (65 <= c <= 90) or (97 <= c <= 122):
                k |= C_ALPHA
            if 65 <= c <= 90:
                k |= C_UPPER
                LOWER[c] = c + 32
            if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in b"-._":
                k |= C_HOST
            if (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102) or c == CH_COLON or c == CH_DOT:
                k |= C_IPV6
            if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c in b"+-.":
                k |= C_SCHEME
            if c > SP and c != 127:
                k |= C_VISIBLE
                if c not in b';,"<>':
                    k |= C_PVALUE
                if c not in b',"':
                    k |= C_AVALUE
        CLS[c] = k
    return 0


_init_classes()

# Header names the scanner returns as shared str objects (no allocation per
# header); the others are built per message.
_known_names = tuple(dict.fromkeys(
    ("via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "expires",
     "authorization", "content-length", "user-agent", "allow", "supported", "require",
     "route", "record-route", "path", "content-type", "proxy-require", "accept",
     "allow-events", "event", "date", "server", "subject", "content-encoding",
     "min-expires", "www-authenticate", "proxy-authorization", "unsupported",
     "p-asserted-identity", "session-expires", "refer-to", "organization", "timestamp")
    + tuple(COMPACT_FORMS.values()) + tuple(DISPLAY_NAMES)))
_known_bytes = tuple(name.encode("ascii") for name in _known_names)  # KNOWN_PTR points into these


cdef int _kind_of(str name):
    if name == "via":
        return H_VIA
    if name == "content-length":
        return H_CONTENT_LENGTH
    return H_OTHER


cdef inline int name_hash(const unsigned char* lower, Py_ssize_t length) noexcept:
    return (length + lower[0] * 3 + lower[length - 1] * 7) & 127


cdef int _init_names() except -1:
    global n_known
    cdef int i, h
    cdef bytes b
    cdef str name
    for i in range(128):
        COMPACT_OBJ[i] = NULL
        COMPACT_KIND[i] = H_OTHER
        KNOWN_HEAD[i] = -1
    for i in range(min(len(_known_names), MAX_KNOWN)):
        name = _known_names[i]
        b = _known_bytes[i]
        KNOWN_PTR[i] = <const char*>b
        KNOWN_LEN[i] = len(b)
        KNOWN_OBJ[i] = <PyObject*>name
        KNOWN_KIND[i] = _kind_of(name)
        h = name_hash(<const unsigned char*>KNOWN_PTR[i], KNOWN_LEN[i])
        KNOWN_NEXT[i] = KNOWN_HEAD[h]
        KNOWN_HEAD[h] = i
        n_known = i + 1
    for key, value in COMPACT_FORMS.items():
        if len(key) == 1 and ord(key) < 128:
            # the expanded name is in _known_names, which keeps it alive
            name = _known_names[_known_names.index(value)]
            COMPACT_OBJ[ord(key.lower())] = <PyObject*>name
            COMPACT_KIND[ord(key.lower())] = _kind_of(name)
    return 0


_init_names()


# ------------------------------------------------------------------ result objects

# The value objects are built without their dataclass __init__: a frozen one
# costs a Python frame and an object.__setattr__ call per field, more than
# the scanning itself. Allocating the instance and setting each slot with
# PyObject_GenericSetAttr is what that __init__ does, minus the interpreter.
# Only while the classes are what this was written for (these fields in this
# order, slots, no __post_init__); otherwise their constructors are called.

cdef tuple EMPTY_TUPLE = ()


cdef bint _plain(cls, tuple names):
    return (tuple(f.name for f in dataclasses.fields(cls)) == names
            and "__slots__" in cls.__dict__ and not hasattr(cls, "__post_init__"))


cdef bint FAST_VIA = _plain(Via, ("transport", "host", "port", "params", "raw"))
cdef bint FAST_NAME_ADDR = _plain(NameAddr, ("display", "uri", "params", "raw"))
cdef bint FAST_CREDENTIALS = _plain(Credentials, ("scheme", "params"))
cdef bint FAST_MESSAGE = _plain(SipMessage, ("method", "request_uri", "status_code", "reason",
                                             "version", "headers", "vias", "body"))


cdef inline object _alloc(type cls):
    return (<PyTypeObject*>cls).tp_new(cls, <PyObject*>EMPTY_TUPLE, NULL)


cdef object new_via(object transport, object host, object port, object params, object raw):
    if not FAST_VIA:
        return Via(transport, host, port, params, raw)
    cdef object obj = _alloc(Via)
    PyObject_GenericSetAttr(obj, "transport", transport)
    PyObject_GenericSetAttr(obj, "host", host)
    PyObject_GenericSetAttr(obj, "port", port)
    PyObject_GenericSetAttr(obj, "params", params)
    PyObject_GenericSetAttr(obj, "raw", raw)
    return obj


cdef object new_name_addr(object display, object uri, object params, object raw):
    if not FAST_NAME_ADDR:
        return NameAddr(display, uri, params, raw)
    cdef object obj = _alloc(NameAddr)
    PyObject_GenericSetAttr(obj, "display", display)
    PyObject_GenericSetAttr(obj, "uri", uri)
    PyObject_GenericSetAttr(obj, "params", params)
    PyObject_GenericSetAttr(obj, "raw", raw)
    return obj


cdef object new_credentials(object scheme, object params):
    if not FAST_CREDENTIALS:
        return Credentials(scheme, params)
    cdef object obj = _alloc(Credentials)
    PyObject_GenericSetAttr(obj, "scheme", scheme)
    PyObject_GenericSetAttr(obj, "params", params)
    return obj


cdef object new_message(object method, object request_uri, object status_code, object reason,
                        object version, list headers, list vias, object body):
    if not FAST_MESSAGE:
        return SipMessage(method=method, request_uri=request_uri, status_code=status_code,
                          reason=reason, version=version, headers=headers, vias=vias, body=body)
    cdef object obj = _alloc(SipMessage)
    PyObject_GenericSetAttr(obj, "method", method)
    PyObject_GenericSetAttr(obj, "request_uri", request_uri)
    PyObject_GenericSetAttr(obj, "status_code", status_code)
    PyObject_GenericSetAttr(obj, "reason", reason)
    PyObject_GenericSetAttr(obj, "version", version)
    PyObject_GenericSetAttr(obj, "headers", headers)
    PyObject_GenericSetAttr(obj, "vias", vias)
    PyObject_GenericSetAttr(obj, "body", body)
    return obj


# ------------------------------------------------------------------ str cursor

cdef struct UStr:
    int kind
    void* data
    Py_ssize_t n


cdef inline void u_init(UStr* u, str s) noexcept:
    u.kind = PyUnicode_KIND(s)
    u.data = PyUnicode_DATA(s)
    u.n = PyUnicode_GET_LENGTH(s)


cdef inline unsigned int u_at(const UStr* u, Py_ssize_t i) noexcept:
    return PyUnicode_READ(u.kind, u.data, i)


cdef inline unsigned short u_cls(const UStr* u, Py_ssize_t i) noexcept:
    cdef unsigned int c = PyUnicode_READ(u.kind, u.data, i)
    return CLS[c] if c < 256 else NONASCII


cdef inline Py_ssize_t skip_ws(const UStr* u, Py_ssize_t i) noexcept:
    while i < u.n and u_cls(u, i) & C_WS:
        i += 1
    return i


cdef inline Py_ssize_t rskip_ws(const UStr* u, Py_ssize_t start, Py_ssize_t end) noexcept:
    """End of s[start:end] without its trailing blanks."""
    while end > start and u_cls(u, end - 1) & C_WS:
        end -= 1
    return end


cdef inline Py_ssize_t scan_cls(const UStr* u, Py_ssize_t i, unsigned short mask) noexcept:
    while i < u.n and u_cls(u, i) & mask:
        i += 1
    return i


cdef inline Py_ssize_t find_char(const UStr* u, Py_ssize_t i, unsigned int ch) noexcept:
    while i < u.n:
        if u_at(u, i) == ch:
            return i
        i += 1
    return -1


cdef inline bint has_cls(const UStr* u, Py_ssize_t start, Py_ssize_t end, unsigned short mask) noexcept:
    while start < end:
        if u_cls(u, start) & mask:
            return True
        start += 1
    return False


cdef object unescape(str s, const UStr* u, Py_ssize_t start, Py_ssize_t end):
    """s[start:end] with each backslash pair replaced by the escaped character."""
    cdef list parts = []
    cdef Py_ssize_t seg = start, i = start
    while i < end:
        if u_at(u, i) == CH_BACKSLASH:
            parts.append(PyUnicode_Substring(s, seg, i))
            seg = i + 1
            i += 2
        else:
            i += 1
    parts.append(PyUnicode_Substring(s, seg, end))
    return "".join(parts)


cdef object scan_quoted(str s, const UStr* u, Py_ssize_t i, Py_ssize_t* after):
    """Unquoted text of the quoted-string at s[i] == '"', or None if unterminated."""
    cdef Py_ssize_t j = i + 1
    cdef bint escaped = False
    cdef unsigned int c
    while j < u.n:
        c = u_at(u, j)
        if c == CH_QUOTE:
            after[0] = j + 1
            if escaped:
                return unescape(s, u, i + 1, j)
            return PyUnicode_Substring(s, i + 1, j)
        if c == CH_BACKSLASH:
            escaped = True
            j += 1
        j += 1
    return None


cdef object scan_value(str s, const UStr* u, Py_ssize_t i, unsigned short mask, Py_ssize_t* after):
    """A quoted string (unquoted) or a non-empty run of `mask` characters; None if neither."""
    cdef Py_ssize_t end
    if i < u.n and u_at(u, i) == CH_QUOTE:
        return scan_quoted(s, u, i, after)
    end = scan_cls(u, i, mask)
    if end == i:
        return None
    after[0] = end
    return PyUnicode_Substring(s, i, end)


cdef object parse_params(str s, const UStr* u, Py_ssize_t i):
    """`*( SEMI name [EQUAL value] )` from s[i] to the end: a tuple, or None if malformed."""
    cdef list params = None
    cdef Py_ssize_t end
    cdef object name, value
    while True:
        i = skip_ws(u, i)
        if i == u.n:
            break
        if u_at(u, i) != CH_SEMI:
            return None
        i = skip_ws(u, i + 1)
        end = scan_cls(u, i, C_TOKEN)
        if end == i:
            return None
        name = PyUnicode_Substring(s, i, end)
        i = skip_ws(u, end)
        value = None
        if i < u.n and u_at(u, i) == CH_EQ:
            value = scan_value(s, u, skip_ws(u, i + 1), C_PVALUE, &i)
            if value is None:
                return None
        if params is None:
            params = []
        params.append((name, value))
    if params is None:
        return ()
    return tuple(params)


# ------------------------------------------------------------------ lists

cdef inline void add_item(list items, str s, const UStr* u, Py_ssize_t start, Py_ssize_t end):
    start = skip_ws(u, start)
    end = rskip_ws(u, start, end)
    if end > start:
        items.append(PyUnicode_Substring(s, start, end))


cdef list c_split_list(str value):
    cdef UStr u
    cdef list items = []
    cdef Py_ssize_t i = 0, start = 0
    cdef bint quoted = False, angle = False
    cdef unsigned int c
    u_init(&u, value)
    while i < u.n:
        c = u_at(&u, i)
        if quoted:
            if c == CH_BACKSLASH:
                i += 1  # the escaped character cannot end the quote
            elif c == CH_QUOTE:
                quoted = False
        elif angle:
            if c == CH_GT:
                angle = False
        elif c == CH_QUOTE:
            quoted = True
        elif c == CH_LT:
            angle = True
        elif c == CH_COMMA:
            add_item(items, value, &u, start, i)
            start = i + 1
        i += 1
    add_item(items, value, &u, start, u.n)
    return items


def split_list(str value not None):
    """Split on commas outside quoted strings and outside <...>; strip; drop empty items."""
    return c_split_list(value)


# ------------------------------------------------------------------ Via

cdef object c_via_parm(str s):
    """`SIP / 2.0 / transport LWS host [: port] *(; param)`, or None if malformed."""
    cdef UStr u
    cdef Py_ssize_t i, j, end, host_at, close, colon, start
    cdef Py_ssize_t ws[3]
    cdef Py_ssize_t we[3]
    cdef long port_value = 0
    cdef int k
    cdef object host, port = None, params, transport
    u_init(&u, s)
    i = 0
    for k in range(3):
        if k:
            i = skip_ws(&u, i)
            if i == u.n or u_at(&u, i) != CH_SLASH:
                return None
            i = skip_ws(&u, i + 1)
        end = scan_cls(&u, i, C_TOKEN)
        if end == i:
            return None
        ws[k] = i
        we[k] = end
        i = end
    if (we[0] - ws[0] != 3 or (u_at(&u, ws[0]) | 32) != c's'
            or (u_at(&u, ws[0] + 1) | 32) != c'i' or (u_at(&u, ws[0] + 2) | 32) != c'p'):
        return None
    if (we[1] - ws[1] != 3 or u_at(&u, ws[1]) != c'2' or u_at(&u, ws[1] + 1) != c'.'
            or u_at(&u, ws[1] + 2) != c'0'):
        return None
    host_at = skip_ws(&u, i)
    if host_at == i:
        return None
    if host_at < u.n and u_at(&u, host_at) == CH_LBRACKET:
        close = find_char(&u, host_at, CH_RBRACKET)
        if close < 0:
            return None
        if find_char(&u, host_at + 1, CH_COLON) < 0 or find_char(&u, host_at + 1, CH_COLON) > close:
            return None
        for j in range(host_at + 1, close):
            if not u_cls(&u, j) & C_IPV6:
                return None
        i = close + 1
    else:
        i = scan_cls(&u, host_at, C_HOST)
        if i == host_at:
            return None
    host = PyUnicode_Substring(s, host_at, i)
    colon = skip_ws(&u, i)
    if colon < u.n and u_at(&u, colon) == CH_COLON:
        start = skip_ws(&u, colon + 1)
        end = scan_cls(&u, start, C_DIGIT)
        if end == start or end - start > 5:
            return None
        for j in range(start, end):
            port_value = port_value * 10 + (u_at(&u, j) - CH_ZERO)
        if port_value < 1 or port_value > 65535:
            return None
        port = port_value
        i = end
    params = parse_params(s, &u, i)
    if params is None:
        return None
    transport = PyUnicode_Substring(s, ws[2], we[2])
    if not _all_upper(&u, ws[2], we[2]):
        transport = transport.upper()
    return new_via(transport, host, port, params, s)


cdef inline bint _all_upper(const UStr* u, Py_ssize_t start, Py_ssize_t end) noexcept:
    cdef unsigned int c
    while start < end:
        c = u_at(u, start)
        if 97 <= c <= 122:
            return False
        start += 1
    return True


cdef list c_parse_vias(str value):
    cdef list items = c_split_list(value)
    cdef list vias = []
    cdef object via
    if not items:
        raise ParseError(R_VIA)
    for item in items:
        via = c_via_parm(<str>item)
        if via is None:
            raise ParseError(R_VIA)
        vias.append(via)
    return vias


def parse_vias(str value not None):
    """Every via-parm of one Via header value, in order."""
    return c_parse_vias(value)


# ------------------------------------------------------------------ name-addr

cdef bint valid_uri(const UStr* u, Py_ssize_t start, Py_ssize_t end) noexcept:
    """A scheme (letter, then letters, digits, + - .), a ':', and no blank, control, < > or "."""
    cdef Py_ssize_t i = start
    cdef unsigned int c
    cdef bint in_scheme = True
    if end - start < 2 or not u_cls(u, start) & C_ALPHA:
        return False
    while i < end:
        c = u_at(u, i)
        if in_scheme:
            if c == CH_COLON:
                in_scheme = False
            elif not u_cls(u, i) & C_SCHEME:
                return False
        elif not u_cls(u, i) & C_VISIBLE or c == CH_LT or c == CH_GT or c == CH_QUOTE:
            return False
        i += 1
    return not in_scheme


cdef object angle_addr(str raw, const UStr* u, object display, Py_ssize_t i):
    """raw[i] is '<': the URI up to the first '>', then header params to the end."""
    cdef Py_ssize_t close = find_char(u, i + 1, CH_GT)
    cdef Py_ssize_t start, end
    cdef object params
    if close < 0:
        return None
    start = skip_ws(u, i + 1)
    if start > close:
        start = close
    end = rskip_ws(u, start, close)
    if not valid_uri(u, start, end):
        return None
    params = parse_params(raw, u, close + 1)
    if params is None:
        return None
    return new_name_addr(display, PyUnicode_Substring(raw, start, end), params, raw)


cdef object c_name_addr(str raw):
    """raw is stripped. A NameAddr, or None if malformed."""
    cdef UStr u
    cdef Py_ssize_t i, end, semi
    cdef object display, params, uri
    u_init(&u, raw)
    if u.n == 0:
        return None
    if u_at(&u, 0) == CH_QUOTE:
        display = scan_quoted(raw, &u, 0, &i)
        if display is None:
            return None
        i = skip_ws(&u, i)
        if i == u.n or u_at(&u, i) != CH_LT:
            return None
        return angle_addr(raw, &u, display, i)
    i = scan_cls(&u, 0, C_DISPLAY)
    if i < u.n and u_at(&u, i) == CH_LT:
        end = rskip_ws(&u, 0, i)
        display = PyUnicode_Substring(raw, 0, end) if end > 0 else None
        return angle_addr(raw, &u, display, i)
    # A bare addr-spec: everything after its first ';' is header params (RFC 3261 20.10).
    semi = find_char(&u, 0, CH_SEMI)
    end = u.n if semi < 0 else rskip_ws(&u, 0, semi)
    if not valid_uri(&u, 0, end):
        return None
    if semi < 0:
        return new_name_addr(None, raw, (), raw)
    params = parse_params(raw, &u, semi)
    if params is None:
        return None
    return new_name_addr(None, PyUnicode_Substring(raw, 0, end), params, raw)


cdef str strip_ws(str value):
    cdef UStr u
    cdef Py_ssize_t start, end
    u_init(&u, value)
    start = skip_ws(&u, 0)
    end = rskip_ws(&u, start, u.n)
    if start == 0 and end == u.n:
        return value
    return PyUnicode_Substring(value, start, end)


def parse_name_addr(str value not None):
    addr = c_name_addr(strip_ws(value))
    if addr is None:
        raise ParseError(R_NAME_ADDR)
    return addr


def parse_contacts(values):
    """Every Contact header line's entries; None for the lone '*' (remove all bindings)."""
    cdef list items = []
    cdef list contacts = []
    cdef object addr
    cdef str item
    for value in values:
        items.extend(c_split_list(value))
    for item in items:
        if len(item) == 1 and item == "*":
            if len(items) == 1:
                return None
            raise ParseError(R_CONTACT_STAR)
    for item in items:
        addr = c_name_addr(item)
        if addr is None:
            raise ParseError(R_CONTACT)
        contacts.append(addr)
    return contacts


# ------------------------------------------------------------------ Authorization

cdef object c_credentials(str s):
    cdef UStr u
    cdef Py_ssize_t i, start, end
    cdef list params = []
    cdef list names = []
    cdef object name, value
    u_init(&u, s)
    start = skip_ws(&u, 0)
    end = scan_cls(&u, start, C_TOKEN)
    if end == start or end == u.n or not u_cls(&u, end) & C_WS:
        return None
    scheme = PyUnicode_Substring(s, start, end)
    i = end
    while True:
        i = skip_ws(&u, i)
        if i == u.n:
            break
        if u_at(&u, i) == CH_COMMA:  # empty list elements are allowed (RFC 3261 7.3.1)
            i += 1
            continue
        end = scan_cls(&u, i, C_TOKEN)
        if end == i:
            return None
        name = PyUnicode_Substring(s, i, end)
        if has_cls(&u, i, end, C_UPPER):
            name = name.lower()
        i = skip_ws(&u, end)
        if i == u.n or u_at(&u, i) != CH_EQ:
            return None
        value = scan_value(s, &u, skip_ws(&u, i + 1), C_AVALUE, &i)
        if value is None:
            return None
        for seen in names:  # a repeated parameter makes the credentials malformed
            if <str>seen == <str>name:
                return None
        names.append(name)
        params.append((name, value))
        i = skip_ws(&u, i)
        if i < u.n:
            if u_at(&u, i) != CH_COMMA:
                return None
            i += 1
    if not params:
        return None
    return new_credentials(scheme, tuple(params))


def parse_credentials(str value not None):
    creds = c_credentials(value)
    if creds is None:
        raise ParseError(R_AUTHORIZATION)
    return creds


# ------------------------------------------------------------------ message

cdef inline object decode(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    return PyUnicode_DecodeUTF8(<const char*>p + start, end - start, "surrogateescape")


cdef inline Py_ssize_t find_lf(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) noexcept:
    cdef const void* hit
    if pos >= n:
        return -1
    hit = memchr(p + pos, LF, n - pos)
    if hit == NULL:
        return -1
    return <const unsigned char*>hit - p


cdef inline Py_ssize_t line_end(const unsigned char* p, Py_ssize_t pos, Py_ssize_t eol) noexcept:
    """End of the line content: a CR just before the LF is not part of it."""
    if eol > pos and p[eol - 1] == CR:
        return eol - 1
    return eol


cdef inline Py_ssize_t skip_crlf(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n) noexcept:
    while pos < n and (p[pos] == CR or p[pos] == LF):
        pos += 1
    return pos


cdef object header_name(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                        Py_ssize_t* colon, int* kind):
    """Canonical name of the header line p[pos:end] (lower case, compact form
    expanded), with colon set to the offset of its ':'; None if the line is
    not `token *WS ':' ...`."""
    cdef Py_ssize_t t = pos, w, length, i
    cdef unsigned char lower[NAME_BUF]
    cdef PyObject* hit
    kind[0] = H_OTHER
    while t < end and CLS[p[t]] & C_TOKEN:
        t += 1
    w = t
    while w < end and (p[w] == SP or p[w] == HT):
        w += 1
    if t == pos or w == end or p[w] != CH_COLON:
        return None
    colon[0] = w
    length = t - pos
    if length > NAME_BUF:
        return PyUnicode_DecodeLatin1(<const char*>p + pos, length, NULL).lower()
    for i in range(length):
        lower[i] = LOWER[p[pos + i]]
    if length == 1:
        hit = COMPACT_OBJ[lower[0]]
        if hit != NULL:
            kind[0] = COMPACT_KIND[lower[0]]
            return <object>hit
    else:
        i = KNOWN_HEAD[name_hash(lower, length)]
        while i >= 0:
            if KNOWN_LEN[i] == length and memcmp(KNOWN_PTR[i], lower, length) == 0:
                kind[0] = KNOWN_KIND[i]
                return <object>KNOWN_OBJ[i]
            i = KNOWN_NEXT[i]
    return PyUnicode_DecodeLatin1(<const char*>lower, length, NULL)


cdef inline Py_ssize_t strip_start(const unsigned char* p, Py_ssize_t start, Py_ssize_t end) noexcept:
    while start < end and (p[start] == SP or p[start] == HT):
        start += 1
    return start


cdef inline Py_ssize_t strip_end(const unsigned char* p, Py_ssize_t start, Py_ssize_t end) noexcept:
    while end > start and (p[end - 1] == SP or p[end - 1] == HT):
        end -= 1
    return end


cdef bint is_version(const unsigned char* p, Py_ssize_t start, Py_ssize_t end) noexcept:
    """`SIP/1*DIGIT.1*DIGIT`, case-insensitive, exactly."""
    cdef Py_ssize_t i, digits
    if end - start < 7:
        return False
    if (LOWER[p[start]] != c's' or LOWER[p[start + 1]] != c'i' or LOWER[p[start + 2]] != c'p'
            or p[start + 3] != CH_SLASH):
        return False
    i = start + 4
    digits = i
    while i < end and CLS[p[i]] & C_DIGIT:
        i += 1
    if i == digits or i == end or p[i] != CH_DOT:
        return False
    i += 1
    digits = i
    while i < end and CLS[p[i]] & C_DIGIT:
        i += 1
    return i > digits and i == end


# The common methods and the usual version come out as shared str objects.
cdef str SIP_2_0 = "SIP/2.0"
cdef tuple _COMMON_METHODS = ("REGISTER", "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS",
                              "MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO",
                              "PRACK", "UPDATE", "REFER")
cdef tuple _COMMON_METHOD_BYTES = tuple(m.encode("ascii") for m in _COMMON_METHODS)


cdef object method_str(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    cdef Py_ssize_t length = end - start
    cdef Py_ssize_t i
    cdef bytes b
    for i in range(len(_COMMON_METHOD_BYTES)):
        b = <bytes>_COMMON_METHOD_BYTES[i]
        if len(b) == length and memcmp(<const char*>b, p + start, length) == 0:
            return _COMMON_METHODS[i]
    return PyUnicode_DecodeLatin1(<const char*>p + start, length, NULL)


cdef object version_str(const unsigned char* p, Py_ssize_t start, Py_ssize_t end):
    if end - start == 7 and memcmp(p + start, b"SIP/2.0", 7) == 0:
        return SIP_2_0
    return PyUnicode_DecodeLatin1(<const char*>p + start, end - start, NULL)


@cython.final
@cython.freelist(4)
cdef class _Scan:
    """One message being scanned. The header being folded is only finished
    (added, and its Via parsed) once the next line shows that it ends."""

    cdef const unsigned char* p
    cdef object method, request_uri, status_code, reason, version
    cdef list headers, vias, lengths
    # the pending header: name, kind, its first piece, and the decoded
    # non-empty continuation pieces (None while it is not folded)
    cdef object name
    cdef int kind
    cdef Py_ssize_t first_start, first_end
    cdef list more

    cdef bint start_line(self, Py_ssize_t pos, Py_ssize_t end) except -1:
        """Fill the start-line fields; False if the line is malformed."""
        cdef const unsigned char* p = self.p
        cdef Py_ssize_t sp1, sp2, i
        cdef int status
        sp1 = pos
        while sp1 < end and p[sp1] != SP:
            sp1 += 1
        if sp1 < end and is_version(p, pos, sp1):
            # SIP-Version SP 3DIGIT [SP Reason-Phrase]
            if end - sp1 - 1 < 3:
                return False
            for i in range(sp1 + 1, sp1 + 4):
                if not CLS[p[i]] & C_DIGIT:
                    return False
            i = sp1 + 4
            if i < end:
                if p[i] != SP or (i + 1 < end and (p[i + 1] == SP or p[i + 1] == HT)):
                    return False
                i += 1
            status = (p[sp1 + 1] - CH_ZERO) * 100 + (p[sp1 + 2] - CH_ZERO) * 10 + (p[sp1 + 3] - CH_ZERO)
            if status < 100 or status > 699:
                return False
            self.status_code = status
            self.reason = decode(p, i, end)
            self.version = version_str(p, pos, sp1)
            return True
        # Method SP Request-URI SP SIP-Version: exactly two spaces
        if sp1 == end or sp1 == pos:
            return False
        for i in range(pos, sp1):
            if not CLS[p[i]] & C_TOKEN:
                return False
        sp2 = sp1 + 1
        while sp2 < end and p[sp2] != SP:
            if p[sp2] <= SP or p[sp2] == 127:
                return False
            sp2 += 1
        if sp2 == end or sp2 == sp1 + 1:
            return False
        if memchr(p + sp2 + 1, SP, end - sp2 - 1) != NULL or not is_version(p, sp2 + 1, end):
            return False
        self.method = method_str(p, pos, sp1)
        self.request_uri = decode(p, sp1 + 1, sp2)
        self.version = version_str(p, sp2 + 1, end)
        return True

    cdef object message(self, object body):
        return new_message(self.method, self.request_uri, self.status_code, self.reason,
                           self.version, self.headers, self.vias, body)

    cdef int fail(self, object error, str reason) except -1:
        """Raise with what was scanned so far; a request can still be answered 400."""
        self.finish(True)
        raise error(reason, partial=self.message(b"") if self.method is not None else None)

    cdef int finish(self, bint quiet) except -1:
        """Add the pending header. quiet: we are failing already, keep the vias that parse."""
        cdef object name = self.name
        cdef object value
        cdef list parts
        if name is None:
            return 0
        self.name = None
        if self.more is None:
            value = decode(self.p, self.first_start, self.first_end)
        else:
            parts = []
            if self.first_end > self.first_start:
                parts.append(decode(self.p, self.first_start, self.first_end))
            parts.extend(self.more)
            value = " ".join(parts)
            self.more = None
        self.headers.append((name, value))
        if self.kind == H_CONTENT_LENGTH:
            if self.lengths is None:
                self.lengths = []
            self.lengths.append(value)
        elif self.kind == H_VIA:
            self.add_vias(value, quiet)
        return 0

    cdef int add_vias(self, str value, bint quiet) except -1:
        cdef list items = c_split_list(value)
        cdef object via
        if not items and not quiet:
            self.fail(ParseError, R_VIA)
        for item in items:
            via = c_via_parm(<str>item)
            if via is None:
                if quiet:
                    return 0
                self.fail(ParseError, R_VIA)
            self.vias.append(via)
        return 0

    cdef Py_ssize_t headers_block(self, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t max_headers,
                                  Py_ssize_t max_line) except -1:
        """Scan header lines from pos; return the offset after the blank line."""
        cdef const unsigned char* p = self.p
        cdef Py_ssize_t eol, end, count = 0, colon = 0, start, stop
        cdef int kind = H_OTHER
        cdef object name
        while True:
            eol = find_lf(p, pos, n)
            if eol < 0:
                self.fail(ParseError, R_TRUNCATED)
            end = line_end(p, pos, eol)
            if end - pos > max_line:
                self.fail(HeaderTooLong, R_HEADER_LINE_LONG)
            if end == pos:
                self.finish(False)
                return eol + 1
            if p[pos] == SP or p[pos] == HT:  # folding (RFC 3261 7.3.1)
                if self.name is None:
                    self.fail(ParseError, R_HEADER_LINE)
                start = strip_start(p, pos, end)
                stop = strip_end(p, start, end)
                if self.more is None:
                    self.more = []
                if stop > start:
                    self.more.append(decode(p, start, stop))
                pos = eol + 1
                continue
            self.finish(False)
            if count == max_headers:
                self.fail(HeaderTooLong, R_TOO_MANY_HEADERS)
            name = header_name(p, pos, end, &colon, &kind)
            if name is None:
                self.fail(ParseError, R_HEADER_LINE)
            self.name = name
            self.kind = kind
            self.first_start = strip_start(p, colon + 1, end)
            self.first_end = strip_end(p, self.first_start, end)
            count += 1
            pos = eol + 1


cdef long long content_length(list values) except -2:
    """The Content-Length the message announces, -1 if it has none; raises if malformed."""
    cdef long long length = -1
    cdef str value, seen = None
    cdef UStr u, v
    cdef Py_ssize_t i, sig = 0, seen_sig = 0
    if values is None:
        return -1
    for value in values:
        u_init(&u, value)
        if u.n == 0:
            raise ParseError(R_CONTENT_LENGTH)
        for i in range(u.n):
            if not u_cls(&u, i) & C_DIGIT:
                raise ParseError(R_CONTENT_LENGTH)
        sig = 0
        while sig < u.n and u_at(&u, sig) == CH_ZERO:
            sig += 1
        if seen is not None:
            u_init(&v, seen)
            if u.n - sig != v.n - seen_sig:
                raise ParseError(R_CONTENT_LENGTH_CONFLICT)
            for i in range(u.n - sig):
                if u_at(&u, sig + i) != u_at(&v, seen_sig + i):
                    raise ParseError(R_CONTENT_LENGTH_CONFLICT)
        seen = value
        seen_sig = sig
        if u.n - sig > 18:
            length = HUGE
        else:
            length = 0
            for i in range(sig, u.n):
                length = length * 10 + (u_at(&u, i) - CH_ZERO)
    return length


cdef object c_parse_message(const unsigned char* p, Py_ssize_t n, Py_ssize_t max_size,
                            Py_ssize_t max_headers, Py_ssize_t max_line):
    cdef Py_ssize_t pos, eol, end
    cdef long long length
    cdef _Scan scan
    if n > max_size:
        raise MessageTooLarge(R_TOO_LARGE)
    pos = skip_crlf(p, 0, n)  # RFC 3261 7.5
    if pos == n:
        raise ParseError(R_EMPTY)
    eol = find_lf(p, pos, n)
    if eol < 0:
        raise ParseError(R_TRUNCATED)
    end = line_end(p, pos, eol)
    if end - pos > max_line:
        raise HeaderTooLong(R_START_LINE_LONG)
    scan = _Scan.__new__(_Scan)
    scan.p = p
    if not scan.start_line(pos, end):
        raise ParseError(R_START_LINE)
    scan.headers = []
    scan.vias = []
    pos = scan.headers_block(eol + 1, n, max_headers, max_line)
    try:
        length = content_length(scan.lengths)
    except ParseError as exc:
        raise ParseError(exc.reason, partial=scan.message(b"") if scan.method is not None else None) from None
    if length < 0:
        # UDP without Content-Length: the datagram ends the body
        return scan.message(PyBytes_FromStringAndSize(<const char*>p + pos, n - pos))
    if length > n - pos:
        raise ParseError(R_CONTENT_LENGTH_EXCEEDS, partial=scan.message(b"") if scan.method is not None else None)
    return scan.message(PyBytes_FromStringAndSize(<const char*>p + pos, length))  # bytes after it are ignored


def parse_message(data, Py_ssize_t max_size=65536, Py_ssize_t max_headers=100, Py_ssize_t max_line=8192):
    """One datagram, or one framed stream message."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return c_parse_message(<const unsigned char*>view.buf, view.len, max_size, max_headers, max_line)
    finally:
        PyBuffer_Release(&view)


cdef object c_frame_length(const unsigned char* p, Py_ssize_t n, Py_ssize_t max_size):
    cdef Py_ssize_t pos, eol, end, colon = 0, start, stop
    cdef long long total
    cdef int kind = H_OTHER
    cdef list lengths = None, pieces = None
    cdef object name
    cdef unsigned char c
    pos = skip_crlf(p, 0, n)
    eol = find_lf(p, pos, n)  # the start line: parse_message judges it
    while eol >= 0:
        pos = eol + 1
        eol = find_lf(p, pos, n)
        if eol < 0:
            break
        end = line_end(p, pos, eol)
        if end == pos:
            total = eol + 1
            if lengths is not None:
                total += content_length([" ".join(piece) for piece in lengths])
            if total > max_size:
                raise MessageTooLarge(R_TOO_LARGE)
            return total if total <= n else None
        c = p[pos]
        if c == SP or c == HT:
            if pieces is not None:
                start = strip_start(p, pos, end)
                stop = strip_end(p, start, end)
                if stop > start:
                    pieces.append(decode(p, start, stop))
            continue
        pieces = None
        # only a name starting with c or l can be Content-Length or its compact form
        if LOWER[c] != c'c' and LOWER[c] != c'l':
            continue
        name = header_name(p, pos, end, &colon, &kind)
        if kind == H_CONTENT_LENGTH:
            pieces = []
            start = strip_start(p, colon + 1, end)
            stop = strip_end(p, start, end)
            if stop > start:
                pieces.append(decode(p, start, stop))
            if lengths is None:
                lengths = []
            lengths.append(pieces)
    if n > max_size:  # the header block alone is too large
        raise MessageTooLarge(R_TOO_LARGE)
    return None


def frame_length(buf, Py_ssize_t max_size=65536):
    """Length of the stream message at the start of buf, None until all of it is there."""
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        return c_frame_length(<const unsigned char*>view.buf, view.len, max_size)
    finally:
        PyBuffer_Release(&view)
