#!/usr/bin/env python3
"""The GPU checks in one run, trustworthy from their output alone (launch/gpu-check.sh runs
this; see there for the setting). Standard library only: the GPU machine has a bare Python.

  gpu_check.py OUTDIR [--layers N] [--deadline S] [--only STEP,...] [--rerun-failed SUMMARY]

- One overall deadline (default 450 s, under the 10-minute limit of one command): no step
  starts when too little time is left for it, every step runs under `timeout -k`, and the
  summary is written whatever happens (also after SIGTERM).
- OUTDIR receives at most 6 files: summary.json (per step: exit code, seconds, and for the
  test binaries passed/failed/skipped from --gtest_output=xml; the verdict), environment.txt
  (nvidia-smi -q, driver and runtime versions, the cuBLAS/NCCL/CUDA libraries each binary
  loads, NCCL's version), steps.log (each step's command and output, capped per step),
  bench.json (each benchmark's output with GPU clocks before and after), gtest-xml.tar.gz.
- On a GPU (SWITCHYARD_CHECK_DEVICE=cuda, the default) a skipped test counts as failed, except
  a test that needs two ranks or GPUs. SWITCHYARD_CHECK_DEVICE=cpu rehearses the run on a
  machine without one: GPU tests skip (counted, not failed), benchmarks and the sanitizer do
  not run.
- The kit's libraries (gRPC, protobuf, Open MPI, ...) are on the library path of the kit's
  binaries only; Python steps (the end-to-end client, the PyTorch peer) keep this machine's
  own cuBLAS and NCCL.
- --only and --rerun-failed (a previous summary.json) run a subset, for the fix-and-rerun
  cycle (default deadline then 210 s).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP_LOG_CAP = 200_000  # bytes of output kept per step in steps.log
RESERVE = 15            # seconds kept back for writing the summary
ALLOWED_SKIPS = ("two ranks", "two GPUs", "2 GPUs", "second GPU")


class Check:
    def __init__(self, out, deadline, device, kit_bin, kit_env, python, layers):
        self.out, self.device, self.bin, self.kit_env = out, device, kit_bin, kit_env
        self.python, self.layers = python, layers
        self.start = time.monotonic()
        self.deadline = self.start + deadline
        self.steps, self.bench = [], []
        self.xml_dir = tempfile.mkdtemp(prefix="gpu-check-xml-")
        self.log = open(os.path.join(out, "steps.log"), "w")

    def left(self):
        return self.deadline - time.monotonic()

    def run(self, name, cmd, timeout, env=None, kit=True, gtest=False, bench=False, cwd=REPO):
        """Runs one step (unless too little time is left) and records it."""
        rec = {"step": name, "command": " ".join(cmd)}
        budget = min(timeout, self.left() - RESERVE)
        if budget < min(timeout, 20):
            rec.update(status="not_run", reason=f"{self.left():.0f} s left before the deadline")
            self.steps.append(rec)
            return rec
        full_env = dict(self.kit_env if kit else os.environ)
        full_env.update(env or {})
        xml = None
        if gtest:
            xml = os.path.join(self.xml_dir, name + ".xml")
            cmd = cmd + [f"--gtest_output=xml:{xml}"]
        clocks_before = self.clocks() if bench else None
        t0 = time.monotonic()
        p = subprocess.run(["timeout", "-k", "5", str(int(budget)), *cmd], cwd=cwd, env=full_env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        rec["seconds"] = round(time.monotonic() - t0, 2)
        rec["exit_code"] = p.returncode
        text = p.stdout.decode("utf-8", "replace")
        if p.returncode in (124, 137):
            rec["timed_out"] = True
        if gtest:
            rec.update(self.gtest_counts(xml))
        # 77: an MPI test binary whose every test skipped (the counts above judge the skips).
        exit_ok = p.returncode == 0 or (gtest and p.returncode == 77)
        ok = exit_ok and rec.get("failed", 0) == 0
        rec["status"] = "passed" if ok else "failed"
        if bench:
            figures = bench_figures(text)
            self.bench.append({"step": name, "command": rec["command"], "exit_code": p.returncode,
                               "clocks_before": clocks_before, "clocks_after": self.clocks(),
                               "figures": figures, "output": text[-20000:]})
        self.log.write(f"=== {name} ({rec['status']}, exit {p.returncode}, {rec['seconds']} s)\n"
                       f"$ {rec['command']}\n{text[-STEP_LOG_CAP:]}\n")
        self.log.flush()
        self.steps.append(rec)
        print(f"[{time.monotonic() - self.start:6.1f} s] {name}: {rec['status']}"
              f" ({rec['seconds']} s)", flush=True)
        return rec

    def gtest_counts(self, xml):
        """passed/failed/skipped from gtest's XML; on a GPU a skip is a failure unless allowed."""
        if not xml or not os.path.exists(xml):
            return {"passed": 0, "failed": 0, "skipped": 0, "note": "no gtest XML written"}
        passed = failed = skipped = 0
        skips = []
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname')}.{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
            elif case.find("skipped") is not None or case.get("result") == "skipped":
                skipped += 1
                el = case.find("skipped")
                msg = (el.get("message", "") + (el.text or "")) if el is not None else ""
                skips.append({"test": name, "message": msg.strip()[:300]})
            elif case.get("status", "run") == "run":
                passed += 1
        rec = {"passed": passed, "failed": failed, "skipped": skipped}
        if skips:
            rec["skips"] = skips[:50]
        if self.device == "cuda":
            bad = [s for s in skips if not any(a in s["message"] for a in ALLOWED_SKIPS)]
            if bad:
                rec["failed"] = failed + len(bad)
                rec["skipped_counted_as_failed"] = len(bad)
        return rec

    def clocks(self):
        if not shutil.which("nvidia-smi"):
            return None
        q = "clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw,utilization.gpu"
        p = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return p.stdout.strip()

    def environment(self, bins):
        """nvidia-smi -q, versions, and which CUDA libraries each kit binary loads."""
        parts = []

        def add(title, cmd, env=None):
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                                   env=env or os.environ)
                parts.append(f"=== {title}\n$ {' '.join(cmd)}\n{p.stdout}{p.stderr}")
            except (OSError, subprocess.TimeoutExpired) as e:
                parts.append(f"=== {title}\n$ {' '.join(cmd)}\n{e}")

        add("nvidia-smi -q", ["nvidia-smi", "-q"])
        add("nvcc / runtime", ["sh", "-c", "nvcc --version; ls /usr/local/cuda*/lib64/libcudart.so* "
                                           "/usr/local/cuda*/lib64/libcublas.so* 2>/dev/null"])
        add("python and torch", [self.python, "-c",
                                 "import sys, torch; print(sys.version); print('torch', torch.__version__,"
                                 " 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"])
        for b in bins:
            path = os.path.join(self.bin, b)
            add(f"libraries {b} loads", ["sh", "-c", f"ldd {path} | grep -Ei 'cuda|cublas|nccl|grpc|mpi'"],
                env=self.kit_env)
        add("compute-sanitizer", ["sh", "-c", "command -v compute-sanitizer && compute-sanitizer --version"])
        add("CPU and memory", ["sh", "-c", "nproc; free -g; uname -a"])
        with open(os.path.join(self.out, "environment.txt"), "w") as f:
            f.write("\n".join(parts))

    def finish(self, interrupted=False):
        failed = [s["step"] for s in self.steps if s.get("status") == "failed"]
        not_run = [s["step"] for s in self.steps if s.get("status") == "not_run"]
        summary = {
            "device": self.device,
            "verdict": "passed" if not failed and not not_run and not interrupted else "failed",
            "failed_steps": failed,
            "not_run_steps": not_run,
            "interrupted": interrupted,
            "seconds": round(time.monotonic() - self.start, 1),
            "steps": self.steps,
        }
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        with open(os.path.join(self.out, "bench.json"), "w") as f:
            json.dump(self.bench, f, indent=1)
        with tarfile.open(os.path.join(self.out, "gtest-xml.tar.gz"), "w:gz") as t:
            t.add(self.xml_dir, arcname="gtest-xml")
        self.log.close()
        print(f"verdict: {summary['verdict']}; failed: {failed or 'none'}; not run: "
              f"{not_run or 'none'}; {summary['seconds']} s; summary in {self.out}/summary.json",
              flush=True)
        return 0 if summary["verdict"] == "passed" else 1


def bench_figures(text):
    """A benchmark's figures: its `BENCH_JSON {...}` lines, and any JSON object it printed
    over several lines (`switchyard bench ... --json`), each from a line "{" to a line "}"."""
    figures, block = [], None
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            try:
                figures.append(json.loads(line[len("BENCH_JSON "):]))
            except ValueError:
                pass
        elif line == "{":
            block = [line]
        elif block is not None:
            block.append(line)
            if line == "}":
                try:
                    figures.append(json.loads("\n".join(block)))
                except ValueError:
                    pass
                block = None
    return figures


def kit_environment(kit):
    """This machine's environment plus the kit's libraries (and CUDA's, wherever they are)."""
    libdirs = [os.path.join(kit, "lib")]
    for so in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libnccl.so.2"):
        p = subprocess.run(["sh", "-c", f"find /usr/local /usr/lib /opt -name {so} 2>/dev/null | head -1"],
                           capture_output=True, text=True)
        if p.stdout.strip():
            libdirs.append(os.path.dirname(p.stdout.strip()))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(libdirs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    env["SWITCHYARD_SPM_MODULE"] = os.path.join(kit, "bin", "libsy_sentencepiece_module.so")
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=2, help="layers of the Mixtral-shaped shard")
    ap.add_argument("--deadline", type=float, help="seconds for the whole run")
    ap.add_argument("--only", help="comma-separated step names (prefixes) to run")
    ap.add_argument("--rerun-failed", help="a previous summary.json: run its failed and unrun steps")
    ap.add_argument("--kit", help="unpacked kit folder (default: unpack .gpukit/kit.tar.xz); "
                                  "or a build tree with --build-tree")
    ap.add_argument("--build-tree", help="use this CMake build folder's binaries instead of a kit")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    device = os.environ.get("SWITCHYARD_CHECK_DEVICE", "cuda")
    python = os.environ.get("PYTHON", "python3")
    wanted = None
    if a.only:
        wanted = a.only.split(",")
    elif a.rerun_failed:
        prev = json.load(open(a.rerun_failed))
        wanted = prev["failed_steps"] + prev["not_run_steps"]
    deadline = a.deadline or (210 if wanted is not None else 450)

    if a.build_tree:  # rehearsal from a build tree: binaries where CMake put them
        b = os.path.abspath(a.build_tree)
        kit = tempfile.mkdtemp(prefix="gpu-check-tree-")
        os.makedirs(os.path.join(kit, "bin"))
        os.makedirs(os.path.join(kit, "lib"))
        for rel in ("cli/switchyard", "kernels/cuda/kernels_cuda_test", "worker/cuda_executor_test",
                    "comm/nccl_communicator_test", "tests/serve_e2e_test",
                    "tests/distributed_cuda_test",
                    "bench/cuda/bench_decode_cuda", "bench/cuda/bench_grouped_gemm_cuda",
                    "bench/cuda/bench_dispatch_cuda", "lib/libsy_sentencepiece_module.so"):
            if os.path.exists(os.path.join(b, rel)):
                os.symlink(os.path.join(b, rel), os.path.join(kit, "bin", os.path.basename(rel)))
        os.symlink(os.path.join(b, "python"), os.path.join(kit, "python"))
    else:
        kit = a.kit or "/tmp/switchyard-kit"
        if not a.kit:
            shutil.rmtree(kit, ignore_errors=True)
            os.makedirs(kit)
            subprocess.run(["tar", "-C", kit, "-xJf", os.path.join(REPO, ".gpukit", "kit.tar.xz")], check=True)
        # The tests find models/ and tests/data/ under the source root they were built in.
        root_file = os.path.join(kit, "source-root")
        root = open(root_file).read().strip() if os.path.exists(root_file) else ""
        if root and root != REPO and not os.path.exists(root):
            os.makedirs(os.path.dirname(root), exist_ok=True)
            os.symlink(REPO, root)
    env = kit_environment(kit)
    c = Check(a.out, deadline, device, os.path.join(kit, "bin"), env, python, a.layers)

    def on_term(signum, frame):
        sys.exit(c.finish(interrupted=True))
    signal.signal(signal.SIGTERM, on_term)

    def want(name):
        return wanted is None or any(name.startswith(w) for w in wanted)

    S = os.path.join(kit, "bin", "switchyard")
    gpu = device == "cuda"
    if want("environment"):
        c.environment(["switchyard", "kernels_cuda_test", "cuda_executor_test", "nccl_communicator_test"])
    # Debug mode for the kernel tests: an asynchronous error names the kernel that caused it.
    sync = {"SWITCHYARD_CUDA_SYNC": "1"}
    if want("kernels_cuda_test"):
        c.run("kernels_cuda_test", [os.path.join(kit, "bin", "kernels_cuda_test")], 180, env=sync, gtest=True)
    if want("cuda_executor_test"):
        c.run("cuda_executor_test", [os.path.join(kit, "bin", "cuda_executor_test")], 180, gtest=True)
    if want("nccl_communicator_test"):
        c.run("nccl_communicator_test", [os.path.join(kit, "bin", "nccl_communicator_test")], 120,
              env={"NCCL_DEBUG": "INFO"}, gtest=True)
    # The distributed GPU path on this one GPU: 2 and 4 ranks sharing it (staged and NCCL
    # device communicators; NCCL needs 2.30+ for two ranks on one GPU and says so when older).
    mpirun, mpi_env = shutil.which("mpirun"), {}
    kit_ompi = os.path.join(kit, "ompi")
    if mpirun is None and os.path.exists(os.path.join(kit_ompi, "bin", "mpirun")):
        # The kit's relocatable Open MPI (launch/pack-openmpi.sh).
        mpirun = os.path.join(kit_ompi, "bin", "mpirun")
        mpi_env = {"OPAL_PREFIX": kit_ompi,
                   "PMIX_PREFIX": os.path.join(kit_ompi, "lib", "x86_64-linux-gnu", "pmix2"),
                   "LD_LIBRARY_PATH": ":".join([os.path.join(kit_ompi, "lib"),
                                                os.path.join(kit_ompi, "lib", "x86_64-linux-gnu",
                                                             "openmpi", "lib"),
                                                env.get("LD_LIBRARY_PATH", "")]).rstrip(":"),
                   "PATH": os.path.join(kit_ompi, "bin") + ":" + env.get("PATH", "")}
    # Containers often forbid the cross-process memory copy Open MPI's shared-memory transport
    # uses by default.
    mpi_env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
    mpi_env["NCCL_MULTI_RANK_GPU_ENABLE"] = "1"  # NCCL 2.30+: two ranks may share the GPU

    def mpi(np_, *cmd):
        """`cmd` on np_ ranks, with the libraries and variables the ranks need."""
        return [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(np_), "-x", "LD_LIBRARY_PATH",
                "-x", "NCCL_MULTI_RANK_GPU_ENABLE", "-x", "SWITCHYARD_SPM_MODULE", *cmd]

    for np_ in (2, 4):
        name = f"distributed_cuda_test_np{np_}"
        if not want(name):
            continue
        if mpirun is None:
            c.steps.append({"step": name, "status": "not_run",
                            "reason": "no mpirun on this machine and none in the kit"})
            continue
        c.run(name, mpi(np_, os.path.join(kit, "bin", "distributed_cuda_test")), 240, env=mpi_env,
              gtest=True)
    if gpu and shutil.which("compute-sanitizer"):
        for tool in ("memcheck", "racecheck"):
            if want(f"sanitizer_{tool}"):
                r = c.run(f"sanitizer_{tool}", ["compute-sanitizer", "--tool", tool, "--error-exitcode", "3",
                                                os.path.join(kit, "bin", "kernels_cuda_test")], 240, gtest=True)
                # Some GPU machines refuse the device to the sanitizer: record that, go on.
                if r.get("status") == "failed" and r.get("exit_code") not in (3, 124, 137):
                    r["status"], r["note"] = "refused", "compute-sanitizer could not use the device"
    for d in ("cpu", device) if device != "cpu" else ("cpu",):
        if want(f"generate_{d}"):
            c.run(f"generate_{d}", [S, "generate", "--model", "models/brown-moe", "--device", d,
                                    "--prompt", "The jury said that", "--max-tokens", "20", "--json"], 90)
    if want(f"serve_e2e_{device}"):
        serve_e2e(c, S, kit, device, python, env)
    if gpu:
        mx = f"/tmp/switchyard-mx{a.layers}"
        if want("bench") and not os.path.exists(os.path.join(mx, "config.json")):
            c.run("synthetic_shard", [S, "make-synthetic-model", "--preset", "mixtral-8x7b", "--layers",
                                      str(a.layers), "--out", mx], 300)
        B = lambda n: os.path.join(kit, "bin", n)  # noqa: E731
        if want("bench_decode"):
            c.run("bench_decode", [B("bench_decode_cuda"), "--model", mx, "--batches", "1,8,64"], 180, bench=True)
        if want("bench_grouped_gemm"):
            c.run("bench_grouped_gemm", [B("bench_grouped_gemm_cuda"), "--tokens", "4096", "--experts", "8",
                                         "--top-k", "2", "--padded"], 120, bench=True)
        if want("bench_dispatch"):
            for comm in ("nccl", "staged"):
                c.run(f"bench_dispatch_{comm}", [B("bench_dispatch_cuda"), "--tokens", "1,8,128,4096",
                                                 "--comm", comm], 120, bench=True)
        if want("torch_peer"):
            c.run("torch_peer", [python, "bench/torch_peer.py", "--model", mx, "--device", "cuda", "--dtype",
                                 "bf16", "--tokens", "64", "--prefill-len", "512", "--repeats", "2"], 300,
                  kit=False, bench=True)
        # Hugging Face transformers' MixtralForCausalLM against our CPU path and the fixture
        # (PyTorch's own environment; the kit's libraries for the switchyard binary only).
        if want("hf_reference"):
            c.run("hf_reference", [python, "bench/hf_reference.py", "--switchyard", S, "--device", "cuda",
                                   "--switchyard-ld-path", env.get("LD_LIBRARY_PATH", "")], 240,
                  kit=False, env={"SWITCHYARD_SPM_MODULE": env.get("SWITCHYARD_SPM_MODULE", "")},
                  bench=True)
        # Decode on EP 2 over this one GPU (two ranks sharing it) at batch 1/8/64, beside the
        # single-rank figures above: the distributed path's own cost.
        for comm in ("staged", "nccl"):
            name = f"bench_decode_ep2_{comm}"
            if not want(name):
                continue
            if mpirun is None:
                c.steps.append({"step": name, "status": "not_run", "reason": "no mpirun"})
                continue
            if comm == "nccl" and os.environ.get("SWITCHYARD_NCCL_MULTI_RANK") != "1":
                # Two ranks on one GPU need NCCL 2.30+ (../shared/tools/nccl-2.30.7-sm90 on the
                # library path; then set SWITCHYARD_NCCL_MULTI_RANK=1).
                c.steps.append({"step": name, "status": "skipped",
                                "reason": "two ranks on one GPU over NCCL need NCCL 2.30+; "
                                          "SWITCHYARD_NCCL_MULTI_RANK=1 not set"})
                continue
            for batch in (1, 8, 64):
                c.run(f"{name}_b{batch}",
                      mpi(2, S, "bench", "decode", "--model", mx, "--ep", "2", "--device", "cuda",
                          "--share-gpu", "--device-comm", comm, "--batch", str(batch), "--tokens", "32",
                          "--repeats", "2", "--json"), 90, env=mpi_env, bench=True)
    return c.finish()


def serve_e2e(c, S, kit, device, python, env):
    """serve --device DEVICE, then the C++ and Python end-to-end tests against it."""
    name = f"serve_e2e_{device}"
    if c.left() - RESERVE < 60:
        c.steps.append({"step": name, "status": "not_run", "reason": "too little time left"})
        return
    work = tempfile.mkdtemp(prefix="gpu-check-serve-")
    # The server's log goes to a file: a pipe nobody reads would fill and stall the server.
    log_path = os.path.join(work, "serve.log")
    log_file = open(log_path, "wb")
    server = subprocess.Popen([S, "serve", "--model", "models/brown-moe", "--device", device, "--listen",
                               "127.0.0.1:0", "--port-file", os.path.join(work, "port"), "--kv-blocks", "256"],
                              cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def server_log():
        log_file.flush()
        with open(log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    port = os.path.join(work, "port")
    for _ in range(300):
        if os.path.exists(port) and os.path.getsize(port) > 0 or server.poll() is not None:
            break
        time.sleep(0.2)
    if not (os.path.exists(port) and os.path.getsize(port) > 0):
        server.kill()
        server.wait()
        c.steps.append({"step": name, "status": "failed", "reason": "serve did not start",
                        "output": server_log()[-3000:]})
        return
    e2e = {"SWITCHYARD_E2E_DIR": work}
    c.run(name + "_cpp", [os.path.join(kit, "bin", "serve_e2e_test")], 300, env=e2e, gtest=True)
    py_env = {"SWITCHYARD_E2E_DIR": work, "PYTHONPATH": os.path.join(kit, "python")}
    c.run(name + "_python", [python, "tests/serve_e2e_test.py"], 120, env=py_env, kit=False)
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
        rec = {"step": name + "_drain", "exit_code": server.returncode,
               "status": "passed" if server.returncode == 0 else "failed"}
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        rec = {"step": name + "_drain", "status": "failed", "reason": "did not exit within 30 s of SIGTERM"}
    out = server_log()
    c.steps.append(rec)
    c.log.write(f"=== serve --device {device} log\n{out[-STEP_LOG_CAP:]}\n")


if __name__ == "__main__":
    sys.exit(main())
