# cython: language_level=3
"""Compiled first steps of a REGISTER: the twins of registrar.register_headers
(first_values, check_mandatory and parse_cseq in one call) and of
registrar.parse_delta_seconds (the Expires header and parameter).

Every REGISTER, the unsigned one that gets the 401 as much as the signed
one, starts with these: the first value of each header by name, To, From
and Call-ID present, Max-Forwards and CSeq well formed. In Python that is a
dozen str method calls and a dict built from a reversed list; here one loop
over the headers and C loops over the ASCII text. Values that are not plain
ASCII str (rare: the scanner decodes UTF-8) go to the pure functions, whose
Unicode rules (str.strip, str.isdigit) then apply. tests/test_registrar.py
compares the two on generated headers.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

from fastreg.errors import ParseError

cdef object _pure_first_values = None
cdef object _pure_check_mandatory = None
cdef object _pure_parse_cseq = None
cdef object _pure_parse_delta_seconds = None

# str.isspace() of each ASCII character (it counts \x1c-\x1f too), taken from
# Python itself so that strip() here is exactly str.strip() on ASCII.
cdef bint _SPACE[128]
for _c in range(128):
    _SPACE[_c] = chr(_c).isspace()


def bind(first_values, check_mandatory, parse_cseq, parse_delta_seconds):
    """registrar.py hands over its pure functions (it imports this module)."""
    global _pure_first_values, _pure_check_mandatory, _pure_parse_cseq, _pure_parse_delta_seconds
    _pure_parse_delta_seconds = parse_delta_seconds
    _pure_first_values = first_values
    _pure_check_mandatory = check_mandatory
    _pure_parse_cseq = parse_cseq


cdef inline bint _ascii_str(object v):
    return v is None or (type(v) is str and PyUnicode_IS_ASCII(v))


cdef inline void _strip(const unsigned char *p, Py_ssize_t n, Py_ssize_t *start, Py_ssize_t *end) noexcept:
    cdef Py_ssize_t a = 0, b = n
    while a < b and _SPACE[p[a]]:
        a += 1
    while b > a and _SPACE[p[b - 1]]:
        b -= 1
    start[0] = a
    end[0] = b


cdef inline object _get(dict first, str name):
    cdef PyObject *v = PyDict_GetItem(first, name)
    return None if v == NULL else <object>v


def register_headers(request):
    """(first, cseq) as registrar.register_headers: first_values(request),
    then check_mandatory and parse_cseq with their ParseErrors, in that order."""
    cdef Py_ssize_t i, n, a, b, sp
    cdef const unsigned char *p
    cdef long long number
    cdef dict first
    headers = request.headers
    if type(headers) is not list:
        first = _pure_first_values(request)
    else:
        # dict(reversed(headers)): the same keys in the same order, first value wins
        first = {}
        n = len(<list>headers)
        for i in range(n - 1, -1, -1):
            item = (<list>headers)[i]
            if type(item) is not tuple or len(<tuple>item) != 2:
                first = _pure_first_values(request)  # its error, or its dict
                break
            PyDict_SetItem(first, (<tuple>item)[0], (<tuple>item)[1])
    to = _get(first, "to")
    from_ = _get(first, "from")
    call_id = _get(first, "call-id")
    max_forwards = _get(first, "max-forwards")
    cseq = _get(first, "cseq")
    if not (_ascii_str(to) and _ascii_str(from_) and _ascii_str(call_id) and _ascii_str(max_forwards)
            and _ascii_str(cseq)):
        _pure_check_mandatory(request, first)
        return first, _pure_parse_cseq(request, first)

    # check_mandatory
    for value, label in ((to, "To"), (from_, "From"), (call_id, "Call-ID")):
        if value is None:
            raise ParseError(f"Missing {label}")
        p = <const unsigned char *>PyUnicode_DATA(value)
        _strip(p, PyUnicode_GET_LENGTH(value), &a, &b)
        if a == b:
            raise ParseError(f"Missing {label}")
    if max_forwards is not None:
        p = <const unsigned char *>PyUnicode_DATA(max_forwards)
        _strip(p, PyUnicode_GET_LENGTH(max_forwards), &a, &b)
        if a == b:
            raise ParseError("Malformed Max-Forwards")
        number = 0
        for i in range(a, b):
            if p[i] < 48 or p[i] > 57:
                raise ParseError("Malformed Max-Forwards")
            number = number * 10 + (p[i] - 48)
            if number > 255:
                raise ParseError("Malformed Max-Forwards")

    # parse_cseq: `number METHOD`, number 1-10 digits below 2**31
    if cseq is None:
        raise ParseError("Missing CSeq")
    p = <const unsigned char *>PyUnicode_DATA(cseq)
    _strip(p, PyUnicode_GET_LENGTH(cseq), &a, &b)
    sp = a
    while sp < b and p[sp] != 32:
        sp += 1
    if sp == a or sp - a > 10:
        raise ParseError("Malformed CSeq")
    number = 0
    for i in range(a, sp):
        if p[i] < 48 or p[i] > 57:
            raise ParseError("Malformed CSeq")
        number = number * 10 + (p[i] - 48)
    if number >= 2147483648:
        raise ParseError("Malformed CSeq")
    # the method: what follows the first space, stripped
    if sp < b:
        sp += 1
        _strip(p + sp, b - sp, &a, &n)
        method = (<str>cseq)[sp + a:sp + n]
    else:
        method = ""
    if method != request.method:
        raise ParseError("CSeq method does not match the request")
    return first, number


def parse_delta_seconds(text, what):
    """registrar.parse_delta_seconds: a delta-seconds value (Expires, the
    Contact expires parameter), at most 2**32-1; ParseError "Malformed <what>"."""
    cdef Py_ssize_t a, b, i
    cdef const unsigned char *p
    cdef unsigned long long number = 0
    if type(text) is not str or not PyUnicode_IS_ASCII(text):
        return _pure_parse_delta_seconds(text, what)
    p = <const unsigned char *>PyUnicode_DATA(text)
    _strip(p, PyUnicode_GET_LENGTH(text), &a, &b)
    if a == b:
        raise ParseError(f"Malformed {what}")
    for i in range(a, b):
        if p[i] < 48 or p[i] > 57:
            raise ParseError(f"Malformed {what}")
        if number < 4294967295ULL:  # beyond it the value is capped: stop counting
            number = number * 10 + (p[i] - 48)
    return 4294967295 if number > 4294967295ULL else number
