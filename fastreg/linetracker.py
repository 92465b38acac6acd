"""Ongoing calls per user (Yate's line tracker), in the shared LMDB environment.

The proxy starts a call when it forwards an initial INVITE, answers it on the
first 2xx to that INVITE, and ends it on a non-2xx final response before the
answer, on a BYE, or (the sweeper) when it has lasted too long. Every step is
one write transaction in the location table's environment, so every worker
sees the same calls and counts, whichever worker the INVITE, the 200 OK and
the BYE arrived on.

Layout: one named database ``calls`` beside the location tables::

    b"c" + call key    -> msgpack [FORMAT, call_id, caller, called, callee, contact, address,
                                   started_at, answered_at, status, users]
    b"u" + username    -> 4-byte BE count of that user's ongoing calls

`users` is the list of usernames the call counts for (the caller when it is
one of our users, and the callee): a call counts once per user, and the
counts go down exactly by what went up. The call key is the Call-ID's UTF-8
bytes, or a digest of them when the Call-ID is too long for an LMDB key.

A start is refused (`LineBusy`, answered 486) when one of its users already
has as many ongoing calls as its limit; nothing is written then.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import lmdb
import msgpack

from fastreg.calls import CallRecord
from fastreg.errors import LineBusy, LocationFull

FORMAT = 1
_U32 = struct.Struct(">I")
_MAX_CALL_KEY = 400  # below LMDB's 511-byte key limit, with room for the prefix


@dataclass(frozen=True, slots=True)
class TrackedCall:
    """A call as the tracker holds it: the record so far and the users it counts for."""

    record: CallRecord
    users: tuple[str, ...]


def call_key(call_id: str) -> bytes:
    raw = call_id.encode("utf-8", "surrogateescape")
    if len(raw) > _MAX_CALL_KEY:
        return b"h" + hashlib.blake2b(raw, digest_size=20).digest()
    return b"c" + raw


def _user_key(username: str) -> bytes:
    return b"u" + username.encode("utf-8", "surrogateescape")[:_MAX_CALL_KEY]


def _encode(call: TrackedCall) -> bytes:
    r = call.record
    return msgpack.packb([FORMAT, r.call_id, r.caller, r.called, r.callee, r.contact, r.address, r.started_at,
                          r.answered_at, r.status, list(call.users)], use_bin_type=True)


def _decode(raw: bytes) -> TrackedCall | None:
    try:
        fmt, call_id, caller, called, callee, contact, address, started_at, answered_at, status, users = \
            msgpack.unpackb(raw, raw=False)
    except Exception:  # noqa: BLE001 - an unreadable entry is dropped by the sweeper, never fatal
        return None
    if fmt != FORMAT:
        return None
    record = CallRecord(call_id, caller, called, callee, contact, address, started_at, answered_at, None, status)
    return TrackedCall(record, tuple(users))


class LmdbLineTracker:
    """The ongoing calls and per-user counts in the `calls` db of a location table.

    `owner` is the `LmdbLocation` whose environment (and write helper) it
    shares; open it after fork, like the location table.
    """

    DB_NAME = b"calls"

    def __init__(self, owner) -> None:
        self._owner = owner
        self._db = owner.env.open_db(self.DB_NAME, create=not owner.readonly)

    # -- the proxy's steps -------------------------------------------------------

    def start(self, record: CallRecord, users: tuple[str, ...], limits: dict[str, int]) -> bool:
        """Count a new call for `users` (each at most once). True when started,
        False when a call with this Call-ID is already ongoing (a retransmitted
        INVITE: counted once). LineBusy when a user is at its limit
        (`limits[user]`, 0 or absent = unlimited); nothing is written then."""
        key = call_key(record.call_id)
        users = tuple(dict.fromkeys(u for u in users if u))
        db = self._db

        def txn_fn(txn: lmdb.Transaction) -> bool:
            if txn.get(key, db=db) is not None:
                return False
            counts = {}
            for user in users:
                raw = txn.get(_user_key(user), db=db)
                count = _U32.unpack(raw)[0] if raw is not None and len(raw) == 4 else 0
                limit = limits.get(user, 0)
                if limit and count >= limit:
                    raise LineBusy(user)
                counts[user] = count
            for user, count in counts.items():
                txn.put(_user_key(user), _U32.pack(count + 1), db=db)
            txn.put(key, _encode(TrackedCall(record, users)), db=db)
            return True

        return self._write(txn_fn)

    def answer(self, call_id: str, status: int, now: float) -> TrackedCall | None:
        """The first 2xx to the INVITE: the call with its answer time, or None
        (not tracked, or already answered: a retransmitted 200 OK, a re-INVITE)."""
        key = call_key(call_id)
        db = self._db

        def txn_fn(txn: lmdb.Transaction) -> TrackedCall | None:
            raw = txn.get(key, db=db)
            call = None if raw is None else _decode(raw)
            if call is None or call.record.answered_at is not None:
                return None
            call = TrackedCall(replace(call.record, answered_at=now, status=status), call.users)
            txn.put(key, _encode(call), db=db)
            return call

        return self._write(txn_fn)

    def end(self, call_id: str, now: float, status: int | None, reason: str,
            only_unanswered: bool = False) -> TrackedCall | None:
        """End the call: forget it and count its users down. Returns the final
        record, or None when it was not tracked (already ended). With
        `only_unanswered` (a non-2xx final response to an INVITE) an answered
        call is left alone: that response was for a re-INVITE."""
        key = call_key(call_id)

        def txn_fn(txn: lmdb.Transaction) -> TrackedCall | None:
            raw = txn.get(key, db=self._db)
            if raw is None:
                return None
            call = _decode(raw)
            if call is not None and only_unanswered and call.record.answered_at is not None:
                return None
            txn.delete(key, db=self._db)
            if call is None:
                return None
            self._count_down(txn, call.users)
            final_status = call.record.status if status is None else status
            return TrackedCall(replace(call.record, ended_at=now, status=final_status, reason=reason), call.users)

        return self._write(txn_fn)

    def expire(self, now: float, max_duration_s: float, max_setup_s: float, limit: int = 1000) -> list[TrackedCall]:
        """The sweeper: end calls answered (or started) more than
        `max_duration_s` ago, and unanswered ones started more than
        `max_setup_s` ago; unreadable entries are dropped. At most `limit` per call."""
        db = self._db

        def txn_fn(txn: lmdb.Transaction) -> list[TrackedCall]:
            ended: list[TrackedCall] = []
            dead: list[bytes] = []
            with txn.cursor(db=db) as cursor:
                for key, raw in cursor:
                    if key[:1] == b"u":
                        continue
                    call = _decode(raw)
                    if call is None:
                        dead.append(bytes(key))
                        continue
                    r = call.record
                    if r.answered_at is None:
                        if now - r.started_at < max_setup_s:
                            continue
                        reason = "Setup Timeout"
                    elif now - r.started_at < max_duration_s:
                        continue
                    else:
                        reason = "Maximum Duration Exceeded"
                    dead.append(bytes(key))
                    ended.append(TrackedCall(replace(r, ended_at=now, reason=reason), call.users))
                    if len(dead) >= limit:
                        break
            for key in dead:
                txn.delete(key, db=db)
            for call in ended:
                self._count_down(txn, call.users)
            return ended

        return self._write(txn_fn)

    # -- reading (fastreg calls, tests) ----------------------------------------------

    def snapshot(self) -> tuple[list[TrackedCall], dict[str, int]]:
        """The ongoing calls and the per-user counts, read in one transaction
        (so that they agree with each other)."""
        raws: list[bytes] = []
        counts: dict[str, int] = {}
        with self._owner._read_txn() as txn:
            for key, raw in txn.cursor(db=self._db):
                if key[:1] == b"u":
                    if len(raw) == 4:
                        counts[bytes(key[1:]).decode("utf-8", "surrogateescape")] = _U32.unpack(raw)[0]
                else:
                    raws.append(bytes(raw))
        calls = [call for call in map(_decode, raws) if call is not None]
        return calls, counts

    def calls(self) -> Iterator[TrackedCall]:
        yield from self.snapshot()[0]

    def counts(self) -> dict[str, int]:
        """Ongoing calls per user (users with none are not listed)."""
        return self.snapshot()[1]

    # -- helpers -----------------------------------------------------------------

    def _count_down(self, txn: lmdb.Transaction, users: tuple[str, ...]) -> None:
        for user in users:
            key = _user_key(user)
            raw = txn.get(key, db=self._db)
            count = _U32.unpack(raw)[0] if raw is not None and len(raw) == 4 else 0
            if count <= 1:
                txn.delete(key, db=self._db)
            else:
                txn.put(key, _U32.pack(count - 1), db=self._db)

    def _write(self, fn) -> Any:
        try:
            return self._owner._write(fn)
        except lmdb.MapFullError:
            raise LocationFull() from None


__all__ = ["LmdbLineTracker", "LineBusy", "TrackedCall", "call_key"]
