#!/usr/bin/env bash
# bench/invite_cost.sh: what an INVITE costs fastreg, in redirect and in proxy mode.
#
#   bench/invite_cost.sh                              # 1 worker, 20000 calls at 1000 calls/s per mode
#   bench/invite_cost.sh --calls 5000 --rate 500 --modes "redirect proxy-486"
#
# For each mode a fresh fastreg (one worker unless --workers) on 127.0.0.1, a
# SIPp UAS registered through it (reg_auth.xml), then SIPp calls at a fixed
# rate; the server's CPU (utime + stime of every fastreg process, from /proc,
# bench/procstat.py) is read before and after the calls:
#
#   redirect   invite_redirect.xml: INVITE, 302, ACK (the ACK is absorbed)
#   proxy-486  uac_busy.xml + uas_busy.xml through the proxy: INVITE, 486, ACK,
#              each forwarded, with the call started and ended in the line
#              tracker and its CDR written: the counterpart of "redirect"
#   proxy-call uac_call.xml + uas.xml with no talk time: INVITE, 180, 200, ACK,
#              BYE, 200 (six messages forwarded, three tracker writes, one CDR)
#
# It prints, per mode: calls completed and failed, server CPU seconds, INVITE
# transactions per server CPU-second and the server CPU per call. SIPp runs
# on the same 2-core machine, so keep the rate below the point where SIPp
# itself saturates (retransmissions are printed: they should be 0).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CALLS=20000
RATE=1000
WORKERS=1
MODES="redirect proxy-486 proxy-call"
PORT=5280
UAS_PORT=5291
UAC_PORT=5292
KEEP=0
. "$HERE/lib.sh"  # ROOT, PYTHON, stop_server, sipp_counts

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --calls N --rate R --workers N --modes \"redirect proxy-486 proxy-call\" --port P --uas-port P --uac-port P --keep"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --uas-port) UAS_PORT=$2; shift 2 ;;
    --uac-port) UAC_PORT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "invite_cost.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

say() { printf '%s\n' "$*"; }
command -v sipp >/dev/null 2>&1 || { say "invite_cost.sh: sipp is not installed (apt-get install sip-tester)"; exit 2; }
"$PYTHON" - <<'EOF' || { say "invite_cost.sh: fastreg with its compiled parser is not importable by $PYTHON"; exit 2; }
from fastreg import parser
raise SystemExit(0 if parser.IMPLEMENTATION == "cython" else 1)
EOF
for port in $PORT $UAS_PORT $UAC_PORT; do
  if ss -Hlun "sport = :$port" 2>/dev/null | grep -q .; then
    say "invite_cost.sh: UDP port $port is in use; choose others (--port/--uas-port/--uac-port)"; exit 2
  fi
done

W=$(mktemp -d /tmp/fastreg-invite-cost.XXXXXX)
SERVER_PID=""
UAS_PID=""
stop_all() {
  if [ -n "$UAS_PID" ]; then kill -TERM "$UAS_PID" 2>/dev/null; UAS_PID=""; fi
  stop_server
}
cleanup() {
  stop_all
  if [ "$KEEP" = 1 ]; then say "invite_cost.sh: results and logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$W"
printf '; bench users\n[uas]\npassword=pw-uas\n' > users.conf
printf 'SEQUENTIAL\nuas;pw-uas;fastreg.local\n' > uas.csv
printf 'SEQUENTIAL\nuas;-;fastreg.local\n' > callee.csv

RESULTS=()
for MODE in $MODES; do
  case "$MODE" in
    redirect) ROUTING=redirect; UAC=invite_redirect.xml; UAS="" ;;
    proxy-486) ROUTING=proxy; UAC=uac_busy.xml; UAS=uas_busy.xml ;;
    proxy-call) ROUTING=proxy; UAC=uac_call.xml; UAS=uas.xml ;;
    *) say "invite_cost.sh: unknown mode $MODE"; exit 2 ;;
  esac
  rm -rf "$W/var-$MODE"
  cat > "fastreg-$MODE.toml" <<EOF
[server]
listen = ["udp:127.0.0.1:$PORT"]
workers = $WORKERS
state_dir = "$W/var-$MODE"
log_level = "WARNING"
[users]
file = "$W/users.conf"
[routing]
mode = "$ROUTING"
EOF
  "$PYTHON" -m fastreg serve -c "fastreg-$MODE.toml" >"server-$MODE.log" 2>&1 &
  SERVER_PID=$!
  (cd "$ROOT" && "$PYTHON" -m bench.sipping 127.0.0.1:"$PORT" --wait 15 >/dev/null 2>&1) || {
    say "invite_cost.sh: fastreg did not start:"; tail -20 "server-$MODE.log"; exit 1; }
  sipp -sf "$HERE/sipp/reg_auth.xml" -inf uas.csv -t u1 -p "$UAS_PORT" -m 1 -nostdin 127.0.0.1:"$PORT" \
    >"reg-$MODE.out" 2>&1 || { say "invite_cost.sh: the UAS did not register"; exit 1; }
  if [ -n "$UAS" ]; then
    sipp -sf "$HERE/sipp/$UAS" -s uas -t u1 -p "$UAS_PORT" -bg -nostdin 127.0.0.1:"$PORT" >"uas-$MODE.out" 2>&1
    UAS_PID=$(sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p' "uas-$MODE.out")
    [ -n "$UAS_PID" ] || { say "invite_cost.sh: the SIPp UAS did not start"; cat "uas-$MODE.out"; exit 1; }
  fi
  (cd "$ROOT" && "$PYTHON" -m bench.procstat --save "$W/cpu-$MODE.json" "$SERVER_PID")
  sipp -sf "$HERE/sipp/$UAC" -inf callee.csv -t u1 -p "$UAC_PORT" -m "$CALLS" -r "$RATE" -d 0 -l $((RATE * 4)) \
    -nostdin -trace_stat -stf "stat-$MODE.csv" -fd 1 127.0.0.1:"$PORT" >"uac-$MODE.out" 2>&1
  SIPP_RC=$?
  CPU=$(cd "$ROOT" && "$PYTHON" -m bench.procstat --since "$W/cpu-$MODE.json" "$SERVER_PID" |
        "$PYTHON" -c 'import json, sys; print("%.3f" % json.load(sys.stdin)["cpu_s"])')
  read -r OK FAILED RETRANS < <(sipp_counts "stat-$MODE.csv")
  LINE=$("$PYTHON" -c '
import sys
mode, ok, failed, retrans, cpu, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
per_s = ok / cpu if cpu else float("nan")
us = cpu / ok * 1e6 if ok else float("nan")
print(f"{mode:<11} {ok:>8} {failed:>7} {retrans:>8} {cpu:>9.2f} {per_s:>14,.0f} {us:>12.1f}   (sipp exit {rc})")
' "$MODE" "$OK" "$FAILED" "$RETRANS" "$CPU" "$SIPP_RC")
  say "$LINE"
  RESULTS+=("$LINE")
  stop_all
done

say ""
say "fastreg $WORKERS worker(s), $CALLS calls per mode at $RATE calls/s (SIPp, one UDP socket each side)"
say "mode           calls  failed  retrans  server_cpu_s  INVITEs/cpu_s  cpu_us/call"
for line in "${RESULTS[@]}"; do say "$line"; done
