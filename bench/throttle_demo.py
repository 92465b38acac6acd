"""Digest-guessing throttle demo: N wrong-password REGISTERs for one user from
127.0.0.1 while the same user registers with the right password from 127.0.0.2.

    python bench/throttle_demo.py --target 127.0.0.1:5060 --user 200 --password secret200

It starts nothing: point it at a running server whose users file has the
user. Every wrong attempt is a full round (REGISTER, 401, REGISTER with a
digest computed from a wrong password) from a socket bound to 127.0.0.1;
meanwhile another thread registers the same user with the right password
from a socket bound to 127.0.0.2 (Linux routes all of 127/8 on lo) every
`--interval` seconds, for as long as the attack lasts (and at least
`--min-legit` times). The throttle counts failures per (source address,
username), so it should answer 403 to 127.0.0.1 for that user after
auth.throttle_failures failures (default 20), while 127.0.0.2 is untouched.

It prints how many wrong attempts got 401 and how many 403 (and when the
first 403 came), how many right-password registrations from 127.0.0.2
succeeded, and, for information, what the right password from 127.0.0.1
gets once the block is in force (403: the block is per source and user, it
does not look at the password). Exit status 0 only when the throttle
engaged and every registration from 127.0.0.2 succeeded; 1 otherwise; 2 for
bad arguments. Only 127.0.0.1 is accepted as target.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuzz import SipClient, parse_target  # noqa: E402  (the same small digest client as the fuzzer's probe)


@dataclass
class ThrottleResult:
    attempts: int = 0
    wrong_statuses: Counter = field(default_factory=Counter)  # final status of each wrong attempt (0: no answer)
    first_403_at: int | None = None  # 1-based attempt number
    wrong_accepted: int = 0  # a wrong password that got 200: must stay 0
    attack_seconds: float = 0.0
    legit_ok: int = 0
    legit_failed: int = 0
    legit_failures: list[str] = field(default_factory=list)
    legit_during_attack: int = 0  # legit registrations that completed while the attack was running
    right_from_attacker: int = 0  # status of the right password from the attacker's address, after the attack

    @property
    def wrong_401(self) -> int:
        return self.wrong_statuses[401]

    @property
    def wrong_403(self) -> int:
        return self.wrong_statuses[403]

    @property
    def engaged(self) -> bool:
        return self.first_403_at is not None

    @property
    def passed(self) -> bool:
        return self.engaged and self.wrong_accepted == 0 and self.legit_failed == 0 and self.legit_ok > 0


def run(target: tuple[str, int], user: str, password: str, domain: str = "fastreg.local", count: int = 5000,
        interval: float = 0.2, attacker: str = "127.0.0.1", legit: str = "127.0.0.2", transport: str = "UDP",
        min_legit: int = 3, attack_interval: float = 0.0, wrong_password: str = "not-the-password") -> ThrottleResult:
    result = ThrottleResult()
    attack_done = threading.Event()

    def legit_loop() -> None:
        client = SipClient(target, transport, bind=legit)
        done = 0
        while not (attack_done.is_set() and done >= min_legit):
            started = time.monotonic()
            outcome = client.register(user, password, domain)
            done += 1
            if not attack_done.is_set():
                result.legit_during_attack += 1
            if outcome.ok:
                result.legit_ok += 1
            else:
                result.legit_failed += 1
                result.legit_failures.append(f"#{done}: {outcome.detail} (status {outcome.status})")
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
        client.close()

    thread = threading.Thread(target=legit_loop, name="legit", daemon=True)
    thread.start()
    client = SipClient(target, transport, bind=attacker)
    started = time.monotonic()
    try:
        for attempt in range(1, count + 1):
            outcome = client.register(user, wrong_password, domain)
            result.attempts += 1
            result.wrong_statuses[outcome.status] += 1
            if outcome.status == 200:
                result.wrong_accepted += 1
            if outcome.status == 403 and result.first_403_at is None:
                result.first_403_at = attempt
            if attack_interval:
                time.sleep(attack_interval)
    finally:
        result.attack_seconds = time.monotonic() - started
        attack_done.set()
        thread.join(timeout=60)
    result.right_from_attacker = client.register(user, password, domain).status
    client.close()
    return result


def report(result: ThrottleResult, user: str, attacker: str, legit: str, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    others = {s: n for s, n in result.wrong_statuses.items() if s not in (401, 403)}
    p(f"wrong-password attempts for {user} from {attacker}: {result.attempts} in {result.attack_seconds:.1f} s: "
      f"401 {result.wrong_401}, 403 {result.wrong_403}"
      + (f", other {others}" if others else "")
      + (f"; first 403 at attempt #{result.first_403_at}" if result.first_403_at else "; never throttled"))
    p(f"right-password registrations for {user} from {legit}: {result.legit_ok} ok, {result.legit_failed} failed "
      f"({result.legit_during_attack} of them while the attack ran)")
    for failure in result.legit_failures[:20]:
        p(f"  failure: {failure}")
    p(f"right password from {attacker} after the attack: {result.right_from_attacker or 'no answer'} "
      "(403 expected while the block lasts: it is per source and user)")
    p(f"throttle engaged: {'yes' if result.engaged else 'NO'}; result: {'PASS' if result.passed else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:5060", help="127.0.0.1:PORT (nothing else)")
    ap.add_argument("--user", default="200")
    ap.add_argument("--password", default="secret200", help="the user's right password")
    ap.add_argument("--domain", default="fastreg.local")
    ap.add_argument("--count", type=int, default=5000, help="wrong-password attempts (default 5000)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between registrations from 127.0.0.2")
    ap.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    args = ap.parse_args(argv)
    try:
        target = parse_target(args.target)
    except ValueError as exc:
        print(f"throttle_demo: {exc}", file=sys.stderr)
        return 2
    if target[0] != "127.0.0.1":
        print("throttle_demo: the target must be 127.0.0.1 (the second source is 127.0.0.2)", file=sys.stderr)
        return 2
    if args.count < 1 or args.interval <= 0:
        print("throttle_demo: --count must be >= 1 and --interval > 0", file=sys.stderr)
        return 2
    result = run(target, args.user, args.password, args.domain, args.count, args.interval,
                 transport=args.transport.upper())
    report(result, args.user, "127.0.0.1", "127.0.0.2")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
