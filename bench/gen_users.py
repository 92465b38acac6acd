"""Generate N users for fastreg (regfile.conf) and the matching SIPp injection CSV.

    python bench/gen_users.py 10000 --regfile var/bench-regfile.conf --csv var/bench-users.csv
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("count", type=int)
    ap.add_argument("--first", type=int, default=100000, help="first user number")
    ap.add_argument("--domain", default="fastreg.local")
    ap.add_argument("--regfile", required=True)
    ap.add_argument("--csv", required=True)
    args = ap.parse_args()
    with open(args.regfile, "w") as regfile, open(args.csv, "w") as csv:
        csv.write("SEQUENTIAL\n")
        for number in range(args.first, args.first + args.count):
            password = f"pw{number}x"
            regfile.write(f"[{number}]\npassword={password}\n\n")
            csv.write(f"{number};{password};{args.domain}\n")


if __name__ == "__main__":
    main()
