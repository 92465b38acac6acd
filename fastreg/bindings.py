"""The binding record and the per-binding rules of RFC 3261 10.3 steps 6-7.

Pure: plain functions of values, no I/O, no clock (``now`` comes in the
request).  Every store calls `apply_register` inside its own atomic step
(an LMDB write transaction, later a server-side function), so the rules live
here once.

Decisions (RFC 3261 leaves them open or the brief fixed them):

* Several Contacts of one REGISTER that match the same binding (or each
  other) are applied in order: the later one wins (a later ``expires=0``
  removes what an earlier Contact of the same request added).  The Call-ID /
  CSeq check is made against the binding as stored before the request, never
  against what the same request just wrote.
* A Contact that matches several stored bindings (possible with RFC 5626,
  where two flows may share a URI, and because 19.1.4 equality is not
  transitive) updates one of them: the first in stored order with the same
  instance and reg-id or the identical URI text, else the first whose URI is
  19.1.4-equal.
* ``max_contacts``: a request that would leave more than ``max_contacts``
  current bindings is refused with TooManyContacts (nothing applied); we never
  evict the oldest binding of a device that did not ask.  A request that does
  not increase the count is allowed even when the AOR is already above the
  limit (the limit was lowered): refreshes and removals keep working.
* Retransmission: a current binding written by the same Call-ID, CSeq and top
  Via branch (branch not None) means this REGISTER was already applied; the
  store answers the current bindings and changes nothing (and runs no replay
  check).  A retransmitted REGISTER that left no binding carrying its branch
  (it only removed bindings) is not recognised: it is applied again, which
  changes nothing, except that a store refuses the reuse of its credentials
  (ReplayedCredentials, so the device gets a new challenge instead of 200).
"""

from __future__ import annotations

import hashlib

from collections.abc import Sequence
from dataclasses import dataclass

from fastreg.errors import ParseError, StaleCSeq, TooManyContacts
from fastreg.uri import contacts_equal, fast_frozen_init, parse_uri, uris_equal

__all__ = [
    "Binding",
    "ContactUpdate",
    "SaveRequest",
    "SaveResult",
    "apply_register",
    "apply_to_current",
    "current",
    "binding_matches",
    "is_retransmission",
    "sort_key",
]

ParamList = tuple[tuple[str, "str | None"], ...]


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class Binding:
    aor: str
    contact: str  # contact URI text (inside <>), as received
    expires_at: float  # absolute, seconds since the epoch
    q: float | None  # None when the Contact had no q
    call_id: str
    cseq: int
    branch: str | None  # top Via branch of the REGISTER that last wrote it
    path: tuple[str, ...]  # Path header entries (name-addr text) in order
    received: tuple[str, int]  # source (host, port) of the REGISTER
    transport: str  # "UDP" / "TCP" / ...
    user_agent: str | None
    instance_id: str | None  # +sip.instance value (RFC 5626), quotes removed
    reg_id: int | None
    params: ParamList  # the Contact's other header params (not q/expires)
    last_modified: float


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class ContactUpdate:
    """One Contact of a REGISTER after 10.3 step 6 (expiry already decided)."""

    contact: str
    expires: int  # granted seconds; 0 = remove
    q: float | None
    instance_id: str | None
    reg_id: int | None
    params: ParamList


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class SaveRequest:
    aor: str
    call_id: str
    cseq: int
    branch: str | None
    contacts: tuple[ContactUpdate, ...]  # empty with remove_all=True for 'Contact: *'
    remove_all: bool
    path: tuple[str, ...]
    received: tuple[str, int]
    transport: str
    user_agent: str | None
    now: float
    replay_key: bytes | None = None  # 8-byte big-endian expiry || nonce id; None = not checked
    replay_nc: int = 0
    max_contacts: int = 0  # 0 = unlimited


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class SaveResult:
    bindings: tuple[Binding, ...]  # current bindings after the change, sorted (see `current`)
    retransmission: bool  # nothing changed: a retransmission of an applied REGISTER
    changed: bool


def sort_key(b: Binding) -> tuple[float, float]:
    """q descending (no q counts as 1.0), then most recently modified first."""
    q = b.q
    return (-(1.0 if q is None else q), -b.last_modified)


def current(bindings: Sequence[Binding], now: float) -> tuple[Binding, ...]:
    """The bindings with expires_at > now, sorted by `sort_key`."""
    live = [b for b in bindings if b.expires_at > now]
    if len(live) > 1:
        live.sort(key=sort_key)
    return tuple(live)


def binding_matches(b: Binding, c: ContactUpdate) -> bool:
    """RFC 5626: (instance_id, reg_id) when both sides have both; else RFC 3261 19.1.4 URI equality."""
    if (
        b.instance_id is not None
        and b.reg_id is not None
        and c.instance_id is not None
        and c.reg_id is not None
    ):
        return b.instance_id == c.instance_id and b.reg_id == c.reg_id
    return contacts_equal(b.contact, c.contact)


def _find_match(work: list[Binding], c: ContactUpdate) -> int:
    """Index of the binding `c` updates, or -1: the first in stored order that
    `binding_matches`, preferring an identical contact text (or the same
    instance and reg-id) to a URI that is only 19.1.4-equal, which spares a
    refresh from parsing any URI."""
    ids = c.instance_id is not None and c.reg_id is not None
    contact = c.contact
    for i, b in enumerate(work):
        if ids and b.instance_id is not None and b.reg_id is not None:
            if b.instance_id == c.instance_id and b.reg_id == c.reg_id:
                return i
        elif b.contact == contact:
            return i
    uri = None
    for i, b in enumerate(work):
        if ids and b.instance_id is not None and b.reg_id is not None:
            continue
        if uri is None:
            try:
                uri = parse_uri(contact)
            except ParseError:
                return -1  # an unparsable contact matches only its identical text (pass 1)
        try:
            if uris_equal(parse_uri(b.contact), uri):
                return i
        except ParseError:
            continue
    return -1


def is_retransmission(bindings: Sequence[Binding], req: SaveRequest) -> bool:
    """True when a current binding was written by this very REGISTER (Call-ID, CSeq, branch)."""
    branch = req.branch
    if branch is None:
        return False
    now = req.now
    call_id = req.call_id
    cseq = req.cseq
    for b in bindings:
        if b.branch == branch and b.cseq == cseq and b.call_id == call_id and b.expires_at > now:
            return True
    return False


def request_fingerprint(req: SaveRequest) -> bytes:
    """8 bytes naming this REGISTER (Call-ID, CSeq, top Via branch), stored
    with the nc of its credentials. A REGISTER that removed every binding
    leaves no binding to carry its branch; this lets its retransmission be
    recognised (200 again) instead of refused as a replay."""
    text = f"{req.call_id}\x00{req.cseq}\x00{req.branch}"
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest()


def is_replayed_retransmission(stored_nc: int, stored_fingerprint: bytes, req: SaveRequest) -> bool:
    """The same credentials (nonce, nc) by the same REGISTER: a retransmission."""
    return req.branch is not None and stored_nc == req.replay_nc and stored_fingerprint == request_fingerprint(req)


def _new_binding(req: SaveRequest, c: ContactUpdate) -> Binding:
    return Binding(
        req.aor,
        c.contact,
        req.now + c.expires,
        c.q,
        req.call_id,
        req.cseq,
        req.branch,
        req.path,
        req.received,
        req.transport,
        req.user_agent,
        c.instance_id,
        c.reg_id,
        c.params,
        req.now,
    )


def apply_register(existing: Sequence[Binding], req: SaveRequest) -> SaveResult:
    """RFC 3261 10.3 steps 6-7 for one REGISTER, all or nothing.

    Raises StaleCSeq (a binding of the same Call-ID has a CSeq >= the
    request's) or TooManyContacts; on a raise nothing is applied (the caller's
    transaction is aborted).  Expired bindings in `existing` are dropped first.
    """
    now = req.now
    live = [b for b in existing if b.expires_at > now]
    if is_retransmission(live, req):
        return SaveResult(current(live, now), True, False)
    return apply_to_current(live, req)


def apply_to_current(live: list[Binding], req: SaveRequest) -> SaveResult:
    """`apply_register` without its first two steps, for a store that runs the replay check
    between them: `live` holds only current bindings (expires_at > req.now) and
    `is_retransmission(live, req)` was False. `live` is not modified."""
    call_id = req.call_id
    cseq = req.cseq

    if req.remove_all:
        for b in live:
            if b.call_id == call_id and cseq <= b.cseq:
                raise StaleCSeq()
        return SaveResult((), False, bool(live))

    # work list: (binding, written_by_this_request)
    work: list[Binding] = list(live)
    fresh: list[bool] = [False] * len(work)
    changed = False
    for c in req.contacts:
        idx = _find_match(work, c)
        if idx < 0:
            if c.expires > 0:
                work.append(_new_binding(req, c))
                fresh.append(True)
                changed = True
            continue
        b = work[idx]
        if not fresh[idx] and b.call_id == call_id and cseq <= b.cseq:
            raise StaleCSeq()
        if c.expires > 0:
            work[idx] = _new_binding(req, c)
            fresh[idx] = True
        else:
            del work[idx]
            del fresh[idx]
        changed = True

    max_contacts = req.max_contacts
    if max_contacts > 0 and len(work) > max_contacts and len(work) > len(live):
        raise TooManyContacts()
    if len(work) > 1:
        work.sort(key=sort_key)
    return SaveResult(tuple(work), False, changed)
