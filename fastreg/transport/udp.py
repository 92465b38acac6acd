"""SIP over UDP: one datagram is one message."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("fastreg.udp")


class UdpProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to `handler(data, host, port, "UDP")`, which returns
    (response bytes, destination) or None, and sends what it returns through
    `deliver(send, data, destination)` (which may hold it for a group commit)."""

    def __init__(self, handler, counters, deliver=None) -> None:
        self.handler = handler
        self.counters = counters
        self.deliver = deliver or (lambda send, data, destination: send(data, destination))
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            outcome = self.handler(data, addr[0], addr[1], "UDP")
        except Exception:  # a bug in the core must not stop the socket
            self.counters.internal_errors += 1
            log.exception("unhandled error on a datagram from %s", addr[0])
            return
        if outcome is not None:
            response, destination = outcome
            self.deliver(self.transport.sendto, response, destination)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable for a response) are normal on UDP.
        self.counters.dropped["udp-error"] += 1
