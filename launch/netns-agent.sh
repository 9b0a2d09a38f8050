#!/usr/bin/env bash
# Open MPI's remote-shell agent for launch/netns-cluster.sh: runs the daemon's command line on
# an emulated node (its network namespace, a host name of its own) as ssh would on a host.
#   netns-agent.sh [ssh-style options] HOST COMMAND...
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done  # options ssh would take
host=$1
shift
case "$host" in
  10.231.0.1 | node0) node=0 ;;
  10.231.0.2 | node1) node=1 ;;
  *) echo "netns-agent.sh: unknown node $host" >&2; exit 255 ;;
esac
# As ssh does: the words are one command line for the node's shell.
exec ip netns exec "sy-node$node" unshare --uts sh -c "hostname node$node && $*"
