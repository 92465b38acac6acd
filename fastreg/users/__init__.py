"""Users: who may register, and with which secret.

A `UserDirectory` answers `lookup(username)` with a `UserRecord` or None.
Backends: `users/file.py` (a Yate-style regfile.conf), `users/pg.py`
(PostgreSQL) and `users/hooked.py` (a hook module's user_auth in front of
either). The last two are slow, so they are `users/cached.CachedUsers`: the
worker awaits `prefetch(username)` before the core's synchronous `lookup`
(see `fastreg/prefetch.py`); the file needs no prefetch and its path has no
await. Usernames are the SIP user part and are compared exactly
(case-sensitive).

Secrets never show up in a repr, a log line or an exception text: the secret
fields are declared `repr=False`, and the code that handles them (auth.py,
users/file.py) never formats them into messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Protocol, runtime_checkable

_NO_SETTINGS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user and its secrets.

    `password` is the plain text password; `ha1` is the hex MD5 of
    "username:realm:password" and `ha1_sha256` the hex SHA-256 of the same
    string (RFC 7616 section 3.4.2), for the configured realm. A record may
    hold any of them; with none of them the user exists (so routing can
    answer 480 rather than 404) but can never authenticate.

    `settings` keeps every other key of the user's entry as written
    (maxcalls, alternatives, ...), for later features; backends hand out a
    read-only mapping.
    """

    username: str
    password: str | None = field(default=None, repr=False)
    ha1: str | None = field(default=None, repr=False)
    ha1_sha256: str | None = field(default=None, repr=False)
    settings: Mapping[str, str] = field(default_factory=lambda: _NO_SETTINGS, hash=False)

    @property
    def can_authenticate(self) -> bool:
        return self.password is not None or self.ha1 is not None or self.ha1_sha256 is not None


@runtime_checkable
class UserDirectory(Protocol):
    def lookup(self, username: str) -> UserRecord | None:
        """The user called exactly `username`, or None if there is none."""
        ...

    def users_with_alternative(self, number: str) -> tuple[str, ...]:
        """The usernames whose `alternatives=` setting lists `number` (Yate's
        regfile: other numbers that reach the user), in directory order."""
        ...


def parse_alternatives(value: str) -> tuple[str, ...]:
    """`alternatives=201, 202` -> ("201", "202"): comma separated, blanks dropped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def alternatives_index(users) -> dict[str, tuple[str, ...]]:
    """number -> usernames listing it in `alternatives=`, for records in `users` (an iterable)."""
    index: dict[str, list[str]] = {}
    for record in users:
        for number in parse_alternatives(record.settings.get("alternatives", "")):
            names = index.setdefault(number, [])
            if record.username not in names:
                names.append(record.username)
    return {number: tuple(names) for number, names in index.items()}


__all__ = ["UserRecord", "UserDirectory", "alternatives_index", "parse_alternatives"]
