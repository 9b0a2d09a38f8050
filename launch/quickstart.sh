#!/usr/bin/env bash
# Quick start: installs dependencies, builds Switchyard, and generates text with the demo
# model (models/brown-moe) across 4 MPI ranks on this machine's CPUs (2 expert-parallel ranks
# x 2 pipeline stages).
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install-deps.sh
launch/build.sh
MPIRUN=(mpirun --oversubscribe --bind-to none -np 4)
[ "$(id -u)" -eq 0 ] && MPIRUN+=(--allow-run-as-root)
export OMP_NUM_THREADS=1
echo "== switchyard generate on 4 ranks (--ep 2 --pp 2) =="
"${MPIRUN[@]}" build/cli/switchyard generate --model models/brown-moe --ep 2 --pp 2 \
  --prompt "The jury said that" --max-tokens 32
