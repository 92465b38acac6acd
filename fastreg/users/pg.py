"""Users from PostgreSQL: Yate's register.conf `[user.auth]`, and the
registration mirror (`[user.register]`, `[user.unregister]`).

`user_auth` is run with `${username}` and `${realm}` and returns at most one
row (the first counts). Its columns, by name:

- `password`: the plain text password; `ha1`: hex MD5 of
  "username:realm:password"; `ha1_sha256`: hex SHA-256 of the same. Any of
  them (NULL = not given). A row whose secrets are all NULL is a user that
  exists (routing answers 480, not 404) but cannot authenticate. An `ha1`
  that is not 32 hex digits (64 for `ha1_sha256`) is ignored and logged
  (without its value).
- any other column (maxcalls, ...) goes into `UserRecord.settings` as text.
- no row: no such user.

Answers are kept per worker for `auth_cache_ttl_s` (`users/cached.py`): a
registration storm is one query per user per TTL, and a user changed in the
database takes effect within that time, or at once with LISTEN/NOTIFY
(`UserNotifications`). While the database is down or slow, a request that
needs a user not in the cache gets 503 with Retry-After.

The mirror writes each binding change after the LMDB commit through a
`WriteBehind` queue: best effort, bounded, retried, counted. The LMDB table
stays the source of truth.
"""

from __future__ import annotations

import asyncio
import logging
from types import MappingProxyType

from fastreg.bindings import Binding, SaveRequest
from fastreg.errors import ServiceUnavailable
from fastreg.pgdb import Database, DatabaseUnavailable
from fastreg.uri import aor_domain
from fastreg.users import UserRecord
from fastreg.users.cached import CachedUsers
from fastreg.writebehind import WriteBehind

log = logging.getLogger("fastreg.postgres")

_SECRETS = {"password": 0, "ha1": 32, "ha1_sha256": 64}
_HEX = frozenset("0123456789abcdefABCDEF")


def record_from_row(username: str, row: dict) -> UserRecord:
    """A `UserRecord` from a user_auth row (see the module docstring)."""
    secrets: dict[str, str | None] = {}
    settings: dict[str, str] = {}
    for column, value in row.items():
        if column in _SECRETS:
            if value is None:
                continue
            text = value if isinstance(value, str) else str(value)
            length = _SECRETS[column]
            if length and (len(text) != length or not _HEX.issuperset(text)):
                log.error("user_auth: %s of user %r is not %d hex digits; ignored", column, username, length)
                continue
            secrets[column] = text.lower() if length else text
        elif value is not None:
            settings[str(column)] = value if isinstance(value, str) else str(value)
    return UserRecord(username, secrets.get("password"), secrets.get("ha1"), secrets.get("ha1_sha256"),
                      MappingProxyType(settings))


class PostgresUsers(CachedUsers):
    """A `UserDirectory` over the user_auth query (prefetched, cached)."""

    def __init__(self, database: Database, realm: str, ttl_s: float, max_entries: int, retry_after_s: int) -> None:
        super().__init__(self._fetch, ttl_s, max_entries, retry_after_s)
        self.database = database
        self.realm = realm

    async def _fetch(self, username: str, call_id: str | None = None) -> UserRecord | None:
        try:
            row = await self.database.fetch_one("user_auth", {"username": username, "realm": self.realm})
        except DatabaseUnavailable as error:
            log.debug("user_auth for %r failed (Call-ID %r): %s", username, call_id, error)
            raise ServiceUnavailable("User Database Unavailable", self.retry_after_s) from None
        return None if row is None else record_from_row(username, row)


def binding_values(username: str | None, realm: str, save: SaveRequest, contact: str, expires: int,
                   binding: Binding | None = None, q: float | None = None, instance_id: str | None = None,
                   reg_id: int | None = None) -> dict[str, object]:
    """The parameters of user_register / user_unregister for one contact."""
    host, port = save.received
    return {
        "username": username,
        "aor": save.aor,
        "domain": aor_domain(save.aor),
        "realm": realm,
        "contact": contact,
        "expires": expires,
        "expires_at": save.now + expires if expires else save.now,
        "callid": save.call_id,
        "cseq": save.cseq,
        "address": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "ip_host": host,
        "ip_port": port,
        "transport": save.transport,
        "user_agent": save.user_agent,
        "instance_id": instance_id if binding is None else binding.instance_id,
        "reg_id": reg_id if binding is None else binding.reg_id,
        "path": ",".join(save.path),
        "q": q if binding is None else binding.q,
    }


class RegistrationMirror:
    """Mirrors binding changes into the database (user_register /
    user_unregister), after the LMDB commit, through a bounded write-behind
    queue. Either query may be missing: that kind of change is not mirrored."""

    def __init__(self, database: Database, realm: str, limit: int) -> None:
        self.database = database
        self.realm = realm
        self.queue = WriteBehind(database, limit, "registration mirror")
        self.on_register = database.has("user_register")
        self.on_unregister = database.has("user_unregister")

    def start(self) -> None:
        self.queue.start()

    def saved(self, username: str | None, save: SaveRequest, bindings: tuple[Binding, ...],
              removed: tuple[Binding, ...]) -> None:
        """One applied REGISTER: `bindings` are the AOR's bindings after it,
        `removed` those a 'Contact: *' took away."""
        realm = self.realm
        if self.on_unregister:
            for binding in removed:
                self.queue.put("user_unregister", binding_values(username, realm, save, binding.contact, 0, binding))
        current = {b.contact: b for b in bindings} if self.on_register else {}
        for update in save.contacts:
            if update.expires == 0:
                if self.on_unregister:
                    self.queue.put("user_unregister", binding_values(
                        username, realm, save, update.contact, 0, None, update.q, update.instance_id, update.reg_id))
            elif self.on_register:
                self.queue.put("user_register", binding_values(
                    username, realm, save, update.contact, update.expires, current.get(update.contact),
                    update.q, update.instance_id, update.reg_id))

    async def close(self) -> None:
        await self.queue.close()


class UserNotifications:
    """LISTEN on `channel`: a NOTIFY whose payload is a username drops that
    user from the caches at once; an empty payload drops every user. Runs on
    its own connection, reconnecting by itself."""

    def __init__(self, dsn: str, channel: str, directories: list[CachedUsers]) -> None:
        self.dsn = dsn
        self.channel = channel
        self.directories = directories
        self._task: asyncio.Task | None = None
        self.received = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        import psycopg
        from psycopg import sql

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5,
                                                                 application_name="fastreg-listen") as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    # Anything changed while we were not listening is dropped too.
                    self._forget(None)
                    async for notify in conn.notifies():
                        self.received += 1
                        self._forget(notify.payload or None)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - keep listening
                log.debug("LISTEN %s: %s; reconnecting", self.channel, error)
            await asyncio.sleep(1.0)

    def _forget(self, username: str | None) -> None:
        for directory in self.directories:
            if username is None:
                directory.forget_all()
            else:
                directory.forget(username)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._task = None


__all__ = ["PostgresUsers", "RegistrationMirror", "UserNotifications", "record_from_row", "binding_values"]
