"""Interoperability with real SIP user agents, as they are packaged:

- baresip (Debian `baresip-core`): accepts only MD5 and leaves `algorithm=`
  out of its Authorization; asks for its expiry in the Contact parameter;
  refreshes by starting over with a request that gets a 401.
- Linphone (`linphonec`, Debian `linphone-cli`): no Content-Length over UDP,
  `Authorization:  Digest` with two spaces, expiry in the Expires header,
  +sip.instance; refreshes by reusing the previous nonce with nc=2, nc=3
  (legitimate: a higher nc on a known nonce is not a replay).
- PJSUA (PyPI `pjsua2-python`): no User-Agent, expiry in the Expires header,
  over TCP a +sip.instance (derived from the host name, so the same in every
  process) with reg-id=1.

For each client and for UDP and TCP: start fastreg with a short minimum
expiry, start the client headless, wait for its binding, wait for a refresh
(the binding's CSeq grows under the same Call-ID, before it could expire),
quit the client gracefully and check that its unregistration removed the
binding (well before it would have expired).

The tests skip when a client is not installed, unless FASTREG_REQUIRE_INTEROP
is set (CI), where a missing client fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import TEST_USERS, ServerProcess, start_server

pytestmark = pytest.mark.interop

USER = "200"
PASSWORD = TEST_USERS[USER]
DOMAIN = "fastreg.local"
AOR = f"sip:{USER}@{DOMAIN}"
EXPIRES = 10  # what every client asks for; the server's minimum is the same
SERVER_TOML = f"[registrar]\nmin_expires = {EXPIRES}\n"
START_TIMEOUT_S = 10.0  # from the client's start to its first binding
QUIT_TIMEOUT_S = 10.0  # from 'quit' to the client's exit


def missing(what: str, install: str) -> None:
    message = f"{what} is not installed ({install})"
    if os.environ.get("FASTREG_REQUIRE_INTEROP"):
        pytest.fail(f"{message} but FASTREG_REQUIRE_INTEROP is set")
    pytest.skip(message)


def require_binary(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(name, install)
    return path


def tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return f"({path.name}: not written)"


# -- the clients -------------------------------------------------------------


class Client:
    """A user agent run as a child process with a pipe on its standard input."""

    name = ""
    quit_command = b"quit\n"

    def __init__(self, tmp: Path, server: ServerProcess, transport: str) -> None:
        self.tmp = tmp
        self.server = server
        self.transport = transport  # "udp" / "tcp"
        self.log_path = tmp / f"{self.name}.log"
        self.process: subprocess.Popen | None = None

    @staticmethod
    def require() -> str:
        """The client's executable (or module); skips or fails the test when it is missing."""
        raise NotImplementedError

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self) -> None:
        argv, env = self.command()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.tmp, env={**os.environ, **env})

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def quit(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(self.quit_command)
        self.process.stdin.flush()

    def stop(self) -> None:
        """Whatever state it is in: ends the process (the finally of every test)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def diagnostics(self) -> str:
        return f"--- {self.name} log (tail) ---\n{tail(self.log_path)}"

    def check_log(self) -> None:
        """Client-specific checks on its own log after the run."""


class Baresip(Client):
    """baresip 1.0 with a config directory (-f): the stdio UI module reads
    commands from the pipe (`/quit` unregisters, then exits), the account and
    menu modules, no audio or video module at all, SIP trace (-s) to the log."""

    name = "baresip"
    quit_command = b"/quit\n"

    @staticmethod
    def require() -> str:
        return require_binary("baresip", "Debian package baresip-core")

    def command(self):
        binary = self.require()
        conf = self.tmp / "baresip"
        conf.mkdir(exist_ok=True)
        modules = next((p for p in (Path("/usr/lib/baresip/modules"), Path("/usr/local/lib/baresip/modules"))
                        if (p / "account.so").exists()), Path("/usr/lib/baresip/modules"))
        (conf / "config").write_text(textwrap.dedent(f"""\
            poll_method\t\tepoll
            sip_listen\t\t127.0.0.1:0
            module_path\t\t{modules}
            module\t\t\tstdio.so
            module_app\t\taccount.so
            module_app\t\tmenu.so
            audio_player\t\tnone
            audio_source\t\tnone
            audio_alert\t\tnone
            """))
        # The registrar is reached as an outbound proxy; AOR and Request-URI keep the domain.
        (conf / "accounts").write_text(
            f'<sip:{USER}@{DOMAIN}>;auth_pass={PASSWORD};'
            f'outbound="sip:127.0.0.1:{self.server.port};transport={self.transport}";regint={EXPIRES}\n'
        )
        return [binary, "-f", str(conf), "-s"], {}


class Linphonec(Client):
    """linphonec with its own linphonerc (-c) and a private HOME: without
    $HOME/.local/share/linphone (where it keeps its database) it opens no SIP
    listening point and never registers. Random ports; only the transport
    under test is enabled; verbose log to a file (-d 6 -l)."""

    name = "linphonec"

    @staticmethod
    def require() -> str:
        return require_binary("linphonec", "Debian package linphone-cli")

    def command(self):
        binary = self.require()
        home = self.tmp / "linphone-home"
        (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        rc = self.tmp / "linphonerc"
        udp, tcp = (-1, 0) if self.transport == "udp" else (0, -1)
        rc.write_text(textwrap.dedent(f"""\
            [sip]
            sip_port={udp}
            sip_tcp_port={tcp}
            sip_tls_port=0
            default_proxy=0
            register_only_when_network_is_up=0
            ipv6_enabled=0
            [sound]
            echocancellation=0
            [video]
            capture=0
            display=0
            [proxy_0]
            reg_proxy=<sip:127.0.0.1:{self.server.port};transport={self.transport}>
            reg_identity=sip:{USER}@{DOMAIN}
            reg_expires={EXPIRES}
            reg_sendregister=1
            publish=0
            [auth_info_0]
            username={USER}
            passwd={PASSWORD}
            realm={DOMAIN}
            domain={DOMAIN}
            """))
        self.sip_log = self.tmp / "linphonec-sip.log"
        return [binary, "-c", str(rc), "-d", "6", "-l", str(self.sip_log)], {"HOME": str(home)}

    def diagnostics(self) -> str:
        return super().diagnostics() + f"\n--- linphonec -l log (tail) ---\n{tail(self.sip_log, 12000)}"

    def check_log(self) -> None:
        # The refresh that matters here: the previous nonce with nc=2, answered
        # 200 at once (not a new challenge: a higher nc on a known nonce is no replay).
        lines = self.sip_log.read_text(errors="replace").splitlines()
        sent = next((i for i, line in enumerate(lines) if line.startswith("Authorization:") and "nc=00000002" in line),
                    None)
        assert sent is not None, "Linphone did not refresh with nc=2 on its previous nonce\n" + self.diagnostics()
        answer = next((line for line in lines[sent:] if line.startswith("SIP/2.0 ")), "(no answer logged)")
        assert answer.startswith("SIP/2.0 200 "), (
            f"the refresh with nc=2 on the previous nonce got {answer!r}\n" + self.diagnostics())


PJSUA_SCRIPT = '''\
"""A headless PJSUA2 user agent: registers one account, unregisters and exits on 'quit'."""
import select
import sys
import time

import pjsua2 as pj

port, transport, user, password, domain, expires, logfile = sys.argv[1:8]


class Account(pj.Account):
    def onRegState(self, prm):
        info = self.getInfo()
        print("REGSTATE", prm.code, prm.reason, "active" if info.regIsActive else "inactive", flush=True)


ep = pj.Endpoint()
ep.libCreate()
cfg = pj.EpConfig()
cfg.uaConfig.threadCnt = 0  # callbacks only from libHandleEvents below, in this thread
cfg.uaConfig.mainThreadOnly = True
cfg.logConfig.level = 5
cfg.logConfig.consoleLevel = 1
cfg.logConfig.filename = logfile
ep.libInit(cfg)
ep.audDevManager().setNullDev()
tcfg = pj.TransportConfig()
tcfg.boundAddress = "127.0.0.1"
tcfg.port = 0
ep.transportCreate(pj.PJSIP_TRANSPORT_TCP if transport == "tcp" else pj.PJSIP_TRANSPORT_UDP, tcfg)
ep.libStart()

acfg = pj.AccountConfig()
acfg.idUri = f"sip:{user}@{domain}"
acfg.regConfig.registrarUri = f"sip:127.0.0.1:{port};transport={transport}"
acfg.regConfig.timeoutSec = int(expires)
acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
acc = Account()
acc.create(acfg)
print("STARTED", flush=True)

quit_at = None
while True:
    ep.libHandleEvents(20)
    if quit_at is None:
        if select.select([sys.stdin], [], [], 0)[0]:
            line = sys.stdin.readline()
            if not line or line.strip() == "quit":
                acc.setRegistration(False)  # REGISTER with Expires: 0
                quit_at = time.monotonic()
    elif not acc.getInfo().regIsActive or time.monotonic() - quit_at > 8:
        break
# let the last transaction finish before tearing down
end = time.monotonic() + 0.3
while time.monotonic() < end:
    ep.libHandleEvents(20)
acc.shutdown()
ep.libDestroy()
print("DONE", flush=True)
'''


class Pjsua(Client):
    """PJSUA2 in a child Python: null audio device, one transport bound to
    127.0.0.1, no worker threads (events handled in the script's own loop),
    SIP messages in the PJSIP log file."""

    name = "pjsua"

    @staticmethod
    def require() -> str:
        if importlib.util.find_spec("pjsua2") is None:
            missing("the Python module pjsua2", "PyPI package pjsua2-python, in the test extra")
        return sys.executable

    def command(self):
        self.require()
        script = self.tmp / "pjsua_client.py"
        script.write_text(PJSUA_SCRIPT)
        self.sip_log = self.tmp / "pjsua-sip.log"
        return [sys.executable, str(script), str(self.server.port), self.transport, USER, PASSWORD, DOMAIN,
                str(EXPIRES), str(self.sip_log)], {}

    def diagnostics(self) -> str:
        return super().diagnostics() + f"\n--- pjsua log (tail) ---\n{tail(self.sip_log, 12000)}"


CLIENTS = {"baresip": Baresip, "linphonec": Linphonec, "pjsua": Pjsua}


# -- the test ----------------------------------------------------------------


def bindings(server: ServerProcess) -> list[dict]:
    listed = server.cli("contacts", AOR, "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def wait_for(what: str, timeout: float, probe, diagnostics):
    """Polls `probe()` until it returns something true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics()}")
        time.sleep(0.25)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("client_name", list(CLIENTS))
def test_client_registers_refreshes_and_unregisters(tmp_path, client_name, transport):
    CLIENTS[client_name].require()
    server = None
    client = None
    try:
        server = start_server(tmp_path, extra_toml=SERVER_TOML)
        client = CLIENTS[client_name](tmp_path, server, transport)
        client.start()

        def diagnostics() -> str:
            alive = "running" if client.alive() else f"exited with {client.process.returncode}"
            return (f"{client_name} over {transport}: client {alive}\n{client.diagnostics()}\n"
                    f"--- bindings ---\n{bindings(server)}\n--- server log (tail) ---\n{server.log()[-4000:]}")

        def client_running() -> None:
            if not client.alive():
                pytest.fail(f"{client_name} exited early\n{diagnostics()}")

        def binding():
            client_running()
            rows = bindings(server)
            return rows[0] if len(rows) == 1 else None

        # 1. Registered: one binding over the transport under test.
        first = wait_for("the first registration", START_TIMEOUT_S, binding, diagnostics)
        assert first["transport"] == transport.upper(), diagnostics()
        assert first["received"].startswith("127.0.0.1:"), diagnostics()
        assert 0 < first["expires"] <= EXPIRES, diagnostics()

        # 2. Refreshed: a later REGISTER of the same Call-ID (higher CSeq)
        #    updated the binding before it expired (it never went away).
        def refreshed():
            row = binding()
            if row is None:
                pytest.fail(f"the binding disappeared before a refresh\n{diagnostics()}")
            return row if row["call_id"] == first["call_id"] and row["cseq"] > first["cseq"] else None

        second = wait_for("a refresh", EXPIRES + 2, refreshed, diagnostics)
        assert second["contact"] == first["contact"], diagnostics()

        # 3. Unregistered: the client quits gracefully; its REGISTER with
        #    expiry 0 removes the binding long before it could expire.
        quit_at = time.monotonic()
        lapse_at = quit_at + second["expires"]  # when the binding would expire without an unregister
        client.quit()
        try:
            client.process.wait(timeout=QUIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{client_name} did not exit within {QUIT_TIMEOUT_S:.0f} s of quit\n{diagnostics()}")
        gone = wait_for("the unregistration", 3.0, lambda: not bindings(server), diagnostics)
        assert gone and time.monotonic() < lapse_at - 1, (
            f"the binding went away only by expiring, not by an unregistration\n{diagnostics()}")
        assert client.process.returncode == 0, diagnostics()

        log = server.log()
        assert "Traceback" not in log, log
        assert "refused replayed credentials" not in log, f"a refresh was taken for a replay\n{diagnostics()}"
        assert "failed digest authentication" not in log, diagnostics()
        client.check_log()
    finally:
        if client is not None:
            client.stop()
        if server is not None:
            server.stop()
