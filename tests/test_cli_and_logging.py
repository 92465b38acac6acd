"""The parser selection rule, the rate-limited log, and secret handling."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from fastreg import config
from fastreg.ratelog import RateLimitedLog
from fastreg.worker import load_secret_keys


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_missing_extension_is_reported_never_silently_replaced():
    code = ("import sys; sys.modules['fastreg._cparse'] = None\n"
            "from fastreg.cli import main\n"
            "sys.exit(main(['serve', '--listen', 'udp:127.0.0.1:1']))")
    result = run_python(code)
    assert result.returncode == 2
    assert "fastreg._cparse is not built" in result.stderr and "FASTREG_PARSER=pure" in result.stderr


def test_pure_parser_only_on_request():
    assert run_python("from fastreg import parser; print(parser.IMPLEMENTATION)").stdout.strip() == "cython"
    chosen = run_python("from fastreg import parser; print(parser.IMPLEMENTATION)", {"FASTREG_PARSER": "pure"})
    assert chosen.stdout.strip() == "pure"
    assert run_python("import fastreg.parser", {"FASTREG_PARSER": "fast"}).returncode != 0


def test_rate_limited_log_counts_what_it_suppresses(caplog):
    log = RateLimitedLog(logging.getLogger("t"), interval_s=10)
    with caplog.at_level(logging.WARNING, logger="t"):
        for i in range(1000):
            log.warning("bad", 100.0 + i * 0.001, "bad input %d", i)
        log.warning("other", 100.5, "another kind")
        log.warning("bad", 111.0, "bad input again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad input 0", "another kind", "bad input again (999 more bad suppressed in the last 10 s)"]


def test_secret_generated_once_kept_and_rotatable(tmp_path):
    cfg = config.load(None, {"server.state_dir": str(tmp_path / "var")})
    first = load_secret_keys(cfg)
    assert len(first) == 1 and len(first[0]) == 64
    assert (tmp_path / "var" / "secret").stat().st_mode & 0o777 == 0o600
    assert load_secret_keys(cfg) == first
    keys = tmp_path / "keys"
    keys.write_text("# newest first\nnewkey\noldkey\n")
    rotated = config.load(None, {"auth.secret_file": str(keys)})
    assert load_secret_keys(rotated) == [b"newkey", b"oldkey"]


def test_bad_log_level_is_refused_with_key():
    import pytest

    from fastreg.errors import ConfigError

    with pytest.raises(ConfigError, match="server.log_level"):
        config.load(None, {"server.log_level": "LOUD"})
    assert config.load(None, {"server.log_level": "debug"}).server.log_level == "debug"
