#!/usr/bin/python3
"""launch/netns-cluster.sh end to end: two emulated nodes joined by a 1 Gbit/s link; preflight
across them sees two hosts, classes its links as within and between nodes, and measures the
link at its shaped rate (not the machine's memory speed); `down` removes every namespace.
Root only, with network namespaces: skipped (exit 77, with the reason) elsewhere.

  netns_cluster_test.py REPO_ROOT SWITCHYARD
"""
import json
import os
import shutil
import subprocess
import sys

root, binary = sys.argv[1:3]
script = os.path.join(root, "launch", "netns-cluster.sh")
os.environ["SWITCHYARD_BIN"] = binary


def skip(why):
    print(f"SKIPPED: {why}")
    sys.exit(77)


if os.geteuid() != 0:
    skip("needs root (network namespaces and tc)")
for tool in ("ip", "tc", "unshare", "mpirun"):
    if shutil.which(tool) is None:
        skip(f"{tool} is not installed")
probe = subprocess.run(["ip", "netns", "add", "sy-probe"], capture_output=True, text=True)
if probe.returncode != 0:
    skip(f"network namespaces are not available here: {probe.stderr.strip()}")
subprocess.run(["ip", "netns", "del", "sy-probe"], check=True)
if subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode != 0:
    skip("unshare --uts (a host name per node) is not permitted here")
if subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.count("sy-node"):
    skip("an emulated cluster is already up (launch/netns-cluster.sh down)")

SMALL = ["--latency-iters", "10", "--bandwidth-iters", "2", "--bandwidth-bytes", "1MiB",
         "--copy-bytes", "16MiB", "--matmul-n", "1024", "--matmul-k", "1024",
         "--prefill-rows", "16"]
RATE = 125e6  # 1 Gbit/s in bytes per second

up = subprocess.run([script, "up", "--rate", "1gbit"], capture_output=True, text=True)
if up.returncode != 0:
    subprocess.run([script, "down"], capture_output=True)
    skip(f"the emulated link cannot be built here (veth, tc tbf): {up.stderr.strip()}")
try:
    # One rank per node: the one pair crosses the link.
    r = subprocess.run([script, "run", "1", "preflight", "--json", *SMALL], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    c = json.loads(r.stdout)
    assert c["hosts"] == ["node0", "node1"], c["hosts"]
    link = c["links"]["between_nodes"]
    assert list(c["links"]) == ["between_nodes"], c["links"]
    assert 0.5 * RATE < link["bandwidth_bytes_per_s"] < 1.1 * RATE, link
    print(f"1 rank per node: {link['bandwidth_bytes_per_s'] / 1e6:.0f} MB/s, "
          f"{link['latency_s'] * 1e6:.1f} us between the nodes")

    # Two ranks per node: both classes, the link far slower than within a node.
    r = subprocess.run([script, "run", "2", "preflight", "--json", *SMALL], capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    c = json.loads(r.stdout)
    assert c["hosts"] == ["node0", "node0", "node1", "node1"], c["hosts"]
    within, between = c["links"]["within_node"], c["links"]["between_nodes"]
    assert within["ordered_pairs"] == 4 and between["ordered_pairs"] == 8, c["links"]
    assert between["bandwidth_bytes_per_s"] < 1.1 * RATE, between
    assert within["bandwidth_bytes_per_s"] > 4 * between["bandwidth_bytes_per_s"], c["links"]
finally:
    down = subprocess.run([script, "down"], capture_output=True, text=True)
left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
assert down.returncode == 0 and "sy-node" not in left, (down.stdout, down.stderr, left)
print("down: no namespace left")
