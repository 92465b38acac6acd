#!/usr/bin/env bash
# bench/proxy_calls.sh: calls through fastreg, SIPp on both ends.
#
#   bench/proxy_calls.sh                       # 1000 calls at 50 calls/s, 2 s talk time, 2 workers
#   bench/proxy_calls.sh --calls 200 --rate 20 --talk-ms 1000 --workers 1 --keep
#
# 1. Proxy mode: fastreg serve with [routing] mode = "proxy" (Record-Route on,
#    line tracker and CDR file on). A SIPp UAS registers through fastreg
#    (reg_auth.xml, digest, from the port it then answers on), then answers
#    calls (uas.xml); a SIPp UAC calls it through fastreg (uac_call.xml:
#    INVITE, 180, 200, ACK, talk time, BYE, 200). While the calls run,
#    `fastreg calls --json` is polled every 0.5 s: the live count. After
#    the run: SIPp's successful/failed calls and retransmissions, the CDRs
#    written (one per call, each with status 200 and reason BYE), and the
#    calls left (0).
# 2. Redirect mode, the same registered UAS (its binding survives the
#    restart): it has `alternatives=7000` in regfile.conf. One INVITE to 7000
#    shows the 302 and its Contact; then SIPp's uac_follow_302.xml calls 7000,
#    follows the 302 back through fastreg (as Linphone does) and completes the
#    call: fastreg forwards the request for a registered contact instead of
#    redirecting it to itself.
#
# Exit status 0 when every check passed. Talks only to 127.0.0.1, stops every
# process it started (trap EXIT), keeps its work directory with --keep.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CALLS=1000
RATE=50
TALK_MS=2000
WORKERS=2
PORT=5180
UAS_PORT=5191
UAC_PORT=5192
REDIRECT_CALLS=100
KEEP=0
. "$HERE/lib.sh"  # ROOT, PYTHON, stop_server, sipp_counts

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --calls N --rate R --talk-ms MS --workers N --port P --uas-port P --uac-port P --redirect-calls N --keep"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --talk-ms) TALK_MS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --uas-port) UAS_PORT=$2; shift 2 ;;
    --uac-port) UAC_PORT=$2; shift 2 ;;
    --redirect-calls) REDIRECT_CALLS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "proxy_calls.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

say() { printf '%s\n' "$*"; }
command -v sipp >/dev/null 2>&1 || { say "proxy_calls.sh: sipp is not installed (apt-get install sip-tester)"; exit 2; }
for port in $PORT $UAS_PORT $UAC_PORT; do
  if ss -Hlun "sport = :$port" 2>/dev/null | grep -q .; then
    say "proxy_calls.sh: UDP port $port is in use; choose others (--port/--uas-port/--uac-port)"; exit 2
  fi
done

W=$(mktemp -d /tmp/fastreg-proxy-calls.XXXXXX)
SERVER_PID=""
UAS_PID=""
POLL_PID=""
cleanup() {
  [ -n "$POLL_PID" ] && kill "$POLL_PID" 2>/dev/null
  [ -n "$UAS_PID" ] && kill -TERM "$UAS_PID" 2>/dev/null
  stop_server
  if [ "$KEEP" = 1 ]; then say "proxy_calls.sh: results and logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$W"
printf '; bench users\n[uas]\npassword=pw-uas\nalternatives=7000\n\n[caller]\npassword=pw-caller\n' > users.conf
printf 'SEQUENTIAL\nuas;pw-uas;fastreg.local\n' > uas.csv
printf 'SEQUENTIAL\nuas;-;fastreg.local\n' > callee.csv
printf 'SEQUENTIAL\n7000;-;fastreg.local\n' > alternative.csv
write_config() {  # write_config MODE
  cat > fastreg.toml <<EOF
[server]
listen = ["udp:127.0.0.1:$PORT"]
workers = $WORKERS
state_dir = "$W/var"
[users]
file = "$W/users.conf"
[routing]
mode = "$1"
EOF
}
start_server() {  # start_server MODE
  write_config "$1"
  "$PYTHON" -m fastreg serve -c fastreg.toml >>"server-$1.log" 2>&1 &
  SERVER_PID=$!
  (cd "$ROOT" && "$PYTHON" -m bench.sipping 127.0.0.1:"$PORT" --wait 15 >/dev/null 2>&1) || {
    say "proxy_calls.sh: fastreg did not start:"; tail -20 "server-$1.log"; exit 1; }
}
FAIL=0
check() {  # check CONDITION-TEXT RESULT(0/1)
  if [ "$2" = 0 ]; then say "  ok:   $1"; else say "  FAIL: $1"; FAIL=1; fi
}

# ------------------------------------------------------------------ 1. proxy mode
say "== proxy mode: $CALLS calls at $RATE calls/s, talk time $TALK_MS ms, $WORKERS worker(s)"
start_server proxy
sipp -sf "$HERE/sipp/reg_auth.xml" -inf uas.csv -t u1 -p "$UAS_PORT" -m 1 -nostdin 127.0.0.1:"$PORT" \
  >reg.out 2>&1
check "UAS registered through fastreg (reg_auth.xml from port $UAS_PORT)" $?
sipp -sf "$HERE/sipp/uas.xml" -s uas -t u1 -p "$UAS_PORT" -bg -nostdin 127.0.0.1:"$PORT" >uas.out 2>&1
UAS_PID=$(sed -n 's/.*PID=\[\([0-9]*\)\].*/\1/p' uas.out)
[ -n "$UAS_PID" ] || { say "proxy_calls.sh: the SIPp UAS did not start:"; cat uas.out; exit 1; }

# the live count, polled while the calls run
(
  start=$(date +%s.%N)
  while true; do
    now=$(date +%s.%N)
    "$PYTHON" -m fastreg calls --json -c fastreg.toml 2>/dev/null | "$PYTHON" -c '
import json, sys
d = json.load(sys.stdin)
print("%.1f %d %d" % (float(sys.argv[1]), d["total"], d["users"].get("uas", 0)))' "$(echo "$now - $start" | bc)" \
      >>live.txt
    sleep 0.5
  done
) &
POLL_PID=$!
sipp -sf "$HERE/sipp/uac_call.xml" -inf callee.csv -t u1 -p "$UAC_PORT" -m "$CALLS" -r "$RATE" -d "$TALK_MS" \
  -l $((RATE * (TALK_MS / 1000 + 2) * 2)) -recv_timeout $((TALK_MS + 10000)) \
  -nostdin -trace_stat -stf uac_stat.csv -fd 1 -trace_err -error_file uac_errors.log \
  127.0.0.1:"$PORT" >uac.out 2>&1
UAC_RC=$?
sleep 1
kill "$POLL_PID" 2>/dev/null; wait "$POLL_PID" 2>/dev/null; POLL_PID=""
read -r OK FAILED RETRANS < <(sipp_counts uac_stat.csv)
say "  SIPp UAC: exit $UAC_RC, successful calls $OK, failed $FAILED, retransmissions $RETRANS"
check "every call completed ($OK of $CALLS, none failed)" $([ "$UAC_RC" = 0 ] && [ "$OK" = "$CALLS" ] && [ "$FAILED" = 0 ]; echo $?)
PEAK=$(sort -k2 -n live.txt | tail -1 | cut -d' ' -f2)
say "  fastreg calls during the run (seconds since start, ongoing calls, calls of user uas), every 2nd sample:"
awk 'NR % 2 == 1 { printf "    t=%5.1fs  ongoing=%4d  uas=%4d\n", $1, $2, $3 }' live.txt
check "fastreg calls showed live calls (peak $PEAK; expected about rate x talk time = $((RATE * TALK_MS / 1000)))" \
  $([ "${PEAK:-0}" -gt 0 ]; echo $?)
for _ in $(seq 50); do
  [ "$(wc -l < var/cdr.jsonl 2>/dev/null || echo 0)" -ge "$CALLS" ] && break; sleep 0.2
done
CDRS=$(wc -l < var/cdr.jsonl 2>/dev/null || echo 0)
GOOD=$("$PYTHON" -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
good = [r for r in rows if r["status"] == 200 and r["reason"] == "BYE" and r["duration_s"] is not None]
print(len(good), len({r["call_id"] for r in rows}))' var/cdr.jsonl)
say "  CDRs written: $CDRS (status 200, reason BYE, with a duration; distinct Call-IDs): $GOOD"
say "  first CDR: $(head -1 var/cdr.jsonl)"
check "one CDR per call ($CDRS of $CALLS)" $([ "$CDRS" = "$CALLS" ] && [ "$GOOD" = "$CALLS $CALLS" ]; echo $?)
LEFT=$("$PYTHON" -m fastreg calls -c fastreg.toml | head -1)
say "  fastreg calls after the run: $LEFT"
check "no call left ongoing" $([ "$LEFT" = "0 ongoing call(s)" ]; echo $?)
"$PYTHON" -m fastreg stats --json -c fastreg.toml | "$PYTHON" -c '
import json, sys
t = json.load(sys.stdin)["total"]
keys = ["requests_INVITE", "requests_ACK", "requests_BYE", "forwarded_requests", "forwarded_responses",
        "calls_started", "calls_answered", "calls_ended", "calls_cdr-failures", "internal_errors"]
print("  fastreg stats: " + ", ".join("%s=%s" % (k, t.get(k, 0)) for k in keys))'
stop_server

# ------------------------------------------------------------------ 2. redirect mode, alternatives
say "== redirect mode: the same UAS reached through its alternative number 7000"
start_server redirect
"$PYTHON" - "$PORT" "$UAS_PORT" <<'EOF' > redirect.out
import socket, sys
port, uas_port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.settimeout(3)
lp = s.getsockname()[1]
s.sendto((f"INVITE sip:7000@fastreg.local SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bKalt1;rport\r\n"
          "Max-Forwards: 70\r\nFrom: <sip:caller@fastreg.local>;tag=a1\r\nTo: <sip:7000@fastreg.local>\r\n"
          f"Call-ID: alt-probe\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
reply = s.recv(65536).decode()
print(reply.splitlines()[0])
print("\n".join(l for l in reply.splitlines() if l.lower().startswith("contact")))
EOF
sed 's/^/  /' redirect.out
grep -q "302 Moved Temporarily" redirect.out && grep -q "sip:uas@127.0.0.1:$UAS_PORT" redirect.out
check "INVITE sip:7000 answered 302 with the UAS's contact" $?
rm -f ./*_errors.log
sipp -sf "$HERE/sipp/uac_follow_302.xml" -inf alternative.csv -t u1 -p "$UAC_PORT" -m "$REDIRECT_CALLS" -r 20 \
  -d 200 -recv_timeout 10000 -nostdin -trace_stat -stf follow_stat.csv -fd 1 -trace_err \
  -error_file follow_errors.log 127.0.0.1:"$PORT" >follow.out 2>&1
FOLLOW_RC=$?
read -r OK FAILED RETRANS < <(sipp_counts follow_stat.csv)
say "  SIPp uac_follow_302 (INVITE 7000, 302, ACK, INVITE to the contact through fastreg, 200, ACK, BYE, 200):"
say "  exit $FOLLOW_RC, successful calls $OK, failed $FAILED, retransmissions $RETRANS"
check "every call via the alternative completed ($OK of $REDIRECT_CALLS)" \
  $([ "$FOLLOW_RC" = 0 ] && [ "$OK" = "$REDIRECT_CALLS" ]; echo $?)
stop_server

if [ "$FAIL" = 0 ]; then say "== all checks passed"; else say "== SOME CHECKS FAILED (logs: --keep)"; fi
exit $FAIL
