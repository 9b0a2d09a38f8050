#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, for trying launch/srun.sh and launch/serve.sbatch on
# one machine and for the Slurm test (tests/slurm_test.sh). Needs root and Debian's slurm-wlm
# and munge (launch/install-deps.sh installs them); everything it writes is under DIR: its own
# munge key and socket, slurm.conf, state, logs. Nothing outside DIR is touched, so it runs
# beside a real munge or Slurm.
#
#   launch/slurm-local.sh start DIR [CPUS]   # CPUS (default 4) is what the node declares
#   export SLURM_CONF=DIR/slurm.conf          # then sinfo, srun, sbatch, scancel as usual
#   launch/slurm-local.sh stop DIR
#
# The node declares CPUS CPUs whatever the machine has (SlurmdParameters=config_overrides),
# so a 2-core machine can run the quick start's 4 ranks; each rank still sizes its threads to
# its real share of the cores. Partition "local", OverSubscribe=FORCE, task/none and
# proctrack/linuxproc (no cgroups needed), PMIx for MPI, KillWait 30 s (what scancel leaves
# a serving job to drain before SIGKILL).
set -euo pipefail

usage() {
  echo "usage: $0 start DIR [CPUS] | stop DIR" >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
cmd=$1 dir=$2 cpus=${3:-4}

stop() {
  for f in slurmd slurmctld munged; do
    if [[ -f "$dir/$f.pid" ]]; then
      pid=$(cat "$dir/$f.pid" 2>/dev/null || true)
      [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
    fi
  done
  # Give them a moment, then make sure (slurmd's steps included).
  for _ in $(seq 50); do
    alive=0
    for f in slurmd slurmctld munged; do
      pid=$(cat "$dir/$f.pid" 2>/dev/null || true)
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive=1
    done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for f in slurmd slurmctld munged; do
    pid=$(cat "$dir/$f.pid" 2>/dev/null || true)
    [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/$f.pid"
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$cmd" in
  stop)
    stop
    exit 0
    ;;
  start) ;;
  *) usage ;;
esac

if [[ $(id -u) != 0 ]]; then
  echo "slurm-local: needs root (slurmd runs jobs as their users)" >&2
  exit 3
fi
for tool in munged mungekey slurmctld slurmd srun sinfo; do
  if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$tool ]]; then
    echo "slurm-local: $tool not found: install Debian's slurm-wlm and munge" \
      "(launch/install-deps.sh)" >&2
    exit 3
  fi
done
export PATH="$PATH:/usr/sbin"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
stop  # a cluster left in DIR by an earlier run
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir/munge"

# Munge with its own key and socket (root must be forced: it refuses by default).
if [[ ! -f "$dir/munge/munge.key" ]]; then
  mungekey --create --keyfile="$dir/munge/munge.key" --bits=1024 --force
fi
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"

ctld_port=$(free_port)
slurmd_port=$(free_port)
while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done
cat >"$dir/slurm.conf" <<EOF
# Written by launch/slurm-local.sh: a one-node cluster on loopback.
ClusterName=switchyard-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=30
InactiveLimit=0
MinJobAge=300
NodeName=switchyard0 NodeAddr=127.0.0.1 NodeHostname=$(hostname) CPUs=$cpus State=UNKNOWN
PartitionName=local Nodes=switchyard0 Default=YES MaxTime=INFINITE OverSubscribe=FORCE:4 State=UP
EOF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF" -N switchyard0

# Up when the node is idle (slurmd registered with the controller).
for _ in $(seq 150); do
  state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)
  if [[ $state == idle ]]; then
    echo "slurm-local: node switchyard0 up with $cpus CPUs; export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "slurm-local: the node did not come up (state '${state:-none}'); logs in $dir" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
stop
exit 1
