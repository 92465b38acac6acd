"""Users from a Yate-style regfile.conf.

The format (Yate's Configuration syntax, as its regfile module reads it)::

    ; a comment (also '#'), on a line of its own
    [general]
    ; settings of the file, not a user
    [200]
    ; one section per user, named by the SIP user part (case-sensitive)
    password=secret200
    [201]
    ha1 = 0123456789abcdef0123456789abcdef
    ; hex MD5("201:realm:password"); ha1_sha256 = 64 hex digits of SHA-256
    maxcalls=2
    ; any other key is kept in UserRecord.settings

- Blank lines and lines whose first non-blank character is ';' or '#' are
  comments ('#' is a fastreg addition: Yate reads such a line as a key). Whitespace around the key, the '=' and the value is ignored;
  the value is taken literally otherwise, as in Yate: quotes are part of it,
  and there is no comment after a value (`password=a;b` is "a;b"). A comment
  may follow a section header.
  A value ending with a backslash continues on the next line (Yate too).
- `password`, `ha1` and `ha1_sha256` are recognised in lower case only, as
  Yate does; a differently cased spelling (`Password=`) is refused rather
  than silently kept as a setting.
- A user section with neither a password nor an HA1 is kept: the user
  exists (routing can answer 480 rather than 404) but cannot authenticate.
  (Yate's regfile lets such a user register without authentication; fastreg
  does not.) An empty `password=` is an empty password, checked like any
  other (Yate accepts anybody for it; fastreg does not).
- `[general]` holds Yate's module settings (autocreate, priorities, ...);
  fastreg reads it as settings and ignores them (no autocreate: a user not in
  the file never registers).

Refused with `UsersFileError` (path, line, reason): a line that is neither a
section, a comment, a blank line nor key=value (Yate would read a bare word
as a key with an empty value); a key before any section; an
empty or duplicate section; a Yate directive section (`[$include ...]`,
`[$require ...]`, `[$enabled ...]`: not supported, and ignoring one would
silently drop or enable users); an `ha1` that is not 32 hex digits or an
`ha1_sha256` that is not 64; a secret key given twice in one section. For
other repeated keys the first one counts (Yate's lookup does the same).

The file is read as UTF-8 with "surrogateescape", so a password in another
encoding keeps its exact bytes for the digest (auth.py encodes the same way).
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Mapping

from fastreg.errors import ConfigError
from fastreg.users import UserRecord, alternatives_index

GENERAL_SECTION = "general"
_SECRET_KEYS = ("password", "ha1", "ha1_sha256")
_HA1_LENGTHS = {"ha1": 32, "ha1_sha256": 64}
_HEX = frozenset("0123456789abcdefABCDEF")


class UsersFileError(ConfigError):
    """A users file that cannot be used. `line` is 1-based, 0 when the
    problem is not one line (the file cannot be read). The text never holds a
    secret value."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")

    def __reduce__(self):  # keep it picklable (pass between processes)
        return (type(self), (self.path, self.line, self.reason))


def parse_regfile_sections(text: str, source_name: str = "<string>") -> tuple[dict[str, UserRecord], dict[str, str]]:
    """Parse regfile text into (users by name, the [general] settings)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    # section name -> (line of its header, {key: value})
    sections: dict[str, tuple[int, dict[str, str]]] = {}
    current: dict[str, str] | None = None
    current_name = ""
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].rstrip("\r")
        index += 1
        s = line.lstrip(" \t")
        if not s or s[0] in ";#":
            continue

        if s[0] == "[":
            end = s.find("]")
            if end < 0:
                raise UsersFileError(source_name, number, "section header without ']'")
            rest = s[end + 1:].strip(" \t")
            if rest and rest[0] not in ";#":
                raise UsersFileError(source_name, number, "text after the section header")
            name = s[1:end].strip(" \t")
            if not name:
                raise UsersFileError(source_name, number, "empty section name")
            if name.startswith("$"):
                raise UsersFileError(source_name, number, f"Yate directive [{name.split()[0]} ...] is not supported")
            if name in sections:
                raise UsersFileError(source_name, number,
                                     f"duplicate section [{name}] (first at line {sections[name][0]})")
            current = {}
            current_name = name
            sections[name] = (number, current)
            continue

        eq = s.find("=")
        if eq < 0:
            raise UsersFileError(source_name, number, "expected [section], key=value, or a comment")
        key = s[:eq].rstrip(" \t")
        if not key:
            raise UsersFileError(source_name, number, "empty key before '='")
        value = s[eq + 1:]
        while value.endswith("\\") and index < len(lines):  # continued on the next line
            value = value[:-1] + lines[index].rstrip("\r").lstrip(" \t")
            index += 1
        value = value.strip(" \t")
        if current is None:
            raise UsersFileError(source_name, number, f"key {key!r} before any [section]")
        if key not in _SECRET_KEYS and key.lower() in _SECRET_KEYS:
            raise UsersFileError(source_name, number, f"write {key.lower()!r} in lower case")
        if key in current:
            if key in _SECRET_KEYS:
                raise UsersFileError(source_name, number, f"{key} given twice in [{current_name}]")
            continue  # first one counts
        if key in _HA1_LENGTHS and current_name != GENERAL_SECTION:
            if len(value) != _HA1_LENGTHS[key] or not _HEX.issuperset(value):
                raise UsersFileError(source_name, number,
                                     f"{key} must be {_HA1_LENGTHS[key]} hex digits")
            value = value.lower()
        current[key] = value

    users: dict[str, UserRecord] = {}
    general: dict[str, str] = {}
    for name, (_, entries) in sections.items():
        if name == GENERAL_SECTION:
            general = entries
            continue
        password = entries.pop("password", None)
        ha1 = entries.pop("ha1", None)
        ha1_sha256 = entries.pop("ha1_sha256", None)
        users[name] = UserRecord(name, password, ha1, ha1_sha256, MappingProxyType(entries))
    return users, general


def parse_regfile(text: str, source_name: str = "<string>") -> dict[str, UserRecord]:
    """Parse regfile text into users by name (pure; raises UsersFileError)."""
    return parse_regfile_sections(text, source_name)[0]


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class RegFileUsers:
    """A UserDirectory over a regfile.conf, reloaded when it changes.

    The file is read at construction (UsersFileError if it is missing or
    malformed). `reload_if_changed()` (call it every second or so) and
    `reload()` (SIGHUP) never raise: on a bad file they keep the users
    loaded before and return the error for the caller to log. Replace the
    file by writing a new one and renaming it over the old one: an edit in
    place can be seen half-written (the next check reads it again).
    """

    __slots__ = ("path", "_users", "_general", "_signature", "_failed_signature", "_alternatives")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._failed_signature: object = None
        signature, users, general, error = self._read()
        if error is not None:
            raise error
        self._users = users
        self._alternatives = alternatives_index(users.values())
        self._general: Mapping[str, str] = MappingProxyType(general)
        self._signature = signature

    def lookup(self, username: str) -> UserRecord | None:
        return self._users.get(username)

    def users_with_alternative(self, number: str) -> tuple[str, ...]:
        return self._alternatives.get(number, ())

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, username: object) -> bool:
        return username in self._users

    @property
    def general(self) -> Mapping[str, str]:
        """The [general] section's settings (read, not used by fastreg)."""
        return self._general

    def _read(self) -> tuple[object, dict[str, UserRecord] | None, dict[str, str] | None, UsersFileError | None]:
        """(signature, users, general, None) or (signature, None, None, error)."""
        try:
            with open(self.path, "rb") as handle:
                # Stat before reading: a write after this point changes the
                # signature, so the next check reads the file again.
                signature: object = _signature(os.fstat(handle.fileno()))
                data = handle.read()
        except OSError as exc:
            return ("unreadable", exc.errno), None, None, UsersFileError(self.path, 0, exc.strerror or str(exc))
        try:
            users, general = parse_regfile_sections(data.decode("utf-8", "surrogateescape"), self.path)
        except UsersFileError as exc:
            return signature, None, None, exc
        return signature, users, general, None

    def reload_if_changed(self) -> bool | UsersFileError:
        """Re-read the file if its mtime, size or inode changed. True: new
        users in place. False: nothing changed (or the same bad file as last
        time: each bad version is reported once). UsersFileError: the file
        changed and cannot be used; the previous users stay."""
        try:
            signature: object = _signature(os.stat(self.path))
        except OSError as exc:
            signature = ("unreadable", exc.errno)
            if signature == self._failed_signature:
                return False
            self._failed_signature = signature
            return UsersFileError(self.path, 0, exc.strerror or str(exc))
        if signature == self._signature or signature == self._failed_signature:
            return False
        return self.reload()

    def reload(self) -> bool | UsersFileError:
        """Re-read the file now. True, or the error (previous users kept)."""
        signature, users, general, error = self._read()
        if error is not None:
            self._failed_signature = signature
            return error
        # One reference assignment each: a lookup sees the old dict or the new one.
        self._users = users
        self._alternatives = alternatives_index(users.values())
        self._general = MappingProxyType(general)
        self._signature = signature
        self._failed_signature = None
        return True


__all__ = ["RegFileUsers", "UsersFileError", "parse_regfile", "parse_regfile_sections", "GENERAL_SECTION"]
