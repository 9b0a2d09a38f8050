#!/usr/bin/python3
"""Memory soak: many mixed requests against one server, and does its memory grow?

Starts `switchyard serve` (one plain process, or under mpirun with --mpi N --ep E --pp P, as
launch/cluster.sh does), then sends --requests requests from --concurrency client threads:

  kind         share  what                                                     expected
  generate     40%    Generate, a short prompt (text or token ids), 1-8 tokens  OK
  complete     25%    Complete, the same                                        OK
  kserve       12%    KServe ModelInfer, 1-8 tokens                             OK
  tokenize      4%    Tokenize / Detokenize                                     OK
  info          3%    GetModelInfo / GetClusterStatus / KServe ModelReady       OK
  cancel        5%    Generate of 64 tokens, cancelled after the first message  CANCELLED
  bad          10%    invalid fields, unparsable bytes, invalid UTF-8, bad      the code each
                      KServe tensors, unknown model/method, no or a wrong token  one should get
                      (with auth, the default)
  oversized     1%    a text prompt of a few MB (3 MB: INVALID_ARGUMENT;        as said
                      4.5 MB, over --max-message-bytes: RESOURCE_EXHAUSTED)

Greedy and seeded outputs are also compared across calls and APIs: the same prompt and
parameters must give the same text every time (batching never changes a request's output).

Every second it samples the RSS of every server process (under mpirun: each rank, found as a
child of mpirun by OMPI_COMM_WORLD_RANK in /proc/PID/environ). At the end it fits a
least-squares line to RSS against requests completed, leaving out the warm-up (samples
before the first 10% of requests completed), and reports per process the slope in MB
(10^6 bytes) per 10,000 requests, the max RSS, and the counts by kind and status.

Exit status 1 when any slope is >= --slope-limit (1 MB per 10,000 requests), a server
process died, the job did not exit 0 on SIGTERM, or any request got an unexpected outcome.

  /usr/bin/python3 tests/soak.py [--requests 100000] [--concurrency 16]
      [--mpi N --ep E --pp P] [--no-auth] [--json FILE] [--binary B] [--model DIR]
"""
import argparse
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from grpc_wire import field_bytes, require_grpc, ser  # noqa: E402
require_grpc("soak.py")
import grpc  # noqa: E402
from kserve import grpc_predict_v2_pb2 as kpb  # noqa: E402
from switchyard.v1 import switchyard_pb2 as pb  # noqa: E402

SY = "/switchyard.v1.Switchyard/"
KS = "/inference.GRPCInferenceService/"
TOKEN = "soak-test-token-0123456789"
PROMPTS = ["The jury said that", "It was a bright cold day", "The city council voted",
           "In the morning the farmers", "She opened the door and", "The president of the",
           "A new school was built", "He said he would not", "The weather in the north",
           "They found the old man"]
KINDS = [("generate", 40), ("complete", 25), ("kserve", 12), ("tokenize", 4), ("info", 3),
         ("cancel", 5), ("bad", 10), ("oversized", 1)]


def identity(b):
    return b


def infer_request(text, max_tokens=None, temperature=None, seed=None, shape=(1,)):
    r = kpb.ModelInferRequest(model_name="")
    i = r.inputs.add(name="text_input", datatype="BYTES", shape=list(shape))
    i.contents.bytes_contents.append(text if isinstance(text, bytes) else text.encode())
    if max_tokens is not None:
        r.parameters["max_tokens"].int64_param = max_tokens
    if temperature is not None:
        r.parameters["temperature"].double_param = temperature
    if seed is not None:
        r.parameters["seed"].uint64_param = seed
    return r


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def mpi_ranks(mpirun_pid):
    """{rank: pid} of the children of mpirun that carry OMPI_COMM_WORLD_RANK."""
    ranks = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != mpirun_pid:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                ranks[int(kv.split(b"=", 1)[1])] = int(d)
    return ranks


def wait_for_binary(path, seconds=180):
    deadline = time.time() + seconds
    while not (os.path.isfile(path) and os.access(path, os.X_OK)):
        if time.time() > deadline:
            sys.exit(f"{path} is missing")
        time.sleep(5)
    time.sleep(1)


class Server:
    """The serving job: one process, or mpirun with N ranks. `pids` maps rank -> pid."""

    def __init__(self, a, binary, work):
        self.work = work
        self.port_file = os.path.join(work, "port")
        self.log_file = os.path.join(work, "serve.log")
        serve = [binary, "serve", "--model", a.model, "--listen", "127.0.0.1:0",
                 "--port-file", self.port_file, *a.serve_flag]
        if a.auth:
            self.token_file = os.path.join(work, "token")
            with open(self.token_file, "w") as f:
                f.write(TOKEN + "\n")
            serve += ["--auth-token-file", self.token_file]
        self.mpi = a.mpi
        if a.mpi:
            serve += ["--ep", str(a.ep), "--pp", str(a.pp)]
            flags = ["--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader",
                     "--mca", "oob_tcp_if_include", "lo"]
            if os.environ.get("OMP_NUM_THREADS"):
                flags += ["-x", "OMP_NUM_THREADS"]
            if os.getuid() == 0:
                flags.append("--allow-run-as-root")
            self.args = ["mpirun", *flags, "-np", str(a.mpi), *serve]
        else:
            self.args = serve
        self.pids = {}

    def start(self):
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        with open(self.log_file, "w") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while not (os.path.exists(self.port_file) and os.path.getsize(self.port_file) > 0):
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.args} exited {self.proc.returncode}:\n{self.log()}")
            if time.time() > deadline:
                self.proc.kill()
                raise SystemExit(f"{self.args} did not start in 300 s:\n{self.log()}")
            time.sleep(0.1)
        self.port = open(self.port_file).read().strip()
        if self.mpi:
            for _ in range(100):
                self.pids = mpi_ranks(self.proc.pid)
                if len(self.pids) == self.mpi:
                    break
                time.sleep(0.1)
            if len(self.pids) != self.mpi:
                raise SystemExit(f"found ranks {self.pids} of mpirun {self.proc.pid}, want "
                                 f"{self.mpi}")
        else:
            self.pids = {0: self.proc.pid}

    def log(self):
        with open(self.log_file, errors="replace") as f:
            return f.read()

    def dead(self):
        """The ranks (or the job) that are gone."""
        gone = [r for r, pid in self.pids.items() if rss_kb(pid) is None]
        if self.proc.poll() is not None:
            gone.append("job")
        return gone

    def stop(self, timeout=120):
        """SIGTERM to rank 0 (it drains and releases the workers); the job's exit code."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pids[0], signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return "killed after timeout"
        return self.proc.returncode


class Soak:
    def __init__(self, a, channel):
        self.a = a
        self.n = a.requests
        self.ch = channel
        self.md = [("authorization", f"Bearer {TOKEN}")] if a.auth else None
        self.lock = threading.Lock()
        self.next_index = 0
        self.completed = 0
        self.counts = Counter()          # (kind, status)
        self.unexpected = Counter()      # (kind, label, status)
        self.examples = {}               # first detail per unexpected kind
        self.outputs = {}                # (prompt, max_tokens, temperature, seed) -> text
        self.output_mismatches = 0
        self.stop = threading.Event()
        u = lambda m: channel.unary_unary(m, request_serializer=identity,  # noqa: E731
                                          response_deserializer=identity)
        self.raw = {m: u(m) for m in (SY + "Complete", SY + "Tokenize", SY + "Detokenize",
                                      SY + "GetModelInfo", SY + "GetClusterStatus",
                                      KS + "ModelInfer", KS + "ModelReady", SY + "Nope")}
        self.raw_stream = channel.unary_stream(SY + "Generate", request_serializer=identity,
                                               response_deserializer=identity)
        self.generate = channel.unary_stream(SY + "Generate", request_serializer=ser,
                                             response_deserializer=pb.GenerateResponse.FromString)
        self.complete = channel.unary_unary(SY + "Complete", request_serializer=ser,
                                            response_deserializer=pb.CompleteResponse.FromString)
        self.infer = channel.unary_unary(KS + "ModelInfer", request_serializer=ser,
                                         response_deserializer=kpb.ModelInferResponse.FromString)
        self.tokenize = channel.unary_unary(SY + "Tokenize", request_serializer=ser,
                                            response_deserializer=pb.TokenizeResponse.FromString)
        self.detokenize = channel.unary_unary(
            SY + "Detokenize", request_serializer=ser,
            response_deserializer=pb.DetokenizeResponse.FromString)
        # The prompts as token ids (with BOS), for token_ids requests.
        self.prompt_ids = [list(self.tokenize(pb.TokenizeRequest(text=p), timeout=120,
                                              metadata=self.md).token_ids) for p in PROMPTS]
        self.bad = self._bad_requests()
        big = "the jury " * (3_000_000 // 9)
        huge = "a" * 4_500_000
        self.oversized = [
            ("complete 3MB", self.raw[SY + "Complete"], ser(pb.GenerateRequest(text=big, max_tokens=4)),
             "INVALID_ARGUMENT"),
            ("generate 3MB", self.raw_stream, ser(pb.GenerateRequest(text=big, max_tokens=4)),
             "INVALID_ARGUMENT"),
            ("kserve 3MB", self.raw[KS + "ModelInfer"], ser(infer_request(big, 4)),
             "INVALID_ARGUMENT"),
            ("tokenize 3MB", self.raw[SY + "Tokenize"], ser(pb.TokenizeRequest(text=big)),
             "INVALID_ARGUMENT"),
            ("complete 4.5MB", self.raw[SY + "Complete"],
             ser(pb.GenerateRequest(text=huge, max_tokens=4)), "RESOURCE_EXHAUSTED"),
        ]
        self.kind_table = []
        for kind, share in KINDS:
            self.kind_table += [kind] * share

    def _bad_requests(self):
        C, G = self.raw[SY + "Complete"], self.raw_stream
        M = self.raw[KS + "ModelInfer"]
        inv = "INVALID_ARGUMENT"
        bad = [
            ("top_p 2", C, ser(pb.GenerateRequest(text="The jury", top_p=2.0)), inv, True),
            ("max_tokens 0", G, ser(pb.GenerateRequest(text="The jury", max_tokens=0)), inv, True),
            ("temperature -1", C, ser(pb.GenerateRequest(text="The jury", temperature=-1)), inv,
             True),
            ("token id 5000", C, ser(pb.GenerateRequest(token_ids=[1, 5000])), inv, True),
            ("both text and ids", G, ser(pb.GenerateRequest(text="a", token_ids=[1])), inv, True),
            ("9 stop strings", C, ser(pb.GenerateRequest(text="a", stop=list("abcdefghi"))), inv,
             True),
            ("prompt+max_tokens > context", C,
             ser(pb.GenerateRequest(token_ids=[5] * 1000, max_tokens=100)), inv, True),
            ("text over 15360 bytes", C, ser(pb.GenerateRequest(text="x" * 20000)), inv, True),
            ("unknown model", C, ser(pb.GenerateRequest(text="a", model="nope")), inv, True),
            ("unparsable bytes", C, b"\xff\xff\xff\xff", inv, True),
            ("invalid UTF-8 text", G, field_bytes(2, b"The jury \xff\xfe"), inv, True),
            ("Tokenize invalid UTF-8", self.raw[SY + "Tokenize"], field_bytes(1, b"\xc3"), inv,
             True),
            ("Detokenize id -1", self.raw[SY + "Detokenize"],
             ser(pb.DetokenizeRequest(token_ids=[-1])), inv, True),
            ("kserve shape [2]", M, ser(infer_request("The jury", 4, shape=(2,))), inv, True),
            ("kserve temperature 1e300", M, ser(infer_request("The jury", 4, temperature=1e300)),
             inv, True),
            ("kserve unparsable", M, b"\x2a\x10\x0a", inv, True),
            ("ModelReady unknown", self.raw[KS + "ModelReady"],
             ser(kpb.ModelReadyRequest(name="nope")), "NOT_FOUND", True),
            ("unknown method", self.raw[SY + "Nope"], b"", "UNIMPLEMENTED", True),
        ]
        if self.a.auth:
            bad += [
                ("no token", C, ser(pb.GenerateRequest(text="The jury", max_tokens=2)),
                 "UNAUTHENTICATED", False),
                ("wrong token", G, ser(pb.GenerateRequest(text="The jury", max_tokens=2)),
                 "UNAUTHENTICATED", "wrong"),
                ("no token, unparsable", C, b"\xff\xff", "UNAUTHENTICATED", False),
            ]
        return bad

    def _note_output(self, key, text, label):
        """The same prompt and parameters must give the same text (any API, any batch)."""
        with self.lock:
            first = self.outputs.setdefault(key, text)
            if first != text:
                self.output_mismatches += 1
                return f"{label}: output {text!r} differs from the first {first!r} for {key}"
        return None

    def _params(self, rng):
        p = rng.randrange(len(PROMPTS))
        max_tokens = rng.randint(1, 8)
        if rng.random() < 0.5:
            return p, max_tokens, None, None
        return p, max_tokens, 0.8, rng.randrange(4)

    def _gen_request(self, rng, p, max_tokens, temperature, seed):
        req = pb.GenerateRequest(max_tokens=max_tokens)
        if rng.random() < 0.3:
            req.token_ids.extend(self.prompt_ids[p])
        else:
            req.text = PROMPTS[p]
        if temperature is not None:
            req.temperature, req.seed = temperature, seed
        return req

    def _check_final(self, label, max_tokens, reason, completion_tokens):
        if reason == pb.FINISH_REASON_LENGTH and completion_tokens == max_tokens:
            return None
        if reason == pb.FINISH_REASON_EOS and 1 <= completion_tokens <= max_tokens:
            return None
        return f"{label}: finish {reason} with {completion_tokens} tokens (max {max_tokens})"

    def one(self, i):
        """Runs request i; returns (kind, label, status, expected status, problem or None)."""
        rng = random.Random(self.a.seed * 1_000_003 + i)
        kind = self.kind_table[rng.randrange(len(self.kind_table))]
        timeout = self.a.timeout
        md = self.md
        label, expected = kind, "OK"
        try:
            if kind in ("generate", "complete"):
                p, mt, temp, seed = self._params(rng)
                req = self._gen_request(rng, p, mt, temp, seed)
                if kind == "generate":
                    text, last = [], None
                    for msg in self.generate(req, timeout=timeout, metadata=md):
                        text.append(msg.text)
                        last = msg
                    problem = self._check_final("generate", mt, last.finish_reason,
                                                last.completion_tokens)
                    text = "".join(text)
                else:
                    r = self.complete(req, timeout=timeout, metadata=md)
                    problem = self._check_final("complete", mt, r.finish_reason,
                                                r.completion_tokens)
                    text = r.text
                problem = problem or self._note_output((p, mt, temp, seed), text, kind)
                return kind, kind, "OK", "OK", problem
            if kind == "kserve":
                p, mt, temp, seed = self._params(rng)
                r = self.infer(infer_request(PROMPTS[p], mt, temp, seed), timeout=timeout,
                               metadata=md)
                text = r.outputs[0].contents.bytes_contents[0].decode("utf-8", "replace")
                problem = None
                if r.parameters["completion_tokens"].int64_param not in range(1, mt + 1):
                    problem = f"kserve: {r.parameters['completion_tokens']} tokens (max {mt})"
                problem = problem or self._note_output((p, mt, temp, seed), text, kind)
                return kind, kind, "OK", "OK", problem
            if kind == "tokenize":
                p = rng.randrange(len(PROMPTS))
                if rng.random() < 0.5:
                    ids = list(self.tokenize(pb.TokenizeRequest(text=PROMPTS[p]), timeout=timeout,
                                             metadata=md).token_ids)
                    ok = ids == self.prompt_ids[p]
                    return kind, "tokenize", "OK", "OK", None if ok else f"tokenize gave {ids}"
                text = self.detokenize(pb.DetokenizeRequest(token_ids=self.prompt_ids[p]),
                                       timeout=timeout, metadata=md).text
                ok = text == PROMPTS[p]
                return kind, "detokenize", "OK", "OK", None if ok else f"detokenize gave {text!r}"
            if kind == "info":
                which = rng.randrange(3)
                if which == 0:
                    self.raw[SY + "GetModelInfo"](b"", timeout=timeout, metadata=md)
                    return kind, "GetModelInfo", "OK", "OK", None
                if which == 1:
                    self.raw[SY + "GetClusterStatus"](b"", timeout=timeout, metadata=md)
                    return kind, "GetClusterStatus", "OK", "OK", None
                r = kpb.ModelReadyResponse.FromString(self.raw[KS + "ModelReady"](
                    ser(kpb.ModelReadyRequest(name=self.a.model_name)), timeout=timeout,
                    metadata=md))
                return kind, "ModelReady", "OK", "OK", None if r.ready else "ModelReady: not ready"
            if kind == "cancel":
                p = rng.randrange(len(PROMPTS))
                call = self.generate(pb.GenerateRequest(text=PROMPTS[p], max_tokens=64,
                                                        ignore_eos=True),
                                     timeout=timeout, metadata=md)
                try:
                    for _ in call:
                        call.cancel()
                        break
                    code = call.code()
                except grpc.RpcError as e:
                    code = e.code()
                return kind, "cancel after first message", code.name, "CANCELLED", None
            if kind == "bad":
                label, method, body, expected, auth = self.bad[rng.randrange(len(self.bad))]
                if auth is True:
                    bmd = md
                elif auth == "wrong":
                    bmd = [("authorization", "Bearer wrong")]
                else:
                    bmd = None
                if method is self.raw_stream:
                    list(method(body, timeout=timeout, metadata=bmd))
                else:
                    method(body, timeout=timeout, metadata=bmd)
                return kind, label, "OK", expected, None
            # oversized
            label, method, body, expected = self.oversized[rng.randrange(len(self.oversized))]
            if method is self.raw_stream:
                list(method(body, timeout=timeout, metadata=md))
            else:
                method(body, timeout=timeout, metadata=md)
            return kind, label, "OK", expected, None
        except grpc.RpcError as e:
            code = e.code().name
            return kind, label, code, expected, \
                None if code == expected else f"{label}: {code}: {e.details()}"

    def worker(self):
        while not self.stop.is_set():
            with self.lock:
                i = self.next_index
                if i >= self.n:
                    return
                self.next_index += 1
            kind, label, status, expected, problem = self.one(i)
            with self.lock:
                self.completed += 1
                self.counts[(kind, status)] += 1
                if status != expected or problem:
                    key = (kind, label, status)
                    self.unexpected[key] += 1
                    self.examples.setdefault(key, problem or f"expected {expected}")


def fit(points):
    """Least-squares slope and intercept of y against x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    slope = sxy / sxx if sxx else 0.0
    return slope, my - slope * mx


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "cli", "switchyard"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "brown-moe"))
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--mpi", type=int, default=0, help="ranks under mpirun (0: one process)")
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--no-auth", dest="auth", action="store_false",
                    help="serve without --auth-token-file (no unauthenticated requests)")
    ap.add_argument("--serve-flag", action="append", default=[],
                    help="extra flag for `switchyard serve` (repeat; e.g. --serve-flag=--device=cpu)")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of requests left out")
    ap.add_argument("--slope-limit", type=float, default=1.0,
                    help="MB per 10,000 requests at or over which a process fails")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per call")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", help="scratch folder (default: a new temporary one, kept if failed)")
    ap.add_argument("--json", help="write the samples and results here")
    ap.add_argument("--progress", type=float, default=30, help="seconds between progress lines")
    a = ap.parse_args()
    if a.mpi and a.mpi != a.ep * a.pp:
        sys.exit(f"--mpi {a.mpi} must equal --ep {a.ep} x --pp {a.pp}")
    a.model = os.path.abspath(a.model)
    a.model_name = os.path.basename(a.model.rstrip("/"))

    work = a.work or tempfile.mkdtemp(prefix="soak.")
    os.makedirs(work, exist_ok=True)
    wait_for_binary(a.binary)
    binary = os.path.join(work, "switchyard")  # our copy: a rebuild cannot swap it under us
    shutil.copy2(a.binary, binary)
    with open(binary, "rb") as f:
        binary_sha = hashlib.sha256(f.read()).hexdigest()

    server = Server(a, binary, work)
    server.start()
    ranks = sorted(server.pids)
    print(f"serving on port {server.port}: {' '.join(server.args)}\n"
          f"processes {server.pids}; {a.requests} requests, concurrency {a.concurrency}",
          flush=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}",
                                    options=[("grpc.max_send_message_length", -1)])
    soak = Soak(a, channel)

    samples, died = [], []
    t0 = time.monotonic()
    load_start = os.getloadavg()

    def sample():
        next_progress = t0 + a.progress
        while not soak.stop.is_set():
            now = time.monotonic()
            rss = {r: rss_kb(server.pids[r]) for r in ranks}
            with soak.lock:
                done = soak.completed
            samples.append({"t": round(now - t0, 2), "completed": done, "rss_kb": rss})
            gone = server.dead()
            if gone:
                died.extend(gone)
                print(f"SERVER DIED: {gone} after {done} requests", flush=True)
                soak.stop.set()
                return
            if now >= next_progress:
                next_progress += a.progress
                rate = done / (now - t0) if now > t0 else 0
                print(f"{now - t0:7.0f} s  {done:7d} done  {rate:6.1f} req/s  RSS MB " +
                      " ".join(f"r{r}={(v or 0) / 1000:.1f}" for r, v in rss.items()),
                      flush=True)
            soak.stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    workers = [threading.Thread(target=soak.worker) for _ in range(a.concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    duration = time.monotonic() - t0
    # One last sample after the end, then stop sampling.
    time.sleep(1.0)
    soak.stop.set()
    sampler.join()
    if not died:
        samples.append({"t": round(time.monotonic() - t0, 2), "completed": soak.completed,
                        "rss_kb": {r: rss_kb(server.pids[r]) for r in ranks}})
    load_end = os.getloadavg()
    channel.close()
    exit_code = server.stop()

    # The fit, per process.
    warm = a.warmup * a.requests
    per_process, failures = {}, []
    for r in ranks:
        pts = [(s["completed"], s["rss_kb"][r] * 1024 / 1e6) for s in samples
               if s["completed"] >= warm and s["rss_kb"].get(r) is not None]
        all_rss = [s["rss_kb"][r] for s in samples if s["rss_kb"].get(r) is not None]
        entry = {"pid": server.pids[r], "samples_fitted": len(pts),
                 "max_rss_mb": round(max(all_rss) * 1024 / 1e6, 1) if all_rss else None,
                 "first_rss_mb": round(all_rss[0] * 1024 / 1e6, 1) if all_rss else None,
                 "last_rss_mb": round(all_rss[-1] * 1024 / 1e6, 1) if all_rss else None}
        if len(pts) >= 3 and pts[-1][0] > pts[0][0]:
            slope, intercept = fit(pts)
            entry["slope_mb_per_10k"] = round(slope * 10000, 4)
            entry["rss_at_warmup_end_mb"] = round(intercept + slope * pts[0][0], 1)
            entry["rss_after_warmup_first_last_mb"] = [round(pts[0][1], 1), round(pts[-1][1], 1)]
            if slope * 10000 >= a.slope_limit:
                failures.append(f"rank {r}: RSS grows {slope * 10000:.3f} MB per 10,000 requests "
                                f"(limit {a.slope_limit})")
        else:
            entry["slope_mb_per_10k"] = None
            failures.append(f"rank {r}: only {len(pts)} samples after the warm-up: no fit")
        per_process[str(r)] = entry
    if died:
        # An outside SIGTERM (someone else's cleanup) drains and exits 0: say so.
        signals = [line for line in server.log().splitlines() if " signal " in line]
        failures.append(f"server process(es) died during the run: {died}" +
                        (f" ({'; '.join(signals)})" if signals else ""))
    if exit_code != 0:
        failures.append(f"the job exited {exit_code} after SIGTERM (want 0)")
    if soak.completed < a.requests:
        failures.append(f"only {soak.completed} of {a.requests} requests completed")
    for (kind, label, status), n in sorted(soak.unexpected.items()):
        failures.append(f"{n} x {kind}/{label}: {status}: {soak.examples[(kind, label, status)]}")
    log = server.log()
    for bad in ("Segmentation", "terminate called", "Aborted", "AddressSanitizer", " critical:",
                "libprotobuf"):
        if bad in log:
            failures.append(f"the server log has {bad!r}")

    by_status = Counter()
    for (kind, status), n in soak.counts.items():
        by_status[status] += n
    by_kind = defaultdict(dict)
    for (kind, status), n in sorted(soak.counts.items()):
        by_kind[kind][status] = n
    result = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(sys.argv),
        "server_command": " ".join(server.args),
        "binary_sha256": binary_sha,
        "requests": a.requests, "completed": soak.completed, "concurrency": a.concurrency,
        "mpi": a.mpi, "ep": a.ep, "pp": a.pp, "auth": a.auth,
        "duration_s": round(duration, 1),
        "requests_per_s": round(soak.completed / duration, 1) if duration else None,
        "loadavg_start": load_start, "loadavg_end": load_end,
        "warmup_requests": int(warm),
        "per_process": per_process,
        "by_status": dict(by_status), "by_kind": by_kind,
        "distinct_outputs_compared": len(soak.outputs),
        "output_mismatches": soak.output_mismatches,
        "server_exit": exit_code, "died": died,
        "failures": failures,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "by_kind"}, indent=1))
    print("by kind: " + json.dumps(by_kind))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"result": result, "samples": samples}, f)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        print(f"server log: {server.log_file}")
        return 1
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"soak passed: {soak.completed} requests in {duration:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
