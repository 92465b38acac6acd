"""Socket creation for the listen addresses: SO_REUSEPORT (one socket per
worker on the same address), buffer sizes, IPv6-only for IPv6 addresses."""

from __future__ import annotations

import errno
import socket

from fastreg.config import ListenAddress


class ListenError(Exception):
    """A listen address cannot be bound (in use, no permission, no such address)."""


def _family(address: ListenAddress) -> int:
    return socket.AF_INET6 if address.family_is_ipv6 else socket.AF_INET


def open_socket(address: ListenAddress, reuse_port: bool = True, rcvbuf: int = 0, sndbuf: int = 0) -> socket.socket:
    kind = socket.SOCK_DGRAM if address.transport == "udp" else socket.SOCK_STREAM
    sock = socket.socket(_family(address), kind)
    try:
        if address.family_is_ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Short stalls overflow a small receive buffer long before the CPU is
        # full; the kernel caps these at net.core.[rw]mem_max.
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.bind((address.host, address.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = {errno.EADDRINUSE: "address already in use", errno.EACCES: "permission denied",
                  errno.EADDRNOTAVAIL: "address not available on this host"}.get(exc.errno, exc.strerror)
        raise ListenError(f"cannot listen on {address}: {reason}") from None
    return sock


def probe_free(address: ListenAddress) -> None:
    """Bind once without SO_REUSEPORT: with it, a second server started by the
    same user would silently share the port with the first instead of failing."""
    open_socket(address, reuse_port=False).close()
