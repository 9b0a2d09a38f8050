#!/usr/bin/python3
"""`serve` refuses bad flags with a message naming the flag, before any rank loads weights:
ports outside 1-65535, an address in use (with the system's reason; --listen and
--http-listen alike), a TLS key that does not
match its certificate, one TLS file without the other; under mpirun only rank 0 says so.
`serve --help` shows every default.

usage: serve_flags_test.py SWITCHYARD MODEL TESTDATA"""
import os
import re
import socket
import subprocess
import sys

binary, model, testdata = sys.argv[1:4]
root = ["--allow-run-as-root"] if os.getuid() == 0 else []
crt, key, other = (os.path.join(testdata, f) for f in ("server.crt", "server.key", "other.key"))


def refused(*flags, np=1):
    cmd = [binary, "serve", "--model", model, *flags]
    if np > 1:
        cmd = ["mpirun", *root, "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
               "--mca", "oob_tcp_if_include", "lo", "-np", str(np), *cmd, "--ep", str(np)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0, (cmd, p.stderr)
    # Log lines: "2026-11-30 03:45:00.123 rank 0 error: MESSAGE"
    errors = [l for l in p.stderr.splitlines() if re.match(r"\S+ \S+ rank 0 error: ", l)]
    assert len(errors) == 1, (cmd, p.stderr)  # once, from rank 0
    assert " error: " not in p.stderr.replace(errors[0], ""), p.stderr
    # Nothing was loaded: the shard line every rank prints after loading never appears.
    assert "weights" not in p.stderr, p.stderr
    return errors[0].split(" error: ", 1)[1]


assert refused("--listen", "127.0.0.1:99999") == \
    "--listen 127.0.0.1:99999: port 99999 is not in 1-65535 (0 picks a free port)"
assert refused("--listen", "127.0.0.1:http").startswith("--listen 127.0.0.1:http: port http")
assert refused("--listen", "localhost").startswith("--listen localhost: want HOST:PORT")
busy = socket.socket()
busy.bind(("127.0.0.1", 0))
busy.listen()
port = busy.getsockname()[1]
msg = refused("--listen", f"127.0.0.1:{port}")
assert msg == f"--listen 127.0.0.1:{port}: address already in use (another server on this port?)", msg
msg = refused("--listen", f"127.0.0.1:{port}", np=2)
assert "address already in use" in msg, msg
# The HTTP listener's address is checked the same way, by its own flag's name.
msg = refused("--listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{port}")
assert msg == f"--http-listen 127.0.0.1:{port}: address already in use (another server on this port?)", msg
assert refused("--http-listen", "127.0.0.1:70000").startswith("--http-listen 127.0.0.1:70000: port")
msg = refused("--listen", "127.0.0.1:50999", "--http-listen", "127.0.0.1:50999")
assert msg.startswith("--http-listen 127.0.0.1:50999: the same port as --listen"), msg
assert refused("--tls-cert", crt, "--tls-key", other).startswith(
    f"--tls-key: the private key in {other} does not match the certificate in {crt}")
assert refused("--tls-cert", crt) == "--tls-cert and --tls-key: give both PEM files, or neither"
msg = refused("--tls-cert", crt, "--tls-key", other, np=2)
assert "does not match" in msg, msg

assert refused("--tls-client-ca", crt).startswith("--tls-client-ca: mutual TLS needs")
assert refused("--rebalance-interval", "8").startswith(
    "--rebalance-interval: moving experts needs expert parallelism (--ep 2 or more)")

# A bearer token over plaintext on a non-loopback address is served, with a warning.
token = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"serve_flags_token_{os.getpid()}")
with open(token, "w") as f:
    f.write("s3cret\n")
server = subprocess.Popen([binary, "serve", "--model", model, "--listen", "0.0.0.0:0",
                           "--auth-token-file", token], stderr=subprocess.PIPE, text=True)
lines = []
for line in server.stderr:
    lines.append(line)
    if "serving" in line:
        break
server.terminate()
server.communicate(timeout=60)
os.remove(token)
assert any(re.match(r"\S+ \S+ rank 0 warning: --auth-token-file without TLS on 0.0.0.0:0", l)
           for l in lines), lines

help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
for default in ["--listen TEXT=127.0.0.1:50051", "--max-queue INT:INT in [1 - 1048576]=256",
                "--drain-timeout FLOAT:FLOAT in [0 - 3600]=30", "--kv-memory BYTES=1GiB"]:
    assert default in help_text, (default, help_text)
print("serve flags: 13 checks passed")
