"""Users from a Yate regfile.conf (fastreg.users.file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastreg.errors import ConfigError
from fastreg.users import UserDirectory, UserRecord
from fastreg.users.file import RegFileUsers, UsersFileError, parse_regfile, parse_regfile_sections

ROOT = Path(__file__).resolve().parent.parent
HA1 = "45073c00039c6c2bd5d7b5e99df6aff7"
HA1_SHA256 = "712d8154e792b43d2bc7c1a21f9af5528d2230cf53e11d31e3de97d04f4b49fd"

SAMPLE = f"""\
; !!! NOTE !!!
; a Yate-style file

[general]
; settings common to all users
autocreate=no
auth=100

[200]
password=secret200

  [ 201 ]   ; spaces inside the brackets and a comment after
  password = secret 201  
# a hash comment
maxcalls = 2
alternatives=dummy

[205]
ha1={HA1.upper()}
ha1_sha256 = {HA1_SHA256}

[Alice]
password="quoted";still the password

[nosecret]
maxcalls=1

[empty]
password=
"""


def error_of(text: str) -> UsersFileError:
    with pytest.raises(UsersFileError) as info:
        parse_regfile(text, "users.conf")
    return info.value


# -- the format ------------------------------------------------------------------------

def test_sample():
    users = parse_regfile(SAMPLE)
    assert set(users) == {"200", "201", "205", "Alice", "nosecret", "empty"}
    assert users["200"] == UserRecord("200", password="secret200")
    assert users["201"].password == "secret 201"  # inner blanks kept, outer stripped
    assert dict(users["201"].settings) == {"maxcalls": "2", "alternatives": "dummy"}
    assert users["205"].password is None
    assert users["205"].ha1 == HA1  # lower-cased
    assert users["205"].ha1_sha256 == HA1_SHA256
    assert users["Alice"].password == '"quoted";still the password'  # literal, as in Yate


def test_general_section_is_settings_not_a_user():
    users, general = parse_regfile_sections(SAMPLE)
    assert "general" not in users
    assert general == {"autocreate": "no", "auth": "100"}


def test_user_without_secret_exists_but_cannot_authenticate():
    users = parse_regfile(SAMPLE)
    assert users["nosecret"].can_authenticate is False
    assert users["nosecret"].settings["maxcalls"] == "1"
    assert users["empty"].password == ""  # an empty password, not "anybody"
    assert users["empty"].can_authenticate
    assert users["200"].can_authenticate and users["205"].can_authenticate


def test_usernames_are_case_sensitive():
    users = parse_regfile(SAMPLE)
    assert "Alice" in users and "alice" not in users


def test_settings_are_read_only():
    users = parse_regfile(SAMPLE)
    with pytest.raises(TypeError):
        users["201"].settings["maxcalls"] = "9"  # type: ignore[index]


def test_empty_and_comment_only_files():
    assert parse_regfile("") == {}
    assert parse_regfile("; nothing\n# at all\n\n   \n") == {}


def test_crlf_bom_and_tabs():
    text = "\ufeff[200]\r\n\tpassword\t=\tsecret200\t\r\n"
    assert parse_regfile(text)["200"].password == "secret200"


def test_continuation_line():
    users = parse_regfile("[200]\npassword=sec\\\n   ret200\nmaxcalls=2\n")
    assert users["200"].password == "secret200"
    assert users["200"].settings["maxcalls"] == "2"


def test_first_of_repeated_setting_counts():
    users = parse_regfile("[200]\nmaxcalls=1\nmaxcalls=2\n")
    assert users["200"].settings["maxcalls"] == "1"


def test_value_may_contain_equals_and_brackets():
    users = parse_regfile("[200]\npassword=a=b[c]\n")
    assert users["200"].password == "a=b[c]"


def test_the_shipped_conf_file():
    users = RegFileUsers(ROOT / "conf" / "regfile.conf")
    for n in range(200, 205):
        assert users.lookup(str(n)).password == f"secret{n}"
    assert users.lookup("205").ha1 == HA1
    assert users.lookup("205").ha1_sha256 == HA1_SHA256


def test_shipped_ha1_matches_the_documented_password():
    from fastreg.auth import compute_ha1

    assert compute_ha1("MD5", "205", "fastreg.local", "secret205") == HA1
    assert compute_ha1("SHA-256", "205", "fastreg.local", "secret205") == HA1_SHA256


# -- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,line,words", [
    ("[200]\npassword=x\njunk line\n", 3, "key=value"),
    ("; c\n\npassword=x\n", 3, "before any"),
    ("[200\npassword=x\n", 1, "]"),
    ("[]\n", 1, "empty section"),
    ("[200]\n=x\n", 2, "empty key"),
    ("[200]\npassword=a\n[201]\npassword=b\n\n[200]\n", 6, "duplicate section [200] (first at line 1)"),
    ("[200]\nha1=abc\n", 2, "32 hex digits"),
    ("[200]\nha1=" + "g" * 32 + "\n", 2, "32 hex digits"),
    ("[200]\nha1=\n", 2, "32 hex digits"),
    ("[200]\nha1_sha256=" + HA1 + "\n", 2, "64 hex digits"),
    ("[200]\npassword=a\npassword=b\n", 3, "twice"),
    ("[$include more.conf]\n", 1, "not supported"),
    ("[$require more.conf]\n", 1, "not supported"),
    ("[$enabled $loaded sip]\n", 1, "not supported"),
    ("[200]\nPassword=x\n", 2, "lower case"),
    ("[200] extra\n", 1, "after the section header"),
])
def test_malformed(text, line, words):
    error = error_of(text)
    assert error.line == line
    assert error.path == "users.conf"
    assert words in error.reason
    assert str(error).startswith(f"users.conf:{line}: ")
    assert isinstance(error, ConfigError)


def test_errors_do_not_show_secret_values():
    error = error_of("[200]\npassword=hunter2\npassword=hunter3\n")
    assert "hunter" not in str(error)
    error = error_of("[200]\nha1=deadbeefdeadbeefdeadbeefdeadbeefff\n")
    assert "deadbeef" not in str(error)


# -- the directory over a file -----------------------------------------------------------

def write(path: Path, text: str, mtime_ns: int | None = None) -> None:
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_lookup(tmp_path):
    path = tmp_path / "regfile.conf"
    write(path, SAMPLE)
    users = RegFileUsers(path)
    assert isinstance(users, UserDirectory)
    assert users.lookup("200").password == "secret200"
    assert users.lookup("nobody") is None
    assert users.lookup("general") is None
    assert len(users) == 6 and "205" in users
    assert users.general["autocreate"] == "no"


def test_construction_raises_on_a_bad_or_missing_file(tmp_path):
    path = tmp_path / "regfile.conf"
    with pytest.raises(UsersFileError) as info:
        RegFileUsers(path)
    assert info.value.line == 0
    write(path, "[200]\nnonsense\n")
    with pytest.raises(UsersFileError) as info:
        RegFileUsers(path)
    assert info.value.line == 2 and info.value.path == str(path)


def test_reload_on_change(tmp_path):
    path = tmp_path / "regfile.conf"
    write(path, "[200]\npassword=a\n", 1_000_000_000_000_000_000)
    users = RegFileUsers(path)
    assert users.reload_if_changed() is False
    write(path, "[200]\npassword=b\n[201]\npassword=c\n", 1_000_000_001_000_000_000)
    assert users.reload_if_changed() is True
    assert users.lookup("200").password == "b"
    assert users.lookup("201").password == "c"
    assert users.reload_if_changed() is False


def test_same_size_change_is_seen_by_mtime(tmp_path):
    path = tmp_path / "regfile.conf"
    write(path, "[200]\npassword=a\n", 1_000_000_000_000_000_000)
    users = RegFileUsers(path)
    write(path, "[200]\npassword=b\n", 1_000_000_000_000_000_001)
    assert users.reload_if_changed() is True
    assert users.lookup("200").password == "b"


def test_replacement_by_rename_is_seen_by_inode(tmp_path):
    path = tmp_path / "regfile.conf"
    write(path, "[200]\npassword=a\n", 1_000_000_000_000_000_000)
    users = RegFileUsers(path)
    new = tmp_path / "regfile.conf.new"
    write(new, "[200]\npassword=b\n", 1_000_000_000_000_000_000)  # same size, same mtime
    os.replace(new, path)
    assert users.reload_if_changed() is True
    assert users.lookup("200").password == "b"


def test_reload_keeps_the_old_users_on_a_bad_file(tmp_path):
    path = tmp_path / "regfile.conf"
    write(path, "[200]\npassword=a\n", 1_000_000_000_000_000_000)
    users = RegFileUsers(path)
    before = users.lookup("200")
    write(path, "[200]\npassword=b\n[201]\noops\n", 1_000_000_001_000_000_000)
    result = users.reload_if_changed()
    assert isinstance(result, UsersFileError)
    assert result.line == 4
    assert users.lookup("200") is before
    assert users.lookup("201") is None
    # The same bad version is reported once, not on every check.
    assert users.reload_if_changed() is False
    # reload() (SIGHUP) reads again and reports again.
    assert isinstance(users.reload(), UsersFileError)
    # Fixed: picked up.
    write(path, "[200]\npassword=b\n[201]\npassword=c\n", 1_000_000_002_000_000_000)
    assert users.reload_if_changed() is True
    assert users.lookup("201").password == "c"


def test_reload_keeps_the_old_users_when_the_file_disappears(tmp_path):
    path = tmp_path / "regfile.conf"
    write(path, "[200]\npassword=a\n")
    users = RegFileUsers(path)
    path.unlink()
    result = users.reload_if_changed()
    assert isinstance(result, UsersFileError) and result.line == 0
    assert users.reload_if_changed() is False  # reported once
    assert users.lookup("200").password == "a"
    assert isinstance(users.reload(), UsersFileError)
    write(path, "[200]\npassword=z\n")
    assert users.reload_if_changed() is True
    assert users.lookup("200").password == "z"


def test_forced_reload(tmp_path):
    path = tmp_path / "regfile.conf"
    write(path, "[200]\npassword=a\n", 1_000_000_000_000_000_000)
    users = RegFileUsers(path)
    write(path, "[200]\npassword=b\n", 1_000_000_000_000_000_000)  # same signature
    assert users.reload_if_changed() is False
    assert users.reload() is True
    assert users.lookup("200").password == "b"


def test_non_utf8_password_keeps_its_bytes(tmp_path):
    path = tmp_path / "regfile.conf"
    path.write_bytes(b"[200]\npassword=p\xe4ss\n")  # latin-1
    users = RegFileUsers(path)
    assert users.lookup("200").password.encode("utf-8", "surrogateescape") == b"p\xe4ss"


def test_error_pickles():
    import pickle

    error = UsersFileError("f.conf", 3, "bad")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.line, copy.reason, str(copy)) == ("f.conf", 3, "bad", "f.conf:3: bad")
