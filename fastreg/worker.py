"""A worker: one uvloop event loop serving every listen address.

It owns the sockets and the clock; everything SIP is decided by the sans-IO
core. Periodic jobs: syncing the location table (durability "periodic"),
sweeping expired bindings (only in the process holding the sweeper lock),
reloading the users file when it changes, and purging throttle state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time

from fastreg import parser
from fastreg.auth import DigestAuthenticator
from fastreg.config import Config
from fastreg.core import SipCore
from fastreg.errors import ConfigError, ParseError
from fastreg.message import Source
from fastreg.ratelog import RateLimitedLog
from fastreg.registrar import Registrar, RegistrarPolicy
from fastreg.response import response_destination
from fastreg.routing import Redirector
from fastreg.stats import Counters
from fastreg.store_lmdb import LmdbFailureCounter, LmdbLocation, SweeperLock
from fastreg.throttle import AuthThrottle
from fastreg.transport.sockets import open_socket
from fastreg.transport.tcp import ConnectionTable, SipStreamProtocol, TcpLimits
from fastreg.transport.udp import UdpProtocol
from fastreg.users.file import RegFileUsers, UsersFileError

log = logging.getLogger("fastreg.worker")


def load_secret_keys(config: Config) -> list[bytes]:
    """The digest secret(s): first signs new nonces, the others still verify
    (key rotation). From `auth.secret`, else `auth.secret_file` (one key per
    line, newest first), else a key generated into state_dir at first start."""
    auth = config.auth
    if auth.secret:
        return [auth.secret.encode()]
    path = auth.secret_file or os.path.join(config.server.state_dir, "secret")
    if not auth.secret_file and not os.path.exists(path):
        os.makedirs(config.server.state_dir, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker created it first
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    try:
        with open(path, encoding="utf-8") as handle:
            keys = [line.strip().encode() for line in handle if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise ConfigError(f"auth.secret_file: {path}: {exc.strerror}") from None
    if not keys:
        raise ConfigError(f"auth.secret_file: {path}: no key in the file")
    return keys


class Worker:
    def __init__(self, config: Config, index: int = 0) -> None:
        self.config = config
        self.index = index
        self.counters = Counters()
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
        self.users = RegFileUsers(config.users.file)
        reg = config.registrar
        policy = RegistrarPolicy(
            realm=reg.realm,
            domains=frozenset(d.lower() for d in reg.domains),
            min_expires=reg.min_expires,
            default_expires=reg.default_expires,
            max_expires=reg.max_expires,
            max_contacts=reg.max_contacts,
            allow_third_party=reg.allow_third_party,
        )
        self.authenticator = DigestAuthenticator(
            reg.realm, load_secret_keys(config), config.auth.nonce_ttl, config.auth.algorithms
        )
        self.failures = LmdbFailureCounter(self.location, window_s=config.auth.throttle_window_s)
        self.throttle = AuthThrottle(
            self.failures,
            max_failures=config.auth.throttle_failures,
            window_s=config.auth.throttle_window_s,
            block_s=config.auth.throttle_block_s,
            trusted_peers=config.auth.trusted_peers,
            max_source_failures=config.auth.throttle_source_failures,
        )
        registrar = Registrar(policy, self.location, self.users, self.authenticator, self.throttle,
                              self.counters, self.bad_input_log)
        router = Redirector(self.location, self.users, policy.serves_domain)
        self.core = SipCore(registrar, router, self.counters, self.bad_input_log)
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
        self.connections = ConnectionTable()
        self.sweeper_lock = SweeperLock(config.server.state_dir)
        self._servers: list = []
        self._transports: list = []
        self._stopping: asyncio.Event | None = None

    # -- the message path ------------------------------------------------

    def handle(self, data: bytes, host: str, port: int, transport: str):
        """Bytes in, (bytes, destination) out, or None. Never raises for wire input."""
        now = time.time()
        source = Source(host, port, transport)
        try:
            message = parser.parse_message(data, **self.limits)
        except ParseError as error:
            partial = error.partial
            response = self.core.answer_unparsable(partial, error, source, now)
            if response is None:
                return None
            return response, response_destination(partial.vias[0], source.address)
        if message.method is None:
            # We send no requests (redirect mode), so no response is ours to relay.
            self.counters.dropped["response"] += 1
            return None
        response = self.core.handle_request(message, source, now)
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
        self.location.sync()
        for send, data, destination in held:
            try:
                send(data, destination)
            except Exception:  # a closed connection must not stop the others
                self.counters.dropped["send-error"] += 1

    # -- life cycle ------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self.config.server
        for address in server.listen:
            sock = open_socket(address, reuse_port=True, rcvbuf=server.udp_rcvbuf_bytes if address.transport == "udp" else 0,
                               sndbuf=server.udp_sndbuf_bytes if address.transport == "udp" else 0)
            if address.transport == "udp":
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UdpProtocol(self.handle, self.counters, self.deliver), sock=sock
                )
                self._transports.append(transport)
            else:
                srv = await loop.create_server(
                    lambda: SipStreamProtocol(self.handle, self.counters, self.tcp_limits, self.connections,
                                              self.deliver),
                    sock=sock,
                )
                self._servers.append(srv)
            log.info("worker %d listening on %s", self.index, address)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_users)
        await self.start()
        jobs = [asyncio.create_task(self._every(self.config.location.sweep_interval_s, self._sweep)),
                asyncio.create_task(self._every(1.0, self._check_users))]
        if self.config.location.durability == "periodic":
            jobs.append(asyncio.create_task(self._every(self.config.location.sync_interval_s, self.location.sync)))
        await self._stopping.wait()
        log.info("worker %d stopping", self.index)
        for job in jobs:
            job.cancel()
        await self.stop()

    async def stop(self) -> None:
        if self._held:
            self._flush()
        for transport in self._transports:
            transport.close()
        for srv in self._servers:
            srv.close()
        self.connections.close_all()
        for srv in self._servers:
            await srv.wait_closed()
        if self.config.location.durability != "none":
            self.location.sync()
        self.sweeper_lock.close()
        self.location.close()

    async def _every(self, interval_s: float, job) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                job()
            except Exception:
                log.exception("periodic job %s failed", getattr(job, "__name__", job))

    def _sweep(self) -> None:
        if not self.sweeper_lock.acquired and not self.sweeper_lock.try_acquire():
            return
        now = time.time()
        removed = self.location.purge_expired(now)
        while removed:
            self.counters.bindings_expired += removed
            removed = self.location.purge_expired(now)
        self.failures.purge(now)

    def _check_users(self) -> None:
        result = self.users.reload_if_changed()
        if isinstance(result, UsersFileError):
            log.error("users file not reloaded, previous users stay in force: %s", result)
        elif result:
            log.info("users file %s reloaded", self.config.users.file)

    def reload_users(self) -> None:
        result = self.users.reload()
        if isinstance(result, UsersFileError):
            log.error("users file not reloaded, previous users stay in force: %s", result)
        else:
            log.info("users file %s reloaded (SIGHUP)", self.config.users.file)


def run_worker(config: Config, index: int = 0) -> None:
    import uvloop

    # A peer that closes its TCP connection before we answer must cost an
    # EPIPE on that connection, never the process (Python ignores SIGPIPE by
    # default; this keeps it so whatever the embedding program did).
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    worker = Worker(config, index)
    uvloop.run(worker.run())
