"""Wait until a SIP server answers OPTIONS over UDP (used by bench/compare.sh).

    python -m bench.sipping 127.0.0.1:5070 --wait 15     # exit 0 once answered, 1 on timeout
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def ping(host: str, port: int, timeout: float = 0.3) -> str | None:
    """The status line of the answer to one OPTIONS, or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        sock.connect((host, port))
        lhost, lport = sock.getsockname()[:2]
        target = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        local = f"[{lhost}]:{lport}" if family == socket.AF_INET6 else f"{lhost}:{lport}"
        tag = os.urandom(4).hex()
        request = (
            f"OPTIONS sip:{target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local};branch=z9hG4bK{tag};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:ping@{target}>;tag={tag}\r\n"
            f"To: <sip:{target}>\r\n"
            f"Call-ID: {tag}@sipping\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        sock.settimeout(timeout)
        try:
            sock.send(request)
            data = sock.recv(65535)
        except OSError:
            return None
        return data.split(b"\r\n", 1)[0].decode("latin-1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="HOST:PORT")
    ap.add_argument("--wait", type=float, default=10.0, help="give up after this many seconds")
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        status = ping(host.strip("[]"), int(port))
        if status is not None:
            print(status)
            return 0
        time.sleep(0.2)
    print(f"no answer from {args.target} within {args.wait:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
