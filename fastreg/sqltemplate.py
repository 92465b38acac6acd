"""SQL written with Yate-style `${name}` parameters, turned into bound parameters.

Yate's register.conf substitutes `${username}` into the SQL text (escaping
it). fastreg never puts a value into SQL text: `${name}` becomes a psycopg
placeholder `%(name)s`, and the value travels separately as a bound
parameter, so nothing that arrives on the wire can change a query.

The text is read once, at configuration load, by a small SQL lexer that
knows where a placeholder can stand:

- `${name}` in the SQL itself becomes `%(name)s`; a literal `%` becomes `%%`
  (psycopg's escape for it).
- `'${name}'` (a string literal that is exactly one placeholder, as Yate's
  queries are written) becomes the bound parameter too: same meaning, no quoting.
- A placeholder in part of a string literal (`'sip:${username}@x'`), in a
  quoted identifier, in dollar quoting (`$$...$$`, `$tag$...$tag$`) or in a
  comment is refused: write `'sip:' || ${username} || '@x'` instead.
- `$1`, `$$` and other `$` uses that are not `${identifier}` are left alone.

Unknown parameter names are refused with the query's name (`ConfigError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastreg.errors import ConfigError

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True, slots=True)
class SqlTemplate:
    """One query: `sql` in psycopg's `%(name)s` form and the names it binds."""

    name: str
    sql: str
    params: tuple[str, ...]

    def bind(self, values: dict[str, object]) -> dict[str, object]:
        """The parameters this query uses, taken from `values` (None when absent)."""
        return {p: values.get(p) for p in self.params}


def compile_sql(name: str, text: str, allowed: frozenset[str] | set[str]) -> SqlTemplate:
    """Parse `text` (the query called `name`) into a `SqlTemplate`.
    ConfigError names the query and the reason."""
    key = f"postgres.queries.{name}"
    if not text.strip():
        raise ConfigError(f"{key}: empty query")
    out: list[str] = []
    used: list[str] = []
    i, n = 0, len(text)

    def placeholder(param: str) -> str:
        if param not in allowed:
            raise ConfigError(f"{key}: unknown parameter ${{{param}}} (known here: "
                              f"{', '.join('${' + a + '}' for a in sorted(allowed)) or 'none'})")
        if param not in used:
            used.append(param)
        return f"%({param})s"

    def refuse_inside(segment: str, where: str) -> None:
        match = _PLACEHOLDER.search(segment)
        if match:
            raise ConfigError(f"{key}: ${{{match.group(1)}}} inside {where} cannot be bound; "
                              "write it outside quotes (e.g. 'sip:' || ${username})")

    while i < n:
        ch = text[i]
        if ch == "'":  # a string literal; '' is an escaped quote
            j = i + 1
            while True:
                j = text.find("'", j)
                if j < 0:
                    raise ConfigError(f"{key}: unterminated string literal")
                if j + 1 < n and text[j + 1] == "'":
                    j += 2
                    continue
                break
            body = text[i + 1:j]
            whole = _PLACEHOLDER.fullmatch(body)
            if whole:  # '${name}', as Yate writes it: the bound value itself
                out.append(placeholder(whole.group(1)))
            else:
                refuse_inside(body, "a string literal")
                out.append(text[i:j + 1].replace("%", "%%"))
            i = j + 1
        elif ch == '"':  # a quoted identifier
            j = text.find('"', i + 1)
            if j < 0:
                raise ConfigError(f"{key}: unterminated quoted identifier")
            refuse_inside(text[i:j + 1], "a quoted identifier")
            out.append(text[i:j + 1].replace("%", "%%"))
            i = j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            refuse_inside(text[i:j], "a comment")
            out.append(text[i:j].replace("%", "%%"))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ConfigError(f"{key}: unterminated comment")
            refuse_inside(text[i:j + 2], "a comment")
            out.append(text[i:j + 2].replace("%", "%%"))
            i = j + 2
        elif ch == "$":
            match = _PLACEHOLDER.match(text, i)
            if match:
                out.append(placeholder(match.group(1)))
                i = match.end()
                continue
            tag = _DOLLAR_TAG.match(text, i)
            if tag and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                end = text.find(tag.group(0), tag.end())
                if end < 0:
                    raise ConfigError(f"{key}: unterminated dollar-quoted string {tag.group(0)}")
                refuse_inside(text[tag.end():end], "dollar quoting")
                out.append(text[i:end + len(tag.group(0))].replace("%", "%%"))
                i = end + len(tag.group(0))
                continue
            out.append("$")  # $1 and the like
            i += 1
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return SqlTemplate(name, "".join(out), tuple(used))


_BINDING = frozenset({
    "username", "aor", "domain", "realm", "contact", "expires", "expires_at", "callid", "cseq", "address",
    "ip_host", "ip_port", "transport", "user_agent", "instance_id", "reg_id", "path", "q",
})
_CALL = frozenset({
    "callid", "caller", "called", "callee", "contact", "address", "started_at", "answered_at", "ended_at",
    "duration", "status", "reason",
})

# The queries (keys of [postgres.queries], after Yate's register.conf
# sections) and the parameters each may use. user_auth is cached per user, so
# it may use only what is the same for every request of that user.
QUERY_PARAMETERS: dict[str, frozenset[str]] = {
    "user_auth": frozenset({"username", "realm"}),
    "user_register": _BINDING,
    "user_unregister": _BINDING,
    "call_route": frozenset({"called", "caller", "callid", "address", "ip_host", "ip_port", "transport",
                             "domain", "method"}),
    "cdr_initialize": _CALL,
    "cdr_update": _CALL,
    "cdr_finalize": _CALL,
    "linetracker_initialize": frozenset(),
    "linetracker_increment": frozenset({"username"}),
    "linetracker_decrement": frozenset({"username"}),
}


def compile_queries(queries: dict[str, str] | tuple[tuple[str, str], ...]) -> dict[str, SqlTemplate]:
    """Every configured query compiled (ConfigError for an unknown query name or parameter)."""
    items = queries.items() if isinstance(queries, dict) else queries
    compiled = {}
    for name, text in items:
        if name not in QUERY_PARAMETERS:
            raise ConfigError(f"postgres.queries.{name}: unknown query (known: {', '.join(QUERY_PARAMETERS)})")
        compiled[name] = compile_sql(name, text, QUERY_PARAMETERS[name])
    return compiled


__all__ = ["SqlTemplate", "compile_sql", "compile_queries", "QUERY_PARAMETERS"]
