# cython: language_level=3
"""Compiled slot stores for the frozen, slotted value classes: the body of
the ``__init__`` that `uri.fast_frozen_init` generates, in C.

A REGISTER builds a ContactUpdate, a SaveRequest, a SaveResult and two
Bindings (15 fields each: one decoded from the table, one written). The
generated Python ``__init__`` calls each slot descriptor's __set__ in turn,
about 60 ns a field. With the compiled scanner it instead passes all its
arguments, once bound, to `slot_setter(cls, names)`'s function, which
stores them straight into the slots with PyMember_SetOne (what the
descriptor's __set__ does, without a call per field). The signature, the
argument binding and its errors stay those of the generated Python
``__init__``; tests/test_bindings.py compares the objects built both ways.
"""

from cpython.object cimport PyObject
from libc.stdlib cimport free, malloc

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        pass
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member
    int PyMember_SetOne(char *addr, PyMemberDef *m, object o) except -1

import types


cdef class _Members:
    """The member definitions of a class's slots, in field order."""

    cdef PyMemberDef **members
    cdef Py_ssize_t n

    def __dealloc__(self):
        free(self.members)


def slot_setter(cls, names):
    """A function `set(obj, *values)` storing values[i] into the slot
    `names[i]` of `obj` (an instance of `cls`), bypassing the frozen
    dataclass's __setattr__ as its generated __init__ does."""
    cdef _Members spec = _Members()
    cdef Py_ssize_t i
    names = tuple(names)
    spec.n = len(names)
    spec.members = <PyMemberDef **>malloc(sizeof(PyMemberDef *) * (spec.n if spec.n else 1))
    if spec.members == NULL:
        raise MemoryError()
    for i in range(spec.n):
        descr = cls.__dict__.get(names[i])
        if type(descr) is not types.MemberDescriptorType or descr.__objclass__ is not cls:
            raise TypeError(f"{cls.__name__}.{names[i]} is not a slot of the class itself")
        spec.members[i] = (<PyMemberDescrObject *><void *>descr).d_member

    def set_slots(obj, *values):
        cdef Py_ssize_t j
        # the stores go to fixed offsets: only into an instance of cls, all of them
        if not isinstance(obj, cls) or len(values) != spec.n:
            raise TypeError(f"set_slots needs a {cls.__name__} and {spec.n} values")
        for j in range(spec.n):
            PyMember_SetOne(<char *><void *>obj, spec.members[j], values[j])

    return set_slots
