#!/usr/bin/env bash
# Restarts a Switchyard job that fails, with exponential backoff.
#   launch/supervise.sh [--max-restarts N] [--backoff S] [--max-backoff S] -- COMMAND...
#   launch/supervise.sh -- launch/mpirun.sh 4 serve --model models/brown-moe --ep 2 --pp 2
#
# A job that exits 0 (a drain after SIGTERM) ends supervision with 0. A job that fails (a
# rank killed, stopped or hung is an error naming it within seconds, and the whole job exits
# non-zero) is started again after BACKOFF seconds (default 1), doubling up to MAX_BACKOFF
# (default 30) while runs keep failing quickly; a run that lasted 10 minutes resets it.
# After MAX_RESTARTS failures in a row (default: unlimited, 0) it gives up with the job's
# code. SIGTERM/SIGINT end supervision and drain the job: they go to the job's rank 0 when it
# runs on this machine (Open MPI's mpirun, signalled itself, kills every rank a second later
# and exits 1, which would cut the drain short), else to COMMAND. Each start and exit is
# logged on stderr with its time. Under Slurm, use the same command inside the allocation
# (launch/srun.sh as COMMAND), or let Slurm requeue the job (sbatch --requeue).
set -uo pipefail
max_restarts=0 backoff=1 max_backoff=30
while [ $# -gt 0 ]; do
  case "$1" in
    --max-restarts) max_restarts=$2; shift 2 ;;
    --backoff) backoff=$2; shift 2 ;;
    --max-backoff) max_backoff=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "supervise.sh: unknown option $1 (the command goes after --)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: supervise.sh [options] -- COMMAND..." >&2; exit 2; }

log() { echo "[supervise $(date -u +%FT%TZ)] $*" >&2; }
child=0 stopping=0
# The process of world rank 0 among the descendants of $1, if any.
rank0_of() {
  local p
  for p in $(pgrep -P "$1"); do
    if grep -qxzE 'OMPI_COMM_WORLD_RANK=0|PMIX_RANK=0|SLURM_PROCID=0' "/proc/$p/environ" \
        2>/dev/null; then
      echo "$p"; return 0
    fi
    rank0_of "$p" && return 0
  done
  return 1
}
on_signal() {
  stopping=1
  [ "$child" -gt 0 ] || return
  local target
  target=$(rank0_of "$child") || target=$child
  kill -TERM "$target" 2>/dev/null
}
trap on_signal TERM INT

failures=0 delay=$backoff
while true; do
  started=$(date +%s)
  log "starting: $*"
  "$@" &
  child=$!
  # `wait` returns early when a trapped signal arrives: wait again until the job is gone.
  while true; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
  done
  child=0
  ran=$(( $(date +%s) - started ))
  if [ "$code" -eq 0 ]; then log "job exited 0 after ${ran} s"; exit 0; fi
  if [ "$stopping" -eq 1 ]; then log "job exited $code after a signal; not restarting"; exit "$code"; fi
  failures=$((failures + 1))
  if [ "$ran" -ge 600 ]; then failures=1; delay=$backoff; fi
  if [ "$max_restarts" -gt 0 ] && [ "$failures" -gt "$max_restarts" ]; then
    log "job failed with $code ($failures failures in a row); giving up"
    exit "$code"
  fi
  log "job failed with $code after ${ran} s; restart $failures in ${delay} s"
  sleep "$delay" & wait $!
  [ "$stopping" -eq 1 ] && exit "$code"
  delay=$(awk -v d="$delay" -v m="$max_backoff" 'BEGIN { d *= 2; print (d > m ? m : d) }')
done
