"""The `fastreg` command: serve, contacts, stats, calls, ha1."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time

from fastreg.errors import ConfigError, ParserUnavailable


def _overrides(args) -> dict:
    out = {}
    if getattr(args, "listen", None):
        out["server.listen"] = args.listen
    if getattr(args, "workers", None) is not None:
        out["server.workers"] = args.workers
    if getattr(args, "state_dir", None):
        out["server.state_dir"] = args.state_dir
    if getattr(args, "users", None):
        out["users.file"] = args.users
    return out


def _load_config(args):
    from fastreg import config

    return config.load(args.config, _overrides(args))


def cmd_serve(args) -> int:
    from fastreg import parser  # noqa: F401  (fails early and clearly if the scanner is not built)
    from fastreg.transport.sockets import ListenError, probe_free

    cfg = _load_config(args)
    logging.basicConfig(level=cfg.server.log_level.upper(), format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    log = logging.getLogger("fastreg")
    try:
        for address in cfg.server.listen:
            probe_free(address)
    except ListenError as error:
        log.error("%s", error)
        return 2
    workers = cfg.server.workers or os.cpu_count() or 1
    log.info("fastreg starting: %s, %d worker(s), parser %s, users %s, state %s, durability %s",
             ", ".join(map(str, cfg.server.listen)), workers, parser.IMPLEMENTATION,
             cfg.users.file if cfg.users.backend == "file" else cfg.users.backend,
             cfg.server.state_dir, cfg.location.durability)

    def reload_config():
        return _load_config(args)

    if workers == 1:
        from fastreg.worker import WorkerStartError, run_worker

        try:
            run_worker(cfg, 0, 1, reload_config=reload_config)
        except WorkerStartError as error:
            log.error("cannot start: %s", error)
            return 2
        return 0
    from fastreg.supervisor import run_supervisor

    return run_supervisor(cfg, workers, reload_config=reload_config)


def _open_table_readonly(args):
    """(config, the location table opened read-only) for the reading
    commands (contacts, stats, calls); (config, None) when there is no table
    yet (said on stderr)."""
    import signal

    from fastreg.store_lmdb import LmdbLocation

    # `fastreg contacts | head` ends quietly, as other Unix tools do. Only in
    # these commands: a serving process must never die of a peer closing a
    # connection.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    cfg = _load_config(args)
    path = cfg.location_path
    if not os.path.isdir(path):
        print(f"no location table at {path}", file=sys.stderr)
        return cfg, None
    return cfg, LmdbLocation(path, map_size_mb=cfg.location.map_size_mb, readonly=True)


def cmd_stats(args) -> int:
    """The counters every worker publishes, per worker and in total."""
    from fastreg import stats
    from fastreg.transport.sockets import udp_rcvbuf_errors

    cfg, location = _open_table_readonly(args)
    if location is None:
        return 1
    try:
        raw = location.read_stats()
    finally:
        location.close()
    entries = [e for e in (stats.decode(v) for _, v in raw) if e is not None]
    report = stats.report(entries, system={"udp_rcvbuf_errors": udp_rcvbuf_errors()})
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        sys.stdout.write(stats.render_text(report))
    return 0


def cmd_contacts(args) -> int:
    """The current bindings (of one AOR, or all), read while the server runs."""
    cfg, location = _open_table_readonly(args)
    if location is None:
        return 1
    now = time.time()
    try:
        if args.aor:
            from fastreg.uri import canonical_aor

            bindings = list(location.lookup(canonical_aor(args.aor), now))
        else:
            bindings = list(location.iter_all(now))
    finally:
        location.close()
    if args.json:
        rows = [
            {
                "aor": b.aor,
                "contact": b.contact,
                "expires": max(0, int(b.expires_at - now + 0.5)),
                "q": b.q,
                "call_id": b.call_id,
                "cseq": b.cseq,
                "path": list(b.path),
                "received": f"{b.received[0]}:{b.received[1]}",
                "transport": b.transport,
                "user_agent": b.user_agent,
                "instance_id": b.instance_id,
                "reg_id": b.reg_id,
            }
            for b in bindings
        ]
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        for b in bindings:
            q = "" if b.q is None else f" q={b.q:g}"
            print(f"{b.aor} {b.contact} expires={max(0, int(b.expires_at - now + 0.5))}{q} "
                  f"via={b.transport.lower()}:{b.received[0]}:{b.received[1]}")
    return 0


def cmd_calls(args) -> int:
    """Ongoing calls per user (the line tracker), read while the server runs."""
    import lmdb

    from fastreg.linetracker import LmdbLineTracker

    cfg, location = _open_table_readonly(args)
    if location is None:
        return 1
    now = time.time()
    try:
        try:
            tracker = LmdbLineTracker(location)
        except lmdb.NotFoundError:  # no call was ever tracked here (redirect mode)
            calls, counts = [], {}
        else:
            calls, counts = tracker.snapshot()
            calls.sort(key=lambda c: c.record.started_at)
    finally:
        location.close()
    if args.json:
        rows = [
            {
                "call_id": c.record.call_id, "caller": c.record.caller, "called": c.record.called,
                "callee": c.record.callee, "contact": c.record.contact, "address": c.record.address,
                "started_at": c.record.started_at, "answered_at": c.record.answered_at,
                "state": "answered" if c.record.answered_at is not None else "ringing",
                "users": list(c.users),
            }
            for c in calls
        ]
        json.dump({"users": dict(sorted(counts.items())), "total": len(calls), "calls": rows}, sys.stdout, indent=1)
        print()
        return 0
    print(f"{len(calls)} ongoing call(s)")
    for user, count in sorted(counts.items()):
        print(f"{user} calls={count}")
    if args.verbose:
        for c in calls:
            r = c.record
            state = f"answered {now - r.answered_at:.0f}s" if r.answered_at is not None else "ringing"
            print(f"  {r.call_id} {r.caller or '-'} -> {r.called} ({r.callee} at {r.contact}) "
                  f"{state}, started {now - r.started_at:.0f}s ago")
    return 0


def cmd_ha1(args) -> int:
    """Print regfile.conf lines holding digests instead of the password."""
    import getpass

    password = args.password if args.password is not None else getpass.getpass("password: ")
    realm = args.realm
    if realm is None:
        realm = _load_config(args).registrar.realm
    secret = f"{args.username}:{realm}:{password}".encode()
    print(f"[{args.username}]")
    print(f"ha1={hashlib.md5(secret).hexdigest()}")
    print(f"ha1_sha256={hashlib.sha256(secret).hexdigest()}")
    return 0


def default_schema_path() -> str:
    """conf/postgres/schema.sql of the checkout (or installation) fastreg runs from."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "postgres", "schema.sql")


def cmd_db_init(args) -> int:
    """Create the tables of the schema file in the database of postgres.dsn."""
    cfg = _load_config(args)
    if not cfg.postgres.dsn:
        raise ConfigError("postgres.dsn: empty: no database to initialise")
    path = args.schema or default_schema_path()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        print(f"fastreg: {path}: {exc.strerror} (give the schema with --schema FILE)", file=sys.stderr)
        return 2
    try:
        import psycopg
    except ImportError:
        print("fastreg: psycopg is not installed (pip install 'psycopg[binary]')", file=sys.stderr)
        return 2
    try:
        timeout = max(1, int(cfg.postgres.connect_timeout_s + 0.999))
        with psycopg.connect(cfg.postgres.dsn, connect_timeout=timeout) as conn:  # one transaction: all or nothing
            conn.execute(text)
            schema = conn.execute("SELECT current_schema()").fetchone()[0]
            database = conn.info.dbname
    except psycopg.Error as error:
        print(f"fastreg: db init failed: {type(error).__name__}: {str(error).strip()}", file=sys.stderr)
        return 1
    print(f"schema {path} applied to database {database!r}, schema {schema!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastreg", description="SIP registrar and location service")
    sub = ap.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the registrar")
    serve.add_argument("-c", "--config", help="TOML configuration file (default: embedded defaults)")
    serve.add_argument("--listen", action="append", help="udp:HOST:PORT or tcp:HOST:PORT (repeatable)")
    serve.add_argument("--workers", type=int, help="worker processes (0: one per core)")
    serve.add_argument("--state-dir", help="directory of the location table and the generated secret")
    serve.add_argument("--users", help="users file in regfile.conf format (overrides users.file)")
    serve.set_defaults(func=cmd_serve)

    contacts = sub.add_parser("contacts", help="print the bindings in the location table")
    contacts.add_argument("-c", "--config")
    contacts.add_argument("--state-dir")
    contacts.add_argument("aor", nargs="?", help="only this AOR (sip:user@domain)")
    contacts.add_argument("--json", action="store_true")
    contacts.set_defaults(func=cmd_contacts)

    st = sub.add_parser("stats", help="print the counters of the running workers, per worker and in total")
    st.add_argument("-c", "--config")
    st.add_argument("--state-dir")
    st.add_argument("--json", action="store_true",
                    help='{"workers": [{"pid": ..., "registrations_applied": ..., ...}, ...], "total": {...}, '
                         '"system": {...}}; counter names are flat: requests_REGISTER, responses_2xx, ...')
    st.set_defaults(func=cmd_stats)

    db = sub.add_parser("db", help="PostgreSQL: create the tables the default queries use")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_init = db_sub.add_parser("init", help="create the tables of conf/postgres/schema.sql in postgres.dsn")
    db_init.add_argument("-c", "--config", required=True, help="TOML configuration with [postgres] dsn")
    db_init.add_argument("--schema", help="SQL file to run (default: conf/postgres/schema.sql)")
    db_init.set_defaults(func=cmd_db_init)
    calls = sub.add_parser("calls", help="print the ongoing calls per user (proxy mode with record_route)")
    calls.add_argument("-c", "--config")
    calls.add_argument("--state-dir")
    calls.add_argument("-v", "--verbose", action="store_true", help="list every call too")
    calls.add_argument("--json", action="store_true",
                       help='{"users": {"201": 1, ...}, "total": N, "calls": [{"call_id": ..., "state": ...}, ...]}')
    calls.set_defaults(func=cmd_calls)

    ha1 = sub.add_parser("ha1", help="print ha1= lines for regfile.conf")
    ha1.add_argument("-c", "--config")
    ha1.add_argument("username")
    ha1.add_argument("--realm", help="default: registrar.realm of the configuration")
    ha1.add_argument("--password", help="default: asked on the terminal")
    ha1.set_defaults(func=cmd_ha1)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as error:
        print(f"fastreg: configuration refused: {error}", file=sys.stderr)
        return 2
    except ParserUnavailable as error:
        print(f"fastreg: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
