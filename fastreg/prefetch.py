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

call_route (a `CallRouter`: the hook, then the database): an out-of-dialog
request routed to a user (`Proxy.wants_call_route`) waits for its lookup
(and for its Request-URI and From users, when the directory has no fresh
answer for them), then the core runs with the targets as an argument.
Requests of the same Call-ID that arrive meanwhile (a retransmission, the
CANCEL) queue behind the lookup and are handled in arrival order, with its
answer. The answer is kept per Call-ID (`routing.max_setup_s`, at most
ROUTES_KEPT per worker), for the requests that must go where the INVITE
went without a lookup of their own: its CANCEL, the ACK of a non-2xx
answer (both carry the INVITE's Request-URI) and its retransmissions. A
CANCEL whose answer is no longer kept (another worker saw the INVITE, or it
was dropped) asks again, as its INVITE did. Without call_route, in proxy
mode with calls tracked and users from a slow source, such a request waits
the same way (by Call-ID) when its users are not fresh: the From user's
line is counted too.

With neither a prefetching directory nor hooks nor a mirror nor call_route,
the worker does not use this module at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from fastreg import parser
from fastreg.errors import ParseError, SipError
from fastreg.hooks import Accept, HookFailed, Hooks, Refuse, RegisterRequest, UnregisterRequest, refusal_error
from fastreg.message import SipMessage, Source
from fastreg.proxy import ROUTED_METHODS, header_user
from fastreg.registrar import PendingRegistration, RegistrationPending, digest_credentials
from fastreg.response import response_destination
from fastreg.routing import request_aor
from fastreg.uri import aor_domain, aor_user, canonical_aor
from fastreg.users.cached import CachedUsers
from fastreg.users.pg import RegistrationMirror

if TYPE_CHECKING:
    from fastreg.pgcalls import CallRouter

log = logging.getLogger("fastreg.worker")

ROUTES_KEPT = 10000  # call_route answers kept per worker for the CANCELs and ACKs to come (oldest go first)


def credentials_username(request: SipMessage, realm: str) -> str | None:
    """The username of the digest credentials the registrar will check, or None."""
    try:
        credentials = digest_credentials(request, realm)
    except ParseError:
        return None  # the core answers 400
    return None if credentials is None else credentials.get("username") or ""


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
                 mirror: RegistrationMirror | None, router: CallRouter | None = None) -> None:
        self.worker = worker
        self.users = users
        self.hooks = hooks
        self.mirror = mirror
        self.router = router
        self._routing: dict[str, list] = {}  # Call-ID -> [(message, source, send)] behind one call_route
        self._routes: dict[str, tuple[float, str, list[str]]] = {}  # Call-ID -> (until, Request-URI, targets)
        self.decides = hooks is not None and hooks.has("user_register")
        self.notifies_unregister = hooks is not None and hooks.has("user_unregister")
        self.want_removed = self.notifies_unregister or (mirror is not None and mirror.on_unregister)
        self._waiting: dict[str, list] = {}  # username -> [(message, source, send)] behind one fetch
        self._deciding: dict[str, list] = {}  # AOR -> [(pending, source, send)] behind one decision
        self._tasks: set[asyncio.Task] = set()
        self._unregister_order: asyncio.Lock | None = None
        self.deferred = 0  # requests that waited for a fetch

    @property
    def tracks_callers(self) -> bool:
        """Users from a slow source and calls tracked (proxy mode): an INVITE
        needs its From user too (its line), fetched before the core."""
        return self.users is not None and self.worker.proxy.tracker is not None

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
        if (self.router is not None or self.tracks_callers) and message.vias \
                and self._route_first(message, source, send, now):
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
        await self._fetch_users([username], self._waiting[username][0][0].get("call-id"))
        waiting = self._waiting.pop(username, [])
        now = time.time()
        for message, source, send in waiting:
            self._run(message, source, send, now)

    # -- call_route ---------------------------------------------------------

    def _route_first(self, message: SipMessage, source: Source, send, now: float) -> bool:
        """The requests of a call that wait before the core: for call_route,
        and for the users the core will look up (see the module docstring).
        True: the request was taken (queued, waiting, or handled)."""
        if message.method == "REGISTER":
            return False
        call_id = message.get("call-id") or ""
        queue = self._routing.get(call_id)
        if queue is not None:  # a lookup for this Call-ID runs: in line behind it
            queue.append((message, source, send))
            return True
        proxy = self.worker.proxy
        method = message.method
        routes = self.router is not None
        targets = None
        if method == "CANCEL" or method == "ACK":
            if not routes:
                return False
            targets = self._kept(call_id, message.request_uri, now)
            if targets is not None:
                self._run(message, source, send, now, targets)
                return True
            if not proxy.wants_call_route(message, cancel=True):
                return False
        elif not proxy.wants_call_route(message):
            return False
        elif routes:
            targets = self._kept(call_id, message.request_uri, now)
        names = self._names_to_fetch(message)
        if not names:
            if not routes:
                return False
            if targets is not None:
                self._run(message, source, send, now, targets)
                return True
        self._routing[call_id] = [(message, source, send)]
        self.deferred += 1
        self._spawn(self._route_then_run(call_id, message, source, names, targets))
        return True

    def _names_to_fetch(self, message: SipMessage) -> list[str]:
        """The users the core will look up for a routed request (the called
        user: 404 or 480; the caller of an INVITE: its line) that the
        directory has no fresh answer for."""
        users = self.users
        if users is None:
            return []
        names = []
        caller = header_user(message.get("from")) if message.method == "INVITE" else None
        for name in (needed_username(message, self.worker.registrar.policy.realm), caller):
            if name and name not in names and users.needs_prefetch(name):
                names.append(name)
        return names

    async def _route_then_run(self, call_id: str, message: SipMessage, source: Source, names: list[str],
                              targets: list[str] | None) -> None:
        outcome: list[str] | SipError | None = targets
        try:
            await self._fetch_users(names, call_id)
            if outcome is None and self.router is not None:
                outcome = await self._call_route(message, source, call_id)
                await self._fetch_users(self._target_users(message, outcome), call_id)
        finally:
            waiting = self._routing.pop(call_id, [])
        now = time.time()
        if isinstance(outcome, list):
            self._keep(call_id, message.request_uri or "", outcome, now)
        ruri = message.request_uri
        for queued, queued_source, send in waiting:
            if queued.request_uri != ruri:
                answer = None  # (another request sharing the Call-ID: not this lookup's)
            elif queued.method in ("CANCEL", "ACK"):
                answer = outcome if isinstance(outcome, list) else None  # they follow; a refusal is not theirs
            else:
                answer = outcome
            self._run(queued, queued_source, send, now, answer)

    async def _fetch_users(self, names: list[str], call_id: str) -> None:
        for name in names:
            try:
                await self.users.prefetch(name, call_id)
            except Exception:  # a bug in a source: its requests get 503 (nothing kept), the worker lives on
                log.exception("fetching user %r failed", name)

    async def _call_route(self, message: SipMessage, source: Source, call_id: str) -> list[str] | SipError:
        try:
            aor = request_aor(message)
        except (ParseError, ValueError):
            return []  # the core answers 400
        method = message.method if message.method != "CANCEL" else "INVITE"  # a CANCEL asks as its INVITE did
        counted = self.worker.counters.call_route
        counted["asked"] += 1
        try:
            targets = await self.router.call_route(aor_user(aor) or "", header_user(message.get("from")), call_id,
                                                   method or "", aor_domain(aor), source.host, source.port,
                                                   source.transport)
        except SipError as error:
            # 5xx: the database or the hook failed; anything else: the route refused the call
            counted["failed" if error.status >= 500 else "refused"] += 1
            return error
        except Exception:  # a bug: answered 500 by the core, logged with the Call-ID; the worker lives on
            counted["failed"] += 1
            log.exception("call_route failed (Call-ID %r)", call_id)
            return SipError("Server Internal Error", status=500)
        if targets:
            counted["targets"] += 1
        return targets

    def _target_users(self, message: SipMessage, outcome) -> list[str]:
        """Users of ours among the targets (same domain as the Request-URI:
        the proxy reaches them through their bindings and counts their
        line), that the directory has no fresh answer for."""
        if self.users is None or not isinstance(outcome, list) or self.worker.proxy.policy.mode != "proxy":
            return []
        try:
            domain = aor_domain(request_aor(message))
        except (ParseError, ValueError):
            return []
        names = []
        for target in outcome:
            try:
                aor = canonical_aor(target)
            except ParseError:
                continue
            name = aor_user(aor)
            if name and aor_domain(aor) == domain and name not in names and self.users.needs_prefetch(name):
                names.append(name)
        return names

    def _kept(self, call_id: str, request_uri: str | None, now: float) -> list[str] | None:
        """The kept call_route answer of this Call-ID, if it was for this Request-URI."""
        entry = self._routes.get(call_id)
        if entry is None:
            return None
        until, ruri, targets = entry
        if until <= now:
            del self._routes[call_id]
            return None
        return targets if ruri == request_uri else None

    def _keep(self, call_id: str, request_uri: str, targets: list[str], now: float) -> None:
        routes = self._routes
        routes.pop(call_id, None)  # re-inserted last: the dict's order is the eviction order
        routes[call_id] = (now + self.worker.config.routing.max_setup_s, request_uri, targets)
        while len(routes) > ROUTES_KEPT:
            del routes[next(iter(routes))]

    # -- the core ---------------------------------------------------------

    def _run(self, message: SipMessage, source: Source, send, now: float,
             targets: list[str] | SipError | None = None) -> None:
        if message.method != "REGISTER":
            # routed requests and responses: the worker's own dispatch (redirect or proxy)
            outcome = self.worker.dispatch(message, source, now, targets)
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
