"""The address-of-record a request is for (its Request-URI, canonical).

Routing itself (redirect and proxy modes, RFC 3261 16) is `proxy.Proxy`.
"""

from __future__ import annotations

from fastreg.errors import ParseError
from fastreg.message import SipMessage
from fastreg.uri import canonical_aor


def request_aor(request: SipMessage) -> str:
    try:
        return canonical_aor(request.request_uri or "")
    except ParseError as error:
        if error.status == 416:  # RFC 3261 8.2.2.1: tel and other schemes we do not route
            raise
        raise ParseError("Malformed Request-URI") from None
