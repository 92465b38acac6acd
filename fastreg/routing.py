"""The location service answering requests for a user, as a redirect server.

A request whose Request-URI names an AOR is answered `302 Moved Temporarily`
with the AOR's contacts ordered by q (each with its q), `404` when the user
is unknown, `480` when the user exists but has no binding, and `483` when
Max-Forwards is 0.

The worker routes through `proxy.Proxy` instead (both modes: it adds
alternatives, the registered-contact rule and proxy mode, and uses
`request_aor` from here); `Redirector` remains the router of a `SipCore`
built without a proxy (the registrar's unit tests).
"""

from __future__ import annotations

from fastreg.errors import NotFound, ParseError, TemporarilyUnavailable, TooManyHops
from fastreg.location import LocationService
from fastreg.message import Reply, SipMessage
from fastreg.response import format_contact, format_q
from fastreg.uri import aor_domain, aor_user, canonical_aor
from fastreg.users import UserDirectory


class Redirector:
    def __init__(self, location: LocationService, users: UserDirectory, serves_domain) -> None:
        self.location = location
        self.users = users
        self.serves_domain = serves_domain

    def route(self, request: SipMessage, aor: str, now: float) -> Reply:
        max_forwards = request.get("max-forwards")
        if max_forwards is not None and max_forwards.strip() == "0":
            raise TooManyHops()
        if not self.serves_domain(aor_domain(aor)):
            raise NotFound("Domain Not Served")
        bindings = self.location.lookup(aor, now)
        if not bindings:
            user = aor_user(aor)
            if user is None or self.users.lookup(user) is None:
                raise NotFound()
            raise TemporarilyUnavailable()
        # lookup() returns the bindings ordered by q (highest first), then most recent.
        contacts = [
            ("Contact", format_contact(b.contact, [("q", format_q(1.0 if b.q is None else b.q))]))
            for b in bindings
        ]
        return Reply(302, "Moved Temporarily", contacts)


def request_aor(request: SipMessage) -> str:
    try:
        return canonical_aor(request.request_uri or "")
    except ParseError as error:
        if error.status == 416:  # RFC 3261 8.2.2.1: tel and other schemes we do not route
            raise
        raise ParseError("Malformed Request-URI") from None
