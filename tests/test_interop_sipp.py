"""Interoperability: SIPp (Debian's sip-tester), a SIP client nobody here
wrote, registers users with digest authentication over UDP and TCP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, start_server, write_regfile

pytestmark = pytest.mark.interop

SCENARIO = ROOT / "bench" / "sipp" / "reg_auth.xml"


def require_sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        if os.environ.get("FASTREG_REQUIRE_INTEROP"):
            pytest.fail("sipp is not installed (Debian package sip-tester) but FASTREG_REQUIRE_INTEROP is set")
        pytest.skip("sipp is not installed (Debian package sip-tester)")
    return path


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_registers_users_with_digest(tmp_path, transport):
    sipp = require_sipp()
    count = 200
    users = {str(100000 + i): f"pw{i}x" for i in range(count)}
    write_regfile(tmp_path / "regfile.conf", users)
    csv = tmp_path / "users.csv"
    csv.write_text("SEQUENTIAL\n" + "".join(f"{u};{p};fastreg.local\n" for u, p in users.items()))
    server = start_server(tmp_path)
    try:
        result = subprocess.run(
            [sipp, "-sf", str(SCENARIO), "-inf", str(csv), "-m", str(count), "-r", "200", "-l", "50",
             "-t", transport, "-i", "127.0.0.1", "-p", "0", "-timeout", "60", "-timeout_error",
             "-nostdin", "-trace_err", f"127.0.0.1:{server.port}"],
            capture_output=True, text=True, timeout=90, cwd=tmp_path,
        )
        errors = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("*_errors.log"))
        assert result.returncode == 0, f"sipp exit {result.returncode}\n{result.stdout[-3000:]}\n{errors}\n{server.log()[-3000:]}"
        listed = server.cli("contacts", "--json")
        assert listed.returncode == 0, listed.stderr
        aors = {row["aor"] for row in json.loads(listed.stdout)}
        assert aors == {f"sip:{u}@fastreg.local" for u in users}
    finally:
        server.stop()
