"""Socket creation for the listen addresses: SO_REUSEPORT (one socket per
worker on the same address), buffer sizes, IPv6-only for IPv6 addresses, and
the reuseport program that spreads a single peer's traffic over the workers.

Why a program at all: the kernel picks the socket of a SO_REUSEPORT group by
a hash of the 4-tuple, so everything one SBC sends from one address and port
lands on one worker. `attach_random_spread(sock, n)` attaches a classic BPF
program (SO_ATTACH_REUSEPORT_CBPF) to the socket's group (after bind, and for
TCP after listen):

    ld  #random          ; A = prandom_u32()   (SKF_AD_OFF + SKF_AD_RANDOM)
    mod #n               ; A = A % n
    ret a                ; the index of the socket in the group

so that each datagram (and each TCP connection request: a connection then
stays with the worker that accepted it) goes to a uniformly random member of
the group. The program belongs to the group, not to the socket: it stays
installed when the socket that attached it closes, and every worker attaches
the same program after it has bound, so a restarted worker re-installs it.

While a worker is dead its socket has left the group: the kernel moves the
last member into the hole, the group has n-1 members, and an index of n-1 is
out of range, for which the kernel falls back to its 4-tuple hash (one of the
remaining sockets). So nothing is lost while a worker is down, the survivors
just share unevenly (with n workers, the 1/n that falls back to the hash
goes, for a single peer, to one survivor); the replacement's socket joins at
the end and the spread is even again. TCP connections the dead worker held
are gone with it (clients reconnect), and so are connections still waiting
in its accept queue, unless net.ipv4.tcp_migrate_req = 1 (Linux >= 5.14)
lets the kernel move them to a survivor.

Random rather than by CPU (SKF_AD_CPU): on loopback and on a NIC whose RSS
hashes one flow to one queue, all of one peer's datagrams are received on
one CPU, so selecting by CPU would not spread them. Random costs no state
and keeps no ordering, which SIP over UDP does not need: retransmissions and
the two REGISTERs of a digest exchange may land on different workers, and
the shared table and stateless nonces are there for that.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct

from fastreg.config import ListenAddress

log = logging.getLogger("fastreg.sockets")

SO_ATTACH_REUSEPORT_CBPF = 51  # Linux, include/uapi/asm-generic/socket.h
SO_MEMINFO = 55
_SK_MEMINFO_DROPS = 8
_SKF_AD_OFF = -0x1000
_SKF_AD_RANDOM = 56
# struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00
_BPF_RET_A = 0x06 | 0x10


class ListenError(Exception):
    """A listen address cannot be bound (in use, no permission, no such address)."""


def _family(address: ListenAddress) -> int:
    return socket.AF_INET6 if address.family_is_ipv6 else socket.AF_INET


def open_socket(address: ListenAddress, reuse_port: bool = True, rcvbuf: int = 0, sndbuf: int = 0,
                spread: int = 0) -> socket.socket:
    """A bound (and for TCP listening) non-blocking socket for `address`.
    `spread` > 1: attach the random reuseport selector over that many workers."""
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
        # Only once the socket is in its group (UDP: after bind; TCP: after
        # listen). Attached earlier, the program goes with a provisional group
        # of the socket's own, which the kernel discards when the socket joins
        # the existing one, and a TCP listen() then fails with EADDRINUSE.
        if reuse_port and spread > 1:
            try:
                attach_random_spread(sock, spread)
            except OSError as exc:  # not Linux >= 4.5: serve anyway, unevenly
                log.warning("cannot attach the reuseport selector on %s (%s): a single peer's "
                            "traffic will go to one worker", address, exc.strerror)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = {errno.EADDRINUSE: "address already in use", errno.EACCES: "permission denied",
                  errno.EADDRNOTAVAIL: "address not available on this host"}.get(exc.errno, exc.strerror)
        raise ListenError(f"cannot listen on {address}: {reason}") from None
    return sock


def random_spread_program(n: int) -> bytes:
    """The classic BPF instructions (struct sock_filter[3]) of `ld #random; mod #n; ret a`."""
    if not 1 <= n < 2**32:
        raise ValueError("n must be a positive 32-bit number")
    ins = ((_BPF_LD_W_ABS, 0, 0, (_SKF_AD_OFF + _SKF_AD_RANDOM) & 0xFFFFFFFF),
           (_BPF_ALU_MOD_K, 0, 0, n),
           (_BPF_RET_A, 0, 0, 0))
    return b"".join(struct.pack("=HBBI", *i) for i in ins)


def attach_random_spread(sock: socket.socket, n: int) -> None:
    """Install the random selector over `n` sockets in `sock`'s (bound) reuseport group."""
    code = random_spread_program(n)
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native layout)
    fprog = struct.pack("HP", len(code) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    del buf  # the kernel copied it during the call


def spread_enabled() -> bool:
    """FASTREG_REUSEPORT=hash turns the selector off (the kernel's 4-tuple hash):
    for measuring what it buys, not for production."""
    return os.environ.get("FASTREG_REUSEPORT", "random").lower() != "hash"


def kernel_drops(sock) -> int:
    """Datagrams the kernel dropped on this socket (full receive buffer, bad
    checksum): sk_drops from SO_MEMINFO; 0 where not available."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
    except (OSError, AttributeError):
        return 0
    if len(raw) < (_SK_MEMINFO_DROPS + 1) * 4:
        return 0
    return struct.unpack_from("=I", raw, _SK_MEMINFO_DROPS * 4)[0]


def udp_rcvbuf_errors() -> int | None:
    """System-wide UDP receive-buffer drops (RcvbufErrors of /proc/net/snmp and
    /proc/net/snmp6 summed), or None where they cannot be read."""
    total = None
    try:
        with open("/proc/net/snmp", encoding="ascii") as handle:
            lines = [line.split() for line in handle if line.startswith("Udp:")]
        if len(lines) >= 2 and "RcvbufErrors" in lines[0]:
            total = int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError):
        return None
    try:
        with open("/proc/net/snmp6", encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name == "Udp6RcvbufErrors":
                    total = (total or 0) + int(value.strip())
    except (OSError, ValueError):
        pass
    return total


def probe_free(address: ListenAddress) -> None:
    """Bind once without SO_REUSEPORT: with it, a second server started by the
    same user would silently share the port with the first instead of failing."""
    open_socket(address, reuse_port=False).close()
