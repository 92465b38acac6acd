"""Top entries of a py-spy profile: self time and total time per function.

    py-spy record -p PID -d 8 -f raw -o prof.raw [--native]
    python -m bench.profile_top prof.raw [-n 25] [--by-line] [--group] [--under Worker.handle]

py-spy's raw format is one collapsed stack per line ("frame;frame;... count").
Self time counts the leaf frame of each sample; total time counts every
function once per sample it appears in. Percentages are of all samples
(py-spy leaves idle samples out unless --idle was given). Frames are shown as
"function (file)" unless --by-line keeps py-spy's "function (file:line)".
--group adds a breakdown by area (parsing, digest, LMDB, response assembly,
registrar/core logic, asyncio/uvloop and the kernel send path), by the first
frame from the innermost that falls into one of them. --under NAME keeps only
the samples whose stack has a frame containing NAME (e.g. Worker.handle: the
message path without the event loop; or a harness's measured function).
"""

from __future__ import annotations

import argparse
import collections
import re

_LINE = re.compile(r":\d+\)$")

# area -> substrings of a frame (checked innermost frame first)
AREAS = [
    ("kernel send/recv (sendto, recvfrom, epoll)", ("sendto", "recvfrom", "recvmsg", "sendmsg", "recvmmsg", "sendmmsg", "epoll_wait", "epoll_pwait",
                                                   "__libc_send", "__libc_recv", "uv__udp", "uv__io_poll",
                                                   "__sendto", "__recvfrom")),
    ("LMDB transaction + record codec", ("store_lmdb.py", "codec.py", "_ccodec", "lmdb", "mdb_", "msgpack")),
    ("digest / nonce (auth.py, _cauth, hashlib, hmac)", ("auth.py", "_cauth", "hashlib", "hmac", "_hashlib", "EVP_", "md5", "MD5",
                                               "sha256", "SHA256")),
    ("SIP scanner (_cparse) + URI parsing", ("_cparse", "_pyparse", "uri.py", "_curi", "parser.py")),
    ("response assembly (response.py, _cresponse)", ("response.py", "_cresponse")),
    ("binding rules (bindings.py)", ("bindings.py",)),
    ("registrar / core / routing logic", ("registrar.py", "_cregistrar", "_cslots", "core.py", "routing.py", "throttle.py", "location.py",
                                         "message.py", "stats.py", "users/")),
    ("worker / transport glue", ("worker.py", "transport/", "_udpio")),
    ("event loop (uvloop/asyncio)", ("uvloop", "asyncio", "loop.pyx", "uv_")),
]


def frame_name(frame: str, by_line: bool) -> str:
    return frame if by_line else _LINE.sub(")", frame)


def area_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for area, needles in AREAS:
            if any(n in frame for n in needles):
                return area
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", help="py-spy raw output (collapsed stacks)")
    ap.add_argument("-n", type=int, default=25, help="entries per table")
    ap.add_argument("--by-line", action="store_true", help="keep line numbers in frame names")
    ap.add_argument("--group", action="store_true", help="add the breakdown by area")
    ap.add_argument("--under", default=None, help="only samples with a frame containing this text")
    args = ap.parse_args()
    self_counts: collections.Counter = collections.Counter()
    total_counts: collections.Counter = collections.Counter()
    areas: collections.Counter = collections.Counter()
    samples = 0
    with open(args.raw, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line:
                continue
            stack_text, _, count_text = line.rpartition(" ")
            try:
                count = int(count_text)
            except ValueError:
                continue
            stack = [frame_name(f, args.by_line) for f in stack_text.split(";") if f]
            if not stack:
                continue
            if args.under is not None:
                cut = next((i for i, f in enumerate(stack) if args.under in f), None)
                if cut is None:
                    continue
                stack = stack[cut:]
            samples += count
            self_counts[stack[-1]] += count
            for name in set(stack):
                total_counts[name] += count
            areas[area_of(stack)] += count
    if not samples:
        raise SystemExit(f"{args.raw}: no samples")
    print(f"{samples} samples")
    print(f"\n-- by self time (top {args.n})")
    for name, count in self_counts.most_common(args.n):
        print(f"{100 * count / samples:6.1f}%  {name}")
    print(f"\n-- by total time (top {args.n})")
    for name, count in total_counts.most_common(args.n):
        print(f"{100 * count / samples:6.1f}%  {name}")
    if args.group:
        print("\n-- by area (innermost matching frame)")
        for name, count in areas.most_common():
            print(f"{100 * count / samples:6.1f}%  {name}")


if __name__ == "__main__":
    main()
