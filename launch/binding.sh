#!/usr/bin/env bash
# Prints the Open MPI binding flags for NP ranks on this one machine (launch/mpirun.sh and
# launch/cluster.sh use it):
# - at most one rank per CPU: no binding; each rank sizes its OpenMP threads to its share of
#   the CPUs the ranks share (common/cpu_threads.h);
# - more ranks than CPUs: each rank pinned to one CPU, round-robin (rank r on the r-th CPU,
#   modulo their count). A pipeline stage's ranks are consecutive, so each has a CPU of its
#   own where the count allows, where unpinned they land on one CPU by chance (one placement
#   in three for 2x2 on 2 CPUs) and take turns; and no rank migrates in the middle of a step.
# Usage: launch/binding.sh NP
set -euo pipefail
if (( $1 > $(nproc) )); then
  echo "--use-hwthread-cpus --map-by hwthread --bind-to hwthread:overload-allowed"
else
  echo "--bind-to none"
fi
