"""Workers under SIPp: spread, kill -9, and throughput with 1 and 2 workers.

    python bench/workers.py                       # everything, ~1 minute
    python bench/workers.py --repeat 3 --hash     # 1/2 workers alternated 3 times, + the kernel hash
    python bench/workers.py --only kill           # only the kill -9 run

Only 127.0.0.1; every server and SIPp it starts is stopped (bounded waits);
all files go to a fresh temporary directory (kept with --keep). Three parts:

1. throughput: the same SIPp load (`-t u1`: one UDP socket, like an SBC;
   bench/sipp/reg_auth.xml, REGISTER/401/REGISTER/200, users from
   bench/gen_users.py) against `fastreg serve --workers 1` and then
   `--workers 2`, each on a fresh table: registrations/s, the server's CPU
   seconds (utime+stime of the supervisor and every worker, from
   /proc/PID/stat, before/after), registrations per CPU-second, and what
   `fastreg stats` says each worker applied. The 2-worker run is also the
   spread measurement (every worker should apply at least a third). With
   --hash, one more 2-worker run with the reuseport selector off
   (FASTREG_REUSEPORT=hash) shows what the kernel's hash alone does.
2. kill -9: `--workers 2`, SIPp at a moderate rate; worker 1 is SIGKILLed in
   the middle of the run. Reports how long until the supervisor's
   replacement is serving (its stats entry is published once its sockets
   are bound), what SIPp saw (failed calls, retransmissions), and whether
   every user that got a 200 (logged by the scenario) is in
   `fastreg contacts`.

SIPp shares the 2 cores with the server, so "what the second worker buys" is
measured on a machine where the load generator takes a core's share too.
Each throughput run also reports how idle the whole machine was (from
/proc/stat): a neighbour's load shows there, and --repeat alternates the
1- and 2-worker runs so that it hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "bench" / "sipp" / "reg_auth.xml"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def owns_udp_socket(pid: int, port: int) -> bool:
    """Does `pid` hold a UDP socket bound to `port` (/proc/net/udp inode among its fds)?"""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as handle:
                for line in handle.readlines()[1:]:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


class CpuWatch:
    """The whole machine's CPU use between two points (/proc/stat): how busy it was."""

    NAMES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat") as handle:
            return [int(v) for v in handle.readline().split()[1:9]]

    def result(self) -> dict[str, float]:
        delta = [b - a for a, b in zip(self.start, self._read())]
        total = sum(delta) or 1
        return {name: round(value / total, 3) for name, value in zip(self.NAMES, delta)}


class Server:
    def __init__(self, work: Path, name: str, workers: int, regfile: Path, env: dict | None = None) -> None:
        self.port = free_port()
        self.dir = work / name
        self.dir.mkdir()
        self.config = self.dir / "fastreg.toml"
        self.config.write_text(
            f'[server]\nlisten = ["udp:127.0.0.1:{self.port}"]\nworkers = {workers}\n'
            f'state_dir = "{self.dir / "var"}"\n[users]\nfile = "{regfile}"\n')
        self.log_path = self.dir / "server.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "fastreg", "serve", "-c", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                            env={**os.environ, **(env or {})})
        self.workers = workers
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        probe = ("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbench;rport\r\n"
                 "From: <sip:b@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: bench\r\nCSeq: 1 OPTIONS\r\n"
                 "Content-Length: 0\r\n\r\n").encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited:\n{self.log_path.read_text()}")
                sock.sendto(probe, ("127.0.0.1", self.port))
                try:
                    sock.recvfrom(65536)
                    if self.workers == 1 or len(self.running()) == self.workers:
                        return
                except OSError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become ready")

    def pids(self) -> list[int]:
        return [self.process.pid, *children(self.process.pid)]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def cli(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "fastreg", *args, "-c", str(self.config)], capture_output=True,
                              text=True, timeout=60, check=True).stdout

    def stats(self) -> dict:
        return json.loads(self.cli("stats", "--json"))

    def running(self) -> dict[int, dict]:
        try:
            return {w["index"]: w for w in self.stats()["workers"] if w["state"] == "running"}
        except subprocess.CalledProcessError:
            return {}

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def sipp_command(args, server: Server, csv: Path, calls: int, rate: int, limit: int, scenario: Path) -> list[str]:
    return [args.sipp, "-sf", str(scenario), "-inf", str(csv), "-m", str(calls), "-r", str(rate), "-l", str(limit),
            "-t", "u1", "-i", "127.0.0.1", "-p", "0", "-nostdin", "-timeout", str(args.sipp_timeout),
            "-timeout_error", "-trace_err", f"127.0.0.1:{server.port}"]


def parse_sipp(out: str) -> dict:
    def cumulative(name):
        match = re.search(rf"{name}\s*\|[^|]*\|\s*([0-9.]+)", out)
        return float(match.group(1)) if match else None

    retrans = sum(int(m.group(1)) for m in re.finditer(r"REGISTER ---------->\s+\d+\s+(\d+)", out))
    return {"successful": int(cumulative("Successful call") or 0), "failed": int(cumulative("Failed call") or 0),
            "retransmissions": retrans}


def run_sipp(args, server: Server, csv: Path, calls: int, rate: int, limit: int, scenario: Path = SCENARIO,
             on_running=None) -> dict:
    command = sipp_command(args, server, csv, calls, rate, limit, scenario)
    started = time.monotonic()
    with open(server.dir / "sipp.out", "w") as out:
        sipp = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=server.dir)
        try:
            if on_running is not None:
                on_running(sipp)
            _, status, usage = os.wait4(sipp.pid, 0)
            sipp.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            sipp.kill()
            sipp.wait()
            raise
    elapsed = time.monotonic() - started
    text = (server.dir / "sipp.out").read_text(errors="replace")
    result = parse_sipp(text)
    result.update(elapsed_s=round(elapsed, 2), sipp_exit=sipp.returncode,
                  sipp_cpu_s=round(usage.ru_utime + usage.ru_stime, 2), command=" ".join(command))
    return result


def per_worker(server: Server) -> list[dict]:
    return [{k: w.get(k, 0) for k in ("index", "pid", "state", "registrations_applied", "requests",
                                       "udp_kernel_drops")}
            for w in server.stats()["workers"]]


def throughput(args, work: Path, regfile: Path, csv: Path, workers: int, env: dict | None = None,
               calls: int | None = None, label: str = "") -> dict:
    server = Server(work, f"throughput-{workers}w{label}", workers, regfile, env)
    watch = CpuWatch()
    try:
        cpu0 = server.cpu()
        result = run_sipp(args, server, csv, calls or args.calls, args.rate, args.limit)
        cpu1 = server.cpu()
        machine = watch.result()
        time.sleep(0.7)  # one more stats publication
        workers_stats = per_worker(server)
    finally:
        server.stop()
    cpu = cpu1 - cpu0
    ok = result["successful"]
    applied = [w["registrations_applied"] for w in workers_stats]
    result.update(
        workers=workers, server_cpu_s=round(cpu, 2), registrations_per_s=round(ok / result["elapsed_s"]),
        registrations_per_cpu_s=round(ok / cpu) if cpu else None, cpu_us_per_registration=round(cpu / ok * 1e6)
        if ok else None, per_worker=workers_stats, machine=machine,
        smallest_share=round(min(applied) / sum(applied), 3) if sum(applied) else None,
    )
    return result


def kill_run(args, work: Path, regfile: Path, csv: Path) -> dict:
    scenario = work / "reg_auth_logged.xml"
    text = SCENARIO.read_text()
    # log each user that got its 200 (SIPp writes <scenario>_<pid>_logs.log with -trace_logs)
    text = text.replace('<recv response="200" />',
                        '<recv response="200" />\n\n  <nop>\n    <action>\n      <log message="OK [field0]"/>\n'
                        '    </action>\n  </nop>')
    scenario.write_text(text)
    server = Server(work, "kill", 2, regfile)
    facts: dict = {}

    def kill_in_the_middle(sipp: subprocess.Popen) -> None:
        time.sleep(args.kill_after)
        victim = server.running()[1]["pid"]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        facts["killed_pid"] = victim
        before = set(children(server.process.pid)) - {victim}
        deadline = killed_at + 10
        new = None
        while time.monotonic() < deadline:  # forked ...
            fresh = set(children(server.process.pid)) - before - {victim}
            if fresh:
                new = fresh.pop()
                facts["forked_after_s"] = round(time.monotonic() - killed_at, 3)
                break
            time.sleep(0.002)
        while new and time.monotonic() < deadline:  # ... and its socket is in the group
            if owns_udp_socket(new, server.port):
                facts["replaced_after_s"] = round(time.monotonic() - killed_at, 3)
                facts["replacement_pid"] = new
                break
            time.sleep(0.002)

    try:
        command_extra = ["-trace_logs"]
        args_calls = args.kill_calls
        command = sipp_command(args, server, csv, args_calls, args.kill_rate, args.limit, scenario) + command_extra
        started = time.monotonic()
        with open(server.dir / "sipp.out", "w") as out:
            sipp = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=server.dir)
            try:
                kill_in_the_middle(sipp)
                sipp.wait(timeout=args.sipp_timeout + 60)
            except BaseException:
                sipp.kill()
                sipp.wait()
                raise
        result = parse_sipp((server.dir / "sipp.out").read_text(errors="replace"))
        result.update(facts, elapsed_s=round(time.monotonic() - started, 2), sipp_exit=sipp.returncode,
                      command=" ".join(command))
        ok_users = set()
        for log in server.dir.glob("*_logs.log"):
            ok_users |= set(re.findall(r"^OK (\S+)", log.read_text(), re.M))
        contacts = json.loads(server.cli("contacts", "--json"))
        listed = {row["aor"].split(":", 1)[1].split("@", 1)[0] for row in contacts}
        result.update(users_with_200=len(ok_users), bindings_listed=len(listed),
                      with_200_but_missing=sorted(ok_users - listed)[:20],
                      missing_count=len(ok_users - listed), per_worker=per_worker(server))
        log_text = server.log_path.read_text()
        result["supervisor_log"] = [line.split(" ", 2)[2] for line in log_text.splitlines()
                                    if "supervisor" in line and ("killed" in line or "restarted" in line)]
        result["stale_readers_cleared_log"] = [line.split(" ", 2)[2] for line in log_text.splitlines()
                                               if "stale LMDB reader" in line]
    finally:
        server.stop()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--calls", type=int, default=20000, help="registrations per throughput run")
    ap.add_argument("--rate", type=int, default=20000, help="SIPp -r for the throughput runs (saturating)")
    ap.add_argument("--limit", type=int, default=100, help="SIPp -l: registrations in flight at most")
    ap.add_argument("--kill-rate", type=int, default=1000)
    ap.add_argument("--kill-calls", type=int, default=8000)
    ap.add_argument("--kill-after", type=float, default=3.0, help="seconds into the kill run")
    ap.add_argument("--repeat", type=int, default=1, help="throughput runs (1 then 2 workers) this many times")
    ap.add_argument("--hash", action="store_true", help="also a 2-worker run with the selector off")
    ap.add_argument("--sipp", default=shutil.which("sipp") or "sipp")
    ap.add_argument("--sipp-timeout", type=int, default=120)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--only", choices=("throughput", "kill"))
    args = ap.parse_args()
    if not shutil.which(args.sipp):
        print("sipp not found (Debian package sip-tester)", file=sys.stderr)
        return 2
    from fastreg import parser

    if parser.IMPLEMENTATION != "cython":
        print("refusing to measure the pure-Python parser", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fastreg-bench-workers-"))
    try:
        regfile, csv = work / "regfile.conf", work / "users.csv"
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_users.py"), str(max(args.users, args.calls,
                        args.kill_calls)), "--regfile", str(regfile), "--csv", str(csv)], check=True)
        report: dict = {"cpus": os.cpu_count()}
        if args.only in (None, "throughput"):
            # alternated, so that a neighbour's load on the machine hits both alike
            report["throughput"] = [throughput(args, work, regfile, csv, workers, label=f"-{round}")
                                    for round in range(args.repeat) for workers in (1, 2)]
            if args.hash:
                report["throughput_hash"] = throughput(args, work, regfile, csv, 2, env={"FASTREG_REUSEPORT": "hash"},
                                                       label="-hash")
        if args.only in (None, "kill"):
            report["kill"] = kill_run(args, work, regfile, csv)
        json.dump(report, sys.stdout, indent=1)
        print()
        summary(report)
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def summary(report: dict) -> None:
    out = sys.stderr
    for run in report.get("throughput", []) + ([report["throughput_hash"]] if "throughput_hash" in report else []):
        label = " (selector off: kernel hash)" if run is report.get("throughput_hash") else ""
        print(f"{run['workers']} worker(s){label}: {run['successful']} ok / {run['failed']} failed in "
              f"{run['elapsed_s']} s = {run['registrations_per_s']} reg/s; server CPU {run['server_cpu_s']} s = "
              f"{run['registrations_per_cpu_s']} reg/CPU-s ({run['cpu_us_per_registration']} us/reg); "
              f"SIPp CPU {run['sipp_cpu_s']} s; applied per worker "
              f"{[w['registrations_applied'] for w in run['per_worker']]} (smallest share {run['smallest_share']}); "
              f"machine idle {run['machine']['idle']:.0%}", file=out)
    kill = report.get("kill")
    if kill:
        print(f"kill -9 of worker 1 (pid {kill.get('killed_pid')}): replaced after {kill.get('replaced_after_s')} s "
              f"by pid {kill.get('replacement_pid')}; SIPp {kill['successful']} ok / {kill['failed']} failed, "
              f"{kill['retransmissions']} REGISTER retransmissions; {kill['users_with_200']} users got 200, "
              f"{kill['missing_count']} of them missing from `fastreg contacts` ({kill['bindings_listed']} listed)",
              file=out)


if __name__ == "__main__":
    sys.exit(main())
