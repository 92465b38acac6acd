"""The worker's path for requests that wait on something slow before or
during the core: a user from the database or a hook (user_auth), a
user_register hook's decision, the registration mirror.

The sans-IO core stays synchronous. What it will need is resolved before it
runs: for a REGISTER carrying digest credentials, the credentials' username;
for a request routed to a user, the Request-URI's user (the router asks
whether that user exists to tell 404 from 480). When the directory has no
fresh answer for that name, the request waits for `prefetch(name)`, then
the core runs and reads the answer synchronously. Everything else (a
REGISTER without credentials, a user already cached) goes through the core
at once, as on the file backend's path.

Order: requests that wait for the same username are queued behind one
fetch and handled in arrival order, in one step, as soon as it completes;
a request for that name that arrives while the fetch is in flight joins the
queue (even if it would not need it), so a user's REGISTERs (one AOR,
one Call-ID, increasing CSeqs) are never reordered. Requests for other users
are independent (they touch other AORs) and are not held.

user_register hook: the core stops an authenticated REGISTER before its
write (`RegistrationPending`); the hook's answer is awaited and the core
completes it (written with the granted expiry, or refused). Decisions for
one AOR are taken one at a time, in arrival order.

With neither a prefetching directory nor hooks nor a mirror, the worker
does not use this module at all.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastreg import parser
from fastreg.errors import ParseError, SipError
from fastreg.hooks import Accept, HookFailed, Hooks, Refuse, RegisterRequest, UnregisterRequest, refusal_error
from fastreg.core import ROUTED_METHODS
from fastreg.message import SipMessage, Source
from fastreg.registrar import PendingRegistration, RegistrationPending
from fastreg.response import response_destination
from fastreg.routing import request_aor
from fastreg.uri import aor_user
from fastreg.users.cached import CachedUsers
from fastreg.users.pg import RegistrationMirror

log = logging.getLogger("fastreg.worker")


def credentials_username(request: SipMessage, realm: str) -> str | None:
    """The username of the digest credentials the registrar will check (the
    first Digest Authorization for our realm), or None."""
    for value in request.get_all("authorization"):
        try:
            credentials = parser.parse_credentials(value)
        except ParseError:
            return None  # the core answers 400
        if credentials.scheme.lower() == "digest" and credentials.get("realm") == realm:
            return credentials.get("username") or ""
    return None


def needed_username(request: SipMessage, realm: str) -> str | None:
    """The user the core may look up for this request, or None."""
    method = request.method
    if method == "REGISTER":
        return credentials_username(request, realm)
    if method in ROUTED_METHODS:
        try:
            return aor_user(request_aor(request))
        except (ParseError, ValueError):
            return None
    return None


class AsyncPath:
    """Message handling with waits, for one worker (see the module docstring).

    `worker` provides `core`, `limits`, `counters`, `deliver` and
    `registrar` (read at each request: SIGHUP may swap them)."""

    def __init__(self, worker, users: CachedUsers | None, hooks: Hooks | None,
                 mirror: RegistrationMirror | None) -> None:
        self.worker = worker
        self.users = users
        self.hooks = hooks
        self.mirror = mirror
        self.decides = hooks is not None and hooks.has("user_register")
        self.notifies_unregister = hooks is not None and hooks.has("user_unregister")
        self.want_removed = self.notifies_unregister or (mirror is not None and mirror.on_unregister)
        self._waiting: dict[str, list] = {}  # username -> [(message, source, send)] behind one fetch
        self._deciding: dict[str, list] = {}  # AOR -> [(pending, source, send)] behind one decision
        self._tasks: set[asyncio.Task] = set()
        self._unregister_order: asyncio.Lock | None = None
        self.deferred = 0  # requests that waited for a fetch

    @property
    def defer_commit(self) -> bool:
        return self.decides or self.mirror is not None or self.notifies_unregister

    # -- in ---------------------------------------------------------------

    def handle(self, data: bytes, host: str, port: int, transport: str, send) -> None:
        """One message in; every answer goes out through `send(data, destination)`."""
        worker = self.worker
        now = time.time()
        source = Source(host, port, transport)
        try:
            message = parser.parse_message(data, **worker.limits)
        except ParseError as error:
            outcome = worker.unparsable(error, source, now)
            if outcome is not None:
                send(*outcome)
            return
        if message.method is None:  # a response: relayed if we forwarded its request (proxy mode)
            self._run(message, source, send, now)
            return
        users = self.users
        if users is not None and message.vias:
            username = needed_username(message, worker.registrar.policy.realm)
            if username is not None:
                waiting = self._waiting.get(username)
                if waiting is not None:
                    waiting.append((message, source, send))
                    return
                if users.needs_prefetch(username):
                    self._waiting[username] = [(message, source, send)]
                    self.deferred += 1
                    self._spawn(self._fetch_then_run(username))
                    return
        self._run(message, source, send, now)

    async def _fetch_then_run(self, username: str) -> None:
        try:
            await self.users.prefetch(username, self._waiting[username][0][0].get("call-id"))
        except Exception:  # a bug in a source: its requests get 503 (nothing kept), the worker lives on
            log.exception("fetching user %r failed", username)
        waiting = self._waiting.pop(username, [])
        now = time.time()
        for message, source, send in waiting:
            self._run(message, source, send, now)

    # -- the core ---------------------------------------------------------

    def _run(self, message: SipMessage, source: Source, send, now: float) -> None:
        if message.method != "REGISTER":
            # routed requests and responses: the worker's own dispatch (redirect or proxy)
            outcome = self.worker.dispatch(message, source, now)
            if outcome is not None:
                send(*outcome)
            return
        try:
            response = self.worker.core.handle_request(message, source, now)
        except RegistrationPending as stopped:
            pending = stopped.pending
            if not self.decides:
                response = self._complete(pending, source, now)
            else:
                aor = pending.save.aor
                queue = self._deciding.get(aor)
                if queue is not None:
                    queue.append((pending, source, send))
                else:
                    self._deciding[aor] = []
                    self._spawn(self._decide_all(aor, (pending, source, send)))
                return
        if response is not None:
            send(response, response_destination(message.vias[0], source.address))

    def _complete(self, pending: PendingRegistration, source: Source, now: float, expires: int | None = None,
                  refusal: SipError | None = None) -> bytes:
        response = self.worker.core.complete_register(pending, source, now, expires, refusal, self.want_removed)
        if refusal is None and pending.changed:
            save = pending.save
            if self.mirror is not None:
                self.mirror.saved(pending.username, save, pending.bindings, pending.removed)
            if self.notifies_unregister:
                removed = tuple(b.contact for b in pending.removed) + tuple(
                    u.contact for u in save.contacts if u.expires == 0)
                if removed:
                    request = UnregisterRequest(pending.username, save.aor, removed, save.call_id, save.received[0],
                                                save.received[1])
                    self._spawn(self._notify_unregister(request))
        return response

    async def _decide_all(self, aor: str, item) -> None:
        try:
            while item is not None:
                await self._decide(*item)
                queue = self._deciding.get(aor)
                item = queue.pop(0) if queue else None
        finally:
            self._deciding.pop(aor, None)

    async def _decide(self, pending: PendingRegistration, source: Source, send) -> None:
        save = pending.save
        expires: int | None = None
        refusal: SipError | None = None
        added = tuple((u.contact, u.expires) for u in save.contacts if u.expires > 0)
        if added:  # only a REGISTER that adds or refreshes bindings asks (removals are not refused)
            request = RegisterRequest(
                pending.username, save.aor, added, tuple(u.contact for u in save.contacts if u.expires == 0),
                save.remove_all, save.call_id, save.cseq, save.received[0], save.received[1], save.transport,
                save.user_agent)
            try:
                answer = await self.hooks.call("user_register", request, save.call_id)
                if isinstance(answer, Refuse):
                    refusal = refusal_error(answer)
                elif isinstance(answer, Accept):
                    if answer.expires is not None:
                        if isinstance(answer.expires, bool) or not isinstance(answer.expires, int) \
                                or answer.expires < 1:
                            raise self.hooks.refused("user_register", save.call_id, answer)
                        expires = answer.expires
                elif answer is not None:
                    raise self.hooks.refused("user_register", save.call_id, answer)
            except HookFailed as error:
                refusal = error
        response = self._complete(pending, source, time.time(), expires, refusal)
        send(response, response_destination(pending.request.vias[0], source.address))

    async def _notify_unregister(self, request: UnregisterRequest) -> None:
        # One at a time, in the order of the removals (asyncio.Lock is FIFO):
        # a plain hook runs in a thread pool, where two calls could overtake.
        if self._unregister_order is None:
            self._unregister_order = asyncio.Lock()
        async with self._unregister_order:
            try:
                await self.hooks.call("user_unregister", request, request.call_id)
            except HookFailed:
                pass  # logged by the hook runner; the removal stands

    # -- tasks ------------------------------------------------------------

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.worker.counters.internal_errors += 1
            log.error("request task failed", exc_info=task.exception())

    async def drain(self, timeout_s: float) -> None:
        """At stop: let the requests in flight finish (at most `timeout_s`)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)


__all__ = ["AsyncPath", "credentials_username", "needed_username"]
