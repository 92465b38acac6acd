"""PostgreSQL for the bench scripts: a schema of their own in an existing
database, fastreg's tables and the bench users in it, a fastreg configuration
pointing at it, and the figures to check afterwards.

    python -m bench.pg_setup create --dsn DSN --users-sql FILE      # prints the schema name
    python -m bench.pg_setup toml --dsn DSN --schema NAME --port P --workers N --state-dir DIR \
        [--db-port PORT] [--extra 'auth_cache_ttl_s = 10.0'] [--queries user_auth,user_register]
                                                                    # a fastreg.toml on stdout
    python -m bench.pg_setup count --dsn DSN --schema NAME          # rows in registrations
    python -m bench.pg_setup drop --dsn DSN --schema NAME

The configuration has users.backend = "postgres" and every query of
conf/fastreg-postgres.toml (user_auth, the registration mirror, ...), with
the DSN's search_path set to the schema; --db-port sends it through another
port (a TcpProxy, for the outage bench).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def connect(dsn: str):
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


def schema_dsn(dsn: str, schema: str, port: int | None = None) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["options"] = f"-c search_path={schema}"
    if port is not None:
        params["host"], params["port"] = "127.0.0.1", str(port)
    return make_conninfo(**params)


def create(dsn: str, users_sql: str) -> str:
    name = f"fastreg_bench_{os.getpid()}"
    with connect(dsn) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
        with conn.transaction():
            conn.execute(f'SET LOCAL search_path TO "{name}"')
            conn.execute((ROOT / "conf" / "postgres" / "schema.sql").read_text())
            conn.execute(Path(users_sql).read_text())
    return name


def toml(dsn: str, schema: str, port: int, workers: int, state_dir: str, db_port: int | None, extra: str,
         only: list[str] | None = None) -> str:
    with open(ROOT / "conf" / "fastreg-postgres.toml", "rb") as handle:
        queries = tomllib.load(handle)["postgres"]["queries"]
    if only:
        queries = {name: text for name, text in queries.items() if name in only}
    lines = [
        "[server]", f'listen = ["udp:127.0.0.1:{port}"]', f"workers = {workers}",
        f"state_dir = {json.dumps(state_dir)}", 'log_level = "WARNING"', "",
        "[users]", 'backend = "postgres"', "",
        "[postgres]", f"dsn = {json.dumps(schema_dsn(dsn, schema, db_port))}", extra.replace("\\n", "\n"), "",
        "[postgres.queries]",
    ]
    lines += [f"{name} = {json.dumps(text)}" for name, text in queries.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["create", "toml", "count", "drop"])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--schema")
    ap.add_argument("--users-sql")
    ap.add_argument("--port", type=int)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--state-dir")
    ap.add_argument("--db-port", type=int)
    ap.add_argument("--extra", default="")
    ap.add_argument("--queries", help="only these queries of conf/fastreg-postgres.toml (comma-separated)")
    args = ap.parse_args()
    if args.command == "create":
        print(create(args.dsn, args.users_sql))
    elif args.command == "toml":
        sys.stdout.write(toml(args.dsn, args.schema, args.port, args.workers, args.state_dir, args.db_port,
                              args.extra, args.queries.split(",") if args.queries else None))
    elif args.command == "count":
        with connect(args.dsn) as conn:
            print(conn.execute(f'SELECT count(*) FROM "{args.schema}".registrations').fetchone()[0])
    else:
        with connect(args.dsn) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
    return 0


if __name__ == "__main__":
    sys.exit(main())
