"""Generate N users for fastreg (regfile.conf and/or SQL for the PostgreSQL
users table) and the matching SIPp injection CSV.

    python bench/gen_users.py 10000 --regfile var/bench-regfile.conf --csv var/bench-users.csv
    python bench/gen_users.py 10000 --sql var/bench-users.sql --csv var/bench-users.csv

--sql writes multi-row INSERTs into `users (username, password)` of
conf/postgres/schema.sql (run it with psql -f, or `fastreg db init -c FILE
--schema var/bench-users.sql`).
"""

from __future__ import annotations

import argparse

SQL_CHUNK = 1000  # rows per INSERT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("count", type=int)
    ap.add_argument("--first", type=int, default=100000, help="first user number")
    ap.add_argument("--domain", default="fastreg.local")
    ap.add_argument("--regfile", help="write a regfile.conf")
    ap.add_argument("--sql", help="write INSERTs for the PostgreSQL users table")
    ap.add_argument("--csv", required=True)
    args = ap.parse_args()
    if not args.regfile and not args.sql:
        ap.error("give --regfile and/or --sql")
    numbers = range(args.first, args.first + args.count)
    with open(args.csv, "w") as csv:
        csv.write("SEQUENTIAL\n")
        for number in numbers:
            csv.write(f"{number};pw{number}x;{args.domain}\n")
    if args.regfile:
        with open(args.regfile, "w") as regfile:
            for number in numbers:
                regfile.write(f"[{number}]\npassword=pw{number}x\n\n")
    if args.sql:
        with open(args.sql, "w") as sql:
            for start in range(0, len(numbers), SQL_CHUNK):
                chunk = numbers[start:start + SQL_CHUNK]
                values = ",\n".join(f"('{n}', 'pw{n}x')" for n in chunk)  # digits only: nothing to escape
                sql.write(f"INSERT INTO users (username, password) VALUES\n{values};\n")


if __name__ == "__main__":
    main()
