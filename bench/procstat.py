"""Server-side figures from /proc: CPU seconds and resident memory of a process tree.

    python -m bench.procstat PID [PID ...]          # cpu_s rss_kib pss_kib procs (descendants included)
    python -m bench.procstat --json PID [PID ...]
    python -m bench.procstat --save FILE PID ...     # remember the per-process CPU now
    python -m bench.procstat --since FILE PID ...    # CPU seconds spent since --save (JSON)

Used by bench/regload.py (--server-pid) and bench/compare.sh. CPU is
utime + stime of every process of the tree (threads included, since the
per-process counters sum their threads); RSS is the sum of VmRSS (pages shared
between processes, such as an LMDB map or Kamailio's shared memory, count once
per process that touches them, which is what VmRSS reports); PSS (from
smaps_rollup) shares each such page out between the processes that map it, so
the PSS sum is the tree's real footprint.
"""

from __future__ import annotations

import argparse
import json
import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from every thread's children list."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                out.extend(int(x) for x in handle.read().split())
        except OSError:
            continue
    return out


def tree(pids) -> list[int]:
    """`pids` and all their descendants, each once, in discovery order."""
    seen: list[int] = []
    stack = list(pids)
    while stack:
        pid = stack.pop()
        if pid in seen or not os.path.exists(f"/proc/{pid}"):
            continue
        seen.append(pid)
        stack.extend(children(pid))
    return seen


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def snapshot(pids) -> dict:
    """CPU seconds and RSS summed over the trees of `pids`, with the per-pid CPU
    (so that a later snapshot can subtract exactly what it had)."""
    members = tree(pids)
    per_pid = {pid: cpu_seconds(pid) for pid in members}
    return {
        "pids": members,
        "cpu_by_pid": per_pid,
        "cpu_s": sum(per_pid.values()),
        "rss_kib": sum(rss_kib(pid) for pid in members),
        "pss_kib": sum(pss_kib(pid) for pid in members),
    }


def cpu_delta(before: dict, after: dict) -> float:
    """CPU spent between two snapshots, over processes present in either."""
    total = 0.0
    for pid in set(before["cpu_by_pid"]) | set(after["cpu_by_pid"]):
        start = before["cpu_by_pid"].get(pid, 0.0)
        end = after["cpu_by_pid"].get(pid, start)  # gone: count what we saw
        total += max(0.0, end - start)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pids", type=int, nargs="+")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", metavar="FILE", help="write the snapshot to FILE")
    ap.add_argument("--since", metavar="FILE", help="print the CPU spent since the snapshot in FILE (JSON)")
    args = ap.parse_args()
    snap = snapshot(args.pids)
    if args.save:
        with open(args.save, "w") as handle:
            json.dump({**snap, "cpu_by_pid": {str(k): v for k, v in snap["cpu_by_pid"].items()}}, handle)
        return
    if args.since:
        with open(args.since) as handle:
            before = json.load(handle)
        before["cpu_by_pid"] = {int(k): v for k, v in before["cpu_by_pid"].items()}
        print(json.dumps({"cpu_s": cpu_delta(before, snap), "rss_kib": snap["rss_kib"],
                          "pss_kib": snap["pss_kib"], "procs": len(snap["pids"])}))
        return
    if args.json:
        print(json.dumps({"cpu_s": snap["cpu_s"], "rss_kib": snap["rss_kib"], "pss_kib": snap["pss_kib"],
                          "pids": snap["pids"]}))
    else:
        print(f'{snap["cpu_s"]:.2f} {snap["rss_kib"]} {snap["pss_kib"]} {len(snap["pids"])}')


if __name__ == "__main__":
    main()
