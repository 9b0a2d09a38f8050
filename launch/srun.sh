#!/usr/bin/env bash
# Starts Switchyard under Slurm: one task per GPU (or CPU slot), PMIx wire-up.
# Usage: launch/srun.sh NODES TASKS_PER_NODE switchyard-args...
#   launch/srun.sh 2 8 generate --model /shared/mixtral-8x7b --ep 8 --pp 2 --prompt "Hello"
set -euo pipefail
nodes=$1 per_node=$2
shift 2
here="$(cd "$(dirname "$0")/.." && pwd)"
exec srun --nodes="$nodes" --ntasks-per-node="$per_node" --mpi=pmix \
  --export=ALL,OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$here/build/cli/switchyard" "$@"
