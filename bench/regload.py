"""regload: a fast SIP registration load generator (UDP, digest, several processes).

    python -m bench.regload --users var/bench-users.csv --rate 8000 -d 10 127.0.0.1:5060
    python -m bench.regload --users var/bench-users.csv --procs 2 --concurrency 200 -d 10 127.0.0.1:5060

One registration is what SIPp's bench/sipp/reg_auth.xml does: REGISTER, 401
with a digest challenge, REGISTER with credentials (MD5 or SHA-256, qop=auth
when offered), 200 OK; each registration has its own Call-ID. With
`--scenario refresh` a user that has registered once refreshes instead: the
same Call-ID, the next CSeq and the cached credentials (nc + 1); a 401 to that
is answered with fresh credentials, as a phone does.

Open loop (`--rate R`): registrations start at R per second in total, spread
over the processes, whether or not earlier ones were answered (up to
`--max-outstanding` in flight per process). Closed loop (no --rate):
each process keeps `--concurrency` registrations in flight, as fast as the
server answers. Each process has one non-blocking connected UDP socket and an
epoll loop; responses are scanned with fastreg's compiled parser (the tool
refuses to run on the pure-Python twin). Requests are retransmitted as RFC
3261 17.1.2.2 says for non-INVITE transactions over UDP: after T1 = 500 ms,
doubling up to T2 = 4 s; a transaction unanswered for `--timeout` seconds
(64*T1 = 32 s by default) is a timeout. When the load window closes, answers
are awaited for at most `--drain` seconds; what is still unanswered then is
reported as unfinished.

Users come from a SIPp injection CSV (`user;password;domain`, the first line
may be SEQUENTIAL/RANDOM/USER), the file bench/gen_users.py writes; the
processes take disjoint slices of it.

It prints registrations per second, failures by status, timeouts,
retransmissions, latency percentiles (first REGISTER sent to 200 received),
its own CPU per registration, a per-process breakdown and, with
`--server-pid PID` (repeatable; descendants included), the server's CPU
seconds over the run and registrations per server CPU-second.
"""

from __future__ import annotations

import argparse
import array
import collections
import gc
import hashlib
import heapq
import json
import math
import os
import select
import socket
import sys
import time

from fastreg import parser
from fastreg.errors import ParseError

T1 = 0.5
T2 = 4.0


# ---------------------------------------------------------------- users


def load_users(path: str) -> list[tuple[str, str, str]]:
    """(user, password, domain) rows of a SIPp injection CSV."""
    users = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            if number == 1 and line.strip().upper() in ("SEQUENTIAL", "RANDOM", "USER", "SEQUENTIAL,PRINTF=YES"):
                continue
            fields = line.split(";")
            if len(fields) < 2:
                raise SystemExit(f"{path}:{number}: need user;password[;domain]")
            domain = fields[2] if len(fields) > 2 and fields[2] else "fastreg.local"
            users.append((fields[0], fields[1], domain))
    if not users:
        raise SystemExit(f"{path}: no users")
    return users


def parse_target(text: str) -> tuple[str, int]:
    for prefix in ("udp://", "udp:", "sip:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.rstrip("/")
    host, _, port = text.rpartition(":")
    if not host:
        host, port = text, "5060"
    return host.strip("[]"), int(port)


# ---------------------------------------------------------------- digest

_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class Challenge:
    __slots__ = ("realm", "nonce", "opaque", "qop", "algorithm", "hash", "nc")

    def __init__(self, realm, nonce, opaque, qop, algorithm, hash_):
        self.realm = realm
        self.nonce = nonce
        self.opaque = opaque
        self.qop = qop
        self.algorithm = algorithm
        self.hash = hash_
        self.nc = 0


def pick_challenge(msg) -> Challenge | None:
    """The first WWW-Authenticate we can answer (MD5 or SHA-256), else None."""
    for name, value in msg.headers:
        if name != "www-authenticate":
            continue
        try:
            creds = parser.parse_credentials(value)
        except ParseError:
            continue
        if creds.scheme.lower() != "digest":
            continue
        params = dict(creds.params)
        algorithm = (params.get("algorithm") or "MD5").upper()
        hash_ = _HASHES.get(algorithm)
        nonce = params.get("nonce")
        realm = params.get("realm")
        if hash_ is None or nonce is None or realm is None:
            continue
        qop_offer = params.get("qop")
        qop = None
        if qop_offer is not None:
            offers = [q.strip().lower() for q in qop_offer.split(",")]
            if "auth" not in offers:
                continue
            qop = "auth"
        return Challenge(realm, nonce, params.get("opaque"), qop, algorithm, hash_)
    return None


# ---------------------------------------------------------------- one process


class Txn:
    """One registration in flight (one REGISTER transaction at a time)."""

    __slots__ = ("user", "call_id", "cseq", "gen", "data", "sent_at", "req_started", "interval",
                 "started", "authed", "reauths", "provisional")

    def __init__(self, user, call_id, cseq, started):
        self.user = user
        self.call_id = call_id
        self.cseq = cseq
        self.gen = 0
        self.data = b""
        self.sent_at = started
        self.req_started = started
        self.interval = T1
        self.started = started
        self.authed = False
        self.reauths = 0
        self.provisional = False


class LoadProcess:
    def __init__(self, index: int, args, users, t0: float):
        self.index = index
        self.args = args
        self.users = users
        self.t0 = t0
        self.end = t0 + args.duration
        host, port = args.target
        self.rhost, self.rport = host, port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, args.sockbuf)
            except OSError:
                pass
        sock.bind((args.local_ip, 0))
        sock.connect((host, port))
        sock.setblocking(False)
        self.sock = sock
        self.lhost, self.lport = sock.getsockname()[:2]
        hostport = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        lhostport = f"[{self.lhost}]:{self.lport}" if family == socket.AF_INET6 else f"{self.lhost}:{self.lport}"
        self.ruri = f"sip:{hostport}"
        self.head = f"REGISTER {self.ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {lhostport};branch=z9hG4bK"
        self.lhostport = lhostport
        self.expires = args.expires
        # Per user: the constant header block and the HA1 cache.
        self.user_block = [
            (f"From: <sip:{u}@{d}>;tag=rl{index}x{i}\r\nTo: <sip:{u}@{d}>\r\n",
             f"Contact: <sip:{u}@{lhostport};transport=UDP>\r\nExpires: {args.expires}\r\n"
             f"Max-Forwards: 70\r\nUser-Agent: regload\r\n")
            for i, (u, _p, d) in enumerate(users)
        ]
        self.ha1_cache: dict = {}
        self.ha2_cache: dict = {}
        self.run_tag = f"{os.getpid():x}{int(t0 * 1000) % 1000000:x}"
        self.pending: dict[str, Txn] = {}
        self.timers1: collections.deque = collections.deque()  # first retransmission, due in send order
        self.timers: list = []  # later retransmissions (heap)
        self.timer_seq = 0
        self.next_user = 0
        self.counter = 0
        self.refresh = args.scenario == "refresh"
        self.idle_users: collections.deque = collections.deque(range(len(users)))
        self.dialogs: dict[int, tuple] = {}  # refresh: user -> [call_id, cseq, challenge]
        # results
        self.started = 0
        self.ok = 0
        self.failures: collections.Counter = collections.Counter()
        self.timeouts = 0
        self.retrans = 0
        self.stray = 0
        self.bad = 0
        self.send_errors = 0
        self.icmp = 0
        self.not_started = 0
        self.latencies = array.array("d")
        self.last_ok = t0
        self.ok_in_window = 0

    # -- requests --------------------------------------------------------

    def build(self, txn: Txn, auth: str | None) -> bytes:
        self.counter += 1
        ufrom, urest = self.user_block[txn.user]
        parts = [
            self.head, self.run_tag, ".", str(self.counter), ";rport\r\n",
            ufrom, "Call-ID: ", txn.call_id, "\r\nCSeq: ", str(txn.cseq), " REGISTER\r\n", urest,
        ]
        if auth is not None:
            parts.append(auth)
        parts.append("Content-Length: 0\r\n\r\n")
        return "".join(parts).encode()

    def authorization(self, txn: Txn, ch: Challenge) -> str:
        user, password, _domain = self.users[txn.user]
        key = (txn.user, ch.realm, ch.algorithm)
        ha1 = self.ha1_cache.get(key)
        if ha1 is None:
            ha1 = ch.hash(f"{user}:{ch.realm}:{password}".encode()).hexdigest()
            self.ha1_cache[key] = ha1
        ha2 = self.ha2_cache.get(ch.algorithm)
        if ha2 is None:
            ha2 = ch.hash(f"REGISTER:{self.ruri}".encode()).hexdigest()
            self.ha2_cache[ch.algorithm] = ha2
        ch.nc += 1
        if ch.qop:
            nc = f"{ch.nc:08x}"
            cnonce = f"{self.counter:x}{self.index}"
            response = ch.hash(f"{ha1}:{ch.nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
            tail = f', cnonce="{cnonce}", qop=auth, nc={nc}'
        else:
            response = ch.hash(f"{ha1}:{ch.nonce}:{ha2}".encode()).hexdigest()
            tail = ""
        opaque = f', opaque="{ch.opaque}"' if ch.opaque is not None else ""
        return (f'Authorization: Digest username="{user}", realm="{ch.realm}", nonce="{ch.nonce}", '
                f'uri="{self.ruri}", response="{response}", algorithm={ch.algorithm}{tail}{opaque}\r\n')

    def send_request(self, txn: Txn, data: bytes, now: float) -> None:
        txn.gen += 1
        txn.data = data
        txn.sent_at = now
        txn.req_started = now
        txn.interval = T1
        txn.provisional = False
        self.timers1.append((now + T1, txn, txn.gen))
        self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.send_errors += 1  # the retransmission timer covers it
        except ConnectionRefusedError:
            self.icmp += 1
        except OSError:
            self.send_errors += 1

    def start(self, now: float) -> bool:
        if self.refresh:
            if not self.idle_users:
                return False
            user = self.idle_users.popleft()
            dialog = self.dialogs.get(user)
        else:
            user = self.next_user
            self.next_user = user + 1 if user + 1 < len(self.users) else 0
            dialog = None
        self.started += 1
        if dialog is None:
            call_id = f"{self.run_tag}-{self.index}-{self.started}@regload"
            txn = Txn(user, call_id, 1, now)
            self.pending[call_id] = txn
            self.send_request(txn, self.build(txn, None), now)
        else:
            call_id, cseq, ch = dialog
            txn = Txn(user, call_id, cseq + 1, now)
            txn.authed = True
            self.pending[call_id] = txn
            self.send_request(txn, self.build(txn, self.authorization(txn, ch)), now)
        return True

    def finish(self, txn: Txn, now: float) -> None:
        del self.pending[txn.call_id]
        txn.gen += 1  # cancels its timers
        if self.refresh:
            self.idle_users.append(txn.user)

    # -- responses -------------------------------------------------------

    def on_datagram(self, data: bytes, now: float) -> None:
        try:
            msg = parser.parse_message(data)
        except ParseError:
            self.bad += 1
            return
        code = msg.status_code
        if code is None:
            self.bad += 1  # a request sent to us: not expected
            return
        call_id = cseq_text = None
        for name, value in msg.headers:
            if name == "call-id":
                call_id = value
            elif name == "cseq":
                cseq_text = value
        txn = self.pending.get(call_id)
        if txn is None:
            self.stray += 1  # an answer to a retransmission, or to a finished registration
            return
        try:
            cseq = int(cseq_text.split(None, 1)[0])
        except (AttributeError, ValueError):
            self.bad += 1
            return
        if cseq != txn.cseq:
            self.stray += 1
            return
        if code < 200:
            txn.provisional = True
            return
        if code == 200:
            self.finish(txn, now)
            self.ok += 1
            self.latencies.append(now - txn.started)
            self.last_ok = now
            if now <= self.end:
                self.ok_in_window += 1
            if self.refresh:
                dialog = self.dialogs.get(txn.user)
                if dialog is not None:
                    self.dialogs[txn.user] = (txn.call_id, txn.cseq, dialog[2])
            return
        if code in (401, 407) and txn.reauths < 2:
            ch = pick_challenge(msg)
            if ch is not None:
                stale = "stale=true" in data.decode("latin-1").lower()
                if not txn.authed or stale or self.refresh:
                    txn.authed = True
                    txn.reauths += 1
                    txn.cseq += 1
                    if self.refresh:
                        self.dialogs[txn.user] = (txn.call_id, txn.cseq, ch)
                    self.send_request(txn, self.build(txn, self.authorization(txn, ch)), now)
                    return
        self.finish(txn, now)
        self.failures[code] += 1
        if self.refresh:
            self.dialogs.pop(txn.user, None)

    # -- timers ----------------------------------------------------------

    def on_timers(self, now: float) -> None:
        timeout = self.args.timeout
        timers1 = self.timers1
        while timers1 and timers1[0][0] <= now:
            _due, txn, gen = timers1.popleft()
            if gen == txn.gen:
                self._retransmit(txn, now, timeout)
        timers = self.timers
        while timers and timers[0][0] <= now:
            _due, _seq, txn, gen = heapq.heappop(timers)
            if gen == txn.gen:
                self._retransmit(txn, now, timeout)

    def _retransmit(self, txn: Txn, now: float, timeout: float) -> None:
        if now - txn.req_started >= timeout:
            self.timeouts += 1
            self.finish(txn, now)
            if self.refresh:
                self.dialogs.pop(txn.user, None)
            return
        self.retrans += 1
        self._send(txn.data)
        txn.interval = T2 if txn.provisional else min(txn.interval * 2, T2)
        due = min(now + txn.interval, txn.req_started + timeout)
        self.timer_seq += 1
        heapq.heappush(self.timers, (due, self.timer_seq, txn, txn.gen))

    def next_timer(self) -> float:
        due = math.inf
        if self.timers1:
            due = self.timers1[0][0]
        if self.timers and self.timers[0][0] < due:
            due = self.timers[0][0]
        return due

    # -- the loop --------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        sock = self.sock
        recv = sock.recv
        on_datagram = self.on_datagram
        pending = self.pending
        ep = select.epoll()
        ep.register(sock.fileno(), select.EPOLLIN)
        rate = args.rate / args.procs if args.rate else 0.0
        limit = args.count // args.procs + (1 if self.index < args.count % args.procs else 0) if args.count else 0
        max_out = args.max_outstanding
        concurrency = args.concurrency
        drain_until = self.end + args.drain
        clock = time.monotonic
        # Nothing here makes reference cycles: keep the collector out of the loop.
        gc.collect()
        gc.freeze()
        gc.disable()
        while clock() < self.t0:
            time.sleep(min(0.01, max(0.0, self.t0 - clock())))
        cpu0 = os.times()
        due_starts = 0
        now = clock()
        while True:
            now = clock()
            loading = now < self.end and (not limit or self.started < limit)
            if loading:
                if rate:
                    due_starts = int((now - self.t0) * rate) + 1
                    if limit and due_starts > limit:
                        due_starts = limit
                    while self.started + self.not_started < due_starts:
                        if len(pending) >= max_out or not self.start(now):
                            self.not_started += 1
                else:
                    while len(pending) < concurrency and (not limit or self.started < limit):
                        if not self.start(now):
                            break
            # Everything the socket holds.
            for _ in range(256):
                try:
                    data = recv(65535)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    self.icmp += 1
                    continue
                on_datagram(data, clock())
            else:
                now = clock()
                self.on_timers(now)
                continue
            now = clock()
            self.on_timers(now)
            if not loading and (not pending or now >= drain_until):
                break
            # Sleep until a datagram, a timer, or the next start is due.
            wake = self.next_timer()
            if loading:
                if rate:
                    wake = min(wake, self.t0 + (self.started + self.not_started) / rate)
                wake = min(wake, self.end)
            else:
                wake = min(wake, drain_until)
            delay = wake - clock()
            if delay > 0:
                ep.poll(min(delay, 0.05))
        cpu1 = os.times()
        unfinished = len(pending)
        ep.close()
        sock.close()
        return {
            "index": self.index,
            "local": self.lhostport,
            "started": self.started,
            "not_started": self.not_started,
            "ok": self.ok,
            "ok_in_window": self.ok_in_window,
            "failures": {str(k): v for k, v in self.failures.items()},
            "timeouts": self.timeouts,
            "unfinished": unfinished,
            "retransmissions": self.retrans,
            "stray": self.stray,
            "bad": self.bad,
            "send_errors": self.send_errors,
            "icmp": self.icmp,
            "last_ok": self.last_ok - self.t0,
            "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "latencies": self.latencies.tobytes(),
        }


def udp_rcvbuf_errors() -> int | None:
    """RcvbufErrors of /proc/net/snmp: datagrams dropped for a full receive buffer (whole machine)."""
    try:
        with open("/proc/net/snmp") as handle:
            rows = [line.split() for line in handle if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


def _child(index, args, users, t0, conn) -> None:
    try:
        result = LoadProcess(index, args, users, t0).run()
    except BaseException as error:  # report, never hang the parent
        result = {"index": index, "error": f"{type(error).__name__}: {error}"}
    conn.send(result)
    conn.close()


# ---------------------------------------------------------------- report


def percentile(sorted_values, p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def summarize(args, results, server_cpu=None, server_rss=None, wall=None) -> dict:
    lat = array.array("d")
    for r in results:
        chunk = array.array("d")
        chunk.frombytes(r["latencies"])
        r["_lat"] = sorted(chunk)
        lat.extend(chunk)
    lat = sorted(lat)
    failures: collections.Counter = collections.Counter()
    for r in results:
        failures.update(r["failures"])
    total = {k: sum(r[k] for r in results) for k in (
        "started", "not_started", "ok", "ok_in_window", "timeouts", "unfinished", "retransmissions",
        "stray", "bad", "send_errors", "icmp", "cpu_s")}
    span = max((r["last_ok"] for r in results), default=0.0)
    summary = {
        "scenario": args.scenario,
        "mode": f"open-loop {args.rate:g}/s" if args.rate else f"closed-loop {args.concurrency} per process",
        "procs": args.procs,
        "duration_s": args.duration,
        "target": f"udp:{args.target[0]}:{args.target[1]}",
        **total,
        "failures": dict(failures),
        "rate": total["ok_in_window"] / args.duration if args.duration else 0.0,
        "rate_overall": total["ok"] / span if span > 0 else 0.0,
        "latency_ms": {p: percentile(lat, q) * 1000 for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "client_us_per_reg": (total["cpu_s"] / total["ok"] * 1e6) if total["ok"] else None,
        "per_process": [
            {
                "index": r["index"], "local": r["local"], "started": r["started"], "ok": r["ok"],
                "failures": sum(r["failures"].values()), "timeouts": r["timeouts"] + r["unfinished"],
                "retransmissions": r["retransmissions"], "rate": r["ok_in_window"] / args.duration,
                "p50_ms": percentile(r["_lat"], 50) * 1000, "p99_ms": percentile(r["_lat"], 99) * 1000,
                "cpu_s": r["cpu_s"],
            }
            for r in results
        ],
    }
    if server_cpu is not None:
        summary["server_cpu_s"] = server_cpu
        summary["regs_per_server_cpu_s"] = total["ok"] / server_cpu if server_cpu > 0 else None
        summary["server_rss_kib"] = server_rss
    return summary


def print_summary(s: dict, out=sys.stdout) -> None:
    w = out.write
    w(f"regload: {s['scenario']}, {s['mode']}, {s['procs']} process(es), {s['duration_s']:g} s, "
      f"target {s['target']}, parser {parser.IMPLEMENTATION}\n")
    w(f"  registrations ok   {s['ok']:>9}   {s['rate']:,.0f}/s in the load window"
      f"  ({s['rate_overall']:,.0f}/s to the last 200)\n")
    fails = ", ".join(f"{k}: {v}" for k, v in sorted(s["failures"].items())) or "none"
    w(f"  failures           {sum(s['failures'].values()):>9}   by status: {fails}\n")
    w(f"  timeouts           {s['timeouts']:>9}   (+ {s['unfinished']} unanswered when the drain ended)\n")
    w(f"  retransmissions    {s['retransmissions']:>9}   (stray answers {s['stray']}, unparsable {s['bad']}, "
      f"send errors {s['send_errors']}, ICMP {s['icmp']})\n")
    if "udp_rcvbuf_errors" in s:
        w(f"  kernel UDP drops   {s['udp_rcvbuf_errors']:>9}   (RcvbufErrors over the run, whole machine)\n")
    if s["not_started"]:
        w(f"  not started        {s['not_started']:>9}   (in-flight cap or no idle user: the generator fell behind)\n")
    lat = s["latency_ms"]
    w(f"  latency ms         p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}\n")
    us = s["client_us_per_reg"]
    w(f"  regload cpu        {s['cpu_s']:.2f} s" + (f"  ({us:.1f} us per registration)\n" if us else "\n"))
    if "server_cpu_s" in s:
        per = s["regs_per_server_cpu_s"]
        w(f"  server cpu         {s['server_cpu_s']:.2f} s   "
          + (f"{per:,.0f} registrations per server CPU-second" if per else "") + f", RSS {s['server_rss_kib'] / 1024:.1f} MiB\n")
    w("  per process:  #  local                  started        ok  fail  t/o  retrans    rate/s   p50ms   p99ms  cpu_s\n")
    for p in s["per_process"]:
        w(f"               {p['index']:>2}  {p['local']:<21} {p['started']:>8} {p['ok']:>9} {p['failures']:>5} "
          f"{p['timeouts']:>4} {p['retransmissions']:>8} {p['rate']:>9,.0f} {p['p50_ms']:>7.2f} {p['p99_ms']:>7.2f} "
          f"{p['cpu_s']:>6.2f}\n")


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.regload", description=__doc__.splitlines()[0])
    ap.add_argument("target", type=parse_target, help="registrar address: HOST:PORT or udp://HOST:PORT")
    ap.add_argument("--users", required=True, help="SIPp injection CSV (user;password;domain), e.g. from bench/gen_users.py")
    ap.add_argument("--scenario", choices=("reg_auth", "refresh"), default="reg_auth")
    ap.add_argument("--rate", type=float, default=0.0, help="open loop: registrations per second in total")
    ap.add_argument("--concurrency", type=int, default=100, help="closed loop: registrations in flight per process")
    ap.add_argument("-d", "--duration", type=float, default=10.0, help="load window in seconds (default 10)")
    ap.add_argument("-m", "--count", type=int, default=0, help="stop starting after this many registrations in total")
    ap.add_argument("--procs", type=int, default=1, help="load processes, each with its own socket")
    ap.add_argument("--timeout", type=float, default=32.0, help="transaction timeout in seconds (64*T1 = 32)")
    ap.add_argument("--drain", type=float, default=5.0, help="seconds to wait for answers after the load window")
    ap.add_argument("--max-outstanding", type=int, default=20000, help="open loop: in-flight cap per process")
    ap.add_argument("--expires", type=int, default=3600)
    ap.add_argument("--local-ip", default=None, help="address to send from (default: matches the target's family)")
    ap.add_argument("--sockbuf", type=int, default=4 << 20, help="SO_RCVBUF/SO_SNDBUF bytes")
    ap.add_argument("--server-pid", type=int, action="append", default=[],
                    help="server process to measure (with its descendants); repeatable")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)

    if parser.IMPLEMENTATION != "cython":
        print(f"regload: refusing to run on the {parser.IMPLEMENTATION} parser: the bench measures the compiled "
              "scanner (unset FASTREG_PARSER and build fastreg._cparse: pip install -e .)", file=sys.stderr)
        return 2
    if args.procs < 1 or args.duration <= 0 or args.concurrency < 1:
        ap.error("--procs, --duration and --concurrency must be positive")
    if args.local_ip is None:
        args.local_ip = "::1" if ":" in args.target[0] else "127.0.0.1"
    users = load_users(args.users)
    if len(users) < args.procs:
        ap.error(f"{len(users)} users cannot be split over {args.procs} processes")

    from bench import procstat
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    t0 = time.monotonic() + 0.3 + 0.05 * args.procs
    server_before = procstat.snapshot(args.server_pid) if args.server_pid else None
    drops_before = udp_rcvbuf_errors()
    children = []
    for index in range(args.procs):
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(index, args, users[index::args.procs], t0, writer), daemon=True)
        proc.start()
        writer.close()
        children.append((proc, reader))
    results = []
    deadline = t0 + args.duration + args.drain + 30
    try:
        for proc, reader in children:
            if reader.poll(max(0.0, deadline - time.monotonic())):
                results.append(reader.recv())
            else:
                results.append({"index": len(results), "error": "no result (stuck?)"})
    finally:
        for proc, _ in children:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
    errors = [r for r in results if "error" in r]
    if errors:
        for r in errors:
            print(f"regload: process {r['index']}: {r['error']}", file=sys.stderr)
        return 1
    server_cpu = server_rss = None
    if server_before is not None:
        after = procstat.snapshot(args.server_pid)
        server_cpu = procstat.cpu_delta(server_before, after)
        server_rss = after["rss_kib"]
    summary = summarize(args, results, server_cpu, server_rss)
    drops_after = udp_rcvbuf_errors()
    if drops_before is not None and drops_after is not None:
        summary["udp_rcvbuf_errors"] = drops_after - drops_before
    if args.json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    return 0 if summary["ok"] and not summary["failures"] and not summary["timeouts"] else 1


if __name__ == "__main__":
    sys.exit(main())
