#!/usr/bin/env bash
# bench/users_backends.sh: N users registering at a fixed rate with SIPp, against
# fastreg with users in a regfile and with users in PostgreSQL, one after the
# other in one run, with the same workers and the same users.
#
#   bench/users_backends.sh                       # 10000 users at 1000/s, 2 workers
#   bench/users_backends.sh --users 10000 --rate 1000 --workers 2 \
#       --dsn "host=127.0.0.1 port=5432 dbname=test user=postgres"
#
# For each backend: a fresh state directory, `fastreg serve`, then SIPp's
# reg_auth.xml (REGISTER, 401, REGISTER with digest, 200; one UDP socket) once
# for every user at RATE calls/s. Prints SIPp's successes, failures and
# retransmissions, the achieved registrations/s, the server's CPU seconds
# (utime + stime of every fastreg process, from /proc) and registrations per
# server CPU-second; for PostgreSQL also the database's CPU seconds (every
# process of the PostgreSQL cluster: other clients of the same cluster count
# too) and the rows of the registration mirror.
#
# The postgres run uses every query of conf/fastreg-postgres.toml (user_auth,
# and the user_register mirror: one INSERT per registration) in a schema of
# its own (bench.pg_setup), dropped at the end; --queries user_auth keeps only
# those named (comma-separated). Talks only to 127.0.0.1.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORKERS=2
USERS=10000
RATE=1000
PORT=5082
SIPP_PORT=5092
DSN="host=127.0.0.1 port=5432 dbname=test user=postgres"
BACKENDS="file postgres"
QUERIES=""
KEEP=0
. "$HERE/lib.sh"  # ROOT, PYTHON, stop_server, sipp_counts

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --users N --rate R --workers N --dsn DSN --backends \"file postgres\" --queries user_auth,... --port P --keep"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --dsn) DSN=$2; shift 2 ;;
    --backends) BACKENDS=$2; shift 2 ;;
    --queries) QUERIES=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "users_backends.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
say() { printf '%s\n' "$*" >&2; }
command -v sipp >/dev/null 2>&1 || { say "users_backends.sh: sipp missing (apt-get install sip-tester)"; exit 2; }

W=$(mktemp -d /tmp/fastreg-users-backends.XXXXXX)
SERVER_PID=""; SIPP_PID=""; SCHEMA=""
cleanup() {
  if [ -n "$SIPP_PID" ]; then kill -TERM "$SIPP_PID" 2>/dev/null; wait "$SIPP_PID" 2>/dev/null; fi
  stop_server
  [ -n "$SCHEMA" ] && "$PYTHON" -m bench.pg_setup drop --dsn "$DSN" --schema "$SCHEMA"
  if [ "$KEEP" = 1 ]; then say "users_backends.sh: results and logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
"$PYTHON" bench/gen_users.py "$USERS" --regfile "$W/users.conf" --sql "$W/users.sql" --csv "$W/users.csv"
PG_PID=""
if [[ " $BACKENDS " == *" postgres "* ]]; then
  SCHEMA=$("$PYTHON" -m bench.pg_setup create --dsn "$DSN" --users-sql "$W/users.sql") || {
    say "users_backends.sh: cannot set up PostgreSQL at $DSN"; exit 2; }
  # the cluster's postmaster (its children are the backends), for the database's CPU
  PG_PID=$(head -qn1 /var/lib/postgresql/*/main/postmaster.pid 2>/dev/null | head -n1)
fi

sipp_result() {  # FILE -> "ok failed retransmissions elapsed_s"
  "$PYTHON" - "$1" <<'PY'
import sys
try:
    lines = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
    row = dict(zip(lines[0], lines[-1]))
    epoch = lambda v: float(v.split("\t")[-1])
    print(row["SuccessfulCall(C)"], row["FailedCall(C)"], row["Retransmissions(C)"],
          f'{epoch(row["CurrentTime"]) - epoch(row["StartTime"]):.3f}')
except (OSError, IndexError, KeyError, ValueError) as error:
    print(f"no SIPp statistics in {sys.argv[1]}: {error}", file=sys.stderr)
    print(0, 0, 0, 0)
PY
}
cpu_since() { "$PYTHON" -c "import json,subprocess,sys; print(json.loads(subprocess.check_output([sys.executable,'-m','bench.procstat','--since','$1','$2']))['cpu_s'])"; }

declare -A R
for backend in $BACKENDS; do
  state="$W/state-$backend"
  if [ "$backend" = file ]; then
    printf '[server]\nlisten = ["udp:127.0.0.1:%s"]\nworkers = %s\nstate_dir = "%s"\nlog_level = "WARNING"\n\n[users]\nfile = "%s"\n' \
      "$PORT" "$WORKERS" "$state" "$W/users.conf" >"$W/fastreg-file.toml"
  else
    "$PYTHON" -m bench.pg_setup toml --dsn "$DSN" --schema "$SCHEMA" --port "$PORT" --workers "$WORKERS" \
      --state-dir "$state" ${QUERIES:+--queries "$QUERIES"} >"$W/fastreg-postgres.toml"
  fi
  "$PYTHON" -m fastreg serve -c "$W/fastreg-$backend.toml" >"$W/fastreg-$backend.log" 2>&1 &
  SERVER_PID=$!
  if ! "$PYTHON" -m bench.sipping "127.0.0.1:$PORT" --wait 20 >/dev/null; then
    say "users_backends.sh: fastreg ($backend) did not start:"; tail -20 "$W/fastreg-$backend.log" >&2; exit 1
  fi
  "$PYTHON" -m bench.procstat --save "$W/cpu-$backend.json" "$SERVER_PID"
  [ -n "$PG_PID" ] && "$PYTHON" -m bench.procstat --save "$W/dbcpu-$backend.json" "$PG_PID"
  STAT="$W/sipp-$backend.csv"
  say "== $backend: $USERS users at $RATE/s"
  timeout $((USERS / RATE + 90)) sipp -sf "$HERE/sipp/reg_auth.xml" -inf "$W/users.csv" -t u1 \
    -i 127.0.0.1 -p "$SIPP_PORT" "127.0.0.1:$PORT" -r "$RATE" -m "$USERS" -l $((RATE > 1000 ? RATE : 1000)) \
    -timeout $((USERS / RATE + 60))s -buff_size 4194304 -nostdin -trace_stat -stf "$STAT" -fd 1 \
    -trace_err -error_file "$W/sipp-$backend-errors.log" >/dev/null 2>&1 &
  SIPP_PID=$!; wait "$SIPP_PID"; SIPP_PID=""
  read -r ok failed retrans elapsed < <(sipp_result "$STAT")
  cpu=$(cpu_since "$W/cpu-$backend.json" "$SERVER_PID")
  dbcpu="-"; mirror="-"
  if [ "$backend" = postgres ]; then
    [ -n "$PG_PID" ] && dbcpu=$(cpu_since "$W/dbcpu-$backend.json" "$PG_PID")
    sleep 1  # the mirror is written behind
    mirror=$("$PYTHON" -m bench.pg_setup count --dsn "$DSN" --schema "$SCHEMA")
  fi
  bound=$("$PYTHON" -m fastreg contacts --json -c "$W/fastreg-$backend.toml" | "$PYTHON" -c "import json,sys; print(len({r['aor'] for r in json.load(sys.stdin)}))")
  R[$backend]="$ok $failed $retrans $elapsed $cpu $dbcpu $bound $mirror"
  stop_server
done

say ""
"$PYTHON" - "$USERS" "$RATE" "$WORKERS" "${R[file]:-}" "${R[postgres]:-}" <<'PY'
import sys
users, rate, workers = sys.argv[1:4]
print(f"SIPp reg_auth.xml, {users} users once each at {rate}/s, one UDP socket, {workers} fastreg worker(s), 127.0.0.1")
rows = {}
for name, text in (("file", sys.argv[4]), ("postgres", sys.argv[5])):
    if text:
        ok, failed, retrans, elapsed, cpu, dbcpu, bound, mirror = text.split()
        ok, failed, retrans, elapsed, cpu = int(ok), int(failed), int(retrans), float(elapsed), float(cpu)
        dbcpu = dbcpu if dbcpu == "-" else f"{float(dbcpu):.2f}"
        rows[name] = dict(ok=ok, failed=failed, retrans=retrans, elapsed=elapsed, cpu=cpu, dbcpu=dbcpu,
                          bound=bound, mirror=mirror, rate=ok / elapsed if elapsed else 0,
                          per_cpu=ok / cpu if cpu else 0, us=cpu / ok * 1e6 if ok else 0)
fields = [("registrations (200 OK)", "ok", "{}"), ("failed calls", "failed", "{}"),
          ("retransmissions", "retrans", "{}"), ("elapsed s", "elapsed", "{:.2f}"),
          ("registrations/s", "rate", "{:.0f}"), ("server CPU s", "cpu", "{:.2f}"),
          ("registrations per server CPU-s", "per_cpu", "{:.0f}"), ("server CPU per registration us", "us", "{:.1f}"),
          ("database CPU s (whole cluster)", "dbcpu", "{}"), ("AORs bound in LMDB", "bound", "{}"),
          ("rows in the registrations mirror", "mirror", "{}")]
names = list(rows)
print(f"{'':34}" + "".join(f"{n:>12}" for n in names) + ("   postgres/file" if len(names) == 2 else ""))
for label, key, fmt in fields:
    line = f"{label:34}" + "".join(f"{fmt.format(rows[n][key]):>12}" for n in names)
    if len(names) == 2 and key in ("rate", "per_cpu", "us", "cpu"):
        a, b = rows["file"][key], rows["postgres"][key]
        line += f"   {b / a:14.2f}" if a else ""
    print(line)
PY
