"""The registrar: RFC 3261 section 10.3, step by step, sans-IO.

`Registrar.register(request, source, now)` takes a scanned REGISTER, where it
came from and the time, and returns the `Reply` to send. It reads no clock,
opens no socket and keeps no global state: stores, the authenticator and the
throttle come through the constructor. Refusals are `SipError`s; the caller
(`core.SipCore`) renders them. The 401 challenges are the exception: they are
returned as a `Reply` (the cheaper way for the most frequent answer).
"""

from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache
from dataclasses import dataclass, replace

from fastreg import parser
from fastreg.auth import AuthStatus, DigestAuthenticator, replay_key
from fastreg.bindings import Binding, ContactUpdate, SaveRequest
from fastreg.errors import (
    BadExtension,
    Forbidden,
    IntervalTooBrief,
    NotFound,
    ParseError,
    ReplayedCredentials,
    SipError,
)
from fastreg.location import LocationService
from fastreg.message import Credentials, NameAddr, Reply, SipMessage, Source
from fastreg.ratelog import RateLimitedLog
from fastreg.response import format_contact, format_q, http_date
from fastreg.stats import Counters
from fastreg.throttle import AuthThrottle
from fastreg.uri import aor_domain, aor_user, canonical_aor, check_uri, parse_uri
from fastreg.users import UserDirectory

MAX_DELTA_SECONDS = 2**32 - 1  # RFC 3261 20.19: larger values are taken as this
SUPPORTED_OPTION_TAGS = frozenset({"path"})


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    realm: str
    domains: frozenset[str] = frozenset()  # lower case; empty: every domain
    min_expires: int = 60
    default_expires: int = 3600
    max_expires: int = 3600
    max_contacts: int = 16
    allow_third_party: bool = False

    def serves_domain(self, domain: str) -> bool:
        return not self.domains or domain.lower() in self.domains


def parse_delta_seconds(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise ParseError(f"Malformed {what}")
    return min(int(text), MAX_DELTA_SECONDS)


def first_values(request: SipMessage) -> dict[str, str]:
    """Each header's first value by canonical name, in one pass: cheaper than
    a linear `request.get` per header when a dozen are read."""
    return dict(reversed(request.headers))


def parse_cseq(request: SipMessage, first: dict[str, str] | None = None) -> int:
    """CSeq must be `number METHOD` with the request's method (RFC 3261 8.1.1.5)."""
    value = (first if first is not None else first_values(request)).get("cseq")
    if value is None:
        raise ParseError("Missing CSeq")
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    if not number.isdigit() or not number.isascii() or len(number) > 10 or int(number) >= 2**31:
        raise ParseError("Malformed CSeq")
    if method != request.method:
        raise ParseError("CSeq method does not match the request")
    return int(number)


def check_mandatory(request: SipMessage, first: dict[str, str] | None = None) -> None:
    """RFC 3261 8.1.1: To, From, CSeq, Call-ID, Max-Forwards (tolerated when absent), Via."""
    if first is None:
        first = first_values(request)
    for name, label in (("to", "To"), ("from", "From"), ("call-id", "Call-ID")):
        value = first.get(name)
        if value is None or not value.strip():
            raise ParseError(f"Missing {label}")
    max_forwards = first.get("max-forwards")
    if max_forwards is not None:
        text = max_forwards.strip()
        if not text.isdigit() or not text.isascii() or int(text) > 255:
            raise ParseError("Malformed Max-Forwards")


def register_headers(request: SipMessage) -> tuple[dict[str, str], int]:
    """The first steps of every REGISTER: `first_values`, then
    `check_mandatory` and `parse_cseq` (their ParseErrors, in that order).
    Returns (first, cseq)."""
    first = first_values(request)
    check_mandatory(request, first)
    return first, parse_cseq(request, first)


pure_register_headers = register_headers
pure_parse_delta_seconds = parse_delta_seconds


def _select_register_headers():
    """The compiled twins (fastreg._cregistrar) with the compiled scanner, the
    pure ones above with FASTREG_PARSER=pure (fastreg.parser's rule)."""
    _cregistrar = parser.compiled_twin("_cregistrar", "header checks")
    if _cregistrar is None:
        return pure_register_headers, pure_parse_delta_seconds
    _cregistrar.bind(first_values, check_mandatory, parse_cseq, pure_parse_delta_seconds)
    return _cregistrar.register_headers, _cregistrar.parse_delta_seconds


register_headers, parse_delta_seconds = _select_register_headers()


def option_tags(request: SipMessage, name: str) -> list[str]:
    tags: list[str] = []
    for value in request.get_all(name):
        tags.extend(tag.strip() for tag in value.split(",") if tag.strip())
    return tags


def check_require(request: SipMessage) -> None:
    """RFC 3261 8.2.2.3 (and 10.3 step 2): an option-tag in Require that we
    do not support gets 420 with Unsupported listing it."""
    unsupported = [t for t in option_tags(request, "require") if t.lower() not in SUPPORTED_OPTION_TAGS]
    if unsupported:
        raise BadExtension(unsupported)


@lru_cache(maxsize=1024)  # the same few Request-URI hosts over and over; ipaddress is slow
def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@lru_cache(maxsize=1024)  # clients repeat their Request-URI on every REGISTER
def request_uri_host(text: str) -> str:
    try:
        return parse_uri(text).host
    except ParseError as error:
        if error.status == 416:  # RFC 3261 8.2.2.1: a scheme we do not support
            raise
        raise ParseError("Malformed Request-URI") from None


@lru_cache(maxsize=8192)  # a device repeats its Contact on every refresh
def check_contact_uri(text: str) -> None:
    try:
        check_uri(text)
    except ParseError:
        raise ParseError("Malformed Contact URI") from None


def parse_to_aor(request: SipMessage, first: dict[str, str] | None = None) -> str:
    try:
        to = parser.parse_name_addr((first if first is not None else first_values(request)).get("to") or "")
        return canonical_aor(to.uri)
    except ParseError:
        raise ParseError("Malformed To") from None


def digest_credentials(request: SipMessage, realm: str, header: str = "Authorization") -> Credentials | None:
    """The first Digest credentials for `realm` in `header` (Authorization
    for the registrar, Proxy-Authorization for the proxy), None without
    them; ParseError when a header before them cannot be read."""
    for value in request.get_all(header.lower()):
        try:
            parsed = parser.parse_credentials(value)
        except ParseError:
            raise ParseError(f"Malformed {header}") from None
        if parsed.scheme.lower() == "digest" and parsed.get("realm") == realm:
            return parsed
    return None


def render_binding(binding: Binding, now: float) -> str:
    params: list[tuple[str, str | None]] = [("expires", str(max(0, int(binding.expires_at - now + 0.5))))]
    if binding.q is not None:
        params.append(("q", format_q(binding.q)))
    params.extend(binding.params)
    return format_contact(binding.contact, params)


class PendingRegistration:
    """An authenticated, authorized, validated REGISTER that changes bindings,
    not yet written: what `Registrar.complete` needs to finish it. After
    `complete`, `bindings` holds the AOR's bindings and `removed` those a
    'Contact: *' removed (for the database mirror), `changed` whether the
    table changed (False for a retransmission)."""

    __slots__ = ("request", "save", "username", "bindings", "removed", "changed")

    def __init__(self, request: SipMessage, save: SaveRequest, username: str | None) -> None:
        self.request = request
        self.save = save
        self.username = username
        self.bindings: tuple[Binding, ...] = ()
        self.removed: tuple[Binding, ...] = ()
        self.changed = False


class RegistrationPending(Exception):
    """Raised by `Registrar.register` instead of writing when `defer_commit`
    is set (a user_register hook or the database mirror is configured): the
    worker decides (awaits the hook), then calls `SipCore.complete_register`.
    Not a `SipError`: it is no answer."""

    def __init__(self, pending: PendingRegistration) -> None:
        super().__init__("registration pending")
        self.pending = pending


class Registrar:
    """REGISTER processing (RFC 3261 10.3). One instance per worker.

    With `defer_commit` (False unless the worker has a user_register hook or
    a registration mirror) a REGISTER that changes bindings stops before the
    write with `RegistrationPending`; `complete()` writes it. Without, the
    path is the single synchronous `register()`.
    """

    def __init__(
        self,
        policy: RegistrarPolicy,
        location: LocationService,
        users: UserDirectory,
        authenticator: DigestAuthenticator,
        throttle: AuthThrottle,
        counters: Counters,
        log: RateLimitedLog | None = None,
    ) -> None:
        self.policy = policy
        self.location = location
        self.users = users
        self.authenticator = authenticator
        self.throttle = throttle
        self.counters = counters
        self.log = log or RateLimitedLog(logging.getLogger("fastreg.registrar"))
        self.defer_commit = False

    # -- the steps -------------------------------------------------------

    def register(self, request: SipMessage, source: Source, now: float) -> Reply:
        first, cseq = register_headers(request)

        # Step 1: is this registrar responsible for the Request-URI's domain?
        host = request_uri_host(request.request_uri or "")
        if not is_ip_literal(host) and not self.policy.serves_domain(host):
            raise NotFound("Domain Not Served")

        # Step 2: every option-tag in Require must be one we support.
        if "require" in first:  # (`first` has every header name: no scan when absent)
            check_require(request)

        # Step 5 (needed early for the domain check of the AOR): the AOR is the
        # To URI in canonical form: sip:user@domain, no port, no parameters.
        aor = parse_to_aor(request, first)
        if not self.policy.serves_domain(aor_domain(aor)):
            raise NotFound("Domain Not Served")

        # Syntax of everything step 6 needs is checked before authentication,
        # so that a malformed request gets its 400 whether or not it is signed.
        contacts = parser.parse_contacts(request.get_all("contact"))
        header_expires = first.get("expires")
        expires_header = None if header_expires is None else parse_delta_seconds(header_expires, "Expires")
        updates = None if contacts is None else [self._contact_update(c, expires_header) for c in contacts]
        if contacts is None and expires_header != 0:
            raise ParseError("Contact '*' requires Expires: 0")

        # Steps 3 and 4: authenticate, then authorize the user for this AOR.
        outcome = self._authenticate(request, source, now, first)
        if type(outcome) is Reply:
            return outcome  # the 401 challenge
        if not self.policy.allow_third_party and aor_user(aor) != outcome.username:
            raise Forbidden("Not Allowed To Register This AOR")

        if updates is not None and not updates:
            # A REGISTER without Contact is a query (10.3 step 6, last paragraph).
            return self._ok(request, self.location.lookup(aor, now), now)

        if updates:
            brief = [u for u in updates if 0 < u.expires < self.policy.min_expires]
            if brief:
                raise IntervalTooBrief(self.policy.min_expires)
            updates = [self._cap(u) for u in updates]

        top_via = request.vias[0]
        # positional (half the cost of keywords): the fields in SaveRequest's order
        save = SaveRequest(
            aor,  # aor
            first.get("call-id") or "",  # call_id
            cseq,  # cseq
            top_via.branch,  # branch
            tuple(updates or ()),  # contacts
            contacts is None,  # remove_all
            tuple(self._path(request)) if "path" in first else (),  # path
            source.address,  # received
            source.transport,  # transport
            first.get("user-agent"),  # user_agent
            now,  # now
            replay_key(outcome),  # replay_key
            outcome.nc,  # replay_nc
            self.policy.max_contacts,  # max_contacts
        )
        if self.defer_commit:
            raise RegistrationPending(PendingRegistration(request, save, outcome.username))
        return self._commit(request, save, now)

    def complete(self, pending: PendingRegistration, now: float, expires: int | None = None,
                 want_removed: bool = False) -> Reply:
        """Write a pending registration (the end of `register()`, at `now`).
        `expires` (a user_register hook's decision) replaces the expiry of
        every contact it adds or refreshes, capped at max_expires;
        `want_removed`: read the bindings a 'Contact: *' removes first."""
        save = pending.save
        if expires is not None:
            granted = max(1, min(expires, self.policy.max_expires))
            save = replace(save, contacts=tuple(
                u if u.expires == 0 else ContactUpdate(u.contact, granted, u.q, u.instance_id, u.reg_id, u.params)
                for u in save.contacts))
        if save.now != now:
            save = replace(save, now=now)
        pending.save = save
        if want_removed and save.remove_all:
            pending.removed = tuple(self.location.lookup(save.aor, now))
        return self._commit(pending.request, save, now, pending)

    def _commit(self, request: SipMessage, save: SaveRequest, now: float,
                pending: PendingRegistration | None = None) -> Reply:
        """The write that ends a REGISTER, and its 200 OK (or the 401 of a
        replay). With `pending` (the two-step path), what the worker needs
        afterwards is kept on it: the bindings, whether the table changed,
        and no removed bindings unless the write removed them."""
        try:
            result = self.location.save(save)
        except ReplayedCredentials:
            if pending is not None:
                pending.removed = ()
            self.counters.replays_refused += 1
            self.log.warning("replay", now, "refused replayed credentials for %s from %s", save.aor, save.received[0])
            return Reply(401, "Unauthorized", self.authenticator.challenge(now))
        except SipError:
            if pending is not None:
                pending.removed = ()
            raise
        if result.retransmission:
            self.counters.retransmissions += 1
        elif result.changed:
            self.counters.registrations_applied += 1
        if pending is not None:
            pending.bindings = result.bindings
            pending.changed = result.changed
            if result.retransmission:
                pending.removed = ()
        reply = self._ok(request, result.bindings, now)
        if save.path and "path" in (t.lower() for t in option_tags(request, "supported")):
            # RFC 3327 5.3: echo the Path in the same order.
            reply.headers.extend(("Path", entry) for entry in save.path)
        return reply

    # -- helpers ---------------------------------------------------------

    def _contact_update(self, contact: NameAddr, expires_header: int | None) -> ContactUpdate:
        if contact.uri[:4].lower() in ("sip:", "sips"):
            check_contact_uri(contact.uri)
        expires_param = None
        q = None
        instance_id = None
        reg_id = None
        kept: list[tuple[str, str | None]] = []
        for name, value in contact.params:
            lowered = name.lower()
            if lowered == "expires":
                expires_param = parse_delta_seconds(value or "", "Contact expires parameter")
            elif lowered == "q":
                q = self._parse_q(value)
            else:
                if lowered == "+sip.instance" and value:
                    instance_id = value
                elif lowered == "reg-id":
                    text = (value or "").strip()
                    if not text.isdigit() or not text.isascii() or len(text) > 10:
                        raise ParseError("Malformed reg-id")
                    reg_id = int(text)
                kept.append((name, value))
        if expires_param is not None:
            expires = expires_param
        elif expires_header is not None:
            expires = expires_header
        else:
            expires = self.policy.default_expires
        # contact, expires, q, instance_id, reg_id, params (positional: cheaper)
        return ContactUpdate(contact.uri, expires, q, instance_id, reg_id, tuple(kept))

    @staticmethod
    def _parse_q(value: str | None) -> float:
        text = (value or "").strip()
        try:
            q = float(text)
        except ValueError:
            raise ParseError("Malformed q value") from None
        if not text[:1].isdigit() or not 0.0 <= q <= 1.0:
            raise ParseError("Malformed q value")
        return q

    def _cap(self, update: ContactUpdate) -> ContactUpdate:
        if update.expires > self.policy.max_expires:
            return ContactUpdate(
                update.contact, self.policy.max_expires, update.q, update.instance_id, update.reg_id, update.params
            )
        return update

    @staticmethod
    def _path(request: SipMessage) -> list[str]:
        entries: list[str] = []
        for value in request.get_all("path"):
            for entry in parser.split_list(value):
                parser.parse_name_addr(entry)  # validates; ParseError → 400
                entries.append(entry)
        return entries

    def _authenticate(self, request: SipMessage, source: Source, now: float,
                      first: dict[str, str] | None = None):
        """The AuthOutcome of an authenticated request, or the 401 Reply that
        challenges it (returned, not raised: a 401 is the answer to half of
        all REGISTERs, and raising it through the core costs more than
        the rest of its path)."""
        credentials = None
        if first is None or "authorization" in first:
            credentials = digest_credentials(request, self.policy.realm)
        if credentials is None:
            return self._challenge(now)
        username = credentials.get("username") or ""
        blocked, failures = self.throttle.check(source.host, username, now)
        if blocked:
            self.counters.auth_throttled += 1
            self.log.warning("auth-throttled", now, "throttled digest attempts for %r from %s", username, source.host)
            raise Forbidden("Too Many Failed Attempts")
        outcome = self.authenticator.verify(credentials, request.method or "", now, self.users.lookup(username))
        status = outcome.status
        if status is AuthStatus.OK:
            self.throttle.record_success(source.host, username, now, failures)
            return outcome
        if status is AuthStatus.STALE:
            return self._challenge(now, stale=True)
        if status is AuthStatus.MALFORMED:
            # outcome.reason names the defect and never holds a secret.
            raise ParseError(f"Malformed Authorization ({outcome.reason})" if outcome.reason else "Malformed Authorization")
        if status is AuthStatus.WRONG:
            self.counters.auth_failures += 1
            self.log.warning("auth-failed", now, "failed digest authentication for %r from %s", username, source.host)
            self.throttle.record_failure(source.host, username, now)
        # WRONG, BAD_NONCE (forged or garbled), REALM_MISMATCH, UNSUPPORTED
        # (an algorithm or qop we do not offer: the challenge says what we do), MISSING:
        # a fresh challenge.
        return self._challenge(now)

    def _challenge(self, now: float, stale: bool = False) -> Reply:
        return Reply(401, "Unauthorized", self.authenticator.challenge(now, stale=stale))

    def _ok(self, request: SipMessage, bindings, now: float) -> Reply:
        headers = [("Contact", render_binding(b, now)) for b in bindings]
        headers.append(("Date", http_date(now)))
        return Reply(200, "OK", headers)
