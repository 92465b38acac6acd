"""Per-worker counters, and the shared form in which `fastreg stats` reads them.

`Counters` is plain integers in a slotted object: the core bumps them (they
are passed in, never global). Every worker publishes a flat snapshot of its
counters into the `stats` database of the location table (key: the worker
index, value: msgpack) every half second and when it stops; `fastreg stats`
reads them while the server runs.

A snapshot is one flat dict (the same names in `fastreg stats --json`)::

    index, pid, state, started_at, updated_at, uptime_s     about the worker
    requests, requests_<METHOD>      requests received, in total and by method
                                     (REGISTER, INVITE, ..., "other")
    responses, responses_<N>xx       responses sent, in total and by class
    dropped, dropped_<reason>        messages dropped without an answer
                                     (unparsable, response, no-via, udp-error,
                                     send-error, tcp-closed-..., ...)
    forwarded_requests, _responses   proxy: messages sent on to another hop
    calls_started, _answered, _ended calls tracked (proxy mode with Record-Route);
    calls_refused-busy, calls_cdr-failures, calls_events-dropped
    call_route_asked, _targets,      call_route lookups (database query or hook), those
    call_route_refused, _failed      that gave targets, refusals, and failures (503/500)
    registrations_applied            REGISTERs that changed the table
    auth_failures, auth_throttled, parse_errors, retransmissions,
    replays_refused, bindings_expired, internal_errors
    users_fetched, users_fetch_failed   answers fetched from the database or the
                                     user_auth hook (cache misses), and those
                                     that failed (answered 503 / the hook's status)
    db_failures                      queries that failed (database down, slow,
                                     or refusing the query)
    db_writes, db_writes_dropped,    write-behind queues (registration mirror,
    db_writes_failed, db_writes_waiting  CDRs, line tracker): written, dropped
                                     (queue full or left at stop), refused by
                                     the database, waiting now
    hook_failures                    hooks that raised, timed out or returned
                                     something undocumented
    udp_kernel_drops                 datagrams the kernel dropped on this
                                     worker's UDP sockets (full receive
                                     buffer), from SO_MEMINFO

Counters count from the start of that worker process: a worker that is
replaced starts again from zero (its pid and started_at change). `state` is
"running"; "stopped" once the worker has stopped cleanly; `fastreg stats`
shows a worker whose process is gone without stopping as "dead", and one
that is alive but has not published for `STALE_AFTER_S` as "stalled" (a
blocked event loop). The total sums every listed worker.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import msgpack

PUBLISH_INTERVAL_S = 0.5
STALE_AFTER_S = 5.0
FORMAT = 1
META_KEYS = ("index", "pid", "state", "started_at", "updated_at", "uptime_s")


class Counters:
    __slots__ = (
        "requests",  # by method
        "responses",  # by class: "1xx" .. "6xx"
        "auth_failures",
        "auth_throttled",
        "parse_errors",
        "dropped",  # by reason
        "registrations_applied",
        "retransmissions",
        "replays_refused",
        "bindings_expired",
        "internal_errors",
        "users_fetched",
        "users_fetch_failed",
        "db_failures",
        "db_writes",
        "db_writes_dropped",
        "db_writes_failed",
        "db_writes_waiting",
        "hook_failures",
        "forwarded",  # proxy: "requests" and "responses" sent on to another hop
        "calls",  # proxy: "started", "answered", "ended", "refused-busy", "cdr-failures", "events-dropped"
        "call_route",  # lookups: "asked", "targets" (answered with some), "refused", "failed"
    )

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.call_route: Counter[str] = Counter()
        self.auth_failures = 0
        self.auth_throttled = 0
        self.parse_errors = 0
        self.registrations_applied = 0
        self.retransmissions = 0
        self.replays_refused = 0
        self.bindings_expired = 0
        self.internal_errors = 0
        # Copied in by the worker before each publication from the parts that
        # keep them (fastreg/pgdb.py, writebehind.py, users/cached.py, hooks.py).
        self.users_fetched = 0
        self.users_fetch_failed = 0
        self.db_failures = 0
        self.db_writes = 0
        self.db_writes_dropped = 0
        self.db_writes_failed = 0
        self.db_writes_waiting = 0
        self.hook_failures = 0

    def count_response(self, status: int) -> None:
        self.responses[f"{status // 100}xx"] += 1

    def as_dict(self) -> dict:
        out: dict = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Counter) else value
        return out

    def flat(self) -> dict[str, int]:
        """`requests`, `requests_REGISTER`, ..., `auth_failures`, ...: one level, ints only."""
        out: dict[str, int] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, Counter):
                out[name] = sum(value.values())
                for key in sorted(value):
                    out[f"{name}_{key}"] = value[key]
            else:
                out[name] = value
        return out


# -- the shared snapshots ---------------------------------------------------------

def stats_key(index: int) -> bytes:
    return b"w%08d" % index


def key_index(key: bytes) -> int | None:
    if len(key) == 9 and key[:1] == b"w" and key[1:].isdigit():
        return int(key[1:])
    return None


def process_start_ticks(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (/proc/PID/stat field 22):
    with the pid, it tells a process from a later one that reused its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def snapshot(counters: Counters, *, index: int, pid: int, started_at: float, now: float,
             state: str = "running", start_ticks: int | None = None, udp_kernel_drops: int = 0) -> dict:
    entry: dict = {"index": index, "pid": pid, "state": state, "started_at": started_at, "updated_at": now}
    entry.update(counters.flat())
    entry["udp_kernel_drops"] = udp_kernel_drops
    entry["_format"] = FORMAT
    entry["_start_ticks"] = start_ticks
    return entry


def encode(entry: dict) -> bytes:
    return msgpack.packb(entry, use_bin_type=True)


def decode(raw: bytes) -> dict | None:
    try:
        entry = msgpack.unpackb(raw, raw=False)
    except Exception:  # noqa: BLE001 - an unreadable entry is skipped, never fatal
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("pid"), int):
        return None
    return entry


def _pid_state(entry: dict) -> str:
    pid = entry["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        pass  # alive, another user's
    ticks = entry.get("_start_ticks")
    if ticks is not None:
        now_ticks = process_start_ticks(pid)
        if now_ticks is not None and now_ticks != ticks:
            return "dead"  # the pid was reused
    return "alive"


def report(entries: list[dict], now: float | None = None, system: dict | None = None) -> dict:
    """{"workers": [...], "total": {...}, "system": {...}} from the published
    snapshots, each worker's `state` checked against its process."""
    now = time.time() if now is None else now
    workers = []
    for entry in sorted(entries, key=lambda e: (e.get("index", 0), e.get("started_at", 0))):
        row = {k: v for k, v in entry.items() if not k.startswith("_")}
        if row.get("state") != "stopped":
            alive = _pid_state(entry)
            if alive == "dead":
                row["state"] = "dead"
            elif now - float(entry.get("updated_at", 0)) > STALE_AFTER_S:
                row["state"] = "stalled"
            else:
                row["state"] = "running"
        until = now if row["state"] in ("running", "stalled") else float(row.get("updated_at", now))
        row["uptime_s"] = round(until - float(row.get("started_at", now)), 1)
        workers.append(row)
    total: dict[str, int] = {}
    for row in workers:
        for key, value in row.items():
            if key in META_KEYS or isinstance(value, bool) or not isinstance(value, int):
                continue
            total[key] = total.get(key, 0) + value
    out = {"workers": workers, "total": total}
    if system is not None:
        out["system"] = system
    return out


def render_text(rep: dict) -> str:
    """One column per worker and one for the total, one row per counter."""
    workers = rep["workers"]
    if not workers:
        return "no worker has published statistics yet\n"
    names: list[str] = []
    for row in workers:
        for key in row:
            if key not in META_KEYS and key not in names:
                names.append(key)
    header = ["", *(f"worker {row.get('index', '?')}" for row in workers), "total"]
    rows = [header,
            ["pid", *(str(row.get("pid", "")) for row in workers), ""],
            ["state", *(str(row.get("state", "")) for row in workers), ""],
            ["uptime_s", *(f"{row.get('uptime_s', 0):g}" for row in workers), ""]]
    total = rep["total"]
    for name in names:
        rows.append([name, *(str(row.get(name, 0)) for row in workers), str(total.get(name, ""))])
    for key, value in (rep.get("system") or {}).items():
        rows.append([f"system {key}", *("" for _ in workers), "" if value is None else str(value)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for r in rows:
        lines.append("  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))]).rstrip())
    return "\n".join(lines) + "\n"
