"""The supervisor: forks the workers, restarts one that dies (with back-off
when it keeps dying), and stops them all on SIGTERM. It handles no SIP."""

from __future__ import annotations

import logging
import os
import signal
import time

from fastreg.config import Config

log = logging.getLogger("fastreg.supervisor")

MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 10.0
STABLE_AFTER_S = 10.0  # a worker that lived this long resets its back-off


def _spawn(config: Config, index: int) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            from fastreg.worker import run_worker

            run_worker(config, index)
        except BaseException:  # noqa: BLE001 - report and leave the child, never return into the parent's code
            log.exception("worker %d failed", index)
            code = 3
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def run_supervisor(config: Config, workers: int) -> int:
    stopping = False
    reload_requested = False

    def on_stop(signum, frame):
        nonlocal stopping
        stopping = True

    def on_hup(signum, frame):
        nonlocal reload_requested
        reload_requested = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)

    children: dict[int, int] = {}  # pid -> worker index
    started_at: dict[int, float] = {}
    backoff = {i: MIN_BACKOFF_S for i in range(workers)}
    early_failures = {i: 0 for i in range(workers)}
    for index in range(workers):
        pid = _spawn(config, index)
        children[pid] = index
        started_at[index] = time.monotonic()
    log.info("supervisor %d started %d workers", os.getpid(), workers)
    exit_code = 0
    while children:
        if stopping:
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            break
        if reload_requested:
            reload_requested = False
            for pid in children:
                os.kill(pid, signal.SIGHUP)
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
            continue
        index = children.pop(pid)
        lived = time.monotonic() - started_at[index]
        log.error("worker %d (pid %d) exited with status %d after %.1f s", index, pid, status, lived)
        if lived >= STABLE_AFTER_S:
            backoff[index] = MIN_BACKOFF_S
            early_failures[index] = 0
        else:
            early_failures[index] += 1
            if early_failures[index] >= 5 and lived < 1.0:
                log.error("worker %d keeps failing at start; stopping", index)
                stopping = True
                exit_code = 3
                continue
        time.sleep(backoff[index])
        backoff[index] = min(MAX_BACKOFF_S, backoff[index] * 2)
        if not stopping:
            new_pid = _spawn(config, index)
            children[new_pid] = index
            started_at[index] = time.monotonic()
    deadline = time.monotonic() + 10.0
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.05)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    return exit_code
