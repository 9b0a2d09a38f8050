#!/usr/bin/env bash
# An emulated two-node cluster on this machine, for scaling studies without a second machine:
# two network namespaces ("nodes" node0 and node1, each with a host name of its own), joined
# by a veth link shaped with tc (tbf for the rate; netem for a delay where the kernel has it).
# Open MPI runs across them over TCP on that link, as it would between two hosts: no shared
# memory between the nodes, the link's rate and delay on every message between them.
#
#   launch/netns-cluster.sh up [--rate 10gbit] [--delay 100us]   (root only)
#   launch/netns-cluster.sh run RANKS_PER_NODE switchyard-args...  e.g.
#       launch/netns-cluster.sh run 2 preflight --out /tmp/cal-netns.json
#   launch/netns-cluster.sh status
#   launch/netns-cluster.sh down
#
# `run` runs build/cli/switchyard (or $SWITCHYARD_BIN) and starts mpirun on node0 (its daemon for node1 goes through launch/netns-agent.sh, Open
# MPI's remote-shell agent here), world ranks 0..N-1 on node0 and N..2N-1 on node1. The
# machine's cores are shared by both nodes: the emulation shapes the link, not the CPUs.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
NET=10.231.0
cmd=${1:-}
shift || true

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "netns-cluster.sh: needs root (network namespaces and tc)" >&2
    exit 77
  fi
}

case "$cmd" in
up)
  need_root
  rate=10gbit delay=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --rate) rate=$2; shift 2 ;;
      --delay) delay=$2; shift 2 ;;
      *) echo "netns-cluster.sh up: unknown option $1" >&2; exit 2 ;;
    esac
  done
  if ip netns list | grep -qw sy-node0; then
    echo "netns-cluster.sh: already up (run down first)" >&2
    exit 1
  fi
  ip netns add sy-node0
  ip netns add sy-node1
  ip link add sy-veth0 type veth peer name sy-veth1
  for n in 0 1; do
    ip link set "sy-veth$n" netns "sy-node$n"
    ip -n "sy-node$n" addr add "$NET.$((n + 1))/24" dev "sy-veth$n"
    ip -n "sy-node$n" link set lo up
    ip -n "sy-node$n" link set "sy-veth$n" up
    # The rate, on each direction's sending side; a burst of 1 ms at that rate (at least the
    # largest frame), packets queued at most 50 ms.
    ip netns exec "sy-node$n" tc qdisc add dev "sy-veth$n" root handle 1: tbf rate "$rate" \
      burst 1mbit latency 50ms
    if [ -n "$delay" ]; then
      if ! ip netns exec "sy-node$n" tc qdisc add dev "sy-veth$n" parent 1:1 handle 10: \
        netem delay "$delay" 2>/dev/null; then
        echo "netns-cluster.sh: this kernel has no netem: no delay added (rate only)" >&2
        delay=""
      fi
    fi
  done
  echo "two nodes up: node0 $NET.1, node1 $NET.2, link $rate${delay:+, delay $delay each way}"
  ;;
run)
  need_root
  per_node=$1
  shift
  ip netns list | grep -qw sy-node0 || { echo "netns-cluster.sh: not up (run up first)" >&2; exit 1; }
  bin="${SWITCHYARD_BIN:-$here/build/cli/switchyard}"
  # TCP only (no shared memory between the nodes), on the emulated link alone; one thread a
  # rank unless OMP_NUM_THREADS says otherwise (both nodes share this machine's cores).
  mpi=(mpirun --allow-run-as-root --oversubscribe --bind-to none
       --host "$NET.1:$per_node,$NET.2:$per_node" -np $((2 * per_node))
       --mca plm_rsh_agent "$here/launch/netns-agent.sh"
       --mca btl self,tcp --mca btl_tcp_if_include "$NET.0/24"
       --mca oob_tcp_if_include "$NET.0/24"
       -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}")
  exec ip netns exec sy-node0 unshare --uts sh -c 'hostname node0 && exec "$@"' sh \
    "${mpi[@]}" "$bin" "$@"
  ;;
status)
  ip netns list | grep sy-node || echo "down"
  for n in 0 1; do
    ip netns list | grep -qw "sy-node$n" && ip netns exec "sy-node$n" tc qdisc show dev "sy-veth$n"
  done
  ;;
down)
  need_root
  for n in 0 1; do
    ip netns list | grep -qw "sy-node$n" && ip netns del "sy-node$n"
  done
  echo "down"
  ;;
*)
  sed -n '2,16p' "$0" >&2
  exit 2
  ;;
esac
