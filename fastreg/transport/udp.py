"""SIP over UDP: one datagram is one message.

`UdpBatchEndpoint` (recvmmsg/sendmmsg through the compiled fastreg._udpio)
is what a worker runs; `UdpProtocol` on the event loop's own datagram
transport is its readable twin, used with FASTREG_PARSER=pure.
"""

from __future__ import annotations

import asyncio
import logging
import os

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


# Datagrams read with one recvmmsg, and answered with one sendmmsg. The
# answers to a batch leave as soon as it is done, not after the whole
# wake-up: a peer's receive buffer (Linux's default, 208 KiB, holds ~100
# small datagrams) overflowed under bursts of 512 answers, and SIPp's
# retransmissions then took the server down at 8,000 reg/s.
BATCH = 32
# Batches per wake-up at most: then the loop gets back to TCP and timers
# even under a flood.
MAX_BATCHES_PER_WAKEUP = 16
# Responses waiting for a full send buffer, at most; past this they are
# dropped and counted (a client retransmits; memory stays bounded).
MAX_PENDING_SENDS = 16384


class UdpBatchEndpoint:
    """SIP over UDP with batched system calls (fastreg._udpio): on each wake-up,
    read the waiting datagrams with recvmmsg, hand each to
    `handler(data, host, port, "UDP")`, and send all the answers with one
    sendmmsg. `before_send()`, when given, runs once per batch before any
    answer of that batch leaves (the group commit's flush).

    It answers to the small part of the datagram-transport interface the
    worker uses (close, is_closing, get_write_buffer_size)."""

    def __init__(self, loop, sock, handler, counters, before_send=None) -> None:
        from fastreg import _udpio  # built with the scanner; see select_udp_io()

        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.io = _udpio.UdpBatchSocket(self.fd, BATCH)
        self.handler = handler
        self.counters = counters
        self.before_send = before_send
        self.pending: list = []
        self._writing = False
        self._closing = False
        self._errors_seen = 0
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        recv = self.io.recv
        handler = self.handler
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            batch = recv()
            out = []
            for data, host, port in batch:
                try:
                    outcome = handler(data, host, port, "UDP")
                except Exception:  # a bug in the core must not stop the socket
                    self.counters.internal_errors += 1
                    log.exception("unhandled error on a datagram from %s", host)
                    continue
                if outcome is not None:
                    out.append(outcome)
            if out:
                if self.before_send is not None:
                    self.before_send()
                self._send(out)
            if len(batch) < BATCH:
                break
        self._count_errors()

    def _send(self, items: list) -> None:
        if self.pending:  # keep the order: behind what is already waiting
            self._queue(items, 0)
            return
        done = self.io.send(items)
        if done < len(items):
            self._queue(items, done)

    def _queue(self, items: list, start: int) -> None:
        room = MAX_PENDING_SENDS - len(self.pending)
        rest = items[start:]
        if len(rest) > room:
            self.counters.dropped["send-queue-full"] += len(rest) - max(room, 0)
            rest = rest[:max(room, 0)]
        self.pending.extend(rest)
        if self.pending and not self._writing and not self._closing:
            self._writing = True
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        done = self.io.send(self.pending)
        del self.pending[:done]
        if not self.pending:
            self._writing = False
            self.loop.remove_writer(self.fd)
        self._count_errors()

    def _count_errors(self) -> None:
        errors = self.io.errors + self.io.truncated
        if errors != self._errors_seen:
            self.counters.dropped["udp-error"] += errors - self._errors_seen
            self._errors_seen = errors

    # -- the transport interface the worker uses -------------------------

    def sendto(self, data: bytes, addr) -> None:
        """Send one datagram now (or after what is already waiting), like a
        datagram transport's sendto; for messages that are not the answer
        to a datagram of this batch."""
        if self._closing:
            return
        self._send([(data, addr)])

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return len(self.pending)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.loop.remove_reader(self.fd)
        if self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False
        if self.pending:  # one last try; what the kernel will not take now is lost
            done = self.io.send(self.pending)
            del self.pending[:done]
        self.sock.close()


def batched_udp_available() -> bool:
    """The batched endpoint runs with the compiled scanner (FASTREG_PARSER=pure
    selects the event loop's own transport, the readable twin)."""
    from fastreg import parser

    if parser.IMPLEMENTATION != "cython" or os.environ.get("FASTREG_UDP_BATCH") == "0":
        return False
    try:
        from fastreg import _udpio  # noqa: F401
    except ImportError:
        return False
    return True
