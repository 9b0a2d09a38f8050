#!/usr/bin/python3
"""End to end through the Python client (examples/client.py) and Python stubs against the
serving cluster CTest started (SWITCHYARD_E2E_DIR). Exits non-zero on the first failure."""
import json
import os
import subprocess
import sys

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc  # noqa: E402  (PYTHONPATH)
from switchyard_health import health_pb2, health_pb2_grpc  # noqa: E402

target = "127.0.0.1:" + open(os.path.join(os.environ["SWITCHYARD_E2E_DIR"], "port")).read().strip()
channel = grpc.insecure_channel(target)
stub = switchyard_pb2_grpc.SwitchyardStub(channel)

health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
assert health.status == health_pb2.HealthCheckResponse.SERVING, health

# The example client streams; its result equals the unary Complete of the same request.
out = subprocess.run([sys.executable, os.path.join(HERE, "..", "examples", "client.py"), "--target", target,
                      "--prompt", "The President told reporters", "--max-tokens", "24", "--json"],
                     check=True, capture_output=True, text=True)
streamed = json.loads(out.stdout)
complete = stub.Complete(switchyard_pb2.GenerateRequest(text="The President told reporters", max_tokens=24,
                                                        temperature=0))
assert streamed["token_ids"] == list(complete.token_ids), (streamed, complete)
assert streamed["text"] == complete.text and complete.text, (streamed, complete.text)
assert streamed["completion_tokens"] == complete.completion_tokens

toks = stub.Tokenize(switchyard_pb2.TokenizeRequest(text="The jury said that"))
assert list(toks.token_ids) == [1, 336, 501, 1182, 554, 330], toks
text = stub.Detokenize(switchyard_pb2.DetokenizeRequest(token_ids=toks.token_ids)).text
assert text == "The jury said that", text

try:
    stub.Complete(switchyard_pb2.GenerateRequest(text="x", max_tokens=4, top_p=1.5))
    raise AssertionError("top_p 1.5 was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_p" in e.details(), e

# "The jury said that" ends at EOS after 13 tokens; ignore_eos generates through it to max_tokens.
eos = stub.Complete(switchyard_pb2.GenerateRequest(text="The jury said that", max_tokens=20))
assert eos.finish_reason == switchyard_pb2.FINISH_REASON_EOS and eos.completion_tokens == 13, eos
past = stub.Complete(switchyard_pb2.GenerateRequest(text="The jury said that", max_tokens=20,
                                                    ignore_eos=True))
assert past.finish_reason == switchyard_pb2.FINISH_REASON_LENGTH, past
assert past.completion_tokens == 20 and list(past.token_ids[:13]) == list(eos.token_ids), past

# The completion's text is Detokenize(prompt + completion) with Detokenize(prompt) removed from
# its front: the first token keeps its leading space, for text and token-id prompts alike.
for prompt in ["The jury said that", "The jury sa", "The jury said ", "Le café"]:
    pids = list(stub.Tokenize(switchyard_pb2.TokenizeRequest(text=prompt)).token_ids)
    for req in (switchyard_pb2.GenerateRequest(text=prompt, max_tokens=12),
                switchyard_pb2.GenerateRequest(token_ids=pids, max_tokens=12)):
        got = stub.Complete(req)
        head = stub.Detokenize(switchyard_pb2.DetokenizeRequest(token_ids=pids)).text
        full = stub.Detokenize(switchyard_pb2.DetokenizeRequest(token_ids=pids + list(got.token_ids))).text
        assert full.startswith(head) and got.text == full[len(head):], (prompt, got.text, full)
        streamed = "".join(m.text for m in stub.Generate(req))
        assert streamed == got.text, (prompt, streamed, got.text)
first = stub.Complete(switchyard_pb2.GenerateRequest(text="The jury said that", max_tokens=3))
assert first.text.startswith(" "), first.text

info = stub.GetModelInfo(switchyard_pb2.GetModelInfoRequest())
assert info.name == "brown-moe" and info.config.num_local_experts == 8, info
print("python end-to-end: 7 checks passed")
