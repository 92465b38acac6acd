"""An example hook module for fastreg: `[hooks] module = "conf/hooks_example.py"`.

fastreg calls the functions a hook module defines, and only those:

    user_auth(AuthRequest)             -> str | UserAuth | Refuse | None
    user_register(RegisterRequest)     -> Accept | Refuse | None
    user_unregister(UnregisterRequest) -> None
    call_route(RouteRequest)           -> list[str] | Refuse | None

The argument and result types are in `fastreg.hooks`. A function may be
plain or `async def`: an async hook runs on the worker's event loop and must
not block it (await your I/O); a plain one runs in a thread pool and may
block. A hook that raises, returns anything else than listed, or runs longer
than `hooks.timeout_s` is logged with the Call-ID and the request is answered
`hooks.failure_status` (500 by default); the worker goes on.

None always means "no opinion": for user_auth the configured users backend
(the regfile or PostgreSQL) answers; for user_register the registration is
accepted as the registrar decided; for call_route nothing is added.

This example keeps its data in module-level dictionaries. Each worker
process imports the module on its own: state is per worker, not shared.
"""

from __future__ import annotations

import asyncio
import hashlib

from fastreg.hooks import (
    Accept,
    AuthRequest,
    Refuse,
    RegisterRequest,
    RouteRequest,
    UnregisterRequest,
    UserAuth,
)

# Users this module knows itself. Anyone else is left to the users backend.
GUESTS = {"guest1": "guest-password-1", "guest2": "guest-password-2"}
# Users whose secret is kept as HA1 (md5 of "user:realm:password").
HA1_USERS = {"kiosk": hashlib.md5(b"kiosk:fastreg.local:kiosk-password").hexdigest()}
# Users that may not register at all, whatever their password.
BARRED = {"barred"}
# Guests get short registrations: their bindings live 5 minutes at most.
GUEST_EXPIRES = 300
# Call forwarding: a call for the key also goes to these targets (after its own contacts, if any).
FORWARDS = {"helpdesk": ["sip:alice@fastreg.local", "sip:bob@fastreg.local"]}

# What happened, for the curious (and the tests): per worker.
unregistered: list[tuple[str, tuple[str, ...]]] = []


def user_auth(request: AuthRequest):
    """The secret of `request.username` (asked once per user per cache period,
    postgres.auth_cache_ttl_s): a str is the plain password; `UserAuth` holds
    any of password / ha1 / ha1_sha256 (and settings); `Refuse` answers every
    request of that user with its status; None leaves the user to the backend."""
    if request.username in BARRED:
        return Refuse(403, "Barred")
    if request.username in GUESTS:
        return GUESTS[request.username]
    if request.username in HA1_USERS:
        return UserAuth(ha1=HA1_USERS[request.username], settings={"maxcalls": "1"})
    return None


async def user_register(request: RegisterRequest):
    """An authenticated REGISTER that adds or refreshes bindings, before it is
    written: `Accept(expires=N)` grants N seconds to each of its contacts
    (capped at registrar.max_expires), `Refuse(status, reason)` answers it,
    None accepts it as it is."""
    await asyncio.sleep(0)  # an async hook may await I/O here (a database, an HTTP service)
    if request.username in GUESTS:
        if len(request.contacts) > 1:
            return Refuse(403, "Guests Register One Device")
        return Accept(expires=GUEST_EXPIRES)
    return None


def user_unregister(request: UnregisterRequest) -> None:
    """Bindings were removed (expires 0 or 'Contact: *'); after the fact, cannot refuse."""
    unregistered.append((request.aor, request.contacts))


def call_route(request: RouteRequest):
    """Extra targets for a request to `request.called` (asked for every
    out-of-dialog INVITE, MESSAGE, SUBSCRIBE, ... for a user of a served
    domain, registered or not): a list of SIP URIs, a `Refuse` to refuse the
    call, or None (nothing added; the call_route query, if any, is asked).

    Redirect mode: the 302 lists the targets after the user's contacts (with
    a lower q). Proxy mode: a number without binding goes to the first
    target; a target in the called domain, as here, is another user, reached
    at its best binding (skipped when it has none); any other target must
    name an IP address (no DNS)."""
    if request.called == "nobody-home":
        return Refuse(480, "Nobody Home")
    return FORWARDS.get(request.called)
