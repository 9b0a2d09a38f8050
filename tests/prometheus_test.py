#!/usr/bin/python3
"""A real Prometheus server scrapes a 4-rank serving cluster (EP 2 x PP 2, brown-moe) through
`serve --http-listen`; the test sends known traffic over gRPC and checks, through Prometheus's
HTTP API, the values it can predict:
  - requests by method and code, finish reasons, and one latency observation per request;
  - prompt and generated tokens the scheduler ran;
  - tokens per (layer, expert) summing, per layer, to top-k x the tokens that went through the
    model (a request's prompt and all its generated tokens but the last);
  - every rank computing, and the dispatched-bytes matrix agreeing with the per-rank totals.
The exposition itself is checked with `promtool check metrics`. Skips (exit 77), saying why,
only when Debian's prometheus package is not installed.

    tests/prometheus_test.py SWITCHYARD_BINARY MODEL_DIR WORK_DIR
"""
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from grpc_wire import require_grpc  # noqa: E402

require_grpc("prometheus_test.py")
import grpc  # noqa: E402
from switchyard.v1 import switchyard_pb2, switchyard_pb2_grpc  # noqa: E402

CLUSTER = os.path.join(os.path.dirname(HERE), "launch", "cluster.sh")
PROMPTS = ["The jury said that", "The President told reporters", "It was a", "Le café",
           "Atlanta's recent primary election produced", "We", "No one knew why the",
           "In the morning", "The city council voted", "Two", "Mr. Brown said", "After the war"]
MAX_TOKENS = 9


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


class Prometheus:
    """A Prometheus server on loopback scraping `target` every second."""

    def __init__(self, work, target):
        self.dir = os.path.join(work, "prometheus")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
                    "scrape_configs:\n  - job_name: switchyard\n"
                    f"    static_configs:\n      - targets: ['{target}']\n")
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                if get(self.url("/-/ready"))[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError("prometheus did not start: " + open(self.log.name).read())
            time.sleep(0.2)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def query(self, expr):
        """{label-tuple: value} of an instant query's vector result."""
        status, body = get(self.url("/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        data = json.loads(body)
        assert data["status"] == "success", data
        out = {}
        for r in data["data"]["result"]:
            key = tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "job", "instance")))
            out[key] = float(r["value"][1])
        return out

    def scalar(self, expr):
        values = list(self.query(expr).values())
        return values[0] if len(values) == 1 else None

    def wait_for(self, expr, want, what, timeout=30):
        """Polls until `expr` is `want`: the cluster status refreshes every second and
        Prometheus scrapes every second, so a value lags by up to about two."""
        deadline = time.time() + timeout
        got = None
        while time.time() < deadline:
            got = self.scalar(expr)
            if got is not None and abs(got - want) < 1e-6:
                return
            time.sleep(0.5)
        raise AssertionError(f"{what}: {expr} is {got}, want {want}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def main():
    binary, model, work = sys.argv[1:4]
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        print("SKIP: Debian's prometheus package is not installed (launch/install-deps.sh "
              "installs it)")
        return 77
    os.makedirs(work, exist_ok=True)
    cluster = os.path.join(work, "cluster")
    config = json.load(open(os.path.join(model, "config.json")))
    top_k, layers = config["num_experts_per_tok"], config["num_hidden_layers"]
    subprocess.run([CLUSTER, "start", cluster, "4", "2", "2", binary, model, "--kv-blocks", "256",
                    "--http-listen", "127.0.0.1:0", "--http-port-file",
                    os.path.join(cluster, "http_port")], check=True)
    prometheus = None
    try:
        http = "127.0.0.1:" + open(os.path.join(cluster, "http_port")).read().strip()
        status, body = get(f"http://{http}/health")
        assert status == 200 and json.loads(body) == {"status": "serving"}, body
        # The exposition passes Prometheus's own checker (format and naming conventions).
        status, text = get(f"http://{http}/metrics")
        check = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                               capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr

        prometheus = Prometheus(work, http)
        prometheus.wait_for('up{job="switchyard"}', 1, "the target is scraped")

        grpc_port = open(os.path.join(cluster, "port")).read().strip()
        stub = switchyard_pb2_grpc.SwitchyardStub(grpc.insecure_channel("127.0.0.1:" + grpc_port))

        def complete(prompt):
            return stub.Complete(switchyard_pb2.GenerateRequest(
                text=prompt, max_tokens=MAX_TOKENS, ignore_eos=True), timeout=120)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(complete, PROMPTS))
        bad = 0
        for field in ("top_p", "max_tokens"):  # two refusals, counted by code
            try:
                stub.Complete(switchyard_pb2.GenerateRequest(
                    text="x", **{field: 1.5 if field == "top_p" else -1}))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                bad += 1
        assert bad == 2

        n = len(PROMPTS)
        prompt_tokens = sum(r.prompt_tokens for r in results)
        completion = sum(r.completion_tokens for r in results)
        assert all(r.completion_tokens == MAX_TOKENS for r in results)
        method = 'method="switchyard.v1.Switchyard/Complete"'
        prometheus.wait_for(f'switchyard_requests_total{{{method},code="OK"}}', n, "requests OK")
        prometheus.wait_for(f'switchyard_requests_total{{{method},code="INVALID_ARGUMENT"}}', 2,
                            "refused requests")
        prometheus.wait_for('switchyard_request_finished_total{reason="length"}', n,
                            "finish reasons")
        for h in ("time_to_first_token", "e2e_latency", "queue"):
            prometheus.wait_for(f"switchyard_request_{h}_seconds_count", n, h)
        prometheus.wait_for("switchyard_request_inter_token_latency_seconds_count",
                            n * (MAX_TOKENS - 1), "inter-token gaps")
        prometheus.wait_for("switchyard_prompt_tokens_total", prompt_tokens, "prompt tokens")
        prometheus.wait_for("switchyard_generation_tokens_total", completion - n,
                            "generated tokens fed back")
        prometheus.wait_for('sum(switchyard_step_tokens_sum{kind="prefill"})', prompt_tokens,
                            "prefill tokens over steps")
        # Each token through the model is routed to top-k experts in every layer.
        through_model = prompt_tokens + completion - n
        for layer in range(layers):
            prometheus.wait_for(
                f'sum(switchyard_expert_routed_tokens_total{{layer="{layer}"}})',
                top_k * through_model, f"routed tokens of layer {layer}")
        prometheus.wait_for("switchyard_requests_running + switchyard_requests_waiting", 0, "idle")
        prometheus.wait_for('sum(switchyard_kv_blocks_used)', 0, "KV blocks back")

        computing = prometheus.query("switchyard_rank_compute_seconds_total > 0")
        assert len(computing) == 4, computing
        totals = prometheus.query("switchyard_rank_dispatch_sent_bytes_total")
        pairs = prometheus.query("sum by (src) (switchyard_dispatch_sent_bytes_total)")
        assert len(totals) == 4 and all(v > 0 for v in totals.values()), totals
        for (label,), value in pairs.items():
            assert totals[(("rank", label[1]),)] == value, (label, value, totals)
        # EP 2 x PP 2: ranks 0 and 1 form stage 0, ranks 2 and 3 stage 1; no bytes cross.
        across = prometheus.query('switchyard_dispatch_sent_bytes_total{src=~"0|1",dst=~"2|3"}')
        assert all(v == 0 for v in across.values()), across
        replicas = prometheus.query("sum(switchyard_expert_replicas)")
        assert list(replicas.values()) == [layers * config["num_local_experts"]], replicas
        print(f"ok: {n} requests, {prompt_tokens} prompt + {completion} generated tokens; "
              f"routed tokens per layer {top_k * through_model}")
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop = subprocess.run([CLUSTER, "stop", cluster], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    return 0


if __name__ == "__main__":
    sys.exit(main())
