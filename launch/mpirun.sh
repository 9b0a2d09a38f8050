#!/usr/bin/env bash
# Starts Switchyard under Open MPI on this machine or a hostfile's nodes.
# Usage: launch/mpirun.sh NP switchyard-args...      (HOSTFILE=path to use several nodes)
#   launch/mpirun.sh 4 generate --model models/brown-moe --ep 2 --pp 2 --prompt "The jury"
set -euo pipefail
np=$1
shift
here="$(cd "$(dirname "$0")/.." && pwd)"
args=(-np "$np" --oversubscribe --bind-to none -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
[ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE")
[ "$(id -u)" -eq 0 ] && args+=(--allow-run-as-root)
exec mpirun "${args[@]}" "$here/build/cli/switchyard" "$@"
