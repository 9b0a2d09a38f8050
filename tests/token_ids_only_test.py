#!/usr/bin/python3
"""A checkpoint without tokenizer.model serves token ids only: token-id requests stream ids
(with empty text); text prompts and stop strings are INVALID_ARGUMENT naming the field;
Tokenize/Detokenize are FAILED_PRECONDITION; `generate` says it needs a tokenizer, `score`
works.
  token_ids_only_test.py SWITCHYARD WORKDIR   (PYTHONPATH: the generated stubs)"""
import os
import shutil
import subprocess
import sys

import grpc
from switchyard.v1 import switchyard_pb2 as pb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_process import ServeProcess  # noqa: E402

binary, work = sys.argv[1:3]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
model = os.path.join(work, "model")
subprocess.run([binary, "make-synthetic-model", "--preset", "tiny", "--out", model,
                "--tokenizer", os.path.join(work, "none.model")], check=True, capture_output=True)
assert not os.path.exists(os.path.join(model, "tokenizer.model"))

gen = subprocess.run([binary, "generate", "--model", model, "--prompt", "hello"],
                     capture_output=True, text=True)
assert gen.returncode == 1 and "generate needs tokenizer.model" in gen.stderr, gen
score = subprocess.run([binary, "score", "--model", model, "--tokens", "1 17 42",
                        "--out", os.path.join(work, "s.npy")], capture_output=True, text=True)
assert score.returncode == 0, score

with ServeProcess(binary, model, work) as server:
    stub = server.stub()
    ids, text, final = [], "", None
    for msg in stub.Generate(pb.GenerateRequest(token_ids=[1, 17, 42], max_tokens=8,
                                                ignore_eos=True), timeout=60):
        ids += msg.token_ids
        text += msg.text
        final = msg
    assert len(ids) == 8 and text == "" and final.finish_reason == pb.FINISH_REASON_LENGTH, final

    def code_and_details(call):
        try:
            call()
        except grpc.RpcError as e:
            return e.code(), e.details()
        raise AssertionError("accepted")

    code, details = code_and_details(lambda: stub.Complete(pb.GenerateRequest(text="hello")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("text:"), details
    code, details = code_and_details(
        lambda: stub.Complete(pb.GenerateRequest(token_ids=[1, 5], stop=["x"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("stop:"), details
    code, details = code_and_details(lambda: stub.Tokenize(pb.TokenizeRequest(text="hello")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "tokenizer.model" in details, details
    code, details = code_and_details(
        lambda: stub.Detokenize(pb.DetokenizeRequest(token_ids=[5])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "tokenizer.model" in details, details
assert "tokenizer.model not found: token ids only" in server.output, server.output
print("token ids only: 8 checks passed")
