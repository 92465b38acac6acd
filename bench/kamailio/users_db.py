"""Write fastreg's users (a regfile.conf) as the Kamailio users table of bench/kamailio/kamailio.cfg.

    python -m bench.kamailio.users_db var/bench-regfile.conf var/kamailio-db

The output directory is a db_text database (Kamailio's file-backed database
driver) holding one table, `users`, that kamailio.cfg loads into the `users`
htable at start: key = the user name, value = "P" + the plain password, or
"H" + the MD5 HA1 for users stored as `ha1=` (the realm must then be the one
the HA1 was computed for), or "-" for a user who exists but cannot
authenticate (INVITEs to it get 480, as in fastreg, not 404). The regfile is
read with fastreg's own parser, so both servers see exactly the same users.
"""

from __future__ import annotations

import argparse
import os

from fastreg.users.file import parse_regfile

TABLE = "users"


def escape(text: str) -> str:
    """db_text escaping: backslash, the ':' separator and line breaks."""
    return (
        text.replace("\\", "\\\\")
        .replace(":", "\\:")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
        .replace("\0", "\\0")
    )


def secret_of(record) -> str:
    if record.password is not None:
        return "P" + record.password
    if record.ha1 is not None:
        return "H" + record.ha1.lower()
    return "-"


def write_db(regfile: str, directory: str) -> int:
    with open(regfile, encoding="utf-8") as handle:
        users = parse_regfile(handle.read(), regfile)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, TABLE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write("username(str) secret(str)\n")
        for name, record in users.items():
            out.write(f"{escape(name)}:{escape(secret_of(record))}\n")
    os.replace(tmp, os.path.join(directory, TABLE))
    # Every db_text database needs a `version` table.
    with open(os.path.join(directory, "version"), "w", encoding="utf-8") as out:
        out.write(f"table_name(str) table_version(int)\n{TABLE}:1\n")
    return len(users)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("regfile", help="fastreg users file (Yate regfile.conf format)")
    ap.add_argument("directory", help="db_text directory to write (created if missing)")
    args = ap.parse_args()
    count = write_db(args.regfile, args.directory)
    print(f"{count} users written to {os.path.join(args.directory, TABLE)}")


if __name__ == "__main__":
    main()
