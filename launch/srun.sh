#!/usr/bin/env bash
# Starts Switchyard under Slurm: one task per GPU (or CPU slot), PMIx wire-up.
# Usage: launch/srun.sh NODES TASKS_PER_NODE switchyard-args...
#   launch/srun.sh 2 8 generate --model /shared/mixtral-8x7b --ep 8 --pp 2 --prompt "Hello"
# SWITCHYARD_BIN names another binary (default: build/cli/switchyard of this checkout).
# For serving as a batch job (endpoint file, drain on scancel), see launch/serve.sbatch.
set -euo pipefail
nodes=$1 per_node=$2
shift 2
here="$(cd "$(dirname "$0")/.." && pwd)"
# Each rank picks its OpenMP threads from its share of the node's CPUs (OMP_NUM_THREADS, when
# set, is exported and wins).
# --overcommit: Slurm otherwise refuses (or queues forever) a step with more tasks than a
# node's CPUs, as in the quick start's 4 ranks on 2 cores; each rank still sizes its threads
# to its share. --kill-on-bad-exit: one failed rank ends the step.
exec srun --nodes="$nodes" --ntasks-per-node="$per_node" --overcommit --mpi=pmix \
  --kill-on-bad-exit=1 "${SWITCHYARD_BIN:-$here/build/cli/switchyard}" "$@"
