"""Failure records of the digest-guessing throttle: the value, the rule that
says when one is over, and the counter interface every store implements.

Plain values and functions, below both the throttle policy (`throttle.py`)
and the stores (`store_lmdb.LmdbFailureCounter`), so that neither layer
imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


@dataclass(frozen=True, slots=True)
class FailureState:
    count: int  # failures in the current window
    window_start: float  # when the current window started (absolute seconds)
    blocked_until: float  # absolute seconds; 0 (or any past time) = not blocked


def entry_is_over(state: FailureState, now: float, window_s: float) -> bool:
    """True when both the window and the block of `state` are over: the entry
    carries no information any more and may be deleted. The rule every
    `FailureCounter.purge` applies, with the throttle's `window_s`."""
    return now >= state.window_start + window_s and now >= state.blocked_until


class FailureCounter(Protocol):
    """Shared failure state, keyed by bytes. Implementations are given the
    throttle's `window_s` when they are built (for `purge`)."""

    def get(self, key: bytes) -> FailureState | None:
        ...

    def update(self, key: bytes, fn: Callable[[FailureState | None], FailureState | None]) -> FailureState | None:
        """Atomic read-modify-write: store fn(current) (delete when it returns
        None) and return it. `fn` is pure and may be called again on retry."""
        ...

    def purge(self, now: float) -> int:
        """Drop the entries for which `entry_is_over(state, now, window_s)`;
        return how many."""
        ...


class MemoryFailureCounter:
    """A dict-backed FailureCounter for tests and single-process use."""

    __slots__ = ("window_s", "_entries")

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._entries: dict[bytes, FailureState] = {}

    def get(self, key: bytes) -> FailureState | None:
        return self._entries.get(key)

    def update(self, key: bytes, fn: Callable[[FailureState | None], FailureState | None]) -> FailureState | None:
        new = fn(self._entries.get(key))
        if new is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = new
        return new

    def purge(self, now: float) -> int:
        window_s = self.window_s
        over = [key for key, state in self._entries.items() if entry_is_over(state, now, window_s)]
        for key in over:
            del self._entries[key]
        return len(over)

    def __len__(self) -> int:
        return len(self._entries)
