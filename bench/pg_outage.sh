#!/usr/bin/env bash
# bench/pg_outage.sh: the user database stopped for 10 s under a registration
# load, and started again, with fastreg (users.backend = "postgres") running.
#
#   bench/pg_outage.sh                              # 20000 users at 500/s, outage at 10 s for 10 s
#   bench/pg_outage.sh --users 20000 --rate 500 --outage-at 10 --outage-s 10 --workers 2 \
#       --stop-with proxy|pg_ctlcluster
#
# SIPp registers every user once (bench/sipp/reg_auth_or_503.xml: a 503 to the
# authenticated REGISTER is an expected answer), each user new to fastreg, so
# every registration needs the database. --stop-with proxy (the default) puts a
# TCP forwarder (tests/tcpproxy.py) between fastreg and PostgreSQL and stops it:
# every connection is cut and new ones are refused, as when the database goes
# away, without stopping a PostgreSQL server that others use; pg_ctlcluster
# stops and starts the real cluster (root, and nobody else using it).
#
# Prints, second by second, what fastreg answered (from `fastreg stats`):
# registrations applied and 503s; then whether the workers are the same
# processes as before (recovery without a restart), the bindings in LMDB
# against the registrations applied and SIPp's 200s (no binding lost), and
# the registration mirror catching up in the database.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORKERS=2
USERS=20000
RATE=500
OUTAGE_AT=10
OUTAGE_S=10
PORT=5084
SIPP_PORT=5094
PROXY_PORT=6433
DSN="host=127.0.0.1 port=5432 dbname=test user=postgres"
STOP_WITH=proxy
KEEP=0
. "$HERE/lib.sh"  # ROOT, PYTHON, stop_server, sipp_counts

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --outage-at) OUTAGE_AT=$2; shift 2 ;;
    --outage-s) OUTAGE_S=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --dsn) DSN=$2; shift 2 ;;
    --stop-with) STOP_WITH=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "pg_outage.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
say() { printf '%s\n' "$*" >&2; }
command -v sipp >/dev/null 2>&1 || { say "pg_outage.sh: sipp missing (apt-get install sip-tester)"; exit 2; }
CLUSTER=""
if [ "$STOP_WITH" = pg_ctlcluster ]; then
  CLUSTER="$(ls /etc/postgresql | head -n1) main"
elif [ "$STOP_WITH" != proxy ]; then
  say "pg_outage.sh: --stop-with proxy or pg_ctlcluster"; exit 2
fi

W=$(mktemp -d /tmp/fastreg-pg-outage.XXXXXX)
SERVER_PID=""; SIPP_PID=""; PROXY_PID=""; SCHEMA=""; OUTAGE_PID=""
cleanup() {
  if [ -n "$SIPP_PID" ]; then kill -TERM "$SIPP_PID" 2>/dev/null; wait "$SIPP_PID" 2>/dev/null; fi
  if [ -n "$OUTAGE_PID" ]; then kill -TERM "$OUTAGE_PID" 2>/dev/null; wait "$OUTAGE_PID" 2>/dev/null; fi
  if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  [ -n "$CLUSTER" ] && pg_ctlcluster --skip-systemctl-redirect $CLUSTER start 2>/dev/null
  if [ -n "$PROXY_PID" ]; then kill -TERM "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; fi
  [ -n "$SCHEMA" ] && "$PYTHON" -m bench.pg_setup drop --dsn "$DSN" --schema "$SCHEMA"
  if [ "$KEEP" = 1 ]; then say "pg_outage.sh: results and logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
COUNT=$((RATE * (OUTAGE_AT + OUTAGE_S + 15)))
[ "$COUNT" -le "$USERS" ] || COUNT=$USERS
"$PYTHON" bench/gen_users.py "$USERS" --sql "$W/users.sql" --csv "$W/users.csv"
SCHEMA=$("$PYTHON" -m bench.pg_setup create --dsn "$DSN" --users-sql "$W/users.sql") || exit 2
DB_PORT=""
if [ "$STOP_WITH" = proxy ]; then
  "$PYTHON" tests/tcpproxy.py --listen "127.0.0.1:$PROXY_PORT" --target 127.0.0.1:5432 &
  PROXY_PID=$!
  DB_PORT="--db-port $PROXY_PORT"
fi
"$PYTHON" -m bench.pg_setup toml --dsn "$DSN" --schema "$SCHEMA" --port "$PORT" --workers "$WORKERS" \
  --state-dir "$W/state" $DB_PORT --extra 'retry_after_s = 5\nconnect_timeout_s = 1.0' >"$W/fastreg.toml"
"$PYTHON" -m fastreg serve -c "$W/fastreg.toml" >"$W/fastreg.log" 2>&1 &
SERVER_PID=$!
"$PYTHON" -m bench.sipping "127.0.0.1:$PORT" --wait 20 >/dev/null || { say "fastreg did not start"; tail "$W/fastreg.log" >&2; exit 1; }
stats() { "$PYTHON" -m fastreg stats --json -c "$W/fastreg.toml"; }
workers_of() { "$PYTHON" -c "import json,sys; print(' '.join(sorted(f\"{w['pid']}@{w['started_at']:.3f}\" for w in json.load(sys.stdin)['workers'])))"; }
sleep 1
BEFORE=$(stats | workers_of)

say "== $COUNT registrations at $RATE/s (users new to fastreg); database stopped ($STOP_WITH) at ${OUTAGE_AT}s for ${OUTAGE_S}s"
# (in $W: -trace_counts writes its file into the current directory)
(cd "$W" && exec timeout $((COUNT / RATE + 90)) sipp -sf "$HERE/sipp/reg_auth_or_503.xml" -inf "$W/users.csv" -t u1 \
  -i 127.0.0.1 -p "$SIPP_PORT" "127.0.0.1:$PORT" -r "$RATE" -m "$COUNT" -l 1000 \
  -timeout $((COUNT / RATE + 60))s -buff_size 4194304 -nostdin -trace_stat -stf "$W/sipp.csv" -fd 1 \
  -trace_counts -trace_err -error_file "$W/sipp-errors.log" >/dev/null 2>&1) &
SIPP_PID=$!
START=$(date +%s.%N)
# The outage, on its own clock: stopped at OUTAGE_AT s, started OUTAGE_S s later.
echo up >"$W/db_state"
(
  sleep "$OUTAGE_AT"
  if [ -n "$CLUSTER" ]; then pg_ctlcluster --skip-systemctl-redirect $CLUSTER stop -m fast; else kill -USR1 "$PROXY_PID"; fi
  echo "down $(date +%s.%N)" >"$W/db_state"
  sleep "$OUTAGE_S"
  if [ -n "$CLUSTER" ]; then pg_ctlcluster --skip-systemctl-redirect $CLUSTER start; else kill -USR2 "$PROXY_PID"; fi
  echo "up $(date +%s.%N)" >"$W/db_state"
) &
OUTAGE_PID=$!
printf '%7s %6s %12s %8s\n' t_s db applied/s 503/s >&2
prev_applied=0; prev_5xx=0; prev_t=0
while kill -0 "$SIPP_PID" 2>/dev/null; do
  sleep 1
  read -r applied fivexx < <(stats | "$PYTHON" -c "import json,sys; t=json.load(sys.stdin)['total']; print(t.get('registrations_applied',0), t.get('responses_5xx',0))")
  t=$("$PYTHON" -c "import time; print(f'{time.time() - $START:.1f}')")
  read -r db _ <"$W/db_state"
  span=$("$PYTHON" -c "print(max(0.001, $t - $prev_t))")
  "$PYTHON" -c "print(f'{$t:7.1f} {\"$db\":>6} {($applied - $prev_applied) / $span:12.0f} {($fivexx - $prev_5xx) / $span:8.0f}')" >&2
  prev_applied=$applied; prev_5xx=$fivexx; prev_t=$t
done
wait "$SIPP_PID"; SIPP_PID=""
wait "$OUTAGE_PID"; OUTAGE_PID=""
AFTER=$(stats | workers_of)
sleep 1
TOTAL=$(stats)
read -r applied fivexx twoxx < <(echo "$TOTAL" | "$PYTHON" -c "import json,sys; t=json.load(sys.stdin)['total']; print(t.get('registrations_applied',0), t.get('responses_5xx',0), t.get('responses_2xx',0))")
bound=$("$PYTHON" -m fastreg contacts --json -c "$W/fastreg.toml" | "$PYTHON" -c "import json,sys; print(len({r['aor'] for r in json.load(sys.stdin)}))")
counts=$(ls "$W"/reg_auth_or_503_*_counts.csv 2>/dev/null | head -n1)
read -r sipp200 sipp503 < <("$PYTHON" - "$counts" <<'PY'
import sys
try:
    rows = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
    row = dict(zip(rows[0], rows[-1]))
    got = lambda code: sum(int(v) for k, v in row.items() if k.endswith(f"_{code}_Recv") and v.isdigit())
    print(got(200), got(503))
except (OSError, IndexError, ValueError):
    print("-", "-")
PY
)
mirror=0
for _ in $(seq 60); do
  mirror=$("$PYTHON" -m bench.pg_setup count --dsn "$DSN" --schema "$SCHEMA")
  [ "$mirror" = "$bound" ] && break
  sleep 0.5
done
read -r sok sfail < <("$PYTHON" -c "
rows=[l.split(';') for l in open('$W/sipp.csv') if l.strip()]; r=dict(zip(rows[0], rows[-1])); print(r['SuccessfulCall(C)'], r['FailedCall(C)'])")
say ""
echo "calls sent by SIPp:                $COUNT ($sok ended as expected, $sfail failed)"
echo "SIPp received 200 / 503:           $sipp200 / $sipp503"
echo "fastreg registrations applied:     $applied   (503 answered: $fivexx)"
echo "AORs bound in LMDB after the run:  $bound"
echo "registration mirror rows (caught up): $mirror"
echo "workers before: $BEFORE"
echo "workers after:  $AFTER"
[ "$BEFORE" = "$AFTER" ] && echo "same worker processes: recovered without a restart" || echo "WORKERS CHANGED"
[ "$bound" = "$applied" ] && [ "$sipp200" = "$applied" ] && echo "no binding lost: every 200 is a binding in LMDB" || echo "MISMATCH"
grep -E "database (unreachable|reachable again)" "$W/fastreg.log" | sed 's/^/log: /'
