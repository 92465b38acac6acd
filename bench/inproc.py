"""The registration path in-process: Worker.handle on real datagrams, no socket.

    python -m bench.inproc [--users 10000] [--rounds 3] [--writemap] [--durability periodic]

Builds a Worker on a temporary state directory with N users, then for each
user: REGISTER without credentials (401), REGISTER with digest (200), as
SIPp's reg_auth.xml does, `--rounds` times over all users. Only the time
inside Worker.handle is counted (the client side here — building requests,
computing the digest, reading the 401 — is not), so the figure is the
server's CPU per authenticated registration without the kernel's socket
cost. Use it to compare code changes quickly; `bench/compare.sh` is the
measurement against Kamailio over real sockets.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import statistics
import sys
import tempfile
import time

from fastreg import config as config_mod
from fastreg import parser
from fastreg.worker import Worker

REALM = "fastreg.local"
_NONCE = re.compile(rb'nonce="([^"]+)"')


def register_bytes(user: int, call_id: str, cseq: int, branch: str, auth: str | None) -> bytes:
    lines = [
        "REGISTER sip:127.0.0.1:5060 SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:5090;branch={branch}",
        f"From: <sip:{user}@{REALM}>;tag={user}x",
        f"To: <sip:{user}@{REALM}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@127.0.0.1:5090>",
        "Max-Forwards: 70",
        "Expires: 3600",
        "User-Agent: inproc",
    ]
    if auth:
        lines.append(auth)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def authorization(user: int, password: str, nonce: str) -> str:
    uri = "sip:127.0.0.1:5060"
    ha1 = hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    cnonce, nc = "0a4f113b", "00000001"
    response = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--writemap", action="store_true")
    ap.add_argument("--durability", default="periodic", choices=("sync", "periodic", "none"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fastreg-inproc-") as tmp:
        regfile = os.path.join(tmp, "regfile.conf")
        with open(regfile, "w") as handle:
            for n in range(args.users):
                handle.write(f"[{100000 + n}]\npassword=pw{n}\n")
        base = config_mod.load(None)
        cfg = dataclasses.replace(
            base,
            server=dataclasses.replace(base.server, state_dir=os.path.join(tmp, "state")),
            users=dataclasses.replace(base.users, file=regfile),
            location=dataclasses.replace(base.location, writemap=args.writemap,
                                         durability="periodic" if args.durability == "sync" else args.durability),
        )
        worker = Worker(cfg)
        handle_fn = worker.handle
        clock = time.process_time  # CPU time: the box is shared, wall time would count the others
        per_round = []
        challenge_s = ok_s = 0.0
        for rnd in range(args.rounds):
            spent = 0.0
            for n in range(args.users):
                user = 100000 + n
                call_id = f"{user}-inproc"
                first = register_bytes(user, call_id, 2 * rnd + 1, f"z9hG4bK{rnd}a{n}", None)
                t0 = clock()
                out = handle_fn(first, "127.0.0.1", 5090, "UDP")
                t1 = clock()
                nonce = _NONCE.search(out[0]).group(1).decode()
                second = register_bytes(user, call_id, 2 * rnd + 2, f"z9hG4bK{rnd}b{n}",
                                        authorization(user, f"pw{n}", nonce))
                t2 = clock()
                out = handle_fn(second, "127.0.0.1", 5090, "UDP")
                t3 = clock()
                if not out[0].startswith(b"SIP/2.0 200"):
                    sys.exit(f"unexpected answer for {user}: {out[0][:80]!r}")
                challenge_s += t1 - t0
                ok_s += t3 - t2
                spent += (t1 - t0) + (t3 - t2)
            per_round.append(spent / args.users * 1e6)
        worker.location.close()
    total = args.users * args.rounds
    print(f"parser {parser.IMPLEMENTATION}, {args.users} users x {args.rounds} rounds, writemap={args.writemap}, "
          f"durability={args.durability}")
    print(f"  us per registration by round: {', '.join(f'{r:.1f}' for r in per_round)}")
    print(f"  401 path {challenge_s / total * 1e6:.1f} us, 200 path {ok_s / total * 1e6:.1f} us, "
          f"median round {statistics.median(per_round):.1f} us per registration")


if __name__ == "__main__":
    main()
