# cython: language_level=3
"""Compiled twins of codec.encode_bindings and codec.decode_bindings.

Every REGISTER that changes a binding reads the AOR's record and writes it
back. msgpack itself is compiled; what costs in Python is around it: the
fifteen type checks of each decoded binding, and the fifteen attribute
reads of each binding to encode. Here the checks are C type tests and the
fields are read straight from the Binding's slots (PyMember_GetOne, what
the slot descriptor does). The same msgpack calls make the same bytes.

Anything off the plain path (a record that fails a check, a value of an
unexpected type, a Binding subclass) is handed to the pure function, which
then decides: raises its RecordFormatError with its message, or handles the
odd value its way. tests/test_codec.py compares the two.
"""

from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        pass
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    object PyMember_GetOne(const char *addr, PyMemberDef *m)

import types

cdef object _Binding = None
cdef object _pack = None
cdef object _unpackb = None
cdef object _pure_encode = None
cdef object _pure_decode = None
cdef PyMemberDef *_members[15]
cdef object _NoneType = type(None)

# Binding's fields in order (aor first: it is the key, not stored)
_FIELDS = ("aor", "contact", "expires_at", "q", "call_id", "cseq", "branch", "path", "received", "transport",
           "user_agent", "instance_id", "reg_id", "params", "last_modified")


def bind(binding_class, pack, unpackb, pure_encode, pure_decode):
    """codec.py hands over the record class, its msgpack functions and its pure twins."""
    global _Binding, _pack, _unpackb, _pure_encode, _pure_decode
    fields = tuple(f for f in binding_class.__dataclass_fields__)
    if fields != _FIELDS:
        raise TypeError(f"Binding fields {fields} are not the ones this module encodes")
    for i, name in enumerate(_FIELDS):
        descr = binding_class.__dict__.get(name)
        if type(descr) is not types.MemberDescriptorType or descr.__objclass__ is not binding_class:
            raise TypeError(f"Binding.{name} is not a slot")
        _members[i] = (<PyMemberDescrObject *><void *>descr).d_member
    _Binding = binding_class
    _pack = pack
    _unpackb = unpackb
    _pure_encode = pure_encode
    _pure_decode = pure_decode


cdef inline object _get(object b, int i):
    return PyMember_GetOne(<const char *><void *>b, _members[i])


def encode_bindings(bindings):
    """The version-1 record of `bindings` (all of one AOR): codec.encode_bindings."""
    cdef list rec = [1]
    if type(bindings) is not tuple and type(bindings) is not list:
        return _pure_encode(bindings)  # (it may be iterable once only)
    for b in bindings:
        if type(b) is not _Binding:
            return _pure_encode(bindings)
        received = _get(b, 8)
        if type(received) is tuple and PyTuple_GET_SIZE(received) == 2:
            host = <object>PyTuple_GET_ITEM(received, 0)
            port = <object>PyTuple_GET_ITEM(received, 1)
        else:
            host = received[0]
            port = received[1]
        q = _get(b, 3)
        rec.append((
            _get(b, 1),
            float(_get(b, 2)),
            None if q is None else float(q),
            _get(b, 4),
            _get(b, 5),
            _get(b, 6),
            _get(b, 7),
            host,
            port,
            _get(b, 9),
            _get(b, 10),
            _get(b, 11),
            _get(b, 12),
            _get(b, 13),
            float(_get(b, 14)),
        ))
    return _pack(rec)


cdef inline bint _num(object x):
    return type(x) is float or type(x) is int


cdef inline bint _opt_str(object x):
    return x is None or type(x) is str


def decode_bindings(aor, data):
    """The bindings of a record written by `encode_bindings`: codec.decode_bindings
    (RecordFormatError, from the pure one, if it is not one)."""
    cdef Py_ssize_t i, n
    cdef tuple item
    cdef list out = []
    try:
        rec = _unpackb(data, use_list=False, unicode_errors="surrogateescape")
    except Exception:
        return _pure_decode(aor, data)  # its error, with its message
    if type(rec) is not tuple:
        return _pure_decode(aor, data)
    n = PyTuple_GET_SIZE(rec)
    if n == 0:
        return _pure_decode(aor, data)
    version = <object>PyTuple_GET_ITEM(rec, 0)
    if type(version) is not int or version != 1:
        return _pure_decode(aor, data)
    for i in range(1, n):
        obj = <object>PyTuple_GET_ITEM(rec, i)
        if type(obj) is not tuple or PyTuple_GET_SIZE(obj) != 15:
            return _pure_decode(aor, data)
        item = <tuple>obj
        contact = item[0]
        expires_at = item[1]
        q = item[2]
        call_id = item[3]
        cseq = item[4]
        branch = item[5]
        path = item[6]
        rhost = item[7]
        rport = item[8]
        transport = item[9]
        user_agent = item[10]
        instance_id = item[11]
        reg_id = item[12]
        params = item[13]
        last_modified = item[14]
        if not (type(contact) is str and _num(expires_at) and (q is None or _num(q)) and type(call_id) is str
                and type(cseq) is int and _opt_str(branch) and type(path) is tuple and type(rhost) is str
                and type(rport) is int and type(transport) is str and _opt_str(user_agent)
                and _opt_str(instance_id) and (reg_id is None or type(reg_id) is int)
                and type(params) is tuple and _num(last_modified)):
            return _pure_decode(aor, data)
        for p in <tuple>path:
            if type(p) is not str:
                return _pure_decode(aor, data)
        for p in <tuple>params:
            if (type(p) is not tuple or PyTuple_GET_SIZE(p) != 2
                    or type(<object>PyTuple_GET_ITEM(p, 0)) is not str
                    or not _opt_str(<object>PyTuple_GET_ITEM(p, 1))):
                return _pure_decode(aor, data)
        out.append(_Binding(
            aor,
            contact,
            float(expires_at),
            None if q is None else float(q),
            call_id,
            cseq,
            branch,
            path,
            (rhost, rport),
            transport,
            user_agent,
            instance_id,
            reg_id,
            params,
            float(last_modified),
        ))
    return out
