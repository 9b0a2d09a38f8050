#!/usr/bin/env bash
# Quick start: installs dependencies, builds Switchyard, starts the demo model
# (models/brown-moe) on 4 MPI ranks on this machine's CPUs (2 expert-parallel ranks x 2
# pipeline stages) in the background, waits until it is healthy, streams a generation
# through the Python gRPC client (examples/client.py), and shuts the cluster down cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/install-deps.sh
launch/build.sh
dir=$(mktemp -d /tmp/switchyard-quickstart.XXXXXX)
trap 'launch/cluster.sh stop "$dir" > /dev/null 2>&1 || true' EXIT
echo "== starting 4 ranks: mpirun -np 4 switchyard serve --model models/brown-moe --ep 2 --pp 2"
launch/cluster.sh start "$dir" 4 2 2 build/cli/switchyard models/brown-moe
port=$(cat "$dir/port")
export PYTHONPATH="$PWD/build/python"
/usr/bin/python3 - "$port" <<'PY'
import sys, time, grpc
from switchyard_health import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}"))
for _ in range(300):
    try:
        if stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING:
            print("== health: SERVING"); break
    except grpc.RpcError:
        pass
    time.sleep(0.2)
else:
    sys.exit("the cluster never became healthy")
PY
echo "== streaming: examples/client.py --prompt 'The jury said that'"
/usr/bin/python3 examples/client.py --target "127.0.0.1:$port" --prompt "The jury said that" \
  --max-tokens 48 --temperature 0.8 --seed 7
echo "== shutting down (SIGTERM to rank 0: drain, then every rank exits 0)"
trap - EXIT
launch/cluster.sh stop "$dir" | tail -3
