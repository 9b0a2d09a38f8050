#!/usr/bin/env bash
# A hung rank while serving: rank 1 of a 2-rank cluster is stopped (SIGSTOP) during a stream.
# Within the communication deadline the in-flight request must fail with UNAVAILABLE (never
# a hang, never a partial answer marked OK) and the job must exit non-zero.
#   serve_fault_test.sh SWITCHYARD MODEL EXAMPLES_DIR
set -uo pipefail
bin=$1 model=$2 examples=$3
here="$(cd "$(dirname "$0")/.." && pwd)"
dir=$(mktemp -d /tmp/switchyard-fault.XXXXXX)
"$here/launch/cluster.sh" start "$dir" 2 2 1 "$bin" "$model" --comm-timeout 2 || exit 1
port=$(cat "$dir/port")
mpirun_pid=$(cat "$dir/pid")
rank1=""
for p in $(pgrep -P "$mpirun_pid"); do
  tr '\0' '\n' < "/proc/$p/environ" | grep -qx 'OMPI_COMM_WORLD_RANK=1' && rank1=$p
done
[ -n "$rank1" ] || { echo "rank 1 not found"; exit 1; }
# A stream; right after its first message rank 1 hangs (SIGSTOP from the client itself, so
# the request is certainly in flight).
start=$(date +%s)
PYTHONPATH="$(dirname "$(dirname "$bin")")/python:${PYTHONPATH:-}" /usr/bin/python3 - "$port" "$rank1" \
  > "$dir/client.out" 2>&1 <<'PY'
import os, signal, sys, grpc
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc
stub = switchyard_pb2_grpc.SwitchyardStub(grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}"))
# ignore_eos: 900 tokens, so the stream cannot finish before rank 1 is stopped.
req = switchyard_pb2.GenerateRequest(text="In the morning, the old man", max_tokens=900, temperature=0,
                                     ignore_eos=True)
first = True
try:
    for msg in stub.Generate(req, timeout=60):
        if first:
            os.kill(int(sys.argv[2]), signal.SIGSTOP)
            first = False
    print("finished OK: the hung rank went unnoticed")
    sys.exit(1)
except grpc.RpcError as e:
    print(f"{e.code().name}: {e.details()}")
    sys.exit(0 if e.code() == grpc.StatusCode.UNAVAILABLE and not first else 1)
PY
client_code=$?
elapsed=$(( $(date +%s) - start ))
for _ in $(seq 1 100); do [ -s "$dir/exit" ] && break; sleep 0.2; done
kill -CONT "$rank1" 2>/dev/null
kill -KILL "$rank1" 2>/dev/null
job_code=$(cat "$dir/exit" 2>/dev/null || echo none)
echo "client exit $client_code after ${elapsed}s: $(cat "$dir/client.out")"
echo "mpirun exit: $job_code"
grep -E "error|rank" "$dir/log" | head -5
[ "$client_code" -eq 0 ] && [ "$elapsed" -le 15 ] \
  && [ "$job_code" != "0" ] && [ "$job_code" != "none" ]
