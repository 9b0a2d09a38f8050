#!/usr/bin/env bash
# Chunked prefill end to end: an 8k-token prompt is served by a 2-rank cluster while short
# requests keep streaming (they get tokens in the steps between its prefill chunks).
# The model is the synthetic `tiny` preset with its context raised to 32k.
#   long_prompt_test.sh SWITCHYARD WORKDIR
set -uo pipefail
bin=$1 work=$2
here="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$work" && mkdir -p "$work"
"$bin" make-synthetic-model --preset tiny --out "$work/model" \
  --tokenizer "$here/models/brown-moe/tokenizer.model" > /dev/null || exit 1
sed -i 's/"max_position_embeddings": [0-9]*/"max_position_embeddings": 32768/' "$work/model/config.json"
"$here/launch/cluster.sh" start "$work/cluster" 2 2 1 "$bin" "$work/model" --prefill-chunk 512 \
  || exit 1
trap '"$here/launch/cluster.sh" stop "$work/cluster" > /dev/null' EXIT
PYTHONPATH="$(dirname "$(dirname "$bin")")/python" /usr/bin/python3 - "$(cat "$work/cluster/port")" <<'PY'
import random, sys, threading, time, grpc
from switchyard.v1 import switchyard_pb2 as pb, switchyard_pb2_grpc as pbg
stub = pbg.SwitchyardStub(grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}"))
times = {i: [] for i in range(4)}
def short(i):
    req = pb.GenerateRequest(token_ids=[1, 100 + i, 200 + i], max_tokens=400, temperature=0)
    for msg in stub.Generate(req, timeout=300):
        if msg.token_ids:
            times[i].append(time.monotonic())
threads = [threading.Thread(target=short, args=(i,)) for i in range(4)]
for t in threads: t.start()
while min(len(v) for v in times.values()) < 3:
    time.sleep(0.01)
rng = random.Random(5)
prompt = [1] + [rng.randrange(3, 4000) for _ in range(8191)]
sent = time.monotonic()
first = None
final = None
for msg in stub.Generate(pb.GenerateRequest(token_ids=prompt, max_tokens=4, temperature=0), timeout=300):
    if first is None and msg.token_ids:
        first = time.monotonic()
    final = msg
for t in threads: t.join()
during = [sum(sent < x < first for x in v) for v in times.values()]
print(f"8192-token prompt: first token after {first - sent:.2f} s; short streams got {during} tokens meanwhile")
assert final.prompt_tokens == 8192, final
# 8192 tokens in 512-token chunks is 16 steps: every short stream advanced in each of them.
assert min(during) >= 15, during
PY
