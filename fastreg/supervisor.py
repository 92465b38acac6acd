"""The supervisor: forks the workers, restarts one that dies (with back-off
when it keeps dying), reloads on SIGHUP, and stops them all on SIGTERM. It
handles no SIP and never opens the location table.

- Each worker reports through a pipe when its sockets are bound ("ready").
  A worker that exits before it is ready could not start (port in use, no
  permission, a bad users file, ...): at the first start of the server that
  is fatal at once (`fastreg serve` exits 2, the worker has logged why); for
  a replacement, or a worker killed by a signal while starting, it is
  retried with back-off and fatal after `MAX_START_FAILURES` in a row.
- A worker that dies after it was ready is replaced after a back-off that
  starts at `MIN_BACKOFF_S` and doubles while it keeps dying within
  `STABLE_AFTER_S` of its start (at most `MAX_BACKOFF_S`). The replacement
  clears the LMDB reader slot the dead one left (`Worker.__init__`) and, if
  the dead one held the sweeper lock, a survivor takes the sweeper over
  within a sweep interval.
- SIGTERM/SIGINT: every worker gets SIGTERM, stops accepting, answers what
  it holds and exits; the supervisor waits up to `STOP_TIMEOUT_S` (then
  SIGKILL) and exits 0.
- SIGHUP: the configuration file is read again; keys that can change live
  are applied (by every worker, which reads the file too) and used for
  later replacements, keys that need a restart are named in the log and
  ignored; the users file is reloaded.
- The workers die with the supervisor (PR_SET_PDEATHSIG), so that a killed
  supervisor does not leave them holding the port.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Callable

from fastreg.config import Config
from fastreg.errors import ConfigError

log = logging.getLogger("fastreg.supervisor")

MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 10.0
STABLE_AFTER_S = 10.0  # a worker that lived this long resets its back-off
MAX_START_FAILURES = 5  # replacements in a row that could not start: give up
STOP_TIMEOUT_S = 10.0
EXIT_START_FAILED = 78  # EX_CONFIG: the worker exited before it was ready
EXIT_CRASHED = 3
_PR_SET_PDEATHSIG = 1


@dataclass
class _Slot:
    """One worker index and the process that currently fills it."""

    index: int
    pid: int = 0
    ready_fd: int = -1
    ready: bool = False
    ever_ready: bool = False
    started_at: float = 0.0
    backoff_s: float = MIN_BACKOFF_S
    start_failures: int = 0
    restart_at: float | None = None
    hup_pending: bool = False  # a SIGHUP came while this worker was starting


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _spawn(config: Config, slot: _Slot, workers: int, close_fds: list[int],
           reload_config: Callable[[], Config] | None) -> None:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # until the worker's loop handles it (the supervisor sends it again once we are ready)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            for fd in (*close_fds, read_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            _die_with_parent()
            if os.getppid() != parent:  # the supervisor died before prctl took effect
                os._exit(1)
            from fastreg.worker import WorkerStartError, run_worker

            def ready() -> None:
                try:
                    os.write(write_fd, b"R")
                    os.close(write_fd)
                except OSError:
                    pass

            try:
                run_worker(config, slot.index, workers, ready=ready, reload_config=reload_config,
                           log_reload_summary=False)
            except WorkerStartError as error:
                log.error("worker %d cannot start: %s", slot.index, error)
                code = EXIT_START_FAILED
        except BaseException:  # noqa: BLE001 - report and leave the child, never return into the parent's code
            log.exception("worker %d failed", slot.index)
            code = EXIT_CRASHED
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(write_fd)
    slot.pid = pid
    slot.ready_fd = read_fd
    slot.ready = False
    slot.started_at = time.monotonic()
    slot.restart_at = None
    slot.hup_pending = False


def _read_ready(slot: _Slot) -> None:
    """Consume the slot's pipe: b"R" means ready; EOF closes it."""
    if slot.ready_fd < 0:
        return
    try:
        data = os.read(slot.ready_fd, 16)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data:
        if b"R" in data and not slot.ready:
            slot.ready = slot.ever_ready = True
            slot.start_failures = 0
        return
    os.close(slot.ready_fd)
    slot.ready_fd = -1


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def run_supervisor(config: Config, workers: int, reload_config: Callable[[], Config] | None = None) -> int:
    """Run `workers` worker processes until SIGTERM/SIGINT; the exit status of `fastreg serve`."""
    from fastreg.worker import effective_config
    import fastreg.worker  # noqa: F401  (import once here: a forked worker then starts at once)

    stopping = False
    reload_requested = False

    def on_stop(signum, frame):
        nonlocal stopping
        stopping = True

    def on_hup(signum, frame):
        nonlocal reload_requested
        reload_requested = True

    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the loop

    slots = [_Slot(i) for i in range(workers)]
    by_pid: dict[int, _Slot] = {}

    def spawn(slot: _Slot) -> None:
        fds = [wake_r, wake_w, *(s.ready_fd for s in slots if s.ready_fd >= 0)]
        _spawn(config, slot, workers, fds, reload_config)
        os.set_blocking(slot.ready_fd, False)
        by_pid[slot.pid] = slot

    exit_code = 0
    try:
        for slot in slots:
            spawn(slot)
        log.info("supervisor %d started %d workers", os.getpid(), workers)
        announced = False
        while by_pid or any(s.restart_at is not None for s in slots):
            if stopping:
                break
            now = time.monotonic()
            due = [s.restart_at for s in slots if s.restart_at is not None]
            timeout = max(0.0, min(due) - now) if due else 1.0
            fds = [wake_r, *(s.ready_fd for s in slots if s.ready_fd >= 0)]
            try:
                readable, _, _ = select.select(fds, [], [], min(timeout, 1.0))
            except InterruptedError:
                readable = []
            if wake_r in readable:
                _drain(wake_r)
            for slot in slots:
                if slot.ready_fd in readable:
                    _read_ready(slot)
                if slot.ready and slot.hup_pending:
                    slot.hup_pending = False
                    _signal(slot.pid, signal.SIGHUP)
            if not announced and all(s.ready for s in slots):
                announced = True
                log.info("all %d workers ready", workers)
            if reload_requested:
                reload_requested = False
                config = _reload(config, reload_config, effective_config)
                for slot in by_pid.values():
                    if slot.ready:
                        _signal(slot.pid, signal.SIGHUP)
                    else:  # still starting (with the previous configuration): once ready
                        slot.hup_pending = True
            # reap
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                slot = by_pid.pop(pid, None)
                if slot is None:
                    continue
                _read_ready(slot)
                if slot.ready_fd >= 0:
                    os.close(slot.ready_fd)
                    slot.ready_fd = -1
                lived = time.monotonic() - slot.started_at
                how = _describe(status)
                if stopping:
                    continue
                if not slot.ready:
                    slot.start_failures += 1
                    # it said why (exit status): the configuration or the system, not luck. Killed
                    # by a signal while starting (an operator, the OOM killer): retried like a crash.
                    if not slot.ever_ready and not os.WIFSIGNALED(status):
                        log.error("worker %d (pid %d) could not start (%s); stopping", slot.index, pid, how)
                        stopping, exit_code = True, 2
                        break
                    if slot.start_failures >= MAX_START_FAILURES:
                        log.error("worker %d could not start %d times in a row (%s); stopping",
                                  slot.index, slot.start_failures, how)
                        stopping, exit_code = True, 2
                        break
                if lived >= STABLE_AFTER_S:
                    slot.backoff_s = MIN_BACKOFF_S
                log.error("worker %d (pid %d) %s after %.1f s; restarting in %.1f s",
                          slot.index, pid, how, lived, slot.backoff_s)
                slot.restart_at = time.monotonic() + slot.backoff_s
                slot.backoff_s = min(MAX_BACKOFF_S, slot.backoff_s * 2)
            if stopping:
                break
            now = time.monotonic()
            for slot in slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    spawn(slot)
                    log.info("worker %d restarted as pid %d", slot.index, slot.pid)
        # stop
        for pid in by_pid:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while by_pid and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                slot = by_pid.pop(pid, None)
                if os.WIFSIGNALED(status) or os.waitstatus_to_exitcode(status) != 0:
                    log.warning("worker %s (pid %d) %s while stopping", slot.index if slot else "?", pid,
                                _describe(status))
            else:
                select.select([wake_r], [], [], 0.05)
                _drain(wake_r)
        for pid in by_pid:
            log.error("worker pid %d did not stop within %.0f s: killed", pid, STOP_TIMEOUT_S)
            _signal(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if by_pid and exit_code == 0:
            exit_code = 1
        log.info("supervisor %d stopped", os.getpid())
        return exit_code
    finally:
        signal.set_wakeup_fd(-1)
        for fd in (wake_r, wake_w, *(s.ready_fd for s in slots if s.ready_fd >= 0)):
            try:
                os.close(fd)
            except OSError:
                pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _reload(config: Config, reload_config, effective_config) -> Config:
    """Re-read the configuration; log what changed, what applies and what needs a
    restart; return the configuration later replacements start with."""
    if reload_config is None:
        log.info("SIGHUP: reloading the users file")
        return config
    try:
        new, live, restart = effective_config(config, reload_config())
    except ConfigError as error:
        log.error("SIGHUP: configuration not reloaded, the previous one stays in force: %s", error)
        return config
    if restart:
        log.warning("SIGHUP: changed keys that need a restart, not applied: %s", ", ".join(restart))
    if new.server.log_level != config.server.log_level:
        logging.getLogger().setLevel(new.server.log_level.upper())  # validated by config.load
    log.info("SIGHUP: configuration reloaded; applied: %s; digest keys and users file read again by every worker",
             ", ".join(live) or "no change")
    return new
