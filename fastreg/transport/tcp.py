"""SIP over TCP: Content-Length framing, RFC 5626 CRLF keep-alives, and the
limits that keep slow or greedy peers from holding the server.

- a started message must complete within `message_timeout_s` (trickling one
  byte at a time cannot hold a connection slot);
- a connection with no traffic for `idle_timeout_s` is closed;
- at most `max_connections` connections per worker, and at most
  `max_buffer_bytes` buffered per connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fastreg import parser
from fastreg.errors import ParseError

log = logging.getLogger("fastreg.tcp")

CRLF = b"\r\n"
PING = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class TcpLimits:
    max_connections: int = 4096
    max_buffer_bytes: int = 131072
    max_message_bytes: int = 65536
    idle_timeout_s: float = 300.0
    message_timeout_s: float = 10.0


class ConnectionTable:
    """The connections of one worker: for the connection cap, for shutdown,
    and by peer address for the proxy (a request forwarded to a device goes
    over the connection the device opened to us)."""

    def __init__(self) -> None:
        self.open: set[SipStreamProtocol] = set()
        self._by_peer: dict[tuple[str, int], SipStreamProtocol] = {}

    def add(self, connection: SipStreamProtocol) -> None:
        self.open.add(connection)
        self._by_peer[connection.peer] = connection

    def discard(self, connection: SipStreamProtocol) -> None:
        self.open.discard(connection)
        if self._by_peer.get(connection.peer) is connection:
            del self._by_peer[connection.peer]

    def to_peer(self, host: str, port: int) -> SipStreamProtocol | None:
        return self._by_peer.get((host, port))

    def close_all(self) -> None:
        for connection in list(self.open):
            connection.close("shutdown")


class SipStreamProtocol(asyncio.Protocol):
    def __init__(self, handler, counters, limits: TcpLimits, table: ConnectionTable, deliver=None) -> None:
        self.handler = handler
        self.deliver = deliver or (lambda send, data, destination: send(data, destination))
        self.counters = counters
        self.limits = limits
        self.table = table
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.peer: tuple[str, int] = ("", 0)
        self.last_activity = 0.0
        self.message_started_at: float | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- connection life -------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (peer[0], peer[1])
        if len(self.table.open) >= self.limits.max_connections:
            self.counters.dropped["tcp-connection-limit"] += 1
            transport.abort()
            return
        self.table.add(self)
        self.last_activity = time.monotonic()
        self._arm_timer()

    def connection_lost(self, exc) -> None:
        self.table.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self, why: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.counters.dropped[f"tcp-closed-{why}"] += 1
            self.transport.close()
        self.table.discard(self)

    def _write(self, data: bytes, destination=None) -> None:
        # The response goes back on the connection the request came on (RFC 3261 18.2.2).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- timers ----------------------------------------------------------

    def _arm_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        deadline = self.last_activity + self.limits.idle_timeout_s
        if self.message_started_at is not None:
            deadline = min(deadline, self.message_started_at + self.limits.message_timeout_s)
        self.timer = loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        now = time.monotonic()
        if self.message_started_at is not None and now >= self.message_started_at + self.limits.message_timeout_s:
            self.close("message-timeout")
        elif now >= self.last_activity + self.limits.idle_timeout_s:
            self.close("idle")
        elif self.transport is not None and not self.transport.is_closing():
            self._arm_timer()

    # -- bytes in --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.buffer += data
        if len(self.buffer) > self.limits.max_buffer_bytes:
            self.close("buffer-limit")
            return
        try:
            self._drain()
        except Exception:  # a bug must not leave a half-read stream open
            self.counters.internal_errors += 1
            log.exception("unhandled error on a TCP stream from %s", self.peer[0])
            self.close("error")

    def _drain(self) -> None:
        buffer = self.buffer
        while buffer:
            # RFC 5626 4.4.1: a double CRLF is a keep-alive ping, answered by one CRLF.
            if buffer.startswith(PING):
                del buffer[:4]
                self.transport.write(CRLF)
                continue
            if buffer.startswith(CRLF):
                if len(buffer) < 4:
                    break  # could still become a ping
                del buffer[:2]  # a stray CRLF between messages (RFC 3261 7.5)
                continue
            try:
                length = parser.frame_length(buffer, self.limits.max_message_bytes)
            except ParseError as error:
                # The stream cannot be resynchronised after a framing error.
                self.counters.parse_errors += 1
                self.close("framing-" + ("size" if error.status == 413 else "error"))
                return
            if length is None:
                if self.message_started_at is None:
                    self.message_started_at = time.monotonic()
                break
            message = bytes(buffer[:length])
            del buffer[:length]
            self.message_started_at = None
            outcome = self.handler(message, self.peer[0], self.peer[1], "TCP")
            if outcome is not None and self.transport is not None and not self.transport.is_closing():
                self.deliver(self._write, outcome[0], None)
            if self.transport is None or self.transport.is_closing():
                return
        if not buffer:
            self.message_started_at = None
        self._arm_timer()
