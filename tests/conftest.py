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


# -- PostgreSQL ----------------------------------------------------------------------------

PG_DSN = os.environ.get("FASTREG_TEST_PG_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
SCHEMA_SQL = ROOT / "conf" / "postgres" / "schema.sql"


class PgTest:
    """Schemas of their own in the test database (one per test that asks),
    created from conf/postgres/schema.sql and dropped at the end of the
    session, so parallel runs and tests do not see each other's rows."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.base_dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        self.schemas: list[str] = []

    def new_schema(self, apply_schema: bool = True) -> "PgSchema":
        name = f"fastreg_t{os.getpid()}_{os.urandom(4).hex()}"
        self.conn.execute(f'CREATE SCHEMA "{name}"')
        self.schemas.append(name)
        schema = PgSchema(self, name)
        if apply_schema:
            schema.execute(SCHEMA_SQL.read_text())
        return schema

    def close(self) -> None:
        for name in self.schemas:
            try:
                self.conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        self.conn.close()


class PgSchema:
    def __init__(self, pg: PgTest, name: str) -> None:
        self.pg = pg
        self.name = name

    def dsn(self, port: int | None = None) -> str:
        """The DSN of this schema (search_path), optionally through another port (a TcpProxy)."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.pg.base_dsn)
        params["options"] = f"-c search_path={self.name}"
        if port is not None:
            params["host"], params["port"] = "127.0.0.1", str(port)
        return make_conninfo(**params)

    def execute(self, sql: str, params=None) -> list[tuple]:
        with self.pg.conn.transaction():
            self.pg.conn.execute(f'SET LOCAL search_path TO "{self.name}"')
            cursor = self.pg.conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def add_users(self, users: dict[str, str]) -> None:
        with self.pg.conn.transaction():
            self.pg.conn.execute(f'SET LOCAL search_path TO "{self.name}"')
            with self.pg.conn.cursor() as cursor:
                cursor.executemany("INSERT INTO users (username, password) VALUES (%s, %s)", list(users.items()))

    def toml(self, queries: str | None = None, port: int | None = None, extra: str = "", sections: str = "") -> str:
        """`extra_toml` for start_server: backend = "postgres" (start_server's TOML ends inside
        [users]) and [postgres] with the default queries of conf/fastreg-postgres.toml."""
        import tomllib

        if queries is None:
            with open(ROOT / "conf" / "fastreg-postgres.toml", "rb") as handle:
                defaults = tomllib.load(handle)["postgres"]["queries"]
            queries = "".join(f"{name} = {json_string(text)}\n" for name, text in defaults.items())
        return (f'backend = "postgres"\n{sections}\n[postgres]\ndsn = {json_string(self.dsn(port))}\n{extra}\n'
                f"[postgres.queries]\n{queries}")


def json_string(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string is a valid TOML basic string


@pytest.fixture(scope="session")
def pg_test():
    """PostgreSQL on 127.0.0.1:5432, database test (FASTREG_TEST_PG_DSN). Skipped when it is
    not reachable, except under FASTREG_REQUIRE_POSTGRES=1 (CI: .ci/run), where that fails."""
    try:
        pg = PgTest(PG_DSN)
    except Exception as error:  # noqa: BLE001
        message = f"PostgreSQL not reachable at {PG_DSN!r}: {error}"
        if os.environ.get("FASTREG_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield pg
    pg.close()


@pytest.fixture
def pg_schema(pg_test):
    return pg_test.new_schema()
