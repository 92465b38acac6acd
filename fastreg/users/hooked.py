"""Users decided by a hook module's `user_auth`, in front of the configured backend.

The hook answers for a user (`hooks.AuthRequest`): a str (the password), a
`UserAuth` (password / ha1 / ha1_sha256 / settings), a `Refuse` (the
request is answered with its status), or None: no opinion, the configured
backend (file or PostgreSQL) answers. The answer is kept like a database
answer (`users/cached.py`), for `postgres.auth_cache_ttl_s`.
"""

from __future__ import annotations

from fastreg.hooks import AuthRequest, Hooks, Refuse, UserAuth, as_settings, refusal_error
from fastreg.users import UserDirectory, UserRecord
from fastreg.users.cached import CachedUsers

_HEX_LENGTHS = {"ha1": 32, "ha1_sha256": 64}
_HEX = frozenset("0123456789abcdef")


class HookedUsers(CachedUsers):
    def __init__(self, hooks: Hooks, backend: UserDirectory, realm: str, ttl_s: float, max_entries: int,
                 retry_after_s: int) -> None:
        super().__init__(self._fetch, ttl_s, max_entries, retry_after_s)
        self.hooks = hooks
        self.backend = backend
        self.realm = realm

    async def _fetch(self, username: str, call_id: str | None = None) -> UserRecord | None:
        answer = await self.hooks.call("user_auth", AuthRequest(username, self.realm), call_id)
        if answer is None:
            backend = self.backend
            if isinstance(backend, CachedUsers):
                return await backend.fetch(username, call_id)
            return backend.lookup(username)
        if isinstance(answer, str):
            return UserRecord(username, answer)
        if isinstance(answer, UserAuth):
            for name, length in _HEX_LENGTHS.items():
                value = getattr(answer, name)
                if value is not None and (len(value) != length or not _HEX.issuperset(value.lower())):
                    raise self.hooks.refused("user_auth", call_id, answer)
            return UserRecord(username, answer.password, answer.ha1 and answer.ha1.lower(),
                              answer.ha1_sha256 and answer.ha1_sha256.lower(), as_settings(answer.settings))
        if isinstance(answer, Refuse):
            raise refusal_error(answer)
        raise self.hooks.refused("user_auth", call_id, answer)


__all__ = ["HookedUsers"]
