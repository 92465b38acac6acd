"""Per-worker counters. Plain integers in a slotted object: the core bumps
them (they are passed in, never global); the worker publishes them."""

from __future__ import annotations

from collections import Counter


class Counters:
    __slots__ = (
        "requests",  # by method
        "responses",  # by class: "1xx" .. "6xx"
        "auth_failures",
        "auth_throttled",
        "parse_errors",
        "dropped",  # by reason
        "registrations_applied",
        "retransmissions",
        "replays_refused",
        "bindings_expired",
        "internal_errors",
    )

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.auth_failures = 0
        self.auth_throttled = 0
        self.parse_errors = 0
        self.registrations_applied = 0
        self.retransmissions = 0
        self.replays_refused = 0
        self.bindings_expired = 0
        self.internal_errors = 0

    def count_response(self, status: int) -> None:
        self.responses[f"{status // 100}xx"] += 1

    def as_dict(self) -> dict:
        out: dict = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Counter) else value
        return out
