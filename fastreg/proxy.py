"""Requests for a user, and the responses to what we forwarded: the stateless
proxy of RFC 3261 section 16.11, and the redirect server (sans-IO).

`Proxy.route(request, first, source, now)` decides what happens to a
request that is not a REGISTER: a `Reply` to send back (a 302 in redirect
mode, an error), a `Forward` (the bytes of the request as it goes on, where to,
and the call events it caused), or None (an ACK to absorb).
`Proxy.forward_response(response, now)` relays a response by its Via.

Routing rules (both modes unless said):

- Route (proxy mode): a top Route naming us is removed (16.4); with Route
  entries left, the request goes to the first one, Request-URI unchanged
  (loose routing, 16.12). A Route entry without `lr` is treated as a loose
  router too (strict routers are not supported). Forwarding to a hop that
  is not a registered contact (the next Route entry, or the Request-URI of
  a request whose only Route was ours) is allowed for requests of a dialog
  we record-routed (our Route entry and a To tag) and for trusted peers
  (an SBC's preloaded Route); anything else gets 403 "Relaying Denied".
- Otherwise the Request-URI is an AOR: its bindings, and those of every user
  whose `alternatives=` lists the dialled number. Proxy mode forwards to the
  best binding (highest q, then most recent) with the Request-URI set to its
  contact and its Path as the Route set; redirect mode answers 302 with them
  all. A Request-URI with `gr=` selects the binding of that instance.
- call_route targets (`targets`, awaited by the worker before: see
  `wants_call_route` for which requests): redirect mode lists them in the
  302 after the bindings (see `_target_contacts` for their q), or alone
  when there is no binding; proxy mode forwards to the first of them when
  the AOR has no binding (Request-URI = the target, no Route; its host
  must be an IP address; a target in the called domain is another user,
  reached at its best binding, or skipped without one: `_first_target`),
  tracked as any call. The CANCEL and the non-2xx
  ACK get the INVITE's targets, and follow it. A SipError in their place
  is answered (with bindings, a `RoutingUnavailable` is not: they route).
- A Request-URI that is a registered contact rather than an AOR (a UA that
  followed our 302, or a GRUU) is *forwarded* to that contact, in both modes:
  redirecting it to itself would loop (as Kamailio does with Linphone); in
  redirect mode this hop is stateless and stays off the dialog (no
  Record-Route, no call tracking). The contact is recognised by looking up
  the To AOR: a UA recursing on a 3xx keeps the To (RFC 3261 8.1.3.4).
- The destination is the first Route hop, else the contact, else (a private
  contact address registered from another address, i.e. behind NAT, or a
  contact that names a host rather than an address) the address the
  REGISTER came from, with its transport. No DNS: a next hop that is a host
  name we cannot reach gets 502.
- Max-Forwards: 483 at 0, else decremented (70 when absent). Our Via carries
  `branch=z9hG4bK-fr<h1><h2>`: h1 hashes the incoming top branch (so a
  retransmission, the CANCEL and the non-2xx ACK get the same branch), h2
  the fields that identify the request as we received it (Request-URI,
  Call-ID, CSeq number, From tag); a request that already carries our Via
  with the same h2 came back unchanged: 482 Loop Detected (16.3 step 4).
  A spiral (the Request-URI changed) passes.
- Calls (proxy mode with Record-Route and a line tracker): a forwarded
  INVITE without To tag starts a call for the caller (when the From user is
  one of ours) and the callee, refused with 486 when one of them is at its
  maxcalls; the first 2xx answers it; a non-2xx final response before the
  answer ends it, as does a BYE.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from fastreg import parser
from fastreg.bindings import Binding, sort_key
from fastreg.auth import AuthStatus
from fastreg.calls import CallRecord
from fastreg.errors import (
    BadExtension,
    BadGateway,
    FlowFailed,
    LoopDetected,
    ProxyAuthenticationRequired,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    NotImplementedMethod,
    ParseError,
    RoutingUnavailable,
    ServiceUnavailable,
    SipError,
    TemporarilyUnavailable,
    TooManyHops,
)
from fastreg.linetracker import TrackedCall
from fastreg.message import DISPLAY_NAMES, NameAddr, Reply, SipMessage, Source, Via
from fastreg.registrar import check_require, digest_credentials, option_tags
from fastreg.response import format_contact, format_q, to_tag_for, top_via_for_response
from fastreg.routing import request_aor
from fastreg.uri import aor_domain, aor_user, canonical_aor, contacts_equal, parse_uri

BRANCH_PREFIX = "z9hG4bK-fr"
DEFAULT_MAX_FORWARDS = 70
# Methods that address a user and are routed (CANCEL and ACK follow the request they belong to).
ROUTED_METHODS = frozenset(
    {"INVITE", "MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "INFO", "UPDATE", "PRACK", "PUBLISH", "BYE", "OPTIONS"}
)
ALLOWED_METHODS = "REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE, MESSAGE, SUBSCRIBE, NOTIFY, REFER, INFO, UPDATE, PRACK, PUBLISH"
ALLOW_AT_REGISTRAR = "REGISTER, OPTIONS"
# Requests that may create a dialog: Record-Route goes into these.
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})


@dataclass(frozen=True, slots=True)
class Hop:
    """Where a message goes: an IP address, a port and a transport ("UDP"/"TCP")."""

    host: str
    port: int
    transport: str


@dataclass(slots=True)
class CallEvent:
    """What a forwarded message did to a call: "start", "answer" or "end"."""

    kind: str
    call: TrackedCall


@dataclass(slots=True)
class Forward:
    """A message to send somewhere else than back to its source."""

    data: bytes
    hop: Hop
    events: list[CallEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    mode: str = "redirect"  # "redirect" | "proxy"
    # our sent-by per transport ("UDP"/"TCP" -> (host, port)), written in Via and Record-Route
    advertise: tuple[tuple[str, str, int], ...] = (("UDP", "127.0.0.1", 5060),)
    # (host lower case without brackets, port) of every address that is us, for Route and loop checks
    own_addresses: frozenset[tuple[str, int]] = frozenset()
    record_route: bool = True
    authenticate_callers: bool = False
    max_calls_per_user: int = 0

    def sent_by(self, transport: str) -> tuple[str, int]:
        for kind, host, port in self.advertise:
            if kind == transport:
                return host, port
        return self.advertise[0][1], self.advertise[0][2]


@lru_cache(maxsize=4096)
def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _transport_of(uri, default: str) -> str:
    """The URI's transport parameter, upper case (`default` without one)."""
    for name, value in uri.params:
        if name.lower() == "transport" and value:
            return value.upper()
    return default


def _hop_of_uri(uri_text: str, default_transport: str = "UDP") -> Hop:
    """The next hop named by a SIP URI (its host must be an IP address: no DNS here)."""
    try:
        uri = parse_uri(uri_text)
    except ParseError:
        raise ParseError("Malformed Route") from None
    transport = _transport_of(uri, default_transport)
    if transport not in ("UDP", "TCP"):
        raise BadGateway("Unsupported Transport To Next Hop")
    if _ip(uri.host) is None:
        raise BadGateway("Next Hop Is Not An IP Address")
    return Hop(uri.host.strip("[]"), uri.port or 5060, transport)


@lru_cache(maxsize=8192)  # a binding is called again and again
def _hop_of_contact(contact: str, received_host: str, received_port: int, received_transport: str) -> Hop:
    try:
        uri = parse_uri(contact)
    except ParseError:
        raise BadGateway("Malformed Contact In Binding") from None
    transport = _transport_of(uri, "UDP")
    address = _ip(uri.host)
    if address is None or (address.is_private and address != _ip(received_host)):
        # A host name (no DNS here), or a private address registered from
        # elsewhere (behind NAT): the address the REGISTER came from.
        return Hop(received_host, received_port, received_transport.upper())
    if transport not in ("UDP", "TCP"):
        raise BadGateway("Unsupported Transport To Contact")
    return Hop(uri.host.strip("[]"), uri.port or 5060, transport)


@lru_cache(maxsize=1024)  # a few dozen header names, over and over
def display_name(name: str) -> str:
    return DISPLAY_NAMES.get(name) or "-".join(part.capitalize() for part in name.split("-"))


def _tag(value: str | None) -> str:
    return _tag_of(value) if value else ""


@lru_cache(maxsize=8192)  # each message of a call repeats its From and To
def _tag_of(value: str) -> str:
    try:
        return parser.parse_name_addr(value).param("tag") or ""
    except ParseError:
        return ""


def header_user(value: str | None) -> str:
    """The user part of a From/To header ("" when there is none or it does not parse)."""
    if not value:
        return ""
    try:
        return parse_uri(parser.parse_name_addr(value).uri).user or ""
    except ParseError:
        return ""


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode("utf-8", "surrogateescape"), digest_size=5).hexdigest()


class Proxy:
    """Routing of requests for users, in redirect or proxy mode. One per worker.

    `tracker` is the line tracker (None: calls are not tracked);
    `can_reach(hop)` tells whether the worker can send to a hop (a TCP hop
    needs a connection this process holds); `is_trusted(ip)` whether a
    source is a trusted peer (not asked for credentials);
    `refuse_new_calls` is set by the worker to a reason while a critical CDR
    sink is failing (new calls get 503).
    """

    def __init__(self, policy: ProxyPolicy, location, users, serves_domain: Callable[[str], bool],
                 tracker=None, authenticator=None, can_reach: Callable[[Hop], bool] | None = None,
                 is_trusted: Callable[[str], bool] | None = None) -> None:
        self.policy = policy
        self.location = location
        self.users = users
        self.serves_domain = serves_domain
        self.tracker = tracker
        self.authenticator = authenticator
        self.can_reach = can_reach or (lambda hop: hop.transport == "UDP")
        self.is_trusted = is_trusted or (lambda ip: False)
        self.refuse_new_calls: str | None = None

    # -- requests ------------------------------------------------------------------

    def route(self, request: SipMessage, first: dict[str, str], source: Source, now: float,
              targets: list[str] | SipError | None = None) -> Reply | Forward | None:
        """`targets`: what call_route answered for this request (or for the
        INVITE a CANCEL or ACK belongs to), asked by the worker beforehand:
        the target URIs, or the SipError it raised (answered, unless the
        Request-URI is a registered contact, or the database was unreachable
        and the AOR has bindings); None when it was not asked."""
        if request.method == "CANCEL" and self.policy.mode != "proxy":
            # A redirect server answers every request at once and keeps no
            # transaction, so no CANCEL can match one (RFC 3261 9.2), unless
            # its INVITE was forwarded to a registered contact (then it follows).
            try:
                outcome = self._route(request, first, source, now)
            except SipError:
                outcome = None
            return outcome if isinstance(outcome, Forward) else Reply(481, "Call/Transaction Does Not Exist")
        return self._route(request, first, source, now, targets)

    def wants_call_route(self, request: SipMessage, cancel: bool = False) -> bool:
        """Is call_route asked for this request? An out-of-dialog request (no
        To tag) of a routed method other than BYE, whose Request-URI names a
        user in a served domain, and (proxy mode) that is not loose-routed
        elsewhere by a Route of another hop. With `cancel`: would it have been
        asked for the INVITE of this CANCEL, in proxy mode (the CANCEL must
        follow its INVITE)? Never raises: a request that does not scan is
        answered by the core."""
        method = request.method
        if cancel:
            if method != "CANCEL" or self.policy.mode != "proxy":
                return False
        elif method not in ROUTED_METHODS or method == "BYE":
            return False
        if not request.vias:
            return False
        try:
            if _tag(request.get("to")):
                return False
            if self.policy.mode == "proxy":
                routes = self._routes(request)
                if len(routes) > 1 or (routes and not self._is_us(routes[0].uri)):
                    return False
            aor = request_aor(request)
        except (SipError, ValueError):
            return False
        return aor_user(aor) is not None and self.serves_domain(aor_domain(aor))

    def _route(self, request: SipMessage, first: dict[str, str], source: Source, now: float,
               targets: list[str] | SipError | None = None) -> Reply | Forward | None:
        method = request.method or ""
        is_ack = method == "ACK"  # (the ACK of our own responses was absorbed by the core already)
        if not is_ack and method != "CANCEL" and method not in ROUTED_METHODS:
            raise NotImplementedMethod(headers=[("Allow", ALLOWED_METHODS)])
        proxy_mode = self.policy.mode == "proxy"
        routes: list[NameAddr] = []
        popped = False
        if proxy_mode:
            routes = self._routes(request)
            if routes and self._is_us(routes[0].uri):
                routes.pop(0)
                popped = True
            if routes:  # loose routing: on to the next hop, Request-URI unchanged (16.12)
                self._check_hops(first)
                self._check_relay(first, source, popped)
                self._check_caller(request, first, source, now)
                hop = _hop_of_uri(routes[0].uri)
                return self._forward(request, first, request.request_uri or "", routes, hop, source, now,
                                     in_dialog=True)
        aor = request_aor(request)
        user = aor_user(aor)
        if user is None and not popped:  # addressed to the registrar itself
            return self._to_registrar(request, method)
        self._check_caller(request, first, source, now)
        if proxy_mode:
            if option_tags(request, "proxy-require"):  # we support no extension as a proxy
                raise BadExtension(option_tags(request, "proxy-require"))
        elif not is_ack and method != "CANCEL":  # Require is ignored in CANCEL (8.2.2.3)
            check_require(request)  # as a redirect server we are the UAS (8.2.2.3)
        self._check_hops(first)
        if not popped and not self.serves_domain(aor_domain(aor)):
            raise NotFound("Domain Not Served")
        bindings, contact_binding = self._targets(request, first, aor, user, now)
        if contact_binding is not None:  # a hop to a registered contact: call_route does not apply
            hop = self._hop_of_binding(contact_binding)
            return self._forward(request, first, request.request_uri or "", list(contact_binding.path), hop,
                                 source, now, binding=contact_binding, called=user or "",
                                 track=proxy_mode, record_route=proxy_mode)
        if isinstance(targets, SipError):  # call_route refused the request, or could not answer
            if not (bindings and isinstance(targets, RoutingUnavailable)):
                raise targets
            targets = None  # its database is down: the bindings still route (a refusal would not)
        if not bindings and targets and (proxy_mode or not (is_ack or method == "CANCEL")):
            if not proxy_mode:
                return Reply(302, "Moved Temporarily", _target_contacts(bindings, targets))
            # the first call_route target, as the INVITE's was (its CANCEL and ACK follow it)
            target, binding = self._first_target(targets, aor_domain(aor), now)
            if binding is not None:  # another user of ours: its best binding
                hop = self._hop_of_binding(binding)
                return self._forward(request, first, binding.contact, list(binding.path), hop, source, now,
                                     binding=binding, called=user or "", track=True, record_route=True)
            hop = _hop_of_uri(target)
            return self._forward(request, first, target, [], hop, source, now, called=user or "",
                                 callee=user or "", contact=target, track=True, record_route=True)
        if not bindings:
            if popped:  # a request we record-routed, for a party that is not registered here
                self._check_relay(first, source, popped)
                hop = _hop_of_uri(request.request_uri or "")
                return self._forward(request, first, request.request_uri or "", [], hop, source, now,
                                     in_dialog=True)
            if is_ack or method == "CANCEL":
                if is_ack:
                    return None
                return Reply(481, "Call/Transaction Does Not Exist")
            if user is None or (self.users.lookup(user) is None and not self._alternatives(user)):
                raise NotFound()
            raise TemporarilyUnavailable()
        if not proxy_mode:
            if is_ack:
                return None  # the ACK of our 302
            if method == "CANCEL":
                # We answer every request at once and keep no transaction, so no
                # CANCEL can match one (RFC 3261 9.2).
                return Reply(481, "Call/Transaction Does Not Exist")
            contacts = [
                ("Contact", format_contact(b.contact, [("q", format_q(1.0 if b.q is None else b.q))]))
                for b in bindings
            ]
            if targets:
                contacts.extend(_target_contacts(bindings, targets))
            return Reply(302, "Moved Temporarily", contacts)
        best = bindings[0]
        hop = self._hop_of_binding(best)
        return self._forward(request, first, best.contact, list(best.path), hop, source, now, binding=best,
                             called=user or "", track=True, record_route=True)

    def _first_target(self, targets: list[str], domain: str, now: float) -> tuple[str, Binding | None]:
        """The call_route target a proxied request goes to: the first one,
        where a target in the called domain (`sip:alice@<that domain>`, call
        forwarding to another user) is reached through its best binding, and
        skipped when it has none. (target, None) for a target reached as it
        is; 480 when every target is a user of ours without a binding."""
        for target in targets:
            try:
                target_aor = canonical_aor(target)
            except ParseError:
                raise BadGateway("Malformed call_route Target") from None
            if aor_user(target_aor) is None or aor_domain(target_aor) != domain:
                return target, None
            bindings = self.location.lookup(target_aor, now)
            if bindings:
                return target, bindings[0]
        raise TemporarilyUnavailable()

    @staticmethod
    def acks_our_response(request: SipMessage) -> bool:
        """An ACK whose To tag is the one we put in our own final responses
        (`response.to_tag_for`): the ACK of a 302 or an error we sent. It ends
        here (a stateless proxy recognises it without a transaction)."""
        return _tag(request.get("to")) == to_tag_for(request)

    def _to_registrar(self, request: SipMessage, method: str) -> Reply | None:
        if method == "ACK":
            return None
        if method == "CANCEL":
            return Reply(481, "Call/Transaction Does Not Exist")
        check_require(request)
        if method == "OPTIONS":
            return Reply(200, "OK", [("Allow", ALLOWED_METHODS), ("Accept", "application/sdp"),
                                     ("Supported", "path")])
        raise MethodNotAllowed(headers=[("Allow", ALLOW_AT_REGISTRAR)])

    def _check_relay(self, first: dict[str, str], source: Source, popped: bool) -> None:
        """Forwarding to a hop that is not a registered contact: for a request
        of a dialog we record-routed (our Route entry and a To tag), or from a
        trusted peer (an SBC's preloaded Route). Anything else would make us an
        open relay: 403."""
        if (popped and _tag(first.get("to"))) or self.is_trusted(source.host):
            return
        raise Forbidden("Relaying Denied")

    @staticmethod
    def _check_hops(first: dict[str, str]) -> None:
        max_forwards = first.get("max-forwards")
        if max_forwards is not None and max_forwards.strip() == "0":
            raise TooManyHops()

    def _alternatives(self, number: str) -> tuple[str, ...]:
        # A directory that predates alternatives (no such method) has none.
        find = getattr(self.users, "users_with_alternative", None)
        return find(number) if find is not None else ()

    def _targets(self, request: SipMessage, first: dict[str, str], aor: str, user: str | None,
                 now: float) -> tuple[list[Binding], Binding | None]:
        """(the bindings reached by the AOR and its alternatives, best first;
        the binding whose contact the Request-URI names, if any)."""
        bindings = list(self.location.lookup(aor, now))
        ruri = request.request_uri or ""
        if bindings and ";gr=" in ruri.lower():
            gr = next((v for n, v in parse_uri(ruri).params if n.lower() == "gr" and v), None)
            for b in bindings:
                if gr is not None and b.instance_id is not None and b.instance_id.strip("<>") == gr:
                    return bindings, b
        if user is not None:
            others = self._alternatives(user)
            if others:
                domain = aor_domain(aor)
                for other in others:
                    other_aor = f"sip:{other}@{domain}"
                    if other_aor != aor:
                        bindings.extend(self.location.lookup(other_aor, now))
                bindings.sort(key=sort_key)
        if bindings:
            return bindings, None
        # Not an AOR with bindings: is it a contact registered for the To AOR?
        try:
            to_aor = canonical_aor(parser.parse_name_addr(first.get("to") or "").uri)
        except ParseError:
            return bindings, None
        if to_aor == aor:
            return bindings, None
        candidates = [to_aor]
        to_user = aor_user(to_aor)
        if to_user is not None:  # the To may be an alternative number of the user
            domain = aor_domain(to_aor)
            candidates.extend(f"sip:{other}@{domain}" for other in self._alternatives(to_user))
        for candidate in candidates:
            for b in self.location.lookup(candidate, now):
                if contacts_equal(b.contact, ruri):
                    return bindings, b
        return bindings, None

    def _hop_of_binding(self, binding: Binding) -> Hop:
        if binding.path:
            try:
                first_path = parser.parse_name_addr(binding.path[0]).uri
            except ParseError:
                raise BadGateway("Malformed Path In Binding") from None
            return _hop_of_uri(first_path, binding.transport)
        return _hop_of_contact(binding.contact, binding.received[0], binding.received[1], binding.transport)

    def _routes(self, request: SipMessage) -> list[NameAddr]:
        routes: list[NameAddr] = []
        for value in request.get_all("route"):
            try:
                for entry in parser.split_list(value):
                    name_addr = parser.parse_name_addr(entry)
                    parse_uri(name_addr.uri)
                    routes.append(name_addr)
            except ParseError:
                raise ParseError("Malformed Route") from None
        return routes

    def _is_us(self, uri_text: str) -> bool:
        """A URI naming one of our addresses (a listen address, or routing.advertise,
        which may be a host name). Not "any domain we serve": with
        registrar.domains empty that would be every host, an SBC's too."""
        uri = parse_uri(uri_text)
        return (uri.host.strip("[]").lower(), uri.port or 5060) in self.policy.own_addresses

    # -- building the forwarded request (16.6) ----------------------------------------

    def _forward(self, request: SipMessage, first: dict[str, str], ruri: str, routes: list, hop: Hop,
                 source: Source, now: float, binding: Binding | None = None, called: str = "",
                 in_dialog: bool = False, track: bool = False, record_route: bool = False,
                 callee: str | None = None, contact: str | None = None) -> Forward:
        """`binding`: the registered contact it goes to; else (a call_route
        target) `callee` and `contact` name the call's callee and target."""
        method = request.method or ""
        branch_parts = self._branch_parts(request, first)
        self._check_loop(request, branch_parts[1])
        if not self.can_reach(hop):
            raise FlowFailed()
        to_tag = _tag(first.get("to"))
        initial = not to_tag and method not in ("ACK", "CANCEL")
        events: list[CallEvent] = []
        tracker = self.tracker
        tracking = tracker is not None and self.policy.record_route
        if tracking and method == "BYE":
            ended = tracker.end(first.get("call-id") or "", now, None, "BYE")
            if ended is not None:
                events.append(CallEvent("end", ended))
        elif tracking and track and method == "INVITE" and not to_tag and (binding is not None or contact):
            if binding is not None:
                callee, contact = aor_user(binding.aor) or "", binding.contact
            call = self._start_call(request, first, callee or "", contact or "", called, source, now)
            if call is not None:
                events.append(CallEvent("start", call))
        add_rr = self.policy.record_route and (record_route or in_dialog) and initial \
            and method in DIALOG_CREATING
        data = self._render(request, first, ruri, routes, hop, add_rr, branch_parts, source)
        return Forward(data, hop, events)

    def _start_call(self, request: SipMessage, first: dict[str, str], callee: str, contact: str, called: str,
                    source: Source, now: float) -> TrackedCall | None:
        if self.refuse_new_calls:
            raise ServiceUnavailable(self.refuse_new_calls)
        caller = header_user(first.get("from"))
        users = tuple(u for u in (caller, callee) if u and self.users.lookup(u) is not None)
        limits = {u: self._max_calls(u) for u in users}
        record = CallRecord(
            call_id=first.get("call-id") or "",
            caller=caller,
            called=called,
            callee=callee,
            contact=contact,
            address=f"{source.host}:{source.port}",
            started_at=now,
        )
        if not self.tracker.start(record, users, limits):
            return None  # a retransmission of an INVITE already counted
        return TrackedCall(record, users)

    def _max_calls(self, username: str) -> int:
        record = self.users.lookup(username)
        text = record.settings.get("maxcalls") if record is not None else None
        if text is not None and text.strip().isdigit():
            return int(text.strip())
        return self.policy.max_calls_per_user

    def _check_caller(self, request: SipMessage, first: dict[str, str], source: Source, now: float) -> None:
        """With authenticate_callers: a request outside a dialog (no To tag;
        not ACK or CANCEL, which cannot be challenged) from a source that is
        not a trusted peer must carry the From user's digest credentials."""
        if not self.policy.authenticate_callers or request.method in ("ACK", "CANCEL") \
                or _tag(first.get("to")) or self.is_trusted(source.host):
            return
        self._authenticate_caller(request, first, now)

    def _authenticate_caller(self, request: SipMessage, first: dict[str, str], now: float) -> None:
        """Digest for calls from untrusted sources (RFC 3261 22.3): the
        credentials' user must be the From user. Stateless, like the rest of
        the proxy: a (nonce, nc) is not remembered, so within the nonce's
        lifetime credentials can be replayed (the registrar's replay check
        guards REGISTERs, which change state; a replayed INVITE changes none
        here)."""
        auth = self.authenticator
        realm = auth.realm
        caller = header_user(first.get("from"))
        credentials = digest_credentials(request, realm, "Proxy-Authorization")
        if credentials is not None:
            username = credentials.get("username") or ""
            status = auth.verify(credentials, request.method or "", now, self.users.lookup(username)).status
            if status is AuthStatus.OK and username == caller:
                return
            if status is AuthStatus.STALE:
                raise ProxyAuthenticationRequired(headers=self._challenge(now, stale=True))
            if status is AuthStatus.MALFORMED:
                raise ParseError("Malformed Proxy-Authorization")
        raise ProxyAuthenticationRequired(headers=self._challenge(now))

    def _challenge(self, now: float, stale: bool = False) -> list[tuple[str, str]]:
        return [("Proxy-Authenticate", value) for _, value in self.authenticator.challenge(now, stale=stale)]

    def _branch_parts(self, request: SipMessage, first: dict[str, str]) -> tuple[str, str]:
        top = request.vias[0]
        branch = top.branch or ""
        cseq_number = (first.get("cseq") or "").strip().partition(" ")[0]
        from_tag = _tag(first.get("from"))
        if branch.startswith("z9hG4bK"):
            h1 = _digest(branch, top.host, str(top.port))
        else:  # RFC 2543 client: what identifies its transaction
            h1 = _digest(top.raw, request.request_uri or "", first.get("call-id") or "", cseq_number, from_tag)
        h2 = _digest(request.request_uri or "", first.get("call-id") or "", cseq_number, from_tag)
        return h1, h2

    def _check_loop(self, request: SipMessage, h2: str) -> None:
        """16.3 step 4: our own Via with the h2 of this very request means it came back unchanged."""
        own = self.policy.own_addresses
        for via in request.vias:
            branch = via.branch
            if branch and branch.startswith(BRANCH_PREFIX) and branch.endswith(h2) \
                    and (via.host.strip("[]").lower(), via.port or 5060) in own:
                raise LoopDetected()

    def _render(self, request: SipMessage, first: dict[str, str], ruri: str, routes: list, hop: Hop,
                record_route: bool, branch_parts: tuple[str, str], source: Source) -> bytes:
        h1, h2 = branch_parts
        host, port = self.policy.sent_by(hop.transport)
        bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
        via = f"Via: SIP/2.0/{hop.transport} {bracketed}:{port};branch={BRANCH_PREFIX}{h1}{h2}"
        lines = [f"{request.method} {ruri} SIP/2.0", via]
        # The previous hop's Via gets received (and rport filled) as on
        # receipt (RFC 3261 18.2.1, RFC 3581), so that the responses find it
        # behind a NAT; the others go on as they came, one via-parm per line.
        vias = request.vias
        lines.append("Via: " + top_via_for_response(vias[0], source.address))
        lines.extend("Via: " + v.raw for v in vias[1:])
        route_lines = [f"Route: {r.raw if isinstance(r, NameAddr) else r}" for r in routes]
        rr = None
        if record_route:
            rr_host, rr_port = self.policy.sent_by(hop.transport)
            rr_host = f"[{rr_host}]" if ":" in rr_host and not rr_host.startswith("[") else rr_host
            params = ";lr" if hop.transport == "UDP" else ";transport=tcp;lr"
            rr = f"Record-Route: <sip:{rr_host}:{rr_port}{params}>"
        max_forwards = first.get("max-forwards")
        hops_left = DEFAULT_MAX_FORWARDS if max_forwards is None else int(max_forwards.strip()) - 1
        lines.append(f"Max-Forwards: {hops_left}")
        lines.extend(route_lines)
        if rr is not None:
            lines.append(rr)
        for name, value in request.headers:
            if name in ("via", "route", "max-forwards"):
                continue
            if name == "proxy-authorization" and self.policy.authenticate_callers:
                continue  # consumed here (22.3): not for the next hop
            lines.append(f"{display_name(name)}: {value}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + request.body

    # -- responses (16.7 step 3, 16.11) ---------------------------------------------------

    def is_ours(self, via: Via) -> bool:
        branch = via.branch
        return bool(branch) and branch.startswith(BRANCH_PREFIX) \
            and (via.host.strip("[]").lower(), via.port or 5060) in self.policy.own_addresses

    def forward_response(self, response: SipMessage, now: float) -> Forward | None:
        """The response with our Via removed, to the next Via; None when it
        is not ours to relay (the caller counts why)."""
        vias = response.vias
        next_via = vias[1]
        hop = _response_hop(next_via)
        if _ip(hop.host) is None:  # no DNS here: a sent-by host name without received= cannot be reached
            raise BadGateway("Next Via Is Not An IP Address")
        events: list[CallEvent] = []
        tracker = self.tracker
        status = response.status_code or 0
        if tracker is not None and status >= 200:
            cseq = response.get("cseq") or ""
            if cseq.strip().partition(" ")[2].strip() == "INVITE":
                call_id = response.get("call-id") or ""
                if status < 300:
                    call = tracker.answer(call_id, status, now)
                    if call is not None:
                        events.append(CallEvent("answer", call))
                else:
                    call = tracker.end(call_id, now, status, response.reason or "", only_unanswered=True)
                    if call is not None:
                        events.append(CallEvent("end", call))
        lines = [f"SIP/2.0 {status} {response.reason or ''}"]
        vias_written = False
        for name, value in response.headers:
            if name == "via":
                if not vias_written:
                    lines.extend("Via: " + via.raw for via in vias[1:])
                    vias_written = True
                continue
            lines.append(f"{display_name(name)}: {value}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return Forward(head.encode("utf-8", "surrogateescape") + response.body, hop, events)


def _target_contacts(bindings: list[Binding], targets: list[str]) -> list[tuple[str, str]]:
    """The Contacts of a 302 for call_route targets, after the bindings':
    in their order, q going down by 0.001 from just below the lowest q of
    the bindings (from 1 with no binding), never below 0."""
    if bindings:
        start = round(min(1.0 if b.q is None else b.q for b in bindings) * 1000) - 1
    else:
        start = 1000
    return [("Contact", format_contact(target, [("q", format_q(max(0, start - i) / 1000))]))
            for i, target in enumerate(targets)]


def _response_hop(via: Via) -> Hop:
    """RFC 3261 18.2.2 with RFC 3581: received, then rport, then sent-by."""
    host = via.host.strip("[]")
    port = via.port or 5060
    for name, value in via.params:
        lowered = name.lower()
        if lowered == "received" and value:
            host = value.strip("[]")
        elif lowered == "rport" and value and value.isdigit():
            port = int(value)
    return Hop(host, port, via.transport)


__all__ = ["Proxy", "ProxyPolicy", "Forward", "Hop", "CallEvent", "LoopDetected", "BadGateway", "FlowFailed",
           "BRANCH_PREFIX"]
