#!/usr/bin/env bash
# Starts or stops a Switchyard serving cluster in the background on this machine (used by
# launch/quickstart.sh and the end-to-end tests).
#   cluster.sh start DIR NP EP PP SWITCHYARD MODEL [extra serve flags...]
#   cluster.sh stop DIR          SIGTERM to rank 0 (the coordinator): it drains and
#                                      releases the workers; succeeds only if mpirun exits 0
# DIR receives: port (the bound port), pid (mpirun's), log, exit (mpirun's exit code).
set -uo pipefail
cmd=$1 dir=$2
case "$cmd" in
start)
  np=$3 ep=$4 pp=$5 bin=$6 model=$7
  shift 7
  rm -rf "$dir" && mkdir -p "$dir"
  # Each rank sizes its threads to its share of the CPUs; more ranks than CPUs are pinned one
  # to a CPU, round-robin (launch/binding.sh). One node: shared memory between ranks and Open
  # MPI's control channel on loopback, so no rank listens on the network.
  flags=(--oversubscribe $("$(dirname "$0")/binding.sh" "$np") --mca btl self,vader
         --mca oob_tcp_if_include lo)
  [ -n "${OMP_NUM_THREADS:-}" ] && flags+=(-x OMP_NUM_THREADS)
  [ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
  # setsid: the cluster outlives this script; `wait` in the subshell records its exit code.
  setsid bash -c "mpirun ${flags[*]} -np $np $bin serve --model $model --ep $ep --pp $pp \
      --listen 127.0.0.1:0 --port-file $dir/port $* > $dir/log 2>&1 & echo \$! > $dir/pid; \
      wait \$!; echo \$? > $dir/exit" < /dev/null > /dev/null 2>&1 &
  for _ in $(seq 1 600); do
    [ -s "$dir/port" ] && { echo "cluster up on port $(cat "$dir/port")"; exit 0; }
    [ -s "$dir/exit" ] && break
    sleep 0.2
  done
  echo "cluster did not start:"; cat "$dir/log"; exit 1
  ;;
stop)
  [ -s "$dir/pid" ] || { echo "no cluster in $dir"; exit 1; }
  mpirun_pid=$(cat "$dir/pid")
  rank0=""
  for p in $(pgrep -P "$mpirun_pid"); do
    # grep -z reads the NUL-separated environment itself: in a pipeline (tr | grep -q) under
    # pipefail, grep quitting at the match can fail the writer with SIGPIPE, and the test.
    if grep -qxz 'OMPI_COMM_WORLD_RANK=0' "/proc/$p/environ" 2>/dev/null; then
      rank0=$p
    fi
  done
  if [ -z "$rank0" ]; then
    # The job ended (or lost its coordinator) before the stop: say how, with its log, and
    # leave nothing running.
    for _ in $(seq 1 10); do  # mpirun may be ending right now: its exit code comes shortly
      [ -s "$dir/exit" ] || kill -0 "$mpirun_pid" 2>/dev/null || sleep 0.2
    done
    if [ -s "$dir/exit" ]; then
      echo "rank 0 of mpirun $mpirun_pid not found; mpirun had exited: $(cat "$dir/exit")"
    elif kill -0 "$mpirun_pid" 2>/dev/null; then
      echo "rank 0 of mpirun $mpirun_pid not found; mpirun still running: terminated"
      kill -TERM "$mpirun_pid" 2>/dev/null
    else
      echo "rank 0 of mpirun $mpirun_pid not found; mpirun is gone"
    fi
    cat "$dir/log"
    exit 1
  fi
  kill -TERM "$rank0"
  for _ in $(seq 1 300); do
    [ -s "$dir/exit" ] && break
    sleep 0.2
  done
  cat "$dir/log"
  code=$(cat "$dir/exit" 2>/dev/null || echo timeout)
  echo "mpirun exit: $code"
  [ "$code" = 0 ] && grep -q "drained" "$dir/log"
  ;;
esac
