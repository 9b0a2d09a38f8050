#!/usr/bin/python3
"""Sends a table of bad requests to a running `switchyard serve` and records what comes back.

Starts single-process servers on the demo model (one plain, one with --auth-token-file, and
one on a synthetic checkpoint without tokenizer.model for the token-ids-only refusals), sends
every row below as raw bytes on a generic channel (so that malformed protobuf and invalid
UTF-8 can be sent as well as well-formed messages), and checks each row's gRPC status code
against the one written here. Then it checks that the bad requests lost nothing: a greedy
stream that ran alongside them, and a Generate/Complete sent after them, equal the same
requests on the server before any bad input.

  /usr/bin/python3 tests/bad_input_table.py [--binary build/cli/switchyard]
      [--model models/brown-moe] [--work DIR] [--markdown FILE] [--json FILE]

Exit status 0 when every row got its expected code (and, where a row names one, a message
starting with the expected prefix) and the server still answers correctly; 1 otherwise, with
the mismatches printed. Needs Debian's python3-grpcio and the stubs the build generates into
build/python (restarts itself under /usr/bin/python3 when the first python3 lacks grpc).
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from grpc_wire import field_bytes, field_float, field_varint, require_grpc, ser  # noqa: E402
require_grpc("bad_input_table.py")
import grpc  # noqa: E402
from kserve import grpc_predict_v2_pb2 as kpb  # noqa: E402
from serve_process import ServeProcess  # noqa: E402
from switchyard.v1 import switchyard_pb2 as pb  # noqa: E402

SY = "/switchyard.v1.Switchyard/"
KS = "/inference.GRPCInferenceService/"
STREAMING = {SY + "Generate"}
BIDI = {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}
TOKEN = "s3cret-token-for-bad-input-table"
GOOD_PROMPT = "The jury said that"

OK, INVALID, UNAUTH, NOT_FOUND, UNIMPL, EXHAUSTED, PRECONDITION = (
    "OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND", "UNIMPLEMENTED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION")


def infer(text="The jury", params=None, **kw):
    """A ModelInferRequest: one text_input tensor holding `text` (None: no contents)."""
    req = kpb.ModelInferRequest(model_name=kw.pop("model_name", "brown-moe"))
    inp = req.inputs.add(name=kw.pop("input_name", "text_input"),
                         datatype=kw.pop("datatype", "BYTES"))
    inp.shape.extend(kw.pop("shape", [1]))
    if text is not None:
        inp.contents.bytes_contents.append(text.encode() if isinstance(text, str) else text)
    for name, (kind, value) in (params or {}).items():
        setattr(req.parameters[name], kind, value)
    for k, v in kw.items():
        setattr(req, k, v)
    return req


def raw_elem(data):
    return struct.pack("<I", len(data)) + data


# ---- the rows --------------------------------------------------------------------------

class Row:
    def __init__(self, server, method, request, desc, code, prefix=None, metadata=None,
                 note=None):
        self.server, self.method, self.request, self.desc = server, method, request, desc
        self.code, self.prefix, self.metadata, self.note = code, prefix, metadata, note
        self.got_code = self.got_message = None


def rows(long_prompt, over_context_prompt):
    R = []

    def add(*a, **kw):
        R.append(Row(*a, **kw))

    G, C = SY + "Generate", SY + "Complete"
    # -- switchyard.v1 Generate / Complete: the fields of GenerateRequest ------------------
    add("plain", C, ser(pb.GenerateRequest()), "empty GenerateRequest (no text, no token_ids)",
        INVALID, "text, token_ids:")
    add("plain", G, ser(pb.GenerateRequest(text="The jury", token_ids=[1, 336])),
        "text \"The jury\" and token_ids [1,336] (both)", INVALID, "text, token_ids:")
    add("plain", G, ser(pb.GenerateRequest(text="")), "text \"\" (set, empty)", INVALID,
        "text:")
    add("plain", G, ser(pb.GenerateRequest(token_ids=[1, -1, 5])), "token_ids [1,-1,5]",
        INVALID, "token_ids[1]:")
    add("plain", C, ser(pb.GenerateRequest(token_ids=[1, 4096])),
        "token_ids [1,4096] (vocab is 4096)", INVALID, "token_ids[1]:")
    add("plain", C, ser(pb.GenerateRequest(token_ids=[2**31 - 1])), "token_ids [2147483647]",
        INVALID, "token_ids[0]:")
    add("plain", C, ser(pb.GenerateRequest(token_ids=[5] * 1024, max_tokens=1)),
        "token_ids: 1024 ids (the whole context), max_tokens 1", INVALID, "token_ids:")
    add("plain", C, ser(pb.GenerateRequest(text=long_prompt, max_tokens=1)),
        f"text of {len(long_prompt)} bytes that tokenizes past the 1024-token context",
        INVALID, "text:")
    add("plain", G, ser(pb.GenerateRequest(text=over_context_prompt, max_tokens=500)),
        f"text of {len(over_context_prompt)} bytes (601 tokens) + max_tokens 500", INVALID,
        "max_tokens:")
    add("plain", C, ser(pb.GenerateRequest(token_ids=[5] * 1000, max_tokens=100)),
        "token_ids: 1000 ids + max_tokens 100", INVALID, "max_tokens:")
    add("plain", G, ser(pb.GenerateRequest(text="The jury", max_tokens=0)), "max_tokens 0",
        INVALID, "max_tokens:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", max_tokens=-5)), "max_tokens -5",
        INVALID, "max_tokens:")
    add("plain", G, ser(pb.GenerateRequest(text="The jury", max_tokens=2**31 - 1)),
        "max_tokens 2147483647", INVALID, "max_tokens:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", temperature=-0.5)),
        "temperature -0.5", INVALID, "temperature:")
    add("plain", G, ser(pb.GenerateRequest(text="The jury", temperature=float("nan"))),
        "temperature NaN", INVALID, "temperature:")
    add("plain", C, field_bytes(2, b"The jury") + field_float(5, float("inf")),
        "temperature +inf (float bytes by hand)", INVALID, "temperature:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", temperature=float("-inf"))),
        "temperature -inf", INVALID, "temperature:")
    add("plain", G, ser(pb.GenerateRequest(text="The jury", top_p=0.0)), "top_p 0", INVALID,
        "top_p:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", top_p=1.5)), "top_p 1.5",
        INVALID, "top_p:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", top_p=-0.1)), "top_p -0.1",
        INVALID, "top_p:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", top_p=float("nan"))), "top_p NaN",
        INVALID, "top_p:")
    add("plain", G, ser(pb.GenerateRequest(text="The jury", top_k=-1)), "top_k -1", INVALID,
        "top_k:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", stop=[f"s{i}" for i in range(9)])),
        "9 stop strings (at most 8)", INVALID, "stop:")
    add("plain", G, ser(pb.GenerateRequest(text="The jury", stop=["ok", ""])),
        "stop [\"ok\", \"\"] (empty stop string)", INVALID, "stop[1]:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", stop=["x" * 65])),
        "stop [65 x \"x\"] (at most 64 bytes)", INVALID, "stop[0]:")
    add("plain", C, ser(pb.GenerateRequest(text="The jury", stop=["x" * 100000])),
        "stop [100,000-byte string]", INVALID, "stop[0]:")
    add("plain", G, ser(pb.GenerateRequest(text="The jury", model="mixtral-8x7b")),
        "model \"mixtral-8x7b\" (serves brown-moe)", INVALID, "model:")
    add("plain", C, ser(pb.GenerateRequest(token_ids=[1, 336], model="brown-moe ")),
        "model \"brown-moe \" (trailing space)", INVALID, "model:")
    add("plain", C, ser(pb.GenerateRequest(text="x" * 20000, max_tokens=1)),
        "text of 20,000 bytes (limit 15,360)", INVALID, "text:")
    add("plain", G, ser(pb.GenerateRequest(text="a" * 4_000_000, max_tokens=1)),
        "text of 4,000,000 bytes (under --max-message-bytes)", INVALID, "text:")
    add("plain", C, ser(pb.GenerateRequest(text="a" * 5_000_000, max_tokens=1)),
        "text of 5,000,000 bytes (over --max-message-bytes 4 MiB)", EXHAUSTED)
    # -- bytes that do not parse, invalid UTF-8 in string fields ---------------------------
    add("plain", C, field_bytes(2, b"The jury \xff\xfe") + field_varint(4, 4),
        "text with bytes ff fe (invalid UTF-8, built by hand)", INVALID, "request:")
    add("plain", G, field_bytes(2, b"caf\xc3") + field_varint(4, 4),
        "text ending in a lone UTF-8 lead byte c3", INVALID, "request:")
    add("plain", C, field_bytes(2, b"\xc0\xaf") + field_varint(4, 4),
        "text c0 af (overlong encoding of '/')", INVALID, "request:")
    add("plain", C, field_bytes(2, b"\xed\xa0\x80") + field_varint(4, 4),
        "text ed a0 80 (UTF-16 surrogate D800)", INVALID, "request:")
    add("plain", C, field_bytes(2, b"The jury") + field_bytes(9, b"\x80"),
        "stop [\"\\x80\"] (invalid UTF-8)", INVALID, "request:")
    add("plain", G, field_bytes(1, b"brown\xff") + field_bytes(2, b"The jury"),
        "model \"brown\\xff\" (invalid UTF-8)", INVALID, "request:")
    add("plain", C, b"\xff\xff\xff\xff\xff", "bytes ff ff ff ff ff (a tag varint that never ends)",
        INVALID, "request:")
    add("plain", G, b"\x12\x40The jury", "text length 64 but 8 bytes follow (truncated)",
        INVALID, "request:")
    add("plain", C, b"\x12", "a lone tag byte (text field, no length)", INVALID, "request:")
    add("plain", C, b"\x1a\x03\x01\xff\xff", "packed token_ids whose last varint is cut",
        INVALID, "request:")
    add("plain", C, b"\x0f\x00", "field 1 with wire type 7 (no such wire type)", INVALID,
        "request:")
    add("plain", C, b"\x0b\x12\x02hi", "start-group of field 1 never closed", INVALID,
        "request:")
    add("plain", C, b"\x10\x05", "text (field 2) sent as a varint: wrong wire type",
        INVALID, "text, token_ids:",
        note="parses (the mismatched field is kept as an unknown field), so the request has "
             "no prompt")
    # -- Tokenize / Detokenize / GetModelInfo / GetClusterStatus ---------------------------
    add("plain", SY + "Tokenize", ser(pb.TokenizeRequest(text="y" * 20000)),
        "Tokenize text of 20,000 bytes", INVALID, "text:")
    add("plain", SY + "Tokenize", field_bytes(1, b"ab\xfe"), "Tokenize text ab fe (invalid UTF-8)",
        INVALID, "request:")
    add("plain", SY + "Tokenize", ser(pb.TokenizeRequest(text="z" * 4_500_000)),
        "Tokenize text of 4,500,000 bytes (over 4 MiB)", EXHAUSTED)
    add("plain", SY + "Detokenize", ser(pb.DetokenizeRequest(token_ids=[1, -7])),
        "Detokenize token_ids [1,-7]", INVALID, "token_ids[1]:")
    add("plain", SY + "Detokenize", ser(pb.DetokenizeRequest(token_ids=[4096])),
        "Detokenize token_ids [4096]", INVALID, "token_ids[0]:")
    add("plain", SY + "Detokenize", b"\x0a\x05\x01\x02\x03\x04\x85",
        "Detokenize packed ids whose last varint is cut", INVALID, "request:")
    add("plain", SY + "GetModelInfo", b"\xff", "GetModelInfo bytes ff", INVALID, "request:")
    add("plain", SY + "GetClusterStatus", b"\x0a\x05ab", "GetClusterStatus a field cut short",
        INVALID, "request:")
    # -- KServe ModelInfer ------------------------------------------------------------------
    M = KS + "ModelInfer"
    add("plain", M, ser(infer(model_name="llama")), "model_name \"llama\"", INVALID,
        "model_name:")
    add("plain", M, ser(infer(model_version="2")), "model_version \"2\"", INVALID,
        "model_version:")
    r = infer()
    r.outputs.add(name="logits")
    add("plain", M, ser(r), "outputs [{name: \"logits\"}]", INVALID, "outputs[0].name:")
    add("plain", M, ser(kpb.ModelInferRequest(model_name="brown-moe")), "no inputs", INVALID,
        "inputs:")
    r = infer()
    r.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    add("plain", M, ser(r), "two text_input tensors", INVALID, "inputs:")
    add("plain", M, ser(infer(input_name="prompt")), "input named \"prompt\"", INVALID,
        "inputs[0].name:")
    add("plain", M, ser(infer(datatype="INT32")), "text_input datatype INT32", INVALID,
        "text_input:")
    add("plain", M, ser(infer(datatype="")), "text_input datatype \"\"", INVALID, "text_input:")
    add("plain", M, ser(infer(shape=[2])), "text_input shape [2] (one element given)",
        INVALID, "text_input:")
    add("plain", M, ser(infer(shape=[])), "text_input shape []", INVALID, "text_input:")
    add("plain", M, ser(infer(shape=[1, 3])), "text_input shape [1,3]", INVALID, "text_input:")
    add("plain", M, ser(infer(shape=[-1])), "text_input shape [-1]", INVALID, "text_input:")
    r = infer()
    r.inputs[0].contents.bytes_contents.append(b"second")
    add("plain", M, ser(r), "shape [1] with 2 bytes_contents", INVALID, "text_input:")
    add("plain", M, ser(infer(text=None)), "shape [1], no contents at all", INVALID,
        "text_input:")
    add("plain", M, ser(infer(text="")), "bytes_contents [\"\"] (empty prompt)", INVALID,
        "text_input:")
    r = infer()
    r.raw_input_contents.append(raw_elem(b"The jury"))
    add("plain", M, ser(r), "both bytes_contents and raw_input_contents", INVALID,
        "text_input:")
    r = infer(text=None)
    r.raw_input_contents.extend([raw_elem(b"The jury"), raw_elem(b"x")])
    add("plain", M, ser(r), "raw_input_contents with 2 entries", INVALID,
        "raw_input_contents:")
    r = infer(text=None)
    r.raw_input_contents.append(b"\x08\x00")
    add("plain", M, ser(r), "raw_input_contents[0] of 2 bytes (no 4-byte length)", INVALID,
        "raw_input_contents[0]:")
    r = infer(text=None)
    r.raw_input_contents.append(struct.pack("<I", 100) + b"The jury")
    add("plain", M, ser(r), "raw_input_contents[0] length prefix 100, 8 bytes follow",
        INVALID, "raw_input_contents[0]:")
    r = infer(text=None)
    r.raw_input_contents.append(struct.pack("<I", 0))
    add("plain", M, ser(r), "raw_input_contents[0] an empty string", INVALID, "text_input:")
    add("plain", M, ser(infer(params={"beam_width": ("int64_param", 4)})),
        "parameter beam_width", INVALID, "parameters:")
    add("plain", M, ser(infer(params={"max_tokens": ("string_param", "8")})),
        "max_tokens as string_param \"8\"", INVALID, "max_tokens:")
    add("plain", M, ser(infer(params={"max_tokens": ("double_param", 8.0)})),
        "max_tokens as double_param 8.0", INVALID, "max_tokens:")
    add("plain", M, ser(infer(params={"max_tokens": ("int64_param", 0)})), "max_tokens 0",
        INVALID, "max_tokens:")
    add("plain", M, ser(infer(params={"max_tokens": ("int64_param", 2**63 - 1)})),
        "max_tokens 2^63-1", INVALID, "max_tokens:")
    add("plain", M, ser(infer(params={"max_tokens": ("uint64_param", 2**64 - 1)})),
        "max_tokens uint64 2^64-1", INVALID, "max_tokens:")
    add("plain", M, ser(infer(params={"max_tokens": ("int64_param", 1024)})),
        "max_tokens 1024 (prompt + 1024 > the 1024-token context)", INVALID, "max_tokens:")
    add("plain", M, ser(infer(params={"temperature": ("double_param", -1.0)})),
        "temperature double -1", INVALID, "temperature:")
    add("plain", M, ser(infer(params={"temperature": ("double_param", float("nan"))})),
        "temperature double NaN", INVALID, "temperature:")
    add("plain", M, ser(infer(params={"temperature": ("double_param", 1e300)})),
        "temperature double 1e300 (inf as a float)", INVALID, "temperature:")
    add("plain", M, ser(infer(params={"temperature": ("int64_param", -2)})),
        "temperature int64 -2", INVALID, "temperature:")
    add("plain", M, ser(infer(params={"temperature": ("bool_param", True)})),
        "temperature bool true", INVALID, "temperature:")
    add("plain", M, ser(infer(params={"top_p": ("double_param", 0.0)})), "top_p double 0",
        INVALID, "top_p:")
    add("plain", M, ser(infer(params={"top_p": ("double_param", 1e-300)})),
        "top_p double 1e-300 (0 as a float)", INVALID, "top_p:")
    add("plain", M, ser(infer(params={"top_p": ("double_param", 1.0000001)})),
        "top_p double 1.0000001", INVALID, "top_p:")
    add("plain", M, ser(infer(params={"top_p": ("string_param", "0.9")})),
        "top_p string \"0.9\"", INVALID, "top_p:")
    add("plain", M, ser(infer(params={"top_k": ("int64_param", -3)})), "top_k int64 -3",
        INVALID, "top_k:")
    add("plain", M, ser(infer(params={"top_k": ("uint64_param", 2**63)})), "top_k uint64 2^63",
        INVALID, "top_k:")
    add("plain", M, ser(infer(params={"seed": ("int64_param", -1)})), "seed int64 -1",
        INVALID, "seed:")
    add("plain", M, ser(infer(params={"seed": ("double_param", 1.5)})), "seed double 1.5",
        INVALID, "seed:")
    add("plain", M, ser(infer(params={"stop": ("bool_param", True)})), "stop bool true",
        INVALID, "stop:")
    add("plain", M, ser(infer(params={"stop": ("string_param", "")})), "stop string \"\"",
        INVALID, "stop[0]:")
    add("plain", M, ser(infer(params={"stop": ("string_param", "q" * 65)})),
        "stop string of 65 bytes", INVALID, "stop[0]:")
    add("plain", M, ser(infer(text="w" * 20000)), "text_input of 20,000 bytes", INVALID,
        "text_input:")
    add("plain", M, ser(infer(text=long_prompt)),
        f"text_input of {len(long_prompt)} bytes that tokenizes past the 1024-token context",
        INVALID, "text_input:")
    add("plain", M, ser(infer(text="w" * 5_000_000)), "text_input of 5,000,000 bytes (> 4 MiB)",
        EXHAUSTED)
    add("plain", M, ser(infer(text=b"The jury \xff\xfe", params={"max_tokens": ("int64_param", 4)})),
        "text_input bytes \"The jury \\xff\\xfe\" (invalid UTF-8 in a BYTES tensor)", INVALID,
        "text_input:", note="a BYTES tensor may hold any bytes, but a prompt must be text: "
                            "refused as switchyard.v1 refuses a string that is not UTF-8")
    add("plain", M, field_bytes(1, b"brown-moe\xff"), "model_name \"brown-moe\\xff\" (invalid UTF-8)",
        INVALID, "request:")
    add("plain", M, b"\x2a\x07\x0a\x0atext_input", "inputs[0] whose length runs past the end",
        INVALID, "request:")
    # -- KServe ModelReady / ModelMetadata / others ----------------------------------------
    add("plain", KS + "ModelReady", ser(kpb.ModelReadyRequest(name="llama")),
        "ModelReady name \"llama\"", NOT_FOUND, "name:")
    add("plain", KS + "ModelReady", ser(kpb.ModelReadyRequest(name="brown-moe", version="2")),
        "ModelReady brown-moe version \"2\"", NOT_FOUND, "name:")
    add("plain", KS + "ModelReady", ser(kpb.ModelReadyRequest()), "ModelReady name \"\"",
        NOT_FOUND, "name:")
    add("plain", KS + "ModelMetadata", ser(kpb.ModelMetadataRequest(name="BROWN-MOE")),
        "ModelMetadata name \"BROWN-MOE\"", NOT_FOUND, "name:")
    add("plain", KS + "ModelMetadata", field_bytes(1, b"\xfe\xff"),
        "ModelMetadata name fe ff (invalid UTF-8)", INVALID, "request:")
    add("plain", KS + "ServerMetadata", b"\x80", "ServerMetadata bytes 80", INVALID,
        "request:")
    add("plain", KS + "RepositoryModelLoad", ser(kpb.RepositoryModelLoadRequest(model_name="x")),
        "RepositoryModelLoad model_name \"x\"", UNIMPL, "RepositoryModelLoad:")
    add("plain", KS + "ModelStatistics", b"", "ModelStatistics (not offered)", UNIMPL,
        "unknown method")
    add("plain", KS + "SystemSharedMemoryStatus", b"", "SystemSharedMemoryStatus (not offered)",
        UNIMPL, "unknown method")
    add("plain", SY + "Embed", b"\x0a\x02hi", "switchyard.v1.Switchyard/Embed (no such method)",
        UNIMPL, "unknown method")
    # -- --auth-token-file ------------------------------------------------------------------
    good = ser(pb.GenerateRequest(text="The jury", max_tokens=2))
    bearer = [("authorization", f"Bearer {TOKEN}")]
    add("auth", C, good, "Complete, no authorization metadata", UNAUTH, "missing")
    add("auth", G, good, "Generate, no authorization metadata", UNAUTH, "missing")
    add("auth", C, good, "Complete, Bearer wrong-token", UNAUTH, "invalid bearer token",
        metadata=[("authorization", "Bearer wrong-token")])
    add("auth", C, good, "Complete, Bearer token + trailing space", UNAUTH,
        "invalid bearer token", metadata=[("authorization", f"Bearer {TOKEN} ")])
    add("auth", C, good, "Complete, Basic <token>", UNAUTH, "invalid bearer token",
        metadata=[("authorization", f"Basic {TOKEN}")])
    add("auth", C, good, "Complete, the bare token (no scheme)", UNAUTH,
        "invalid bearer token", metadata=[("authorization", TOKEN)])
    add("auth", C, good, "Complete, token prefix (Bearer + first 10 chars)", UNAUTH,
        "invalid bearer token", metadata=[("authorization", f"Bearer {TOKEN[:10]}")])
    add("auth", M, ser(infer()), "ModelInfer, no token", UNAUTH, "missing")
    add("auth", KS + "ModelReady", ser(kpb.ModelReadyRequest(name="brown-moe")),
        "ModelReady, no token", UNAUTH, "missing")
    add("auth", KS + "ServerLive", b"", "ServerLive, no token", UNAUTH, "missing")
    add("auth", SY + "Tokenize", ser(pb.TokenizeRequest(text="The jury")), "Tokenize, no token",
        UNAUTH, "missing")
    add("auth", SY + "GetClusterStatus", b"", "GetClusterStatus, no token", UNAUTH, "missing")
    add("auth", C, b"\xff\xff\xff", "Complete, unparsable bytes, no token", UNAUTH, "missing")
    add("auth", C, b"\xff\xff\xff", "Complete, unparsable bytes, right token", INVALID,
        "request:", metadata=bearer)
    add("auth", C, field_bytes(2, b"\xff"), "Complete, invalid UTF-8 text, wrong token", UNAUTH,
        "invalid bearer token", metadata=[("authorization", "Bearer nope")])
    add("auth", C, ser(pb.GenerateRequest(text="The jury", top_p=2.0)),
        "Complete top_p 2, right token", INVALID, "top_p:", metadata=bearer)
    add("auth", "/grpc.health.v1.Health/Check", b"", "Health/Check, no token (stays open)", OK)
    add("auth", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        field_bytes(7, b""), "reflection list_services, no --expose-reflection", UNIMPL,
        "unknown method /grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo: server "
        "reflection is off")
    # -- a checkpoint without tokenizer.model ------------------------------------------------
    add("noTok", C, ser(pb.GenerateRequest(text="hello", max_tokens=2)),
        "text \"hello\" (no tokenizer.model)", INVALID, "text:")
    add("noTok", G, ser(pb.GenerateRequest(token_ids=[1, 5], stop=["x"], max_tokens=2)),
        "token_ids [1,5] with stop [\"x\"] (no tokenizer.model)", INVALID, "stop:")
    add("noTok", SY + "Tokenize", ser(pb.TokenizeRequest(text="hello")),
        "Tokenize (no tokenizer.model)", PRECONDITION, "Tokenize:")
    add("noTok", SY + "Detokenize", ser(pb.DetokenizeRequest(token_ids=[5])),
        "Detokenize (no tokenizer.model)", PRECONDITION, "Detokenize:")
    add("noTok", M, ser(infer(model_name="model", text="hello")),
        "ModelInfer text_input \"hello\" (no tokenizer.model)", INVALID, "text_input:")
    return R


# ---- sending ---------------------------------------------------------------------------

def identity(b):
    return b


def send(channel, row, timeout=120):
    """Returns (code name, details) for one row."""
    try:
        if row.method in BIDI:
            call = channel.stream_stream(row.method, request_serializer=identity,
                                         response_deserializer=identity)
            list(call(iter([row.request]), timeout=timeout, metadata=row.metadata))
        elif row.method in STREAMING:
            call = channel.unary_stream(row.method, request_serializer=identity,
                                        response_deserializer=identity)
            list(call(row.request, timeout=timeout, metadata=row.metadata))
        else:
            call = channel.unary_unary(row.method, request_serializer=identity,
                                       response_deserializer=identity)
            call(row.request, timeout=timeout, metadata=row.metadata)
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""
    return "OK", ""


def generate(stub_channel, req, metadata=None):
    stub = stub_channel.unary_stream(SY + "Generate", request_serializer=ser,
                                     response_deserializer=pb.GenerateResponse.FromString)
    ids, text, last = [], "", None
    for msg in stub(req, timeout=300, metadata=metadata):
        ids += msg.token_ids
        text += msg.text
        last = msg
    return ids, text, pb.FinishReason.Name(last.finish_reason), last.completion_tokens


def complete(channel, req, metadata=None):
    call = channel.unary_unary(SY + "Complete", request_serializer=ser,
                               response_deserializer=pb.CompleteResponse.FromString)
    r = call(req, timeout=300, metadata=metadata)
    return list(r.token_ids), r.text, pb.FinishReason.Name(r.finish_reason), r.completion_tokens


def wait_for_binary(path, seconds=180):
    """The binary may be missing for a moment while someone rebuilds it."""
    deadline = time.time() + seconds
    while not (os.path.isfile(path) and os.access(path, os.X_OK)):
        if time.time() > deadline:
            sys.exit(f"{path} is missing")
        time.sleep(5)
    time.sleep(1)


def md_escape(s):
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_code(s):
    s = s.replace("|", "\\|").replace("\n", " ")
    return f"`{s}`" if "`" not in s else s


def markdown(all_rows):
    out = ["| # | method | request | status | message |", "| --- | --- | --- | --- | --- |"]
    for i, r in enumerate(all_rows, 1):
        server = {"plain": "", "auth": " (auth)", "noTok": " (no tokenizer)"}[r.server]
        method = r.method.rsplit("/", 1)[1] if not r.method.startswith("/grpc.") else r.method[1:]
        if r.method.startswith(KS):
            method = "KServe " + method
        msg = r.got_message if len(r.got_message) <= 400 else r.got_message[:400] + "..."
        note = f" ({r.note})" if r.note else ""
        out.append(f"| {i} | {method}{server} | {md_escape(r.desc)}{md_escape(note)} | "
                   f"{r.got_code} | {md_code(msg) if msg else '(none)'} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "cli", "switchyard"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "brown-moe"))
    ap.add_argument("--work", help="scratch folder (default: a new temporary one, removed)")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--no-token-ids-only", action="store_true",
                    help="skip the server on a synthetic checkpoint without tokenizer.model")
    a = ap.parse_args()

    work = a.work or tempfile.mkdtemp(prefix="bad_input_table.")
    os.makedirs(work, exist_ok=True)
    wait_for_binary(a.binary)
    # Our own copy: a rebuild in the meantime cannot swap the binary under the servers.
    binary = os.path.join(work, "switchyard")
    shutil.copy2(a.binary, binary)
    started = time.monotonic()

    plain_dir, auth_dir, notok_dir = (os.path.join(work, d) for d in ("plain", "auth", "notok"))
    for d in (plain_dir, auth_dir, notok_dir):
        os.makedirs(d, exist_ok=True)
    token_file = os.path.join(auth_dir, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    notok_model = None
    if not a.no_token_ids_only:
        notok_model = os.path.join(notok_dir, "model")
        shutil.rmtree(notok_model, ignore_errors=True)
        subprocess.run([binary, "make-synthetic-model", "--preset", "tiny", "--out", notok_model,
                        "--tokenizer", os.path.join(notok_dir, "none.model")], check=True,
                       capture_output=True)

    failures = []
    with ServeProcess(binary, a.model, plain_dir) as plain, \
            ServeProcess(binary, a.model, auth_dir, "--auth-token-file", token_file) as auth:
        channels = {"plain": grpc.insecure_channel(f"127.0.0.1:{plain.port()}",
                                                   options=[("grpc.max_send_message_length", -1)]),
                    "auth": grpc.insecure_channel(f"127.0.0.1:{auth.port()}")}
        ch = channels["plain"]
        tok = ch.unary_unary(SY + "Tokenize", request_serializer=ser,
                             response_deserializer=pb.TokenizeResponse.FromString)
        # A text under the byte limit that tokenizes past the context, and one of 601 tokens.
        long_prompt = "the " * 1100
        n = len(tok(pb.TokenizeRequest(text=long_prompt), timeout=60).token_ids)
        assert n > 1024, n
        over = "the " * 600
        n_over = len(tok(pb.TokenizeRequest(text=over), timeout=60).token_ids)
        assert n_over == 601, n_over

        # The reference outputs, before any bad input.
        ref_req = pb.GenerateRequest(text=GOOD_PROMPT, max_tokens=16, ignore_eos=True)
        samp_req = pb.GenerateRequest(text=GOOD_PROMPT, max_tokens=12, temperature=0.8,
                                      top_k=40, top_p=0.9, seed=7, ignore_eos=True)
        long_req = pb.GenerateRequest(text=GOOD_PROMPT, max_tokens=200, ignore_eos=True)
        ref = generate(ch, ref_req)
        ref_samp = complete(ch, samp_req)
        ref_long = generate(ch, long_req)
        ref_auth = complete(channels["auth"], ref_req, [("authorization", f"Bearer {TOKEN}")])

        # A stream runs while the bad requests arrive; it must come out the same.
        during = {}

        def stream():
            try:
                during["out"] = generate(ch, long_req)
            except grpc.RpcError as e:
                during["error"] = f"{e.code().name}: {e.details()}"

        streamer = threading.Thread(target=stream)
        streamer.start()

        table = rows(long_prompt, over)
        for r in (r for r in table if r.server != "noTok"):
            r.got_code, r.got_message = send(channels[r.server], r)
        streamer.join()

        after = generate(ch, ref_req)
        after_samp = complete(ch, samp_req)
        after_complete = complete(ch, ref_req)
        after_auth = complete(channels["auth"], ref_req, [("authorization", f"Bearer {TOKEN}")])
        checks = [
            ("greedy Generate after the bad inputs equals before", after == ref, after, ref),
            ("greedy Generate finished LENGTH with 16 tokens",
             ref[2] == "FINISH_REASON_LENGTH" and ref[3] == 16 and len(ref[0]) == 16, ref, None),
            ("Complete equals Generate (ids, text)", after_complete == ref, after_complete, ref),
            ("sampled Complete (seed 7) after equals before", after_samp == ref_samp,
             after_samp, ref_samp),
            ("200-token stream during the bad inputs equals it alone",
             during.get("out") == ref_long, during, ref_long[:2]),
            ("auth server: Complete with the token after equals before", after_auth == ref_auth,
             after_auth, ref_auth),
            ("the auth server's answer equals the plain server's", ref_auth == ref, ref_auth, ref),
        ]
        for what, ok, got, want in checks:
            if not ok:
                failures.append(f"CHECK FAILED: {what}: got {got!r}, want {want!r}")
        for name, server in (("plain", plain), ("auth", auth)):
            if server.proc.poll() is not None:
                failures.append(f"the {name} server died (exit {server.proc.returncode})")
        for c in channels.values():
            c.close()
    # Both exited 0 after SIGTERM (ServeProcess checks it), so none crashed.
    for name, log in (("plain", plain.output), ("auth", auth.output)):
        for bad in ("libprotobuf", "Segmentation", "terminate called", "Aborted", " critical:"):
            if bad in log:
                failures.append(f"the {name} server's log has {bad!r}")

    if notok_model is not None:
        with ServeProcess(binary, notok_model, notok_dir) as notok:
            channel = grpc.insecure_channel(f"127.0.0.1:{notok.port()}")
            for r in (r for r in table if r.server == "noTok"):
                r.got_code, r.got_message = send(channel, r)
            channel.close()
    else:
        table = [r for r in table if r.server != "noTok"]

    for i, r in enumerate(table, 1):
        status = "ok"
        if r.got_code != r.code:
            status = "MISMATCH"
            failures.append(f"row {i} {r.method} [{r.server}] {r.desc}: expected {r.code}, got "
                            f"{r.got_code}: {r.got_message!r}")
        elif r.prefix and not r.got_message.startswith(r.prefix):
            status = "MESSAGE"
            failures.append(f"row {i} {r.method} [{r.server}] {r.desc}: message should start "
                            f"with {r.prefix!r}, got {r.got_message!r}")
        print(f"{i:3d} {status:8s} {r.method.rsplit('/', 1)[1]:18s} {r.got_code:20s} "
              f"{r.desc[:60]} :: {r.got_message[:110]}")

    elapsed = time.monotonic() - started
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(markdown(table))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seconds": round(elapsed, 1),
                       "rows": [{"n": i, "server": r.server, "method": r.method,
                                 "request": r.desc, "expected": r.code, "status": r.got_code,
                                 "message": r.got_message, "note": r.note}
                                for i, r in enumerate(table, 1)],
                       "failures": failures}, f, indent=1)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(table)} rows in {elapsed:.0f} s; the servers answered correctly after them"
          if not failures else "")
    if failures:
        print("\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
