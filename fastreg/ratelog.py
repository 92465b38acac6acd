"""Rate-limited logging: one line per kind per interval, with a count of
what was suppressed, so that a flood of bad input cannot fill the disk."""

from __future__ import annotations

import logging


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._next_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, now: float, message: str, *args: object) -> None:
        self._emit(logging.WARNING, kind, now, message, args)

    def info(self, kind: str, now: float, message: str, *args: object) -> None:
        self._emit(logging.INFO, kind, now, message, args)

    def _emit(self, level: int, kind: str, now: float, message: str, args: tuple) -> None:
        if now < self._next_at.get(kind, 0.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._next_at[kind] = now + self._interval_s
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (%d more %s suppressed in the last %.0f s)"
            args = args + (suppressed, kind, self._interval_s)
        self._logger.log(level, message, *args)
