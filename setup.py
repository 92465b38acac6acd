"""Builds the compiled SIP scanner fastreg._cparse, the compiled response
builder fastreg._cresponse and the batched UDP I/O fastreg._udpio and the compiled
URI parser fastreg._curi, and the compiled twins of the REGISTER path:
fastreg._cauth (digest check, nonces), fastreg._cregistrar (first header
checks), fastreg._ccodec (location records), fastreg._cslots (record
__init__) (metadata is in pyproject.toml). No library beyond Python's."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("fastreg._cparse", ["fastreg/_cparse.pyx"], extra_compile_args=["-O2"]),
    Extension("fastreg._cresponse", ["fastreg/_cresponse.pyx"], extra_compile_args=["-O2"]),
    Extension("fastreg._udpio", ["fastreg/_udpio.pyx"], extra_compile_args=["-O2"]),
    Extension("fastreg._curi", ["fastreg/_curi.pyx"], extra_compile_args=["-O2"]),
    Extension("fastreg._cregistrar", ["fastreg/_cregistrar.pyx"], extra_compile_args=["-O2"]),
    Extension("fastreg._ccodec", ["fastreg/_ccodec.pyx"], extra_compile_args=["-O2"]),
    Extension("fastreg._cslots", ["fastreg/_cslots.pyx"], extra_compile_args=["-O2"]),
    Extension("fastreg._cauth", ["fastreg/_cauth.pyx"], extra_compile_args=["-O2"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
