"""`${name}` in configured SQL becomes a bound parameter, never text (fastreg/sqltemplate.py),
and the [postgres] / [hooks] configuration is checked at load."""

from __future__ import annotations

import pytest

from fastreg import config
from fastreg.errors import ConfigError
from fastreg.sqltemplate import QUERY_PARAMETERS, compile_queries, compile_sql

ALLOWED = frozenset({"username", "realm", "contact"})


def test_placeholders_become_psycopg_parameters_in_order_of_first_use():
    t = compile_sql("q", "SELECT password FROM users WHERE username = ${username} AND realm = ${realm} "
                         "OR alias = ${username}", ALLOWED)
    assert t.sql == ("SELECT password FROM users WHERE username = %(username)s AND realm = %(realm)s "
                     "OR alias = %(username)s")
    assert t.params == ("username", "realm")
    assert t.bind({"username": "a", "realm": "r", "other": "x"}) == {"username": "a", "realm": "r"}


def test_yate_quoted_placeholder_is_the_bound_value_itself():
    t = compile_sql("q", "SELECT 1 FROM users WHERE username='${username}'", ALLOWED)
    assert t.sql == "SELECT 1 FROM users WHERE username=%(username)s"


@pytest.mark.parametrize("sql, where", [
    ("SELECT 'sip:${username}@x'", "a string literal"),
    ('SELECT "${username}" FROM t', "a quoted identifier"),
    ("SELECT $$${username}$$", "dollar quoting"),
    ("SELECT $tag$ a ${username} $tag$", "dollar quoting"),
    ("SELECT 1 -- ${username}", "a comment"),
    ("SELECT 1 /* ${username} */", "a comment"),
])
def test_placeholder_where_it_cannot_be_bound_is_refused(sql, where):
    with pytest.raises(ConfigError) as raised:
        compile_sql("user_auth", sql, ALLOWED)
    assert "postgres.queries.user_auth" in str(raised.value) and where in str(raised.value)


def test_percent_and_other_dollars_stay_sql():
    t = compile_sql("q", "SELECT '100%' AS a, $1::int, $$x$$ FROM t WHERE u LIKE 'a%' AND c = ${contact} -- 5%",
                    ALLOWED)
    assert t.sql == "SELECT '100%%' AS a, $1::int, $$x$$ FROM t WHERE u LIKE 'a%%' AND c = %(contact)s -- 5%%"
    assert t.params == ("contact",)


def test_escaped_quote_inside_a_literal():
    t = compile_sql("q", "SELECT 'it''s' WHERE u = ${username}", ALLOWED)
    assert t.sql == "SELECT 'it''s' WHERE u = %(username)s"


def test_unknown_parameter_is_refused_with_the_query_name_and_the_known_ones():
    with pytest.raises(ConfigError) as raised:
        compile_sql("user_register", "DELETE FROM r WHERE x = ${nonsense}", ALLOWED)
    text = str(raised.value)
    assert "postgres.queries.user_register" in text and "${nonsense}" in text and "${username}" in text


@pytest.mark.parametrize("sql", ["SELECT 'open", 'SELECT "open', "SELECT /* open", "SELECT $$ open", "  "])
def test_malformed_sql_is_refused(sql):
    with pytest.raises(ConfigError):
        compile_sql("q", sql, ALLOWED)


def test_user_auth_may_use_only_what_is_the_same_for_every_request_of_a_user():
    # it is cached per user: a per-request value (the source address) would be wrong
    with pytest.raises(ConfigError, match=r"\$\{address\}"):
        compile_queries({"user_auth": "SELECT password FROM users WHERE username = ${username} AND ip = ${address}"})


def test_unknown_query_name_is_refused():
    with pytest.raises(ConfigError, match="postgres.queries.user_login: unknown query"):
        compile_queries({"user_login": "SELECT 1"})


def test_default_postgres_configuration_loads_and_uses_every_query():
    cfg = config.load(str(config_path()))
    names = {name for name, _ in cfg.postgres.queries}
    assert names == set(QUERY_PARAMETERS)
    assert cfg.users.backend == "postgres"


def config_path():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "conf" / "fastreg-postgres.toml"


@pytest.mark.parametrize("data, message", [
    ({"users": {"backend": "postgres"}}, "postgres.dsn"),
    ({"users": {"backend": "postgres"}, "postgres": {"dsn": "host=x"}}, "postgres.queries.user_auth: required"),
    ({"postgres": {"dsn": "host=x", "queries": {"user_auth": "SELECT 1"}}}, "only with users.backend"),
    ({"postgres": {"queries": {"cdr_initialize": "SELECT 1"}}}, "postgres.dsn: required"),
    ({"postgres": {"queries": {"cdr_initialize": 5}}}, "postgres.queries"),
    ({"postgres": {"dsn": "host=x", "pool_size": 0}}, "postgres.pool_size"),
    ({"postgres": {"notify_channel": "a;b"}}, "postgres.notify_channel"),
    ({"postgres": {"dsn": "x", "queries": {"cdr_update": "UPDATE cdr SET x = ${bogus}"}}},
     "postgres.queries.cdr_update: unknown parameter ${bogus}"),
    ({"users": {"backend": "ldap"}}, "users.backend"),
    ({"hooks": {"failure_status": 200}}, "hooks.failure_status"),
    ({"hooks": {"timeout_s": 0}}, "hooks.timeout_s"),
    ({"hooks": {"modul": "x"}}, "hooks.modul: unknown key"),
])
def test_bad_postgres_and_hooks_settings_are_refused_with_their_key(data, message):
    with pytest.raises(ConfigError) as raised:
        config.from_mapping(data)
    assert message in str(raised.value)
