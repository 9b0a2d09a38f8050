#!/usr/bin/env bash
# Starts Switchyard under Open MPI on this machine or a hostfile's nodes.
# Usage: launch/mpirun.sh NP switchyard-args...      (HOSTFILE=path to use several nodes;
#        SWITCHYARD_BIN=path to run another build than build/cli/switchyard)
#   launch/mpirun.sh 4 generate --model models/brown-moe --ep 2 --pp 2 --prompt "The jury"
set -euo pipefail
np=$1
shift
here="$(cd "$(dirname "$0")/.." && pwd)"
# Each rank picks its OpenMP threads from the CPUs the ranks on its node share; an
# OMP_NUM_THREADS set here is passed on and wins.
args=(-np "$np" --oversubscribe)
[ -n "${OMP_NUM_THREADS:-}" ] && args+=(-x OMP_NUM_THREADS)
if [ -n "${HOSTFILE:-}" ]; then
  args+=(--hostfile "$HOSTFILE" --bind-to none)
else
  # One node: shared memory between ranks, Open MPI's control channel on loopback, so no rank
  # listens on a network interface (see docs/parallelism.md for clusters).
  args+=(--mca btl self,vader --mca oob_tcp_if_include lo)
  # More ranks than CPUs: each pinned to one, round-robin (launch/binding.sh).
  read -ra binding <<< "$("$here/launch/binding.sh" "$np")"
  args+=("${binding[@]}")
fi
[ "$(id -u)" -eq 0 ] && args+=(--allow-run-as-root)
exec mpirun "${args[@]}" "${SWITCHYARD_BIN:-$here/build/cli/switchyard}" "$@"
