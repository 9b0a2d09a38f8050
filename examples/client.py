#!/usr/bin/python3
"""Streams a generation from a Switchyard server and prints it as it arrives.

Usage:
  python3 examples/client.py [--target 127.0.0.1:50051] --prompt "The jury said"
      [--max-tokens 48] [--temperature 0] [--seed 0] [--stop STR ...] [--token-file F]
      [--tls-ca CA.pem [--tls-cert CERT.pem --tls-key KEY.pem]] [--request-id ID] [--json]

Needs Debian's python3-grpcio and python3-protobuf, and the Python modules the build
generates into build/python/ (set SWITCHYARD_PYTHON to use another folder). When the first
python3 on PATH lacks grpc (a pyenv or virtualenv Python, say), the client restarts itself
under Debian's /usr/bin/python3.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("SWITCHYARD_PYTHON", os.path.join(HERE, "..", "build", "python")))

try:
    import grpc  # noqa: E402
except ImportError:
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    sys.exit("examples/client.py needs Debian's python3-grpcio: apt-get install python3-grpcio python3-protobuf")
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc  # noqa: E402

FINISH = {v.number: v.name.replace("FINISH_REASON_", "").lower()
          for v in switchyard_pb2.FinishReason.DESCRIPTOR.values}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--stop", action="append", default=[])
    ap.add_argument("--token-file", help="file holding a bearer token (--auth-token-file of the server)")
    ap.add_argument("--tls-ca", help="PEM CA bundle: connect with TLS and verify the server against it")
    ap.add_argument("--tls-cert", help="PEM client certificate (mutual TLS, with --tls-key)")
    ap.add_argument("--tls-key", help="PEM client private key")
    ap.add_argument("--tls-server-name", help="name to verify in the server's certificate (default: the target's host)")
    ap.add_argument("--request-id", help="x-request-id to send (the server makes one otherwise)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    a = ap.parse_args()

    req = switchyard_pb2.GenerateRequest(text=a.prompt, max_tokens=a.max_tokens,
                                         temperature=a.temperature, stop=a.stop)
    if a.top_k is not None:
        req.top_k = a.top_k
    if a.top_p is not None:
        req.top_p = a.top_p
    if a.seed is not None:
        req.seed = a.seed
    metadata = []
    if a.token_file:
        with open(a.token_file) as f:
            metadata.append(("authorization", "Bearer " + f.read().strip()))

    if a.request_id:
        metadata.append(("x-request-id", a.request_id))

    if a.tls_ca or a.tls_cert:
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(a.tls_ca) if a.tls_ca else None,
            private_key=read(a.tls_key) if a.tls_key else None,
            certificate_chain=read(a.tls_cert) if a.tls_cert else None)
        options = [("grpc.ssl_target_name_override", a.tls_server_name)] if a.tls_server_name else []
        channel = grpc.secure_channel(a.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(a.target)
    with channel:
        stub = switchyard_pb2_grpc.SwitchyardStub(channel)
        ids, text, last = [], [], None
        try:
            call = stub.Generate(req, timeout=a.timeout, metadata=metadata)
            for msg in call:
                ids.extend(msg.token_ids)
                text.append(msg.text)
                if not a.json:
                    sys.stdout.write(msg.text)
                    sys.stdout.flush()
                last = msg
        except grpc.RpcError as e:
            rid = dict(e.initial_metadata() or ()).get("x-request-id", "?")
            print(f"\nerror: {e.code().name}: {e.details()} (request id {rid})", file=sys.stderr)
            return 1
        request_id = dict(call.initial_metadata() or ()).get("x-request-id", "")
    reason = FINISH.get(last.finish_reason, "?") if last else "?"
    if a.json:
        print(json.dumps({"text": "".join(text), "token_ids": ids, "finish_reason": reason,
                          "prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                          "request_id": request_id}))
    else:
        print(f"\n[{last.completion_tokens} tokens, finish: {reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
