# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled response builder: the hot twin of `fastreg.response.build_response_pure`.

Same signature and the same bytes, byte for byte (the differential tests in
tests/test_response.py hold them together, so a change of output goes into
both). What makes it cheaper than the readable one:

- one pass over the request's headers finds From, To, Call-ID and CSeq
  (instead of one `get` per header, two of them twice);
- the top Via's parameters are checked for quoting with a C loop over the
  str (no generator per parameter), and parameter names are compared without
  `str.lower()` when they are ASCII;
- the To tag (blake2b of Call-ID NUL From, exactly `response.to_tag_for`) is
  memoised in a small bounded dict: a challenge and the REGISTER that answers
  it, and every refresh of a registration, share Call-ID and From;
- the response is written straight into one bytes object with memcpy when
  every piece is ASCII (the usual case), body included: no intermediate str,
  no encode, no second concatenation. Otherwise it falls back to exactly what
  the pure builder does: join, encode('utf-8', 'surrogateescape'), + body.

Anything that is not what the scanners produce (a str subclass, a non-str
value, a SipMessage subclass) goes through generic Python operations with the
same semantics as the pure builder, never through a shortcut.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_READ
from libc.string cimport memcpy

import hashlib

from fastreg.message import SipMessage


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)


SERVER_HEADER = "fastreg"  # must equal fastreg.response.SERVER_HEADER (a test checks it)

# To tags memoised per (Call-ID, From). Bounded in entries and in key length,
# so that a flood of distinct or huge headers costs at most a few MB; when
# full it is simply emptied (the tag is recomputed, never different).
TAG_CACHE_SIZE = 4096
TAG_CACHE_KEY_MAX = 512
cdef dict _tags = {}
cdef object _blake2b = hashlib.blake2b

cdef str CRLF = "\r\n"
cdef str VIA_LINE = "\r\nVia: "
cdef str TOP_VIA = "\r\nVia: SIP/2.0/"
cdef str FROM_LINE = "\r\nFrom: "
cdef str TO_LINE = "\r\nTo: "
cdef str TAG_PARAM = ";tag="
cdef str CALL_ID_LINE = "\r\nCall-ID: "
cdef str CSEQ_LINE = "\r\nCSeq: "
cdef str SERVER_LINE = "\r\nServer: fastreg"
cdef str CONTENT_TYPE_LINE = "\r\nContent-Type: "
cdef str CONTENT_LENGTH_LINE = "\r\nContent-Length: "
cdef str END_OF_HEADERS = "\r\n\r\n"
cdef str RECEIVED_PARAM = ";received="
cdef str COLON_SP = ": "
cdef const char* TAG_PATTERN = b";tag="


cdef inline object _fmt(object x):
    """What an f-string replacement field `{x}` gives."""
    if type(x) is str:
        return x
    return format(x, "")


cdef bint _name_is(object name, str lowered, const char* lit, Py_ssize_t n) except -1:
    """`name.lower() == lowered` (lit is `lowered` as ASCII bytes)."""
    cdef const unsigned char* p
    cdef Py_ssize_t i
    cdef unsigned char c
    if type(name) is str and PyUnicode_IS_ASCII(name):
        if PyUnicode_GET_LENGTH(name) != n:
            return False
        p = <const unsigned char*>PyUnicode_DATA(name)
        for i in range(n):
            c = p[i]
            if 65 <= c <= 90:
                c += 32
            if c != <unsigned char>lit[i]:
                return False
        return True
    return name.lower() == lowered


cdef bint _needs_quotes(str value) noexcept:
    """`value == "" or any(c in value for c in ' ;,"<>')`."""
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(value)
    cdef int kind = PyUnicode_KIND(value)
    cdef void* data = PyUnicode_DATA(value)
    cdef Py_UCS4 c
    if n == 0:
        return True
    for i in range(n):
        c = PyUnicode_READ(kind, data, i)
        if c == 32 or c == 59 or c == 44 or c == 34 or c == 60 or c == 62:
            return True
    return False


cdef int _add_param(list pieces, object name, object value) except -1:
    """`format_param(name, value)`, appended as pieces."""
    if value is None:
        pieces.append(";")
        pieces.append(_fmt(name))
        return 0
    if type(value) is str:
        quoted = _needs_quotes(<str>value)
    else:
        quoted = value == "" or any(c in value for c in ' ;,"<>')
    pieces.append(";")
    pieces.append(_fmt(name))
    if quoted:
        pieces.append('="')
        pieces.append(value.replace("\\", "\\\\").replace('"', '\\"'))
        pieces.append('"')
    else:
        pieces.append("=")
        pieces.append(_fmt(value))
    return 0


cdef bint _has_tag(object to) except -1:
    """`";tag=" in to.replace(" ", "").lower()`."""
    cdef const unsigned char* p
    cdef Py_ssize_t i, n
    cdef int k = 0
    cdef unsigned char c
    if type(to) is str and PyUnicode_IS_ASCII(to):
        p = <const unsigned char*>PyUnicode_DATA(to)
        n = PyUnicode_GET_LENGTH(to)
        for i in range(n):
            c = p[i]
            if c == 32:
                continue
            if 65 <= c <= 90:
                c += 32
            # ';' occurs only at the start of ";tag=", so a mismatch restarts
            # at 0, or at 1 when the mismatching character is itself ';'.
            if c == <unsigned char>TAG_PATTERN[k]:
                k += 1
                if k == 5:
                    return True
            elif c == 59:
                k = 1
            else:
                k = 0
        return False
    return ";tag=" in to.replace(" ", "").lower()


cdef object _compute_tag(object call_id, object from_):
    seed = (call_id or "") + "\x00" + (from_ or "")
    return _blake2b(seed.encode("utf-8", "surrogateescape"), digest_size=5).hexdigest()


cpdef object to_tag(object call_id, object from_):
    """`response.to_tag_for` of a request with this Call-ID and From (either
    may be None), memoised."""
    if type(call_id) is not str and call_id is not None or type(from_) is not str and from_ is not None:
        return _compute_tag(call_id, from_)
    key = (call_id or "", from_ or "")
    tag = _tags.get(key)
    if tag is not None:
        return tag
    tag = _compute_tag(call_id, from_)
    if PyUnicode_GET_LENGTH(key[0]) + PyUnicode_GET_LENGTH(key[1]) <= TAG_CACHE_KEY_MAX:
        if len(_tags) >= TAG_CACHE_SIZE:
            _tags.clear()
        _tags[key] = tag
    return tag


def tag_cache_clear():
    _tags.clear()


def tag_cache_len():
    return len(_tags)


cdef object _assemble(list pieces, object body):
    """`"".join(pieces).encode("utf-8", "surrogateescape") + body`."""
    cdef Py_ssize_t total = 0, size, body_len
    cdef char* out
    for piece in pieces:
        if type(piece) is not str or not PyUnicode_IS_ASCII(piece):
            return "".join(pieces).encode("utf-8", "surrogateescape") + body
        total += PyUnicode_GET_LENGTH(piece)
    if type(body) is not bytes:
        return "".join(pieces).encode("utf-8", "surrogateescape") + body
    body_len = len(<bytes>body)
    result = PyBytes_FromStringAndSize(NULL, total + body_len)
    out = PyBytes_AS_STRING(result)
    for piece in pieces:
        size = PyUnicode_GET_LENGTH(piece)
        memcpy(out, PyUnicode_DATA(piece), size)
        out += size
    if body_len:
        memcpy(out, PyBytes_AS_STRING(body), body_len)
    return result


def build_response(request, status, reason, source, headers=(), body=b"", content_type=None):
    """Render a response to `request`: the same bytes as
    `fastreg.response.build_response_pure` with the same arguments."""
    cdef list pieces = []
    cdef bint got_from = False, got_to = False, got_call_id = False, got_cseq = False
    cdef bint rport = False
    cdef Py_ssize_t i, n_vias
    from_ = to = call_id = cseq = None

    vias = request.vias
    # The top Via, with received and rport (RFC 3261 18.2.1, RFC 3581 4).
    if type(vias) is list and not vias:  # (indexing below is not bounds-checked)
        raise IndexError("list index out of range")
    via = vias[0]
    source_ip, source_port = source
    pieces.append("SIP/2.0 ")
    pieces.append(_fmt(status))
    pieces.append(" ")
    pieces.append(_fmt(reason))
    pieces.append(TOP_VIA)
    pieces.append(_fmt(via.transport))
    pieces.append(" ")
    host = via.host
    pieces.append(_fmt(host))
    port = via.port
    if port is not None:
        pieces.append(":")
        pieces.append(_fmt(port))
    for name, value in via.params:
        if _name_is(name, "received", b"received", 8):
            continue  # ours replaces any the client wrote
        if _name_is(name, "rport", b"rport", 5):
            rport = True
            if value is None:
                value = str(source_port)
        _add_param(pieces, name, value)
    if host.strip("[]") != source_ip or rport:
        pieces.append(RECEIVED_PARAM)
        pieces.append(_fmt(source_ip))
    if type(vias) is list:
        n_vias = len(<list>vias)
        for i in range(1, n_vias):
            pieces.append(VIA_LINE)
            pieces.append((<list>vias)[i].raw)
    else:
        for via in vias[1:]:
            pieces.append(VIA_LINE)
            pieces.append(via.raw)

    if type(request) is SipMessage:
        for key, value in request.headers:
            if key == "from":
                if not got_from:
                    got_from = True
                    from_ = value
            elif key == "to":
                if not got_to:
                    got_to = True
                    to = value
            elif key == "call-id":
                if not got_call_id:
                    got_call_id = True
                    call_id = value
            elif key == "cseq":
                if not got_cseq:
                    got_cseq = True
                    cseq = value
            else:
                continue
            if got_from and got_to and got_call_id and got_cseq:
                break
    else:
        from_ = request.get("from")
        to = request.get("to")
        call_id = request.get("call-id")
        cseq = request.get("cseq")

    if from_ is not None:
        pieces.append(FROM_LINE)
        pieces.append(from_)
    if to is not None:
        pieces.append(TO_LINE)
        pieces.append(to)
        if status > 100 and not _has_tag(to):
            pieces.append(TAG_PARAM)
            pieces.append(to_tag(call_id, from_))
    if call_id is not None:
        pieces.append(CALL_ID_LINE)
        pieces.append(call_id)
    if cseq is not None:
        pieces.append(CSEQ_LINE)
        pieces.append(cseq)
    for name, value in headers:
        pieces.append(CRLF)
        pieces.append(_fmt(name))
        pieces.append(COLON_SP)
        pieces.append(_fmt(value))
    pieces.append(SERVER_LINE)
    if content_type is not None:
        pieces.append(CONTENT_TYPE_LINE)
        pieces.append(content_type)
    pieces.append(CONTENT_LENGTH_LINE)
    pieces.append(str(len(body)))
    pieces.append(END_OF_HEADERS)
    return _assemble(pieces, body)


def format_contact(uri, params):
    """`response.format_contact`: `<uri>;name=value...` for a Contact header
    value (the 200 OK has one per binding), with format_param's quoting."""
    cdef list pieces = ["<", _fmt(uri), ">"]
    for name, value in params:
        _add_param(pieces, name, value)
    return "".join(pieces)
