#!/usr/bin/env bash
# launch/supervise.sh brings a failed serving job back: a worker of a 4-rank cluster is
# killed (SIGKILL); the job fails, the supervisor restarts it, and health is SERVING again.
# Prints the time from the kill to SERVING; then SIGTERM to the supervisor drains the job and
# ends supervision with 0.
#   supervise_test.sh SWITCHYARD MODEL
set -uo pipefail
bin=$1 model=$2
here="$(cd "$(dirname "$0")/.." && pwd)"
dir=$(mktemp -d /tmp/switchyard-supervise.XXXXXX)
flags=(--oversubscribe --bind-to none --mca btl self,vader --mca oob_tcp_if_include lo)
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
# A fixed port for clients: the port-0 trick cannot survive a restart. Pick a free one.
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setsid "$here/launch/supervise.sh" --backoff 1 -- mpirun "${flags[@]}" -np 4 "$bin" serve \
  --model "$model" --ep 2 --pp 2 --listen "127.0.0.1:$port" > "$dir/log" 2>&1 &
sup=$!
healthy() { "$bin" client health --target "127.0.0.1:$port" --timeout 1 > /dev/null 2>&1; }
await_serving() {  # seconds to wait
  local end=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$end" ]; do healthy && return 0; sleep 0.1; done
  return 1
}
fail() { echo "FAIL: $*"; tail -40 "$dir/log"; kill -KILL -- -"$sup" 2>/dev/null; exit 1; }
await_serving 120 || fail "the job did not start"
mpirun_pid=$(pgrep -P "$sup" -x mpirun | head -1)
victim=""
for p in $(pgrep -P "$mpirun_pid"); do
  grep -qxz 'OMPI_COMM_WORLD_RANK=2' "/proc/$p/environ" && victim=$p
done
[ -n "$victim" ] || fail "rank 2 not found"
t0=$(date +%s.%N)
kill -KILL "$victim"
# Health must leave SERVING (the old job is gone) and come back (the new one).
for _ in $(seq 1 200); do healthy || break; sleep 0.05; done
await_serving 120 || fail "the job did not come back"
t1=$(date +%s.%N)
echo "kill -9 of rank 2 -> SERVING again: $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
grep -q "rank 2 (pid $victim" "$dir/log" || fail "the failure did not name rank 2"
grep -q "restart 1 in" "$dir/log" || fail "no restart logged"
kill -TERM "$sup"
for _ in $(seq 1 300); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
kill -0 "$sup" 2>/dev/null && fail "supervise.sh did not exit after SIGTERM"
wait "$sup"; code=$?
grep -q "job exited 0" "$dir/log" || fail "the drained job did not exit 0 (supervise exit $code)"
[ "$code" -eq 0 ] || fail "supervise.sh exited $code"
rm -rf "$dir"
echo PASS
