"""The I/O floor: a uvloop UDP responder that answers REGISTER like a registrar, doing nothing else.

    python -m bench.null_registrar 127.0.0.1:5099 [--workers 2] [--batched]

A REGISTER without an Authorization header gets 401 with a fixed digest
challenge; one with it gets 200 with the request's Contact. The answer copies
Via, From, To (plus a tag), Call-ID and CSeq from the request, with byte
slicing only: no parsing, no digest check, no storage. Driving it with SIPp's
reg_auth.xml or bench/regload.py measures what the event loop, the socket
calls and the kernel cost per registration on this machine, the part of the
budget no compiled path can remove. Not a registrar: it accepts any password.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket

import uvloop

CHALLENGE = (b'WWW-Authenticate: Digest realm="fastreg.local", nonce="AAAAAGsK-WMQyve0DbIoN4EzX19g4Mmv0Y1sv73qXm0", '
             b'opaque="null", algorithm=MD5, qop="auth"\r\n')
BATCHED = False
COPIED = (b"via:", b"from:", b"to:", b"call-id:", b"cseq:", b"contact:", b"v:", b"f:", b"t:", b"i:", b"m:")


class NullRegistrar(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        reply = answer(data)
        if reply is not None:
            self.transport.sendto(reply, addr)


def answer(data: bytes) -> bytes | None:
    """The reply bytes for a REGISTER (401 without Authorization, else 200), None for anything else."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"REGISTER "):
        return None
    out = []
    authorized = False
    for line in lines[1:]:
        lower = line[:14].lower()
        if lower.startswith(b"authorization"):
            authorized = True
        elif lower.startswith(COPIED):
            if lower.startswith((b"to:", b"t:")):
                line += b";tag=null"
            out.append(line)
    if authorized:
        reply = b"SIP/2.0 200 OK\r\n" + b"\r\n".join(out) + b"\r\nContent-Length: 0\r\n\r\n"
    else:
        reply = (b"SIP/2.0 401 Unauthorized\r\n" + b"\r\n".join(x for x in out if not x[:2].lower() in (b"co", b"m:"))
                 + b"\r\n" + CHALLENGE + b"Content-Length: 0\r\n\r\n")
    return reply


class BatchedNullRegistrar:
    """The same answers through fastreg's batched UDP I/O (recvmmsg/sendmmsg)."""

    def __init__(self, loop, sock) -> None:
        from fastreg._udpio import UdpBatchSocket

        self.io = UdpBatchSocket(sock.fileno(), 32)
        loop.add_reader(sock.fileno(), self.readable)

    def readable(self) -> None:
        for _ in range(16):
            batch = self.io.recv()
            out = []
            for data, host, port in batch:
                reply = answer(data)
                if reply is not None:
                    out.append((reply, (host, port)))
            if out:
                self.io.send(out)
            if len(batch) < 32:
                break


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    sock.bind((host, port))
    if BATCHED:
        sock.setblocking(False)
        keep = BatchedNullRegistrar(loop, sock)  # noqa: F841 - lives as long as serve()
    else:
        await loop.create_datagram_endpoint(NullRegistrar, sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("listen", help="HOST:PORT")
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    ap.add_argument("--batched", action="store_true",
                    help="recvmmsg/sendmmsg through fastreg._udpio, as a fastreg worker reads UDP")
    args = ap.parse_args()
    global BATCHED
    BATCHED = args.batched
    host, _, port = args.listen.rpartition(":")
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            uvloop.run(serve(host.strip("[]"), int(port)))
            os._exit(0)
        children.append(pid)
    try:
        uvloop.run(serve(host.strip("[]"), int(port)))
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass


if __name__ == "__main__":
    main()
