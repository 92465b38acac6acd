"""Fixtures that start a real fastreg server process on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TEST_USERS = {f"{n}": f"secret{n}" for n in range(200, 220)}


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def write_regfile(path: Path, users: dict[str, str]) -> None:
    lines = ["; test users"]
    for name, password in users.items():
        lines += [f"[{name}]", f"password={password}", ""]
    path.write_text("\n".join(lines))


@dataclass
class ServerProcess:
    process: subprocess.Popen
    host: str
    port: int
    config_path: Path
    state_dir: Path
    users_file: Path
    log_path: Path

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fastreg", *args, "-c", str(self.config_path)],
                              capture_output=True, text=True, timeout=30, cwd=self.config_path.parent)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_ready(host: str, port: int, timeout: float = 15.0, process: subprocess.Popen | None = None) -> None:
    """Until the server answers an OPTIONS over UDP."""
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = (f"OPTIONS sip:{host if family == socket.AF_INET else '[' + host + ']'}:{port} SIP/2.0\r\n"
             "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKready;rport\r\nFrom: <sip:probe@x>;tag=1\r\n"
             "To: <sip:probe@x>\r\nCall-ID: ready\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            sock.sendto(probe, (host, port))
            try:
                sock.recvfrom(65536)
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError("server did not answer")


def start_server(tmp: Path, extra_toml: str = "", host: str = "127.0.0.1", workers: int = 1,
                 users: dict[str, str] | None = None, port: int | None = None,
                 state_dir: Path | None = None, env: dict | None = None, server_toml: str = "") -> ServerProcess:
    port = port or free_port(host)
    state_dir = state_dir or tmp / "var"
    users_file = tmp / "regfile.conf"
    if not users_file.exists():
        write_regfile(users_file, TEST_USERS if users is None else users)
    bracketed = f"[{host}]" if ":" in host else host
    config_path = tmp / "fastreg.toml"
    config_path.write_text(
        f'[server]\nlisten = ["udp:{bracketed}:{port}", "tcp:{bracketed}:{port}"]\nworkers = {workers}\n'
        f'state_dir = "{state_dir}"\nlog_interval_s = 1.0\n{server_toml}\n'
        f'[users]\nfile = "{users_file}"\n' + extra_toml
    )
    log_path = tmp / f"server-{port}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "fastreg", "serve", "-c", str(config_path)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
                                   env={**os.environ, **(env or {})})
    server = ServerProcess(process, host, port, config_path, state_dir, users_file, log_path)
    try:
        wait_ready(host, port, process=process)
    except Exception:
        server.stop(signal.SIGKILL)
        raise RuntimeError("server failed to start:\n" + server.log())
    return server


@pytest.fixture
def server(tmp_path):
    srv = start_server(tmp_path)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()
