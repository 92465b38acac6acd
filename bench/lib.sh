# bench/lib.sh: what the bench scripts share (sourced, not run).
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sets ROOT (the repository) and PYTHON (the venv's python unless PYTHON is
# set), and defines stop_server and sipp_counts.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
if [ -n "${PYTHON:-}" ]; then :; elif [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi

# stop_server: SIGTERM the process in $SERVER_PID (a server the script
# started), wait up to 10 s for it to finish what it holds, then SIGKILL;
# SERVER_PID is emptied.
stop_server() {
  [ -n "${SERVER_PID:-}" ] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$SERVER_PID" 2>/dev/null && kill -KILL "$SERVER_PID" 2>/dev/null
  fi
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}

# sipp_counts STATFILE: "successful failed retransmissions" from the last
# line of a SIPp -trace_stat file (cumulative columns).
sipp_counts() {
  "$PYTHON" - "$1" <<'PYEOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=";"))
head, last = rows[0], rows[-1]
col = lambda name: last[head.index(name)]
print(col("SuccessfulCall(C)"), col("FailedCall(C)"), col("Retransmissions(C)"))
PYEOF
}
