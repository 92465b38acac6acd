"""A worker: one uvloop event loop serving every listen address.

It owns the sockets and the clock; everything SIP is decided by the sans-IO
core. Periodic jobs: syncing the location table (durability "periodic"),
sweeping expired bindings (only in the process holding the sweeper lock),
reloading the users file when it changes, purging throttle state, and
publishing the counters for `fastreg stats`.

Signals: SIGTERM/SIGINT stop it gracefully (`Worker.stop`); SIGHUP re-reads
the configuration file and the users file and applies what can change
without a restart (`LIVE_RELOAD`, `RESTART_KEYS`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import signal
import termios
import time
from dataclasses import fields, replace
from typing import Callable

from fastreg import parser
from fastreg import stats as stats_mod
from fastreg.auth import DigestAuthenticator
from fastreg.config import Config, validate
from fastreg.core import SipCore
from fastreg.errors import ConfigError, LocationFull, ParseError
from fastreg.hooks import Hooks, load_hooks
from fastreg.message import Source
from fastreg.pgcalls import CallRouter, PostgresCdrSink, PostgresLineTracker
from fastreg.pgdb import Database
from fastreg.prefetch import AsyncPath
from fastreg.ratelog import RateLimitedLog
from fastreg.registrar import Registrar, RegistrarPolicy
from fastreg.response import response_destination
from fastreg.stats import Counters
from fastreg.store_lmdb import LmdbFailureCounter, LmdbLocation, SweeperLock
from fastreg.throttle import AuthThrottle
from fastreg.transport.sockets import kernel_drops, open_socket, spread_enabled
from fastreg.transport.tcp import ConnectionTable, SipStreamProtocol, TcpLimits
from fastreg.transport.udp import UdpBatchEndpoint, UdpProtocol, batched_udp_available
from fastreg.users import UserDirectory
from fastreg.users.cached import CachedUsers
from fastreg.users.file import RegFileUsers, UsersFileError
from fastreg.users.hooked import HookedUsers
from fastreg.users.pg import PostgresUsers, RegistrationMirror, UserNotifications
# -- routing (proxy mode, calls, CDRs) --
from fastreg.callevents import CallEventQueue
from fastreg.calls import CdrSink, LineTrackerMirror
from fastreg.cdr_file import JsonLinesCdrSink
from fastreg.config import parse_hostport
from fastreg.linetracker import LmdbLineTracker
from fastreg.proxy import CallEvent, Forward, Hop, Proxy, ProxyPolicy

log = logging.getLogger("fastreg.worker")

# Keys that SIGHUP cannot apply: they shape sockets, processes or the LMDB
# environment, which every worker opened at start. A change is logged and
# ignored until the next start. Every other key is applied live.
RESTART_KEYS = frozenset({
    "server.listen", "server.workers", "server.state_dir", "server.udp_rcvbuf_bytes", "server.udp_sndbuf_bytes",
    "users.backend", "location.durability", "location.map_size_mb", "location.writemap",
    # the database connections, the queries and the hook module are set up once per worker
    "postgres.dsn", "postgres.pool_size", "postgres.connect_timeout_s", "postgres.statement_timeout_s",
    "postgres.auth_cache_ttl_s", "postgres.auth_cache_size", "postgres.retry_after_s", "postgres.mirror_queue",
    "postgres.cdr_critical", "postgres.cdr_queue", "postgres.notify_channel", "postgres.queries",
    "hooks.module", "hooks.timeout_s", "hooks.failure_status",
    # routing: the mode, our address and the CDR file shape what every worker built at start
    "routing.mode", "routing.advertise", "routing.record_route", "routing.cdr_file", "routing.cdr_max_bytes",
    "routing.cdr_keep", "routing.cdr_critical",
})
STOP_DRAIN_S = 1.0  # at stop: the longest spent on requests waiting for the database or a hook

UDP_DRAIN_S = 0.5  # at stop: the longest spent answering datagrams already queued


def config_changes(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ, in declaration order."""
    changed = []
    for section in fields(old):
        a, b = getattr(old, section.name), getattr(new, section.name)
        for key in fields(a):
            if getattr(a, key.name) != getattr(b, key.name):
                changed.append(f"{section.name}.{key.name}")
    return changed


def effective_config(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """`new` with the restart-only keys kept at their `old` values; and the
    changed keys split into (applied live, needing a restart)."""
    changed = config_changes(old, new)
    live = [k for k in changed if k not in RESTART_KEYS]
    restart = [k for k in changed if k in RESTART_KEYS]
    sections = {}
    for section in fields(new):
        keep = {k.partition(".")[2]: getattr(getattr(old, section.name), k.partition(".")[2])
                for k in restart if k.startswith(section.name + ".")}
        sections[section.name] = replace(getattr(new, section.name), **keep)
    merged = Config(**sections)
    validate(merged)
    return merged, live, restart


def load_secret_keys(config: Config) -> list[bytes]:
    """The digest secret(s): first signs new nonces, the others still verify
    (key rotation). From `auth.secret`, else `auth.secret_file` (one key per
    line, newest first), else a key generated into state_dir at first start."""
    auth = config.auth
    if auth.secret:
        return [auth.secret.encode()]
    path = auth.secret_file or os.path.join(config.server.state_dir, "secret")
    if not auth.secret_file and not os.path.exists(path):
        _create_secret(path)
    try:
        with open(path, encoding="utf-8") as handle:
            keys = [line.strip().encode() for line in handle if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise ConfigError(f"auth.secret_file: {path}: {exc.strerror}") from None
    if not keys:
        raise ConfigError(f"auth.secret_file: {path}: no key in the file")
    return keys


def _create_secret(path: str) -> None:
    """Write a new key to `path` unless it exists, atomically: workers starting
    together all read the same complete key (written to a private file, then
    linked into place; link fails if another worker got there first)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".secret.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another worker created it first: use theirs
    finally:
        os.unlink(tmp)


class Worker:
    def __init__(self, config: Config, index: int = 0, workers: int = 1,
                 reload_config: Callable[[], Config] | None = None, log_reload_summary: bool = True,
                 cdr_sinks: list[tuple[CdrSink, bool]] | None = None,
                 line_mirror: LineTrackerMirror | None = None) -> None:
        self.config = config
        self.index = index
        self.workers = workers
        self.reload_config = reload_config
        self.log_reload_summary = log_reload_summary
        self.counters = Counters()
        self.started_at = time.time()
        self.start_ticks = stats_mod.process_start_ticks(os.getpid())
        self.bad_input_log = RateLimitedLog(logging.getLogger("fastreg.input"), config.server.log_interval_s)
        os.makedirs(config.server.state_dir, exist_ok=True)
        # Group commit: with durability "sync" the table is opened without
        # per-commit flushes; every response of one loop iteration is held,
        # the table is flushed once, then they are all sent. One fsync covers
        # all the REGISTERs a worker had in hand.
        self.group_commit = config.location.durability == "sync"
        self._held: list = []
        self._flush_scheduled = False
        self.location = LmdbLocation(
            config.location_path, map_size_mb=config.location.map_size_mb,
            durability="periodic" if self.group_commit else config.location.durability,
            writemap=config.location.writemap,
        )
        # A process killed inside a read transaction leaves its reader slot
        # behind, pinning an old snapshot; the next worker to start clears it
        # (and the sweeper, every sweep).
        stale = self.location.reader_check()
        if stale:
            log.warning("cleared %d stale LMDB reader slot(s) of a dead process", stale)
        # Users: the file, or the database; a hook module's user_auth in front of either.
        self.file_users = RegFileUsers(config.users.file) if config.users.backend == "file" else None
        pg = config.postgres
        self.database = Database(pg) if pg.dsn and pg.queries else None
        self.hooks: Hooks | None = load_hooks(config.hooks.module, config.hooks.timeout_s,
                                              config.hooks.failure_status)
        self.users = self._users(config)
        policy = self._policy(config)
        self.authenticator = self._authenticator(config)
        self.failures = LmdbFailureCounter(self.location, window_s=config.auth.throttle_window_s)
        self.throttle = self._throttle(config)
        self.registrar = Registrar(policy, self.location, self.users, self.authenticator, self.throttle,
                                   self.counters, self.bad_input_log)
        self._call_path(config)
        # the database's CDR sink and line-tracker mirror join those given by the caller
        if self.cdr_sink is not None:
            cdr_sinks = [*(cdr_sinks or ()), (self.cdr_sink, self.cdr_sink.critical)]
        line_mirror = line_mirror if line_mirror is not None else self.line_tracker_mirror
        self._init_routing(config, policy, cdr_sinks, line_mirror)
        self.core = SipCore(self.registrar, self.proxy, self.counters, self.bad_input_log)
        self._apply_limits(config)
        self.connections = ConnectionTable()
        self.sweeper_lock = SweeperLock(config.server.state_dir)
        self._servers: list = []
        self._transports: list = []
        self._udp_sockets: list = []
        self._drops_seen: dict[int, int] = {}
        self._stopping: asyncio.Event | None = None
        self._stopped = False

    # -- what the configuration builds (at start and on SIGHUP) ----------

    def _users(self, config: Config) -> UserDirectory:
        pg = config.postgres
        users: UserDirectory
        if self.file_users is not None:
            users = self.file_users
        else:
            users = PostgresUsers(self.database, config.registrar.realm, pg.auth_cache_ttl_s, pg.auth_cache_size,
                                  pg.retry_after_s)
        if self.hooks is not None and self.hooks.has("user_auth"):
            users = HookedUsers(self.hooks, users, config.registrar.realm, pg.auth_cache_ttl_s, pg.auth_cache_size,
                                pg.retry_after_s)
        return users

    def _call_path(self, config: Config) -> None:
        """The parts that wait on the database or a hook (built once: RESTART_KEYS).

        `async_path` is None unless something needs it: then the worker's
        message path is exactly the synchronous one of the file backend.
        `call_router`, `cdr_sink` and `line_tracker_mirror` are for the
        proxy path (None when not configured)."""
        pg = config.postgres
        database = self.database
        self.mirror = None
        if database is not None and (database.has("user_register") or database.has("user_unregister")):
            self.mirror = RegistrationMirror(database, config.registrar.realm, pg.mirror_queue)
        hooks = self.hooks
        router = CallRouter(database, hooks, pg.retry_after_s)
        self.call_router = router if router.active else None
        wants_path = isinstance(self.users, CachedUsers) or self.mirror is not None or (
            hooks is not None and (hooks.has("user_register") or hooks.has("user_unregister"))) \
            or self.call_router is not None
        self.async_path = AsyncPath(self, self.users if isinstance(self.users, CachedUsers) else None, hooks,
                                    self.mirror, self.call_router) if wants_path else None
        self.registrar.defer_commit = self.async_path is not None and self.async_path.defer_commit
        has = database.has if database is not None else (lambda name: False)
        self.cdr_sink = PostgresCdrSink(database, pg.cdr_critical, pg.cdr_queue, pg.retry_after_s) \
            if any(has(q) for q in ("cdr_initialize", "cdr_update", "cdr_finalize")) else None
        self.line_tracker_mirror = PostgresLineTracker(database, pg.cdr_queue) \
            if any(has(q) for q in ("linetracker_initialize", "linetracker_increment", "linetracker_decrement")) \
            else None
        self.notifications = None
        if pg.notify_channel and isinstance(self.users, CachedUsers):
            caches = [self.users] + ([self.users.backend] if isinstance(self.users, HookedUsers)
                                     and isinstance(self.users.backend, CachedUsers) else [])
            self.notifications = UserNotifications(pg.dsn, pg.notify_channel, caches)

    @staticmethod
    def _policy(config: Config) -> RegistrarPolicy:
        reg = config.registrar
        return RegistrarPolicy(
            realm=reg.realm,
            domains=frozenset(d.lower() for d in reg.domains),
            min_expires=reg.min_expires,
            default_expires=reg.default_expires,
            max_expires=reg.max_expires,
            max_contacts=reg.max_contacts,
            allow_third_party=reg.allow_third_party,
        )

    @staticmethod
    def _authenticator(config: Config) -> DigestAuthenticator:
        return DigestAuthenticator(config.registrar.realm, load_secret_keys(config), config.auth.nonce_ttl,
                                   config.auth.algorithms)

    def _throttle(self, config: Config) -> AuthThrottle:
        auth = config.auth
        return AuthThrottle(
            self.failures,
            max_failures=auth.throttle_failures,
            window_s=auth.throttle_window_s,
            block_s=auth.throttle_block_s,
            trusted_peers=auth.trusted_peers,
            max_source_failures=auth.throttle_source_failures,
        )

    def _apply_limits(self, config: Config) -> None:
        server = config.server
        self.limits = dict(max_size=server.max_message_bytes, max_headers=server.max_headers,
                           max_line=server.max_line_bytes)
        self.tcp_limits = TcpLimits(
            max_connections=server.tcp_max_connections,
            max_buffer_bytes=server.tcp_max_buffer_bytes,
            max_message_bytes=server.max_message_bytes,
            idle_timeout_s=server.tcp_idle_timeout_s,
            message_timeout_s=server.tcp_message_timeout_s,
        )

    # -- the message path ------------------------------------------------

    def handle(self, data: bytes, host: str, port: int, transport: str):
        """Bytes in, (bytes, destination) out, or None. Never raises for wire input.

        REGISTERs take the registrar's path unchanged (bytes back to the
        source). Other requests and responses go through the core's routed
        entry points; what they forward elsewhere is sent here by
        `send_forward` (None is returned then: nothing goes back)."""
        now = time.time()
        source = Source(host, port, transport)
        try:
            message = parser.parse_message(data, **self.limits)
        except ParseError as error:
            return self.unparsable(error, source, now)
        return self.dispatch(message, source, now)

    def unparsable(self, error: ParseError, source: Source, now: float):
        """The answer to a message that failed to scan: (400/413/513, destination)
        when its Via could be read, else None (dropped and counted)."""
        partial = error.partial
        response = self.core.answer_unparsable(partial, error, source, now)
        if response is None:
            return None
        return response, response_destination(partial.vias[0], source.address)

    def dispatch(self, message, source: Source, now: float, targets: list[str] | None = None):
        """A scanned message to the core: (bytes, destination) to send back,
        or None (nothing, or it was forwarded elsewhere by send_forward).
        `targets`: call_route's answer for a routed request (the async path)."""
        method = message.method
        if method is None:
            # A response: ours to relay only if we forwarded its request (our Via on top).
            forward = self.core.handle_response(message, source, now)
            return None if forward is None else self.send_forward(forward)
        if method == "REGISTER":
            response = self.core.handle_request(message, source, now)
        else:
            response = self.core.handle_routed(message, source, now, targets)
            if response is not None and response.__class__ is Forward:
                return self.send_forward(response)
        if response is None:
            return None
        return response, response_destination(message.vias[0], source.address)

    def deliver(self, send, data: bytes, destination) -> None:
        """Send a response now, or (group commit) after the next flush."""
        if not self.group_commit:
            send(data, destination)
            return
        self._held.append((send, data, destination))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        held, self._held = self._held, []
        if not held:
            return
        self.location.sync()
        for send, data, destination in held:
            try:
                send(data, destination)
            except Exception:  # a closed connection must not stop the others
                self.counters.dropped["send-error"] += 1

    # -- routing: proxy mode, calls, CDRs ------------------------------------

    def _init_routing(self, config: Config, policy: RegistrarPolicy, cdr_sinks, line_mirror) -> None:
        """The Proxy (both modes route through it), the line tracker (proxy
        mode with Record-Route) and the CDR sinks: the JSON Lines file unless
        routing.cdr_file is "-", then `cdr_sinks` (the database's, and any
        the caller gave)."""
        routing = config.routing
        self.tracker = None
        if routing.mode == "proxy" and routing.record_route:
            self.tracker = LmdbLineTracker(self.location)
        sinks: list[tuple[CdrSink, bool]] = []
        if self.tracker is not None and config.cdr_path is not None:
            sinks.append((JsonLinesCdrSink(config.cdr_path, routing.cdr_max_bytes, routing.cdr_keep),
                          routing.cdr_critical))
        sinks.extend(cdr_sinks or ())
        self.call_events = CallEventQueue(sinks, line_mirror, self.counters, self._on_sink_health,
                                          config.server.log_interval_s)
        self._udp_out: dict[bool, object] = {}  # is IPv6 -> a UDP transport to send forwarded messages on
        self.proxy = Proxy(self._proxy_policy(config), self.location, self.users, policy.serves_domain,
                           tracker=self.tracker, authenticator=self.authenticator, can_reach=self.can_reach,
                           is_trusted=self.throttle.is_trusted)

    @staticmethod
    def _proxy_policy(config: Config) -> ProxyPolicy:
        routing = config.routing
        advertise = []
        for kind in ("UDP", "TCP"):
            if routing.advertise:
                host, port = parse_hostport(routing.advertise, "routing.advertise")
            else:
                listen = [a for a in config.server.listen if a.transport.upper() == kind] or list(config.server.listen)
                host, port = listen[0].host, listen[0].port
            advertise.append((kind, host.strip("[]"), port))
        own = {(a.host.lower(), a.port) for a in config.server.listen}
        own.update((host.lower(), port) for _, host, port in advertise)
        return ProxyPolicy(mode=routing.mode, advertise=tuple(advertise), own_addresses=frozenset(own),
                           record_route=routing.record_route, authenticate_callers=routing.authenticate_callers,
                           max_calls_per_user=routing.max_calls_per_user)

    def _on_sink_health(self, reason: str | None) -> None:
        if reason is None:
            log.warning("worker %d: the critical CDR sink works again; accepting new calls", self.index)
        else:
            log.error("worker %d: %s; new calls are refused with 503 until it works again", self.index, reason)
        self.proxy.refuse_new_calls = reason

    def can_reach(self, hop: Hop) -> bool:
        if hop.transport == "UDP":
            return (":" in hop.host) in self._udp_out
        return self._connection_to(hop) is not None

    def _connection_to(self, hop: Hop):
        # RFC 5626 style: a TCP hop is reached over the connection it opened to
        # us (we open none); only the worker holding it can send on it.
        return self.connections.to_peer(hop.host, hop.port)

    def send_forward(self, forward: Forward) -> None:
        """Send a forwarded request or response to its hop; hand its call events on."""
        if forward.events:
            self.call_events.put(forward.events)
        hop = forward.hop
        try:
            if hop.transport == "UDP":
                transport = self._udp_out.get(":" in hop.host)
                if transport is None:
                    self.counters.dropped["forward-unreachable"] += 1
                    return None
                transport.sendto(forward.data, (hop.host, hop.port))
            else:
                connection = self._connection_to(hop)
                if connection is None:
                    self.counters.dropped["forward-unreachable"] += 1
                    return None
                connection._write(forward.data)
        except Exception:  # a closed socket must not stop the worker
            self.counters.dropped["send-error"] += 1
        return None

    def _expire_calls(self) -> None:
        """The sweeper's share: close calls whose end was never seen."""
        if self.tracker is None:
            return
        routing = self.config.routing
        now = time.time()
        ended = self.tracker.expire(now, routing.max_call_duration_s, routing.max_setup_s)
        if ended:
            self.call_events.put([CallEvent("end", call) for call in ended])
            log.info("closed %d call(s) with no end seen (maximum duration or setup time)", len(ended))

    # -- life cycle ------------------------------------------------------

    def _udp_waiting_protocol(self) -> UdpProtocol:
        """A UDP protocol whose answers may come later (the async path)."""
        protocol = UdpProtocol(None, self.counters, self.deliver)
        deliver = self.deliver

        def send(data: bytes, destination) -> None:
            if protocol.transport is not None and not protocol.transport.is_closing():
                deliver(protocol.transport.sendto, data, destination)

        protocol.handler = self._async_handler(send)
        return protocol

    def _async_handler(self, send):
        """A transport's handler that hands each message to the async path,
        whose answers (now or later) go out through `send(data, destination)`."""
        path = self.async_path
        return lambda data, host, port, kind: path.handle(data, host, port, kind, send)

    def _udp_batch_endpoint(self, loop, sock) -> UdpBatchEndpoint:
        """The batched UDP endpoint; with the async path, answers that come
        later go out through its sendto (held for the group commit too)."""
        sock.setblocking(False)  # the socket stays ours: the endpoint reads and writes its descriptor
        endpoint = UdpBatchEndpoint(loop, sock, self.handle, self.counters,
                                    before_send=self.location.sync if self.group_commit else None)
        if self.async_path is not None:
            deliver = self.deliver

            def send(data: bytes, destination) -> None:
                if not endpoint.is_closing():
                    deliver(endpoint.sendto, data, destination)

            endpoint.handler = self._async_handler(send)
        return endpoint

    def _tcp_waiting_protocol(self) -> SipStreamProtocol:
        protocol = SipStreamProtocol(None, self.counters, self.tcp_limits, self.connections, self.deliver)
        deliver = self.deliver

        def send(data: bytes, destination) -> None:
            deliver(protocol._write, data, None)  # back on the connection it came on (RFC 3261 18.2.2)

        protocol.handler = self._async_handler(send)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self.config.server
        if self.mirror is not None:
            self.mirror.start()
        if self.notifications is not None:
            self.notifications.start()
        # Every worker attaches the selector to its own sockets, after binding:
        # the program is the group's, so a restarted worker re-installs it.
        spread = self.workers if spread_enabled() else 0
        for address in server.listen:
            udp = address.transport == "udp"
            sock = open_socket(address, reuse_port=True, rcvbuf=server.udp_rcvbuf_bytes if udp else 0,
                               sndbuf=server.udp_sndbuf_bytes if udp else 0, spread=spread)
            if udp:
                if batched_udp_available():
                    transport = self._udp_batch_endpoint(loop, sock)
                else:
                    transport, _ = await loop.create_datagram_endpoint(
                        (lambda: UdpProtocol(self.handle, self.counters, self.deliver)) if self.async_path is None
                        else self._udp_waiting_protocol, sock=sock
                    )
                self._transports.append(transport)
                self._udp_out.setdefault(address.family_is_ipv6, transport)
                self._udp_sockets.append(sock)  # our own object: uvloop's pseudo-socket cannot getsockopt once closed
            else:
                # self.tcp_limits is read per connection: SIGHUP changes apply to new ones
                srv = await loop.create_server(
                    (lambda: SipStreamProtocol(self.handle, self.counters, self.tcp_limits, self.connections,
                                               self.deliver)) if self.async_path is None
                    else self._tcp_waiting_protocol,
                    sock=sock,
                )
                self._servers.append(srv)
            log.info("worker %d listening on %s", self.index, address)

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT. `ready()` is called once every socket is bound."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            if self.index == 0:
                # entries of workers beyond the current count (a previous run with more)
                try:
                    self.location.delete_stats(lambda key: (stats_mod.key_index(key) or 0) < self.workers)
                except LocationFull:
                    pass
            self.publish_stats()
        except BaseException:
            self._close_now()
            raise
        # the mirror is reset by worker 0 only, then given the calls already ongoing
        ongoing = (list(self.tracker.calls()) if self.tracker is not None else []) if self.index == 0 else None
        await self.call_events.initialize(ongoing)
        self.call_events.start()
        if ready is not None:
            ready()
        location = self.config.location
        jobs = [asyncio.create_task(self._every(lambda: self.config.location.sweep_interval_s, self._sweep)),
                asyncio.create_task(self._every(lambda: 1.0, self._check_users)),
                asyncio.create_task(self._every(lambda: stats_mod.PUBLISH_INTERVAL_S, self.publish_stats))]
        if any(critical for _, critical in self.call_events.sinks):  # only a critical sink refuses calls
            jobs.append(asyncio.create_task(self._recheck_sinks()))
        if location.durability == "periodic":
            jobs.append(asyncio.create_task(
                self._every(lambda: self.config.location.sync_interval_s, self.location.sync)))
        await self._stopping.wait()
        log.info("worker %d stopping", self.index)
        for job in jobs:
            job.cancel()
        await self.stop()
        log.info("worker %d stopped", self.index)

    async def stop(self) -> None:
        """Stop accepting, finish what is held, close.

        TCP listeners close first (no new connections; the others keep
        theirs). Datagrams already queued on the UDP sockets are still
        answered (for at most UDP_DRAIN_S), then the UDP sockets close.
        Messages that had arrived complete were answered as they arrived;
        held responses (group commit) are flushed and sent; TCP connections
        close after their pending output is written. Then the table is synced,
        the final counters published, and the environment closed."""
        if self._stopped:
            return
        self._stopped = True
        for srv in self._servers:
            srv.close()
        await self._drain_udp()
        if self.async_path is not None:
            await self.async_path.drain(STOP_DRAIN_S)
        if self._held:
            self._flush()
        for transport in self._transports:
            transport.close()
        streams = [c.transport for c in self.connections.open if c.transport is not None]
        self.connections.close_all()
        # a closing TCP transport writes what it has buffered, then closes
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(_pending_output(t) for t in streams):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        await self.call_events.close()
        await self._close_database()
        self._close_now(state="stopped")

    async def _close_database(self) -> None:
        """Write what is queued for the database (a bounded wait), then disconnect."""
        for part in (self.notifications, self.mirror, self.cdr_sink, self.line_tracker_mirror):
            if part is not None:
                try:
                    await part.close()
                except Exception:  # noqa: BLE001 - closing must go on
                    log.exception("worker %d: closing %s failed", self.index, type(part).__name__)
        if self.database is not None:
            await self.database.close()

    def _close_now(self, state: str = "stopped") -> None:
        for transport in self._transports:
            transport.close()
        for srv in self._servers:
            srv.close()
        try:
            if self.config.location.durability != "none":
                self.location.sync()
            self.publish_stats(state)
        except Exception:  # noqa: BLE001 - closing must go on
            log.exception("worker %d: final sync or stats failed", self.index)
        self.sweeper_lock.close()
        self.location.close()

    async def _drain_udp(self) -> None:
        deadline = time.monotonic() + UDP_DRAIN_S
        while time.monotonic() < deadline and any(_queued(sock) for sock in self._udp_sockets):
            await asyncio.sleep(0.005)

    async def _recheck_sinks(self) -> None:
        """Once a second: does a failing critical CDR sink work again?"""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.call_events.recheck()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("rechecking the CDR sinks failed")

    async def _every(self, interval_s: Callable[[], float], job) -> None:
        while True:
            await asyncio.sleep(interval_s())
            try:
                job()
            except Exception:
                log.exception("periodic job %s failed", getattr(job, "__name__", job))

    def _sweep(self) -> None:
        if not self.sweeper_lock.acquired and not self.sweeper_lock.try_acquire():
            return
        # and the reader slots of processes that died inside a read transaction
        # (a killed worker or `fastreg contacts`): each would pin a snapshot
        stale = self.location.reader_check()
        if stale:
            log.warning("cleared %d stale LMDB reader slot(s) of a dead process", stale)
        now = time.time()
        removed = self.location.purge_expired(now)
        while removed:
            self.counters.bindings_expired += removed
            removed = self.location.purge_expired(now)
        self.failures.purge(now)
        self._expire_calls()

    def _collect_database_counters(self) -> None:
        counters = self.counters
        if isinstance(self.users, CachedUsers):
            caches = [self.users] + ([self.users.backend] if isinstance(self.users, HookedUsers)
                                     and isinstance(self.users.backend, CachedUsers) else [])
            counters.users_fetched = sum(c.fetches for c in caches)
            counters.users_fetch_failed = sum(c.fetch_failures for c in caches)
        if self.database is not None:
            counters.db_failures = self.database.failures
        queues = [part.queue for part in (self.mirror, self.cdr_sink, self.line_tracker_mirror) if part is not None]
        if queues:
            counters.db_writes = sum(q.written for q in queues)
            counters.db_writes_dropped = sum(q.dropped for q in queues)
            counters.db_writes_failed = sum(q.failed for q in queues)
            counters.db_writes_waiting = sum(len(q) for q in queues)
        if self.hooks is not None:
            counters.hook_failures = self.hooks.failures

    def publish_stats(self, state: str = "running") -> None:
        self._collect_database_counters()
        entry = stats_mod.snapshot(
            self.counters, index=self.index, pid=os.getpid(), started_at=self.started_at, now=time.time(),
            state=state, start_ticks=self.start_ticks,
            udp_kernel_drops=self._udp_kernel_drops(),
        )
        try:
            self.location.put_stats(stats_mod.stats_key(self.index), stats_mod.encode(entry))
        except LocationFull:
            pass  # a full table refuses the counters too (REGISTERs get 503 and say so); try next time

    def _udp_kernel_drops(self) -> int:
        """Drops counted by the kernel on our UDP sockets (the last value read
        from a socket that has since been closed)."""
        seen = self._drops_seen
        for i, sock in enumerate(self._udp_sockets):
            if sock.fileno() >= 0:
                seen[i] = kernel_drops(sock)
        return sum(seen.values())

    def _check_users(self) -> None:
        if self.file_users is None:
            return
        result = self.file_users.reload_if_changed()
        if isinstance(result, UsersFileError):
            log.error("users file not reloaded, previous users stay in force: %s", result)
        elif result:
            log.info("users file %s reloaded", self.config.users.file)

    # -- SIGHUP ----------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: re-read the configuration (when it came from a file) and the users."""
        try:
            self._reload()
        except Exception:  # noqa: BLE001 - a reload must never stop the worker
            log.exception("worker %d: reload failed; the previous configuration stays in force", self.index)

    def _reload(self) -> None:
        loud = self.log_reload_summary
        new, live, restart = self.config, [], []
        if self.reload_config is not None:
            try:
                new, live, restart = effective_config(self.config, self.reload_config())
            except ConfigError as error:
                (log.error if loud else log.debug)(
                    "configuration not reloaded, the previous one stays in force: %s", error)
        if restart:
            (log.warning if loud else log.debug)(
                "configuration keys changed that need a restart, not applied: %s", ", ".join(restart))
        # Always rebuilt: the digest keys are read again (a rotated secret_file
        # applies with the same configuration), and the users file too.
        try:
            self.apply_config(new)
        except ConfigError as error:  # users file, secret file: nothing applied
            log.error("configuration not applied, the previous one stays in force: %s", error)
            self.reload_users()
            return
        (log.info if loud else log.debug)("configuration reloaded: applied %s; digest keys and users file "
                                          "read again", ", ".join(live) or "no change")

    def apply_config(self, new: Config) -> None:
        """Apply a configuration whose restart-only keys equal the current ones.
        Everything is built first, then swapped in: all or nothing."""
        old = self.config
        file_users = self.file_users
        if file_users is not None and new.users.file != old.users.file:
            file_users = RegFileUsers(new.users.file)  # UsersFileError: nothing applied
        level = logging.getLevelName(new.server.log_level.upper())  # validated by config.load
        policy = self._policy(new)
        authenticator = self._authenticator(new)
        failures_window = self.failures.window_s
        self.failures.window_s = new.auth.throttle_window_s
        try:
            throttle = self._throttle(new)
        except ValueError as error:
            self.failures.window_s = failures_window
            raise ConfigError(f"auth: {error}") from None
        # swap
        logging.getLogger().setLevel(level)
        if new.server.log_interval_s != old.server.log_interval_s:
            self.bad_input_log = RateLimitedLog(logging.getLogger("fastreg.input"), new.server.log_interval_s)
            self.registrar.log = self.core.log = self.bad_input_log
        if file_users is not self.file_users:
            self.file_users = file_users
            if isinstance(self.users, HookedUsers):
                self.users.backend = file_users
            else:
                self.users = file_users
        self.registrar.users = self.proxy.users = self.users
        self.proxy.policy = self._proxy_policy(new)
        self.proxy.serves_domain = policy.serves_domain
        self.proxy.authenticator = authenticator
        self.proxy.is_trusted = throttle.is_trusted
        self.registrar.policy = policy
        self.authenticator = self.registrar.authenticator = authenticator
        self.throttle = self.registrar.throttle = throttle
        self._apply_limits(new)
        self.config = new
        if new.users.file == old.users.file:
            self.reload_users()

    def reload_users(self) -> None:
        if isinstance(self.users, CachedUsers):
            self.users.forget_all()  # SIGHUP: ask the database (or the hook) again
        if self.file_users is None:
            return
        result = self.file_users.reload()
        if isinstance(result, UsersFileError):
            log.error("users file not reloaded, previous users stay in force: %s", result)
        else:
            (log.info if self.log_reload_summary else log.debug)("users file %s reloaded (SIGHUP)",
                                                                 self.config.users.file)


def _pending_output(transport) -> int:
    try:
        return 0 if transport.is_closing() and transport.get_extra_info("socket") is None \
            else transport.get_write_buffer_size()
    except Exception:  # noqa: BLE001 - a closed transport has nothing pending
        return 0


def _queued(sock) -> bool:
    """Is a datagram waiting in this socket's receive queue?"""
    try:
        return fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0") != b"\0\0\0\0"
    except (OSError, ValueError):
        return False


class WorkerStartError(Exception):
    """The worker could not start (its sockets, its files, its configuration)."""


def run_worker(config: Config, index: int = 0, workers: int = 1, ready: Callable[[], None] | None = None,
               reload_config: Callable[[], Config] | None = None, log_reload_summary: bool = True) -> None:
    import uvloop

    from fastreg.transport.sockets import ListenError

    # A peer that closes its TCP connection before we answer must cost an
    # EPIPE on that connection, never the process (Python ignores SIGPIPE by
    # default; this keeps it so whatever the embedding program did).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # A SIGHUP before the loop handles it must not kill a starting worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        worker = Worker(config, index, workers, reload_config, log_reload_summary)
    except (ConfigError, OSError) as error:
        raise WorkerStartError(_start_reason(error)) from error
    except Exception as error:
        if type(error).__module__.startswith("lmdb"):
            raise WorkerStartError(f"location table {config.location_path}: {error}") from error
        raise
    try:
        uvloop.run(worker.run(ready))
    except ListenError as error:
        raise WorkerStartError(str(error)) from error


def _start_reason(error: BaseException) -> str:
    if isinstance(error, UsersFileError):
        return f"users file {error}"
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)
