"""Chooses the parser implementation.

The compiled scanner `fastreg._cparse` is built at install time and is the
one fastreg runs. The pure-Python twin `fastreg._pyparse` exists to test it
and is used only when asked for explicitly with FASTREG_PARSER=pure (as
msgpack's MSGPACK_PUREPYTHON): never as a silent fallback.

Both modules expose the same functions with the same results and errors:

    parse_message(data, max_size=65536, max_headers=100, max_line=8192) -> SipMessage
    frame_length(buf, max_size=65536) -> int | None      # TCP framing
    split_list(value) -> list[str]
    parse_vias(value) -> list[Via]
    parse_name_addr(value) -> NameAddr
    parse_contacts(values) -> list[NameAddr] | None       # None means '*'
    parse_credentials(value) -> Credentials
"""

from __future__ import annotations

import importlib
import os

from fastreg.errors import ParserUnavailable


def _load():
    choice = os.environ.get("FASTREG_PARSER", "c").strip().lower()
    if choice in ("pure", "py", "python"):
        from fastreg import _pyparse as impl

        return impl, "pure"
    if choice not in ("c", "cython", "compiled", ""):
        raise ParserUnavailable(f"FASTREG_PARSER={choice!r}: use 'pure' or leave it unset")
    try:
        from fastreg import _cparse as impl  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ParserUnavailable(
            "the compiled SIP scanner fastreg._cparse is not built "
            f"({exc}); install fastreg with 'pip install .' (or 'pip install -e .'), "
            "or set FASTREG_PARSER=pure to run the slow reference parser on purpose"
        ) from None
    return impl, "cython"


_impl, IMPLEMENTATION = _load()

parse_message = _impl.parse_message
frame_length = _impl.frame_length
split_list = _impl.split_list
parse_vias = _impl.parse_vias
parse_name_addr = _impl.parse_name_addr
parse_contacts = _impl.parse_contacts
parse_credentials = _impl.parse_credentials


def compiled_twin(name: str, what: str):
    """The compiled module `fastreg.<name>` that replaces pure code elsewhere
    (the digest check, the codec, ...), by this module's rule: None with
    FASTREG_PARSER=pure (the pure code runs), else the module, built with
    the scanner; ParserUnavailable when it was not built, never a silent
    fallback. `what` names it in that error."""
    if IMPLEMENTATION != "cython":
        return None
    try:
        return importlib.import_module(f"fastreg.{name}")
    except ImportError as exc:
        raise ParserUnavailable(
            f"the compiled {what} fastreg.{name} is not built "
            f"({exc}); install fastreg with 'pip install .' (or 'pip install -e .'), "
            "or set FASTREG_PARSER=pure to run the slow reference code on purpose"
        ) from None
