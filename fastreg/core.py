"""The SIP core: one scanned message in, the bytes of the answer out (sans-IO).

`SipCore.handle_request(request, source, now)` hands a REGISTER to the
registrar; every other request goes to `handle_routed`, where the proxy
(`proxy.Proxy`, in redirect or proxy mode) answers what is addressed to the
registrar itself and routes requests for a user; `handle_response` relays
responses to what the proxy forwarded. It catches `SipError` and renders
it; any other exception is a bug, answered 500 and logged with the Call-ID,
and the worker lives on.
"""

from __future__ import annotations

import logging

from fastreg.errors import LineBusy, ParseError, SipError
from fastreg.message import Reply, SipMessage, Source
from fastreg.proxy import Forward, Proxy
from fastreg.ratelog import RateLimitedLog
from fastreg.registrar import (
    PendingRegistration,
    Registrar,
    RegistrationPending,
    check_mandatory,
    first_values,
    parse_cseq,
)
from fastreg.response import build_response
from fastreg.stats import Counters

# Methods counted under their own name; any other is counted as "other" so a
# flood of invented methods cannot grow the counters without bound.
COUNTED_METHODS = frozenset(
    {"REGISTER", "OPTIONS", "INVITE", "ACK", "CANCEL", "BYE", "MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "INFO",
     "UPDATE", "PRACK", "PUBLISH"}
)


class SipCore:
    def __init__(
        self,
        registrar: Registrar | None,
        proxy: Proxy,
        counters: Counters,
        log: RateLimitedLog | None = None,
    ) -> None:
        self.registrar = registrar
        self.proxy = proxy
        self.counters = counters
        self.log = log or RateLimitedLog(logging.getLogger("fastreg.core"))
        self._logger = logging.getLogger("fastreg.core")

    def handle_request(self, request: SipMessage, source: Source, now: float) -> bytes | Forward | None:
        """The response bytes for a REGISTER; any other request is `handle_routed`'s."""
        if request.method != "REGISTER":
            return self.handle_routed(request, source, now)
        self.counters.requests["REGISTER"] += 1
        if not request.vias:
            self.counters.dropped["no-via"] += 1
            return None
        try:
            if request.version.upper() != "SIP/2.0":
                raise SipError("Version Not Supported", status=505)
            reply = self.registrar.register(request, source, now)
        except RegistrationPending:
            raise  # the worker decides, then calls complete_register
        except SipError as error:
            if isinstance(error, ParseError):
                self.counters.parse_errors += 1
                self.log.warning("bad-request", now, "%d to %s: %s", error.status, source.host, error.reason)
            reply = Reply(error.status, error.reason, list(error.headers))
        except Exception:  # a bug: answer 500, keep the worker alive
            self.counters.internal_errors += 1
            self._logger.exception("internal error on REGISTER Call-ID %r", request.get("call-id"))
            reply = Reply(500, "Server Internal Error")
        self.counters.count_response(reply.status)
        return build_response(request, reply.status, reply.reason, source.address, reply.headers)

    def complete_register(self, pending: PendingRegistration, source: Source, now: float,
                          expires: int | None = None, refusal: SipError | None = None,
                          want_removed: bool = False) -> bytes:
        """Finish a REGISTER that `handle_request` left pending (RegistrationPending):
        refused with `refusal`, or written with the granted `expires` (see
        `Registrar.complete`). The request was counted by handle_request."""
        request = pending.request
        try:
            if refusal is not None:
                raise refusal
            reply = self.registrar.complete(pending, now, expires, want_removed)
        except SipError as error:
            reply = Reply(error.status, error.reason, list(error.headers))
        except Exception:  # a bug: answer 500, keep the worker alive
            self.counters.internal_errors += 1
            self._logger.exception("internal error completing REGISTER Call-ID %r", request.get("call-id"))
            reply = Reply(500, "Server Internal Error")
        self.counters.count_response(reply.status)
        return build_response(request, reply.status, reply.reason, source.address, reply.headers)

    def answer_unparsable(self, partial: SipMessage | None, error: ParseError, source: Source, now: float) -> bytes | None:
        """A request that failed to scan: 400/413/513 when its Via could be read, else dropped."""
        self.counters.parse_errors += 1
        if partial is None or not partial.vias or partial.method is None or partial.method == "ACK":
            self.counters.dropped["unparsable"] += 1
            self.log.warning("dropped", now, "dropped unparsable message from %s: %s", source.host, error.reason)
            return None
        self.log.warning("bad-request", now, "%d to %s: %s", error.status, source.host, error.reason)
        self.counters.count_response(error.status)
        return build_response(partial, error.status, error.reason, source.address)

    # -- requests for users, and responses ---------------------------------------------
    #
    # A separate entry point from the REGISTER path, which keeps returning the
    # bytes for the source with nothing more: the worker sends REGISTERs to
    # handle_request and everything else here.

    def handle_routed(self, request: SipMessage, source: Source, now: float,
                      targets: list[str] | SipError | None = None) -> bytes | Forward | None:
        """A request other than REGISTER: the response bytes for the source, a
        `Forward` (the request on its way elsewhere), or None (nothing to send).
        `targets`: call_route's answer (target URIs, or the SipError it
        raised), awaited by the worker before (None: not asked); the core
        stays synchronous."""
        method = request.method or ""
        self.counters.requests[method if method in COUNTED_METHODS else "other"] += 1
        if not request.vias:
            self.counters.dropped["no-via"] += 1
            return None
        proxy = self.proxy
        if method == "ACK" and proxy.acks_our_response(request):
            return None  # before any check: the cheapest way out for the ACK of every 302
        try:
            if request.version.upper() != "SIP/2.0":
                raise SipError("Version Not Supported", status=505)
            first = first_values(request)
            check_mandatory(request, first)
            parse_cseq(request, first)
            outcome = proxy.route(request, first, source, now, targets)
        except SipError as error:
            if method == "ACK":  # an ACK is never answered (17.1.1.3): what cannot go on is dropped
                self.counters.dropped["ack-not-routed"] += 1
                return None
            if isinstance(error, ParseError):
                self.counters.parse_errors += 1
                self.log.warning("bad-request", now, "%d to %s: %s", error.status, source.host, error.reason)
            elif isinstance(error, LineBusy):
                self.counters.calls["refused-busy"] += 1
            outcome = Reply(error.status, error.reason, list(error.headers))
        except Exception:  # a bug: answer 500, keep the worker alive
            self.counters.internal_errors += 1
            self._logger.exception("internal error on %s Call-ID %r", method, request.get("call-id"))
            if method == "ACK":
                return None
            outcome = Reply(500, "Server Internal Error")
        if outcome is None:
            return None
        if isinstance(outcome, Forward):
            self.counters.forwarded["requests"] += 1
            return outcome
        self.counters.count_response(outcome.status)
        return build_response(request, outcome.status, outcome.reason, source.address, outcome.headers)

    def handle_response(self, response: SipMessage, source: Source, now: float) -> Forward | None:
        """A response: relayed upstream when its top Via is ours, else dropped and counted."""
        proxy = self.proxy
        vias = response.vias
        if not vias or not proxy.is_ours(vias[0]):
            self.counters.dropped["response"] += 1
            return None
        if len(vias) < 2:
            self.counters.dropped["response-no-via-left"] += 1
            return None
        try:
            forward = proxy.forward_response(response, now)
        except SipError as error:
            self.counters.dropped["response-unroutable"] += 1
            self.log.warning("bad-response", now, "dropped a response from %s: %s", source.host, error.reason)
            return None
        except Exception:  # a bug: drop it, keep the worker alive
            self.counters.internal_errors += 1
            self._logger.exception("internal error on a response, Call-ID %r", response.get("call-id"))
            return None
        if forward is None:
            return None
        self.counters.forwarded["responses"] += 1
        return forward
