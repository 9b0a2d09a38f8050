#!/usr/bin/python3
"""The official OpenAI client for Node (npm's openai, tests/node) against a 4-rank serving
cluster (EP 2 x PP 2): completions and chat, plain and streamed, must equal the gRPC answer to the
same request; refusals arrive as the client's APIError with status and param. Skips (exit 77),
saying why, only when Node.js or the npm package is missing (launch/install-deps.sh installs
it with `npm ci`).

    tests/openai_node_test.py SWITCHYARD_BINARY MODEL_DIR WORK_DIR
"""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from grpc_wire import require_grpc  # noqa: E402

require_grpc("openai_node_test.py")
import grpc  # noqa: E402
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc  # noqa: E402

CLUSTER = os.path.join(os.path.dirname(HERE), "launch", "cluster.sh")
NODE_DIR = os.path.join(HERE, "node")
TOKEN = "node-client-token"


def main():
    binary, model, work = sys.argv[1:4]
    node = shutil.which("node")
    if node is None:
        print("SKIP: Node.js is not installed")
        sys.exit(77)
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "openai")):
        print("SKIP: npm's openai is not installed in tests/node (run launch/install-deps.sh, "
              "which runs `npm ci` there)")
        sys.exit(77)
    os.makedirs(work, exist_ok=True)
    cluster = os.path.join(work, "cluster")
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN)
    subprocess.run([CLUSTER, "start", cluster, "4", "2", "2", binary, model, "--kv-blocks", "128",
                    "--http-listen", "127.0.0.1:0", "--http-port-file",
                    os.path.join(cluster, "http_port"), "--auth-token-file", token_file,
                    "--chat-template", "mixtral"], check=True)
    try:
        port = open(os.path.join(cluster, "http_port")).read().strip()
        run = subprocess.run([node, os.path.join(NODE_DIR, "openai_client_test.mjs"), port, TOKEN],
                             capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise AssertionError(f"node client failed:\n{run.stdout}\n{run.stderr}")
        got = json.loads(run.stdout)
        print(json.dumps(got, indent=1, ensure_ascii=False))
        stub = switchyard_pb2_grpc.SwitchyardStub(grpc.insecure_channel(
            "127.0.0.1:" + open(os.path.join(cluster, "port")).read().strip()))
        auth = (("authorization", f"Bearer {TOKEN}"),)
        want = stub.Complete(switchyard_pb2.GenerateRequest(text="The jury said that",
                                                            max_tokens=16), metadata=auth)
        assert got["models"] == ["brown-moe"], got["models"]
        assert got["completion"] == want.text, (got["completion"], want.text)
        assert got["completion_stream"] == want.text, got["completion_stream"]
        assert got["usage"]["completion_tokens"] == want.completion_tokens, got["usage"]
        # The chat answer is the completion of the rendered conversation's token ids.
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", int(port))
        conn.request("POST", "/tokenize", json.dumps(
            {"messages": [{"role": "user", "content": "Who was on the jury?"}]}),
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        ids = json.loads(conn.getresponse().read())["tokens"]
        req = switchyard_pb2.GenerateRequest(max_tokens=12)
        req.token_ids.extend(ids)
        chat = stub.Complete(req, metadata=auth)
        assert got["chat"] == chat.text and got["chat_role"] == "assistant", (got["chat"], chat.text)
        assert got["chat_stream"] == chat.text, got["chat_stream"]
        assert got["chat_stream_usage"]["prompt_tokens"] == len(ids), got["chat_stream_usage"]
        assert got["n2"]["status"] == 400 and got["n2"]["param"] == "n", got["n2"]
        assert got["unknown_model"]["status"] == 404, got["unknown_model"]
        assert got["bad_key"]["status"] == 401, got["bad_key"]
    finally:
        stop = subprocess.run([CLUSTER, "stop", cluster], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    print("PASS")


if __name__ == "__main__":
    main()
