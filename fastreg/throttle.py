"""Digest-guessing throttle: policy (sans-IO) and an in-memory failure counter.

Failures are counted per (source address, username). Past `max_failures`
failures within `window_s` seconds, that user from that source is blocked
for `block_s` seconds (the caller answers 403, or drops), while the same user
from any other address still registers, and every other user from the same
address too.

A "failure" is a digest that was checked and was wrong (auth.AuthStatus.WRONG:
wrong password or unknown user). A request without credentials (the first
REGISTER of every exchange), a stale or foreign nonce, a malformed header are
not guesses and must not be recorded.

Why the defaults (20 failures within 60 s, then a 120 s block):
- A legitimate device fails rarely and slowly: with a wrong password a phone
  gets one 401 per attempt and retries after its registration timer (tens of
  seconds at least). Twenty failures of the same user from the same address
  in one minute is not a device, it is a script.
- Counting per user, not per address, leaves normal traffic alone even when
  it is concentrated: a test run that makes a few dozen failed attempts spread
  over many users from one address puts one or two failures on each key,
  nowhere near twenty.
- It bounds an online guesser to about 20 guesses per 3 minutes per (address,
  user): roughly 10,000 a day. That defeats guessing a real password, not a
  4-digit PIN; weak secrets need a stronger policy (lower the limit, or
  enable the per-source limit below for public-facing deployments).
- The window is fixed (it starts at the first failure, and restarts at the
  first failure after it ends): one entry, two numbers, no per-attempt list.
  When a block starts, the count restarts at zero with a new window that
  begins when the block ends.

Source addresses as a whole are never throttled by default: behind an SBC
every user arrives from one address, and blocking that address would take
the whole customer base offline because of one attacker (or one
misconfigured phone). `max_source_failures` (0 = off) adds a limit on all
failures from one address for public-facing deployments; `trusted_peers`
(the SBCs and proxies in front of the registrar, as addresses or CIDR
networks) are exempt from that per-source limit.

For a trusted peer the per-(source, user) limit still applies, and that is
still right: the SBC carries many users, and the key includes the username,
so one attacker guessing user A through the SBC blocks only user A through
that SBC (for `block_s`), never users B, C, ... that share the address. The
price is that the attacker can keep user A locked out through that SBC; a
per-source key would lock out everybody, and no key at all would leave
guessing unbounded.

The shared state lives behind the `FailureCounter` protocol: an LMDB one
shared by all workers (store layer) and `MemoryFailureCounter` here for tests
and single-process use.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Callable, Iterable

# The failure records and counters live in their own module (the stores use
# them too); they are re-exported here for the policy's callers.
from fastreg.failures import FailureCounter, FailureState, MemoryFailureCounter, entry_is_over

__all__ = ["AuthThrottle", "FailureCounter", "FailureState", "MemoryFailureCounter", "entry_is_over"]


_UNREAD = object()  # record_success: no state handed over, read it


def _user_key(source_ip: str, username: str) -> bytes:
    # "surrogatepass" encodes every str, so a hostile username cannot raise here.
    return f"{source_ip}\x00{username}".encode("utf-8", "surrogatepass")


def _source_key(source_ip: str) -> bytes:
    # '*' never starts an address, so this cannot collide with a user key.
    return f"*\x00{source_ip}".encode("utf-8", "surrogatepass")


class AuthThrottle:
    """The throttle policy over a FailureCounter. All times are arguments."""

    __slots__ = ("counter", "max_failures", "window_s", "block_s", "max_source_failures",
                 "_trusted", "_is_trusted")

    def __init__(
        self,
        counter: FailureCounter,
        max_failures: int = 20,
        window_s: float = 60,
        block_s: float = 120,
        trusted_peers: Iterable[str] = (),
        max_source_failures: int = 0,
    ) -> None:
        if max_failures < 0 or max_source_failures < 0:
            raise ValueError("max_failures / max_source_failures: must be >= 0 (0 = off)")
        if window_s <= 0 or block_s <= 0:
            raise ValueError("window_s / block_s: must be > 0")
        counter_window = getattr(counter, "window_s", None)
        if counter_window is not None and counter_window != window_s:
            raise ValueError(f"window_s: the counter purges with {counter_window} s, the throttle uses {window_s} s")
        self.counter = counter
        self.max_failures = int(max_failures)
        self.window_s = float(window_s)
        self.block_s = float(block_s)
        self.max_source_failures = int(max_source_failures)
        # ValueError on a bad entry (config.validate checks them first).
        self._trusted = tuple(ipaddress.ip_network(peer, strict=False) for peer in trusted_peers)
        trusted = self._trusted

        # Bounded cache: the number of distinct sources is attacker-controlled.
        @lru_cache(maxsize=4096)
        def is_trusted(source_ip: str) -> bool:
            try:
                address = ipaddress.ip_address(source_ip)
            except ValueError:
                return False
            if address.version == 6 and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            return any(address in network for network in trusted)

        self._is_trusted = is_trusted

    def is_trusted(self, source_ip: str) -> bool:
        """Is `source_ip` one of the trusted peers (SBCs, proxies)?"""
        return bool(self._trusted) and self._is_trusted(source_ip)

    def _source_limited(self, source_ip: str) -> bool:
        return self.max_source_failures > 0 and not self.is_trusted(source_ip)

    def is_blocked(self, source_ip: str, username: str, now: float) -> bool:
        """Should this (source, user)'s request be refused without checking
        its digest? One dict/LMDB read in the common case (no entry)."""
        return self.check(source_ip, username, now)[0]

    def check(self, source_ip: str, username: str, now: float) -> tuple[bool, FailureState | None]:
        """`is_blocked`, and the (source, user) entry it read: hand that entry
        to `record_success` after a good digest, so that an authenticated
        REGISTER reads the failure table once, not twice."""
        state = None
        if self.max_failures:
            state = self.counter.get(_user_key(source_ip, username))
            if state is not None and state.blocked_until > now:
                return True, state
        if self.max_source_failures and self._source_limited(source_ip):
            source_state = self.counter.get(_source_key(source_ip))
            if source_state is not None and source_state.blocked_until > now:
                return True, state
        return False, state

    def record_failure(self, source_ip: str, username: str, now: float) -> bool:
        """Count one wrong digest. True when this failure starts a block (of
        the user from this source, or of the whole source with the per-source
        limit): the moment to log it, once. The `max_failures`-th failure
        within a window is the one that starts the block."""
        started = False
        if self.max_failures:
            step, flag = self._step(self.max_failures, now)
            self.counter.update(_user_key(source_ip, username), step)
            started = flag[0]
        if self.max_source_failures and self._source_limited(source_ip):
            step, flag = self._step(self.max_source_failures, now)
            self.counter.update(_source_key(source_ip), step)
            started = started or flag[0]
        return started

    def _step(self, limit: int, now: float) -> tuple[Callable[[FailureState | None], FailureState | None], list[bool]]:
        window_s, block_s = self.window_s, self.block_s
        # Set by the last call of step, the one whose result the counter kept
        # (an LMDB counter may call it again on retry).
        flag = [False]

        def step(state: FailureState | None) -> FailureState | None:
            flag[0] = False
            if state is not None and state.blocked_until > now:
                return state  # already blocked: a failure does not lengthen the block
            if state is None or now >= state.window_start + window_s:
                count, window_start = 1, now
            else:
                count, window_start = state.count + 1, state.window_start
            if count >= limit:
                flag[0] = True
                blocked_until = now + block_s
                return FailureState(0, blocked_until, blocked_until)
            return FailureState(count, window_start, 0.0)

        return step, flag

    def record_success(self, source_ip: str, username: str, now: float,
                       state: FailureState | None | object = _UNREAD) -> None:
        """Forget the failures of this user from this source. A block in
        force stays (behind an SBC the success may be the real user's while
        an attacker shares the address: clearing would hand the attacker a
        fresh set of guesses). Costs one read when there is nothing to clear."""
        if not self.max_failures:
            return
        if state is _UNREAD:
            state = self.counter.get(_user_key(source_ip, username))
        # (a state read a moment ago may be stale: another worker's failure
        # in between is then cleared by the next success, never lost; the
        # update below re-reads inside its write transaction)
        if state is None or state.blocked_until > now:  # type: ignore[union-attr]
            return

        def clear(state: FailureState | None) -> FailureState | None:
            if state is not None and state.blocked_until > now:
                return state
            return None

        # (the key only now: the usual success has nothing to clear)
        self.counter.update(_user_key(source_ip, username), clear)

    def purge(self, now: float) -> int:
        """Drop finished entries (the counter's purge)."""
        return self.counter.purge(now)


__all__ = ["FailureState", "FailureCounter", "MemoryFailureCounter", "AuthThrottle", "entry_is_over"]
