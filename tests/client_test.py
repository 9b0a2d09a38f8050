#!/usr/bin/python3
"""`switchyard client` against a real server, over mutual TLS with a token: generate (streamed),
complete, tokenize, health, status and info, their JSON, exit codes and request ids;
`switchyard loadgen` over the same connection flags; and examples/client.py over them too.

usage: client_test.py SWITCHYARD MODEL TESTDATA WORKDIR   (PYTHONPATH: the generated stubs)"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_process import ServeProcess  # noqa: E402

binary, model, testdata, work = sys.argv[1:5]
os.makedirs(work, exist_ok=True)
crt, key = os.path.join(testdata, "server.crt"), os.path.join(testdata, "server.key")
token = os.path.join(work, "token")
with open(token, "w") as f:
    f.write("s3cret\n")


def client(*args, check=True):
    p = subprocess.run([binary, "client", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


with ServeProcess(binary, model, work, "--tls-cert", crt, "--tls-key", key, "--tls-client-ca", crt,
                  "--auth-token-file", token) as server:
    port = server.port()
    conn = ["--target", f"localhost:{port}", "--tls-ca", crt, "--tls-cert", crt, "--tls-key", key,
            "--token-file", token]
    # generate streams text; --json gives the whole result with the request id.
    streamed = client("generate", *conn, "--prompt", "The jury said that", "--max-tokens", "12")
    assert streamed.stdout.startswith(" "), streamed.stdout  # the first token's leading space
    g = json.loads(client("generate", *conn, "--prompt", "The jury said that", "--max-tokens", "12",
                          "--request-id", "client-test-1", "--json").stdout)
    assert g["text"] == streamed.stdout.rstrip("\n"), (g, streamed.stdout)
    assert g["request_id"] == "client-test-1" and g["completion_tokens"] == len(g["token_ids"]), g
    c = json.loads(client("complete", *conn, "--prompt", "The jury said that", "--max-tokens", "12",
                          "--json").stdout)
    assert c["text"] == g["text"] and c["token_ids"] == g["token_ids"], (c, g)
    assert c["request_id"] and c["request_id"] != "client-test-1", c
    ids = json.loads(client("tokenize", *conn, "--text", "The jury said that", "--json").stdout)
    assert ids["token_ids"] == [1, 336, 501, 1182, 554, 330], ids
    assert client("tokenize", *conn, "--text", "The jury").stdout.strip() == "1 336 501 1182"
    by_ids = json.loads(client("complete", *conn, "--token-ids", "1 336 501 1182 554 330",
                               "--max-tokens", "12", "--json").stdout)
    assert by_ids["token_ids"] == g["token_ids"], by_ids
    assert client("health", *conn).stdout.strip() == "SERVING"
    info = json.loads(client("info", *conn, "--json").stdout)
    assert info["name"] == "brown-moe", info
    status = json.loads(client("status", *conn, "--json").stdout)
    assert "ranks" in status, status
    # A refused call: exit 1, the status code, the field and the request id on stderr.
    bad = client("complete", *conn, "--prompt", "x", "--top-p", "0", check=False)
    assert bad.returncode == 1 and "INVALID_ARGUMENT: top_p" in bad.stderr, bad.stderr
    assert "(request id " in bad.stderr, bad.stderr
    # Without the token: UNAUTHENTICATED; without a client certificate: no connection.
    noauth = [a for a in conn if a not in ("--token-file", token)]
    assert "UNAUTHENTICATED" in client("info", *noauth, check=False).stderr
    nocert = ["--target", f"localhost:{port}", "--tls-ca", crt, "--token-file", token,
              "--timeout", "5"]
    assert client("info", *nocert, check=False).returncode == 1
    # loadgen takes the same connection flags.
    lg = subprocess.run([binary, "loadgen", *conn, "--requests", "4", "--concurrency", "2",
                         "--max-tokens", "8", "--json"], capture_output=True, text=True, timeout=120)
    assert lg.returncode == 0, lg.stderr
    lgj = json.loads(lg.stdout)
    assert lgj["errors"] == {}, lg.stdout
    # The client's own CPU time over the run: more than nothing, at most its threads' share.
    assert 0 < lgj["cpu_s"] <= lgj["wall_s"] * (os.cpu_count() or 1) + 0.05, lg.stdout
    # The example client over mutual TLS with a token and a request id, started by whatever
    # python3 comes first on PATH (it restarts under Debian's when that one lacks grpc).
    example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "client.py")
    python3 = shutil.which("python3") or "/usr/bin/python3"
    out = subprocess.run([python3, example, "--target", f"localhost:{port}", "--prompt",
                          "The jury said that", "--max-tokens", "8", "--tls-ca", crt, "--tls-cert",
                          crt, "--tls-key", key, "--token-file", token, "--request-id",
                          "flags-test-1", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.stdout, out.stderr)
    result = json.loads(out.stdout)
    assert result["completion_tokens"] == 8 and result["text"].startswith(" "), result
    assert result["request_id"] == "flags-test-1", result
log = server.output
assert "access: id=client-test-1 " in log, log
assert "access: id=flags-test-1 " in log and "status=OK" in log, log
print("client: 15 checks passed")
