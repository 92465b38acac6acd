"""One error family for everything the registrar answers with a status code.

Adapters (the worker and transports) catch `SipError` and answer it; any other
exception is a bug, logged with the Call-ID and answered 500 where possible.
"""

from __future__ import annotations


class SipError(Exception):
    """A refusal that maps to a SIP final response."""

    status: int = 500
    reason: str = "Server Internal Error"

    def __init__(self, reason: str | None = None, headers: list[tuple[str, str]] | None = None,
                 status: int | None = None) -> None:
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason
        self.headers: list[tuple[str, str]] = headers or []
        super().__init__(f"{self.status} {self.reason}")


class ParseError(SipError):
    """The message could not be parsed. `partial` holds what was scanned
    before the error (a `SipMessage` or None) so that a request whose Via
    could be read can still be answered 400."""

    status = 400
    reason = "Bad Request"

    def __init__(self, reason: str | None = None, status: int | None = None, partial=None) -> None:
        super().__init__(reason, None, status)
        self.partial = partial


class MessageTooLarge(ParseError):
    """Message exceeds the configured size (413 for a request)."""

    status = 413
    reason = "Request Entity Too Large"


class HeaderTooLong(ParseError):
    """A header line or the header count exceeds its limit."""

    status = 513
    reason = "Message Too Large"


class BadExtension(SipError):
    """Require named an option-tag we do not support (420 with Unsupported)."""

    status = 420
    reason = "Bad Extension"

    def __init__(self, tags: list[str]) -> None:
        super().__init__(None, [("Unsupported", ", ".join(tags))])
        self.tags = tags


class IntervalTooBrief(SipError):
    status = 423
    reason = "Interval Too Brief"

    def __init__(self, min_expires: int) -> None:
        super().__init__(None, [("Min-Expires", str(min_expires))])
        self.min_expires = min_expires


class Forbidden(SipError):
    status = 403
    reason = "Forbidden"


class NotFound(SipError):
    status = 404
    reason = "Not Found"


class TemporarilyUnavailable(SipError):
    status = 480
    reason = "Temporarily Unavailable"


class TooManyHops(SipError):
    status = 483
    reason = "Too Many Hops"


class LoopDetected(SipError):
    status = 482
    reason = "Loop Detected"


class BadGateway(SipError):
    status = 502
    reason = "Bad Gateway"


class FlowFailed(SipError):
    """RFC 5626 11: the binding's connection is gone (not held by this process)."""

    status = 430
    reason = "Flow Failed"


class ProxyAuthenticationRequired(SipError):
    status = 407
    reason = "Proxy Authentication Required"


class MethodNotAllowed(SipError):
    status = 405
    reason = "Method Not Allowed"


class NotImplementedMethod(SipError):
    status = 501
    reason = "Not Implemented"


class ServiceUnavailable(SipError):
    status = 503
    reason = "Service Unavailable"

    def __init__(self, reason: str | None = None, retry_after_s: int = 5) -> None:
        super().__init__(reason, [("Retry-After", str(retry_after_s))])


class RoutingUnavailable(ServiceUnavailable):
    """call_route's database could not answer. Not a refusal: an AOR with
    bindings is still routed to them (as while the users database is down);
    without a binding the request gets this 503."""

    def __init__(self, retry_after_s: int = 5) -> None:
        super().__init__("Routing Database Unavailable", retry_after_s)


class StaleCSeq(SipError):
    """Same Call-ID with a CSeq not above the stored one (RFC 3261 10.3 step 7)."""

    status = 400
    reason = "Invalid CSeq Number"


class ReplayedCredentials(SipError):
    """An Authorization whose (nonce, nc) was already used to change bindings.
    The core answers it with a fresh challenge."""

    status = 401
    reason = "Unauthorized"


class TooManyContacts(SipError):
    status = 403
    reason = "Too Many Contacts"


class LocationFull(ServiceUnavailable):
    """The LMDB map is full: refuse the change, keep what is committed."""

    def __init__(self) -> None:
        super().__init__("Location Table Full", 60)


class LineBusy(SipError):
    """A user of the call is at its maxcalls (the line tracker): 486 Busy Here."""

    status = 486
    reason = "Busy Here"

    def __init__(self, username: str) -> None:
        super().__init__()
        self.username = username


class ConfigError(Exception):
    """A bad configuration value; the message names the key and the reason."""


class ParserUnavailable(RuntimeError):
    """The compiled scanner is not built and the pure parser was not asked for."""
