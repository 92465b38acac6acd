#!/usr/bin/env bash
# bench/compare.sh: the same SIPp load against Kamailio 5.6 and fastreg, one
# after the other in one run, with the same number of worker processes.
#
#   bench/compare.sh                         # 2 workers, 10000 users, 10 s steps
#   bench/compare.sh --workers 2 --step-s 5 --rates "1000 2000 4000 6000 8000 10000 12000 14000"
#
# For each server: start it on 127.0.0.1 (Kamailio with bench/kamailio/kamailio.cfg
# and CHILDREN=workers; fastreg with --workers), register every user once
# (then measure RSS), then sweep SIPp's reg_auth.xml (REGISTER, 401,
# REGISTER with digest, 200; one UDP socket: -t u1) over the rates, each step
# STEP_S seconds, until a step has failures or retransmissions or falls short
# of its target rate by more than 10 %. The best clean step gives
# "registrations/s at zero failures"; its server CPU (utime + stime of every
# server process, from /proc) gives registrations per server CPU-second.
# Then bench/regload at its maximum against the same server (closed loop,
# 100 in flight per process, 10 s, with --regload "1 2" processes). Then a
# table with fastreg's ratio to Kamailio on each line.
#
# Installs SIPp (sip-tester) and Kamailio with apt-get if missing (and keeps
# Debian's kamailio service from running), talks only to 127.0.0.1, and stops
# every process it started (trap EXIT). Results and logs stay in the work
# directory with --keep.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORKERS=2
USERS=10000
RATES="500 1000 1500 2000 3000 4000 6000 8000 10000 12000 14000 16000"
STEP_S=10
FILL_RATE=2000
KPORT=5070
FPORT=5080
SIPP_PORT=5090
SERVERS="kamailio fastreg"
REGLOAD_PROCS="1 2"
FASTREG_EXTRA=""
KEEP=0
. "$HERE/lib.sh"  # ROOT, PYTHON, stop_server, sipp_counts

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; echo "options: --workers N --users N --rates \"R1 R2 ...\" --step-s S --fill-rate R --servers \"kamailio fastreg\" --regload \"1 2\" (\"\": none) --fastreg-extra \"TOML lines\" --kamailio-port P --fastreg-port P --keep"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --rates) RATES=$2; shift 2 ;;
    --step-s) STEP_S=$2; shift 2 ;;
    --fill-rate) FILL_RATE=$2; shift 2 ;;
    --servers) SERVERS=$2; shift 2 ;;
    --regload) REGLOAD_PROCS=$2; shift 2 ;;
    --fastreg-extra) FASTREG_EXTRA=$2; shift 2 ;;
    --kamailio-port) KPORT=$2; shift 2 ;;
    --fastreg-port) FPORT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

say() { printf '%s\n' "$*" >&2; }

# ---------------------------------------------------------------- tools
install_pkg() {  # install_pkg COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  say "compare.sh: installing $2 (apt-get)"
  [ "$(id -u)" = 0 ] || { say "compare.sh: $1 missing and not root: apt-get install $2"; exit 2; }
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null || {
    say "compare.sh: apt-get install $2 failed"; exit 2; }
}
install_pkg sipp sip-tester
if [[ " $SERVERS " == *" kamailio "* ]]; then
  fresh_kamailio=0
  command -v kamailio >/dev/null 2>&1 || fresh_kamailio=1
  install_pkg kamailio kamailio
  if [ "$fresh_kamailio" = 1 ]; then
    # Debian's package enables a kamailio service on 5060: keep it off.
    (systemctl disable --now kamailio || service kamailio stop || true) >/dev/null 2>&1
  fi
fi
"$PYTHON" - <<'EOF' || { say "compare.sh: fastreg with its compiled parser is not importable by $PYTHON (pip install -e .)"; exit 2; }
from fastreg import parser
raise SystemExit(0 if parser.IMPLEMENTATION == "cython" else 1)
EOF
for port in $KPORT $FPORT $SIPP_PORT; do
  if ss -Hlun "sport = :$port" 2>/dev/null | grep -q .; then
    say "compare.sh: UDP port $port is in use on this machine; choose others (--kamailio-port/--fastreg-port)"; exit 2
  fi
done

# ---------------------------------------------------------------- work dir, cleanup
W=$(mktemp -d /tmp/fastreg-compare.XXXXXX)
SERVER_PID=""
cleanup() {
  if [ -n "$SIPP_PID" ]; then kill -TERM "$SIPP_PID" 2>/dev/null; wait "$SIPP_PID" 2>/dev/null; fi
  stop_server
  if [ "$KEEP" = 1 ]; then say "compare.sh: results and logs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
"$PYTHON" bench/gen_users.py "$USERS" --regfile "$W/users.conf" --csv "$W/users.csv" >/dev/null
"$PYTHON" -m bench.kamailio.users_db "$W/users.conf" "$W/kdb" >/dev/null

start_server() {  # start_server NAME -> SERVER_PID, PORT
  case "$1" in
    kamailio)
      PORT=$KPORT
      mkdir -p "$W/krun"
      kamailio -f "$HERE/kamailio/kamailio.cfg" -DD -E -m 256 -M 16 -Y "$W/krun" \
        -A "LISTEN=udp:127.0.0.1:$PORT" -A "CHILDREN=$WORKERS" -A "USERS_DB=\"text://$W/kdb\"" \
        >"$W/kamailio.log" 2>&1 &
      SERVER_PID=$! ;;
    fastreg)
      PORT=$FPORT
      cat >"$W/fastreg.toml" <<EOF
[server]
listen = ["udp:127.0.0.1:$PORT"]
workers = $WORKERS
state_dir = "$W/fastreg-state"
log_level = "WARNING"

[users]
file = "$W/users.conf"
$FASTREG_EXTRA
EOF
      "$PYTHON" -m fastreg serve -c "$W/fastreg.toml" >"$W/fastreg.log" 2>&1 &
      SERVER_PID=$! ;;
    *) say "compare.sh: unknown server $1"; exit 2 ;;
  esac
  if ! "$PYTHON" -m bench.sipping "127.0.0.1:$PORT" --wait 20 >/dev/null; then
    say "compare.sh: $1 did not answer on 127.0.0.1:$PORT; its log:"; tail -20 "$W/$1.log" >&2; exit 1
  fi
}

# run_sipp TAG RATE COUNT: one SIPp run of reg_auth.xml; STAT names its statistics file.
SIPP_PID=""
run_sipp() {
  local tag=$1 rate=$2 count=$3
  STAT="$W/sipp-$tag-$rate.csv"
  rm -f "$STAT"
  timeout $((count / rate + 60)) sipp -sf "$HERE/sipp/reg_auth.xml" -inf "$W/users.csv" -t u1 \
    -i 127.0.0.1 -p "$SIPP_PORT" "127.0.0.1:$PORT" -r "$rate" -m "$count" -l $((rate > 1000 ? rate : 1000)) \
    -timeout $((count / rate + 30))s -buff_size 4194304 -nostdin -trace_stat -stf "$STAT" -fd 1 \
    -trace_err -error_file "$W/sipp-$tag-$rate-errors.log" >/dev/null 2>&1 &
  SIPP_PID=$!
  wait "$SIPP_PID"
  SIPP_PID=""
}
# UDP datagrams the kernel dropped for a full receive buffer (RcvbufErrors, whole machine).
udp_drops() { awk '/^Udp: [0-9]/ {print $6}' /proc/net/snmp; }
# sipp_result FILE -> "ok failed retransmissions elapsed_s" (the last line of SIPp's statistics)
sipp_result() {
  "$PYTHON" - "$1" <<'EOF'
import sys
try:
    lines = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
    row = dict(zip(lines[0], lines[-1]))
    epoch = lambda v: float(v.split("\t")[-1])
    elapsed = epoch(row["CurrentTime"]) - epoch(row["StartTime"])
    print(row["SuccessfulCall(C)"], row["FailedCall(C)"], row["Retransmissions(C)"], f"{elapsed:.3f}")
except (OSError, IndexError, KeyError, ValueError) as error:
    print(f"compare.sh: no SIPp statistics in {sys.argv[1]}: {error}", file=sys.stderr)
    print(0, 0, 0, 0)
EOF
}

declare -A RES
for server in $SERVERS; do
  say ""
  say "== $server: $WORKERS worker process(es), $USERS users, SIPp reg_auth.xml -t u1, steps of ${STEP_S} s"
  start_server "$server"
  # Register every user once, then the footprint.
  run_sipp "$server-fill" "$FILL_RATE" "$USERS"
  read -r ok failed retrans elapsed < <(sipp_result "$STAT")
  read -r RSS PSS < <("$PYTHON" -c "
from bench import procstat; s = procstat.snapshot([$SERVER_PID]); print(s['rss_kib'], s['pss_kib'])")
  say "   fill: $ok of $USERS users registered ($failed failed, $retrans retransmissions); RSS $((RSS / 1024)) MiB, PSS $((PSS / 1024)) MiB"
  RES[$server,fill_ok]=$ok; RES[$server,rss]=$RSS; RES[$server,pss]=$PSS
  best_rate=0; best_cpu=0; best_ok=0; best_target=0; best_retrans=0; sweep_retrans=0
  printf '   %8s %10s %8s %8s %8s %9s %9s %12s %10s\n' target achieved ok failed retrans cpu_s "cpu_%" regs/cpu_s udp_drops >&2
  for rate in $RATES; do
    count=$((rate * STEP_S))
    "$PYTHON" -m bench.procstat --save "$W/cpu-before.json" "$SERVER_PID"
    drops0=$(udp_drops)
    run_sipp "$server" "$rate" "$count"
    drops=$(( $(udp_drops) - drops0 ))
    read -r ok failed retrans elapsed < <(sipp_result "$STAT")
    cpu=$("$PYTHON" -c "import json,subprocess,sys; print(json.loads(subprocess.check_output([sys.executable,'-m','bench.procstat','--since','$W/cpu-before.json','$SERVER_PID']))['cpu_s'])")
    read -r achieved per_cpu cpu_pct < <("$PYTHON" -c "
ok, el, cpu = $ok, $elapsed, $cpu
print(f'{ok / el:.0f}' if el > 0 else 0, f'{ok / cpu:.0f}' if cpu > 0 else 0, f'{100 * cpu / el:.0f}' if el > 0 else 0)")
    printf '   %8s %10s %8s %8s %8s %9.2f %9s %12s %10s\n' "$rate" "$achieved" "$ok" "$failed" "$retrans" "$cpu" "$cpu_pct" "$per_cpu" "$drops" >&2
    sweep_retrans=$((sweep_retrans + retrans))
    clean=0
    if [ "$failed" = 0 ] && [ "$retrans" = 0 ] && [ "$ok" = "$count" ]; then clean=1; fi
    if [ "$clean" = 1 ] && [ "$achieved" -gt "$best_rate" ]; then
      best_rate=$achieved; best_cpu=$cpu; best_ok=$ok; best_target=$rate; best_retrans=$retrans
    fi
    # Stop at the first step with failures or retransmissions, or that fell short of its target.
    if [ "$clean" = 0 ] || [ "$achieved" -lt $((rate * 9 / 10)) ]; then break; fi
    sleep 1
  done
  RES[$server,rate]=$best_rate; RES[$server,cpu]=$best_cpu; RES[$server,ok]=$best_ok
  RES[$server,target]=$best_target; RES[$server,retrans]=$best_retrans; RES[$server,sweep_retrans]=$sweep_retrans
  # bench/regload at its maximum: closed loop, 100 in flight per process, 10 s.
  for procs in $REGLOAD_PROCS; do
    sleep 1
    "$PYTHON" -m bench.regload --users "$W/users.csv" --procs "$procs" --concurrency 100 -d 10 --json \
      --server-pid "$SERVER_PID" "127.0.0.1:$PORT" >"$W/regload-$server-$procs.json" 2>"$W/regload-$server-$procs.log"
    read -r rl_rate rl_per_cpu rl_fail < <("$PYTHON" -c "
import json, sys
try:
    s = json.load(open('$W/regload-$server-$procs.json'))
    print(f\"{s['rate']:.0f}\", f\"{s.get('regs_per_server_cpu_s') or 0:.0f}\", sum(s['failures'].values()) + s['timeouts'])
except Exception as error:
    print(0, 0, -1); print(f'regload failed: {error}', file=sys.stderr)")
    say "   regload, $procs process(es), closed loop 100 in flight: $rl_rate reg/s, $rl_per_cpu per server CPU-s, $rl_fail failures+timeouts"
    RES[$server,rl_rate_$procs]=$rl_rate; RES[$server,rl_cpu_$procs]=$rl_per_cpu
  done
  stop_server
done

# ---------------------------------------------------------------- the table
say ""
"$PYTHON" - "$WORKERS" "$USERS" "$STEP_S" "$SERVERS" \
  "${RES[kamailio,rate]:-}" "${RES[kamailio,target]:-}" "${RES[kamailio,cpu]:-}" "${RES[kamailio,ok]:-}" "${RES[kamailio,retrans]:-}" "${RES[kamailio,sweep_retrans]:-}" "${RES[kamailio,rss]:-}" "${RES[kamailio,pss]:-}" "${RES[kamailio,fill_ok]:-}" \
  "${RES[fastreg,rate]:-}" "${RES[fastreg,target]:-}" "${RES[fastreg,cpu]:-}" "${RES[fastreg,ok]:-}" "${RES[fastreg,retrans]:-}" "${RES[fastreg,sweep_retrans]:-}" "${RES[fastreg,rss]:-}" "${RES[fastreg,pss]:-}" "${RES[fastreg,fill_ok]:-}" \
  $(for procs in $REGLOAD_PROCS; do printf '%s ' "regload:$procs:${RES[kamailio,rl_rate_$procs]:-}:${RES[kamailio,rl_cpu_$procs]:-}:${RES[fastreg,rl_rate_$procs]:-}:${RES[fastreg,rl_cpu_$procs]:-}"; done) <<'EOF'
import sys
workers, users, step, servers = sys.argv[1:5]
regload = [a.split(":") for a in sys.argv[23:]]
def row(values):
    keys = ("rate", "target", "cpu", "ok", "retrans", "sweep_retrans", "rss", "pss", "fill_ok")
    return {k: (float(v) if v else None) for k, v in zip(keys, values)}
k, f = row(sys.argv[5:14]), row(sys.argv[14:23])
def per_cpu(r):
    return r["ok"] / r["cpu"] if r["ok"] and r["cpu"] else None
def cpu_per_reg(r):
    return r["cpu"] / r["ok"] * 1e6 if r["ok"] and r["cpu"] else None
def mib(v):
    return v / 1024 if v is not None else None
lines = [
    ("worker processes", int(workers), int(workers), "{:.0f}"),
    ("registrations/s at zero failures", k["rate"], f["rate"], "{:,.0f}"),
    ("  (best clean step: target rate)", k["target"], f["target"], "{:,.0f}"),
    ("server CPU seconds (that step)", k["cpu"], f["cpu"], "{:.2f}"),
    ("registrations per server CPU-second", per_cpu(k), per_cpu(f), "{:,.0f}"),
    ("server CPU per registration (us)", cpu_per_reg(k), cpu_per_reg(f), "{:.1f}"),
    ("SIPp retransmissions (that step)", k["retrans"], f["retrans"], "{:.0f}"),
    ("SIPp retransmissions (whole sweep)", k["sweep_retrans"], f["sweep_retrans"], "{:.0f}"),
    (f"RSS after {int(float(users))} registrations (MiB, sum)", mib(k["rss"]), mib(f["rss"]), "{:.1f}"),
    ("  PSS of the same (MiB, shared pages split)", mib(k["pss"]), mib(f["pss"]), "{:.1f}"),
]
num = lambda v: float(v) if v else None
for _, procs, k_rate, k_cpu, f_rate, f_cpu in regload:
    lines.append((f"regload max, {procs} proc(s): registrations/s", num(k_rate), num(f_rate), "{:,.0f}"))
    lines.append((f"regload max, {procs} proc(s): per server CPU-s", num(k_cpu), num(f_cpu), "{:,.0f}"))
print(f"SIPp reg_auth.xml over one UDP socket (-t u1), steps of {step} s, {int(float(users))} users, 127.0.0.1")
print(f"{'':44} {'kamailio':>12} {'fastreg':>12} {'fastreg/kamailio':>17}")
for label, kv, fv, fmt in lines:
    ks = fmt.format(kv) if kv is not None else "-"
    fs = fmt.format(fv) if fv is not None else "-"
    ratio = f"{fv / kv:.2f}" if kv and fv is not None and kv != 0 else "-"
    print(f"{label:44} {ks:>12} {fs:>12} {ratio:>17}")
EOF
