"""Hook modules (fastreg/hooks.py): user_auth, user_register, user_unregister
and call_route, plain and async, against a real server; a hook that raises,
one that is too slow, one that returns nonsense; and conf/hooks_example.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, free_port, start_server
from sipua import Transport, UserAgent

from fastreg.errors import ConfigError, SipError
from fastreg.hooks import HookFailed, load_hooks, load_module
from fastreg.pgcalls import CallRouter

EXAMPLE = ROOT / "conf" / "hooks_example.py"


def hooks_toml(module, **settings) -> str:
    lines = [f"module = {json.dumps(str(module))}"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    return "[hooks]\n" + "\n".join(lines) + "\n"


def write_module(tmp_path, body: str, name: str = "myhooks.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def contact_expires(response) -> list[str]:
    return [v.rsplit("expires=", 1)[1].split(";")[0] for v in response.get_all("contact")]


def ua(server, user, password, kind="UDP"):
    return UserAgent(user, password, Transport(kind, server.address))


# -- conf/hooks_example.py ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["UDP", "TCP"])
def test_example_module_end_to_end(tmp_path, kind):
    server = start_server(tmp_path, hooks_toml(EXAMPLE), users={"alice": "pw-a", "barred": "pw-x"})
    try:
        guest = ua(server, "guest1", "guest-password-1", kind)
        r = guest.request(expires=3600)
        assert r.status_code == 200 and contact_expires(r) == ["300"]  # user_register shortened it
        assert ua(server, "guest1", "wrong", kind).request().status_code == 401
        two = ua(server, "guest2", "guest-password-2", kind)
        r = two.request(contacts=["<sip:guest2@10.0.0.1>", "<sip:guest2@10.0.0.2>"])
        assert (r.status_code, r.reason) == (403, "Guests Register One Device")
        assert ua(server, "kiosk", "kiosk-password", kind).request().status_code == 200  # HA1 from the hook
        r = ua(server, "barred", "pw-x", kind).request()  # in the file too: the hook's Refuse wins
        assert (r.status_code, r.reason) == (403, "Barred")
        r = ua(server, "alice", "pw-a", kind).request(expires=1800)  # hook: None -> the regfile answers
        assert r.status_code == 200 and contact_expires(r) == ["1800"]
        assert guest.request(expires=0).status_code == 200  # removal: not asked, not refused
        caller = ua(server, "alice", "pw-a", kind)
        assert caller.request("INVITE", request_uri="sip:kiosk@fastreg.local").status_code == 302
        assert caller.request("INVITE", request_uri="sip:guest1@fastreg.local").status_code == 480
        assert caller.request("INVITE", request_uri="sip:stranger@fastreg.local").status_code == 404
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_example_module_functions_directly():
    module = load_module(str(EXAMPLE))
    from fastreg.hooks import AuthRequest, Refuse, RouteRequest, UserAuth

    assert module.user_auth(AuthRequest("guest1", "r")) == "guest-password-1"
    assert isinstance(module.user_auth(AuthRequest("kiosk", "r")), UserAuth)
    assert module.user_auth(AuthRequest("barred", "r")) == Refuse(403, "Barred")
    assert module.user_auth(AuthRequest("alice", "r")) is None
    assert module.call_route(RouteRequest("helpdesk", "x", "c")) == ["sip:alice@fastreg.local",
                                                                     "sip:bob@fastreg.local"]
    assert module.call_route(RouteRequest("nobody-home", "x", "c")).status == 480


# -- call_route ----------------------------------------------------------------------------------

def test_call_route_hook_targets_refusal_and_failures(tmp_path):
    path = write_module(tmp_path, """
        import asyncio
        from fastreg.hooks import Refuse

        async def call_route(request):
            if request.called == "raise":
                raise RuntimeError("boom")
            if request.called == "slow":
                await asyncio.sleep(5)
            if request.called == "odd":
                return 42
            if request.called == "refuse":
                return Refuse(486, "Busy Here")
            if request.called == "none":
                return None
            return ["sip:" + request.called + "@elsewhere", "sip:voicemail@vm"]
    """)

    async def main():
        router = CallRouter(hooks=load_hooks(str(path), 0.2, 503))
        out = [await router.call_route("bob", "alice", "c1"), await router.call_route("none", "alice", "c2")]
        for called in ("refuse", "raise", "slow", "odd"):
            with pytest.raises(SipError) as raised:
                await router.call_route(called, "alice", "c-" + called)
            out.append((raised.value.status, type(raised.value) is HookFailed))
        return out

    assert asyncio.run(main()) == [["sip:bob@elsewhere", "sip:voicemail@vm"], [], (486, False), (503, True),
                                   (503, True), (503, True)]


def test_call_route_hook_none_falls_back_to_the_database(tmp_path, pg_schema):
    from fastreg.config import PostgresConfig
    from fastreg.pgdb import Database

    pg_schema.execute("INSERT INTO routes (called, target) VALUES ('bob', 'sip:bob@db')")
    path = write_module(tmp_path, """
        def call_route(request):
            return ["sip:hook@x"] if request.called == "hooked" else None
    """)

    async def main():
        db = Database(PostgresConfig(dsn=pg_schema.dsn(), queries=(
            ("call_route", "SELECT target FROM routes WHERE called = ${called}"),)))
        router = CallRouter(db, load_hooks(str(path), 1.0, 500))
        try:
            return await router.call_route("hooked", "a", "c1"), await router.call_route("bob", "a", "c2")
        finally:
            await db.close()

    assert asyncio.run(main()) == (["sip:hook@x"], ["sip:bob@db"])


# -- failures on the registration path ---------------------------------------------------------

FAILING = """
    import asyncio
    import os
    import time
    from fastreg.hooks import Accept

    RELEASE = os.path.join(os.path.dirname(__file__), "release")

    def user_auth(request):
        if request.username == "authraise":
            raise ValueError("user_auth broke")
        if request.username == "authslow":
            # a plain hook runs in a thread: the event loop goes on while it blocks
            deadline = time.monotonic() + 20
            while not os.path.exists(RELEASE) and time.monotonic() < deadline:
                time.sleep(0.01)
        if request.username == "authodd":
            return 3.14
        return None

    async def user_register(request):
        if request.username == "regraise":
            raise RuntimeError("user_register broke")
        if request.username == "regslow":
            await asyncio.sleep(5)
        if request.username == "regodd":
            return Accept(expires=-5)
        return None
"""


@pytest.mark.parametrize("failure_status", [500, 503])
def test_failing_hooks_are_answered_logged_with_the_call_id_and_the_worker_lives(tmp_path, failure_status):
    users = {name: "pw" for name in ("authraise", "authslow", "authodd", "regraise", "regslow", "regodd", "fine")}
    path = write_module(tmp_path, FAILING)
    server = start_server(tmp_path, hooks_toml(path, timeout_s=0.3, failure_status=failure_status), users=users)
    try:
        call_ids = {}
        for name in ("authraise", "authslow", "authodd", "regraise", "regslow", "regodd"):
            phone = ua(server, name, "pw")
            response = phone.request()
            assert response.status_code == failure_status, name
            call_ids[name] = phone.call_id
        # authslow's hook is still blocked in its thread (until "release" exists):
        # the worker answers others meanwhile
        assert ua(server, "fine", "pw").request().status_code == 200
        (tmp_path / "release").write_text("")
        assert server.alive()
        log = server.log()
        for name in ("authraise", "regraise"):
            assert f"raised (Call-ID '{call_ids[name]}')" in log
        assert f"timed out after 0.3 s (Call-ID '{call_ids['regslow']}')" in log
        assert "returned float" in log and "returned Accept" in log
    finally:
        server.stop()


def test_user_unregister_hook_hears_of_removals(tmp_path):
    record = tmp_path / "unregistered.jsonl"
    path = write_module(tmp_path, f"""
        import json

        def user_unregister(request):
            with open({str(record)!r}, "a") as out:
                out.write(json.dumps([request.username, request.aor, list(request.contacts)]) + "\\n")
    """)
    server = start_server(tmp_path, hooks_toml(path), users={"alice": "pw"})
    try:
        alice = ua(server, "alice", "pw")
        assert alice.request(contacts=["<sip:a@10.0.0.1>", "<sip:a@10.0.0.2>"]).status_code == 200
        assert alice.request(contacts=["<sip:a@10.0.0.1>"], expires=0).status_code == 200
        assert alice.request(contacts=["*"], expires=0).status_code == 200
        assert alice.request(contacts=["*"], expires=0).status_code == 200  # nothing left: nothing to tell

        def lines():
            return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

        deadline = time.monotonic() + 10
        while len(lines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines() == [["alice", "sip:alice@fastreg.local", ["sip:a@10.0.0.1"]],
                           ["alice", "sip:alice@fastreg.local", ["sip:a@10.0.0.2"]]]
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_hooks_with_users_in_the_database(tmp_path, pg_schema):
    pg_schema.add_users({"alice": "pw-a"})
    path = write_module(tmp_path, """
        from fastreg.hooks import Accept

        def user_auth(request):
            return "hook-pw" if request.username == "hooked" else None

        def user_register(request):
            return Accept(expires=120)
    """)
    server = start_server(tmp_path, pg_schema.toml(sections=hooks_toml(path)))
    try:
        r = ua(server, "alice", "pw-a").request()
        assert r.status_code == 200 and contact_expires(r) == ["120"]
        assert ua(server, "hooked", "hook-pw").request().status_code == 200
        assert ua(server, "nobody", "x").request().status_code == 401
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(pg_schema.execute("SELECT 1 FROM registrations")) < 2:
            time.sleep(0.05)
        assert sorted(r[0] for r in pg_schema.execute("SELECT username FROM registrations")) == ["alice", "hooked"]
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_a_module_that_cannot_be_imported_stops_the_start_with_its_name(tmp_path):
    broken = write_module(tmp_path, "raise ImportError('no such thing')\n", "broken.py")
    with pytest.raises(ConfigError, match="hooks.module: .*broken.py: cannot import: ImportError"):
        load_hooks(str(broken), 1.0, 500)
    with pytest.raises(ConfigError, match="no such file"):
        load_hooks(str(tmp_path / "missing.py"), 1.0, 500)
    (tmp_path / "fastreg.toml").write_text(hooks_toml(broken))
    result = subprocess.run([sys.executable, "-m", "fastreg", "serve", "-c", str(tmp_path / "fastreg.toml"),
                             "--listen", f"udp:127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "var")],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 2 and "cannot import" in result.stderr


def test_no_module_means_no_hooks_and_the_synchronous_path(tmp_path):
    from fastreg import config
    from fastreg.worker import Worker

    cfg = config.from_mapping({"server": {"state_dir": str(tmp_path / "var")},
                               "users": {"file": str(ROOT / "conf" / "regfile.conf")}})
    worker = Worker(cfg)
    try:
        assert worker.hooks is None and worker.async_path is None and not worker.registrar.defer_commit
        assert worker.call_router is None and worker.cdr_sink is None and worker.line_tracker_mirror is None
    finally:
        worker._close_now()
    assert load_hooks("", 1.0, 500) is None
    empty = write_module(tmp_path, "X = 1\n", "empty.py")
    assert load_hooks(str(empty), 1.0, 500) is None
