"""The location service interface, and an in-memory implementation for tests.

`LocationService` is declarative on purpose (a distributed backend is
coming): the core hands one `SaveRequest` to `save` and gets back the
complete binding list or a typed refusal.  Each implementation runs, in one
atomic step of its own:

1. read the AOR's bindings;
2. retransmission check (`bindings.is_retransmission`): a REGISTER already
   applied is answered with the current bindings, nothing else is done (not
   even the replay check);
3. replay check: when ``req.replay_key`` is not None and an nc is stored for
   it with ``req.replay_nc <= stored`` → ReplayedCredentials, nothing applied;
4. `bindings.apply_register` (StaleCSeq / TooManyContacts → nothing applied);
5. write the bindings, the expiry index and the new nc for the replay key,
   all together.

The replay key starts with an 8-byte big-endian integer expiry time (seconds
since the epoch); `purge_expired` drops the entries whose expiry is < now.
A higher nc on a known nonce is legitimate (Linphone refreshes with nc=2).

AORs are passed in canonical form (`uri.canonical_aor`); stores do not
canonicalise.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from fastreg.bindings import (
    is_replayed_retransmission,
    request_fingerprint,
    Binding,
    SaveRequest,
    SaveResult,
    apply_to_current,
    current,
    is_retransmission,
)
from fastreg.errors import ReplayedCredentials
from fastreg.uri import contacts_equal

__all__ = ["LocationService", "MemoryLocation", "replay_key_expiry"]

_EXPIRY = struct.Struct(">Q")


def replay_key_expiry(key: bytes) -> int:
    """The expiry time (seconds) a replay key starts with."""
    return _EXPIRY.unpack_from(key)[0]


@runtime_checkable
class LocationService(Protocol):
    def save(self, req: SaveRequest) -> SaveResult:
        """One atomic step: read, retransmission check, replay check, apply_register, write, index update."""

    def lookup(self, aor: str, now: float) -> tuple[Binding, ...]:
        """The current bindings of `aor` (expires_at > now), sorted by q desc then last_modified desc."""

    def remove(self, aor: str, contact: str | None = None) -> int:
        """Admin: remove every binding of `aor`, or those whose contact equals `contact`
        (RFC 3261 19.1.4). Returns the number removed (expired ones not yet purged count too)."""

    def purge_expired(self, now: float, limit: int = 1000) -> int:
        """The sweeper: remove bindings with expires_at <= now (at most `limit` AORs per call)
        and replay entries whose expiry is < now. Returns the number of bindings removed."""

    def iter_all(self, now: float) -> Iterator[Binding]:
        """Every current binding of every AOR (for `fastreg contacts`)."""

    def close(self) -> None: ...


class MemoryLocation:
    """Dicts with the same semantics as the LMDB store; for the core's unit tests.

    Atomicity is trivial: each step computes the new state before assigning it.
    """

    def __init__(self) -> None:
        self._aors: dict[str, tuple[Binding, ...]] = {}
        self._nonces: dict[bytes, tuple[int, bytes]] = {}

    def save(self, req: SaveRequest) -> SaveResult:
        now = req.now
        live = [b for b in self._aors.get(req.aor, ()) if b.expires_at > now]
        if is_retransmission(live, req):
            return SaveResult(current(live, now), True, False)
        key = req.replay_key
        if key is not None:
            if len(key) < 8:
                raise ValueError("replay_key must start with its 8-byte expiry")
            stored = self._nonces.get(key)
            if stored is not None:
                if is_replayed_retransmission(stored[0], stored[1], req):
                    return SaveResult(current(live, now), True, False)
                if req.replay_nc <= stored[0]:
                    raise ReplayedCredentials()
        result = apply_to_current(live, req)
        if key is not None:
            self._nonces[key] = (req.replay_nc, request_fingerprint(req))
        if result.bindings:
            self._aors[req.aor] = result.bindings
        else:
            self._aors.pop(req.aor, None)
        return result

    def lookup(self, aor: str, now: float) -> tuple[Binding, ...]:
        return current(self._aors.get(aor, ()), now)

    def remove(self, aor: str, contact: str | None = None) -> int:
        existing = self._aors.get(aor, ())
        if contact is None:
            self._aors.pop(aor, None)
            return len(existing)
        keep = tuple(b for b in existing if not contacts_equal(b.contact, contact))
        if keep:
            self._aors[aor] = keep
        else:
            self._aors.pop(aor, None)
        return len(existing) - len(keep)

    def purge_expired(self, now: float, limit: int = 1000) -> int:
        removed = 0
        todo = [aor for aor, bs in self._aors.items() if any(b.expires_at <= now for b in bs)][:limit]
        for aor in todo:
            bs = self._aors[aor]
            keep = tuple(b for b in bs if b.expires_at > now)
            removed += len(bs) - len(keep)
            if keep:
                self._aors[aor] = keep
            else:
                del self._aors[aor]
        for key in [k for k in self._nonces if replay_key_expiry(k) < now][:limit]:
            del self._nonces[key]
        return removed

    def iter_all(self, now: float) -> Iterator[Binding]:
        for aor in sorted(self._aors):
            yield from current(self._aors.get(aor, ()), now)

    def close(self) -> None:
        pass

    # for tests
    def nonce_count(self) -> int:
        return len(self._nonces)
