#!/usr/bin/env python3
"""Switchyard on a real one-node Slurm cluster (launch/slurm-local.sh: Debian's slurmctld,
slurmd and munge on loopback, 4 CPUs declared, PMIx):

1. launch/srun.sh runs `generate` as EP 2 x PP 2 and prints the single process's text.
2. launch/serve.sbatch serves EP 2 x PP 2 as a batch job: its endpoint file names this host
   and the gRPC and HTTP ports, and both answer with the single process's text.
3. A plain `scancel` drains it: a stream in flight finishes whole (OK, every token), the job
   drains once, every rank exits 0, and the job is gone well inside Slurm's KillWait (30 s).
4. A worker killed with SIGKILL under Slurm ends the stream in flight with UNAVAILABLE naming
   that rank, and the job ends with an error, within seconds.

  slurm_test.py SWITCHYARD MODEL WORKDIR

Exits 77 (skipped, saying why) when not root or when slurm-wlm/munge are not installed.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROMPT = "The jury said that"
KILL_WAIT_S = 30  # slurm-local.sh's KillWait: scancel's SIGKILL comes this long after SIGTERM


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def fail(why, *logs):
    print(f"FAIL: {why}")
    for path in logs:
        if os.path.exists(path):
            print(f"--- {path} (last 40 lines)")
            with open(path, errors="replace") as f:
                print("".join(f.readlines()[-40:]))
    sys.exit(1)


def run(cmd, env, timeout=120):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def squeue_has(job, env):
    r = run(["squeue", "-h", "-j", job], env, timeout=30)
    return r.returncode == 0 and r.stdout.strip() != ""


def wait_gone(job, env, limit_s):
    """Seconds until the job left the queue, or None after limit_s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if not squeue_has(job, env):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def submit_server(bin_path, model, work, env, name):
    """sbatch launch/serve.sbatch; returns (job id, endpoint dict, log path)."""
    endpoint = os.path.join(work, f"{name}.endpoint")
    log = os.path.join(work, f"{name}-%j.out")
    e = dict(env, SWITCHYARD_ENDPOINT=endpoint, SWITCHYARD_BIN=bin_path)
    r = run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=4", f"--chdir={work}",
             f"--output={log}", os.path.join(ROOT, "launch", "serve.sbatch"),
             "--model", model, "--ep", "2", "--pp", "2"], e)
    if r.returncode != 0:
        fail(f"sbatch refused the serving job: {r.stderr.strip()}")
    job = r.stdout.strip().split(";")[0]
    log = log.replace("%j", job)
    t0 = time.monotonic()
    while not os.path.exists(endpoint):
        if time.monotonic() - t0 > 120 or not squeue_has(job, env):
            fail(f"job {job}: no endpoint file {endpoint} (the job did not start serving)", log)
        time.sleep(0.2)
    with open(endpoint) as f:
        lines = dict(line.strip().split("=", 1) for line in f if "=" in line)
    return job, lines, log


def rank_pid(job, rank):
    """The pid of task `rank` of the job's step, from the processes' environments."""
    want = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_PROCID={rank}".encode()}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"serve" not in f.read():
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            return int(pid)
    return None


def start_stream(bin_path, port, max_tokens, out_path):
    """A streaming client (text as it arrives); returns once its first text arrived."""
    out = open(out_path, "wb")
    p = subprocess.Popen([bin_path, "client", "generate", "--target", f"127.0.0.1:{port}",
                          "--prompt", PROMPT, "--max-tokens", str(max_tokens), "--ignore-eos"],
                         stdout=subprocess.PIPE, stderr=out)
    first = p.stdout.read(1)
    if not first:
        p.wait()
        fail(f"the stream ended before its first token (exit {p.returncode})", out_path)
    return p, first


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    bin_path, model, work = (os.path.abspath(a) for a in sys.argv[1:])
    if os.geteuid() != 0:
        skip("needs root: slurmd starts every job's tasks as their user")
    missing = [t for t in ("munged", "mungekey", "slurmctld", "slurmd", "srun", "sbatch",
                           "scancel", "squeue")
               if shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin") is None]
    if missing:
        skip(f"not installed: {' '.join(missing)} (Debian's slurm-wlm and munge; "
             "launch/install-deps.sh installs them)")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    cluster = os.path.join(work, "cluster")
    r = subprocess.run([os.path.join(ROOT, "launch", "slurm-local.sh"), "start", cluster, "4"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        fail(f"the one-node cluster did not start:\n{r.stdout}{r.stderr}")
    print(r.stdout.strip())
    env = dict(os.environ, SLURM_CONF=os.path.join(cluster, "slurm.conf"),
               SWITCHYARD_BIN=bin_path, OMPI_MCA_btl="self,vader")
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin"
    try:
        check(bin_path, model, work, env)
    finally:
        subprocess.run(["scancel", "--full", "--signal=KILL", "-u", "root"], env=env,
                       capture_output=True, timeout=30)
        subprocess.run([os.path.join(ROOT, "launch", "slurm-local.sh"), "stop", cluster],
                       capture_output=True, timeout=60)
    print("PASS")
    return 0


def check(bin_path, model, work, env):
    # 1. generate through launch/srun.sh, against one process.
    gen = ["generate", "--model", model, "--prompt", PROMPT, "--max-tokens", "12"]
    ref = run([bin_path] + gen, env)
    if ref.returncode != 0 or not ref.stdout.strip():
        fail(f"single-process generate failed: {ref.stderr}")
    srun = run([os.path.join(ROOT, "launch", "srun.sh"), "1", "4"] + gen +
               ["--ep", "2", "--pp", "2"], env)
    if srun.returncode != 0:
        fail(f"launch/srun.sh generate exited {srun.returncode}:\n{srun.stderr[-3000:]}")
    if srun.stdout != ref.stdout:
        fail(f"EP 2 x PP 2 under srun printed {srun.stdout!r}, one process {ref.stdout!r}")
    if "world size 1" in srun.stderr or "MPI was not wired up" in srun.stderr:
        fail("the srun step was not wired up as one MPI job")
    print(f"1. srun.sh generate, EP 2 x PP 2 on 4 tasks: {srun.stdout.strip()!r}, as one process")

    # 2. The batch job serves, and says where.
    job, endpoint, log = submit_server(bin_path, model, work, env, "serve")
    host = socket.gethostname()
    for proto in ("grpc", "http"):
        if not re.fullmatch(re.escape(host) + r":\d+", endpoint.get(proto, "")):
            fail(f"endpoint file: {proto}= should be {host}:PORT, got {endpoint}", log)
    grpc_port = int(endpoint["grpc"].rsplit(":", 1)[1])
    http_port = int(endpoint["http"].rsplit(":", 1)[1])
    c = run([bin_path, "client", "complete", "--target", f"127.0.0.1:{grpc_port}", "--prompt",
             PROMPT, "--max-tokens", "12"], env)
    if c.returncode != 0 or c.stdout != ref.stdout:
        fail(f"gRPC answer {c.stdout!r} ({c.stderr.strip()}), expected {ref.stdout!r}", log)
    req = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/v1/completions",
        data=json.dumps({"prompt": PROMPT, "max_tokens": 12, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        text = json.load(resp)["choices"][0]["text"]
    if text != ref.stdout.rstrip("\n"):
        fail(f"HTTP answer {text!r}, expected {ref.stdout.rstrip()!r}", log)
    with open(log) as f:
        if f"on {host}:{grpc_port}" not in f.read():
            fail(f"the job log does not name {host}:{grpc_port}", log)
    print(f"2. serve.sbatch job {job}: endpoint {endpoint}, gRPC and HTTP answers as one process")

    # 3. A plain scancel drains: the stream in flight ends whole and every rank exits 0.
    stream_log = os.path.join(work, "drain-stream.err")
    tokens = 600
    p, _ = start_stream(bin_path, grpc_port, tokens, stream_log)
    t0 = time.monotonic()
    r = run(["scancel", job], env)
    if r.returncode != 0:
        fail(f"scancel {job}: {r.stderr}")
    gone = wait_gone(job, env, KILL_WAIT_S + 15)
    p.stdout.read()
    p.wait(timeout=30)
    if gone is None:
        fail(f"job {job} still queued {KILL_WAIT_S + 15} s after scancel", log)
    with open(log) as f:
        text = f.read()
    if p.returncode != 0:
        fail(f"the stream in flight ended with exit {p.returncode}", stream_log, log)
    if f"status=OK prompt_tokens=6 completion_tokens={tokens}" not in text:
        fail(f"the stream in flight did not finish whole ({tokens} tokens, OK)", log)
    if text.count("draining") != 1 or "drained; shutting down 4 rank(s)" not in text:
        fail("the job did not drain exactly once", log)
    if "serve.sbatch: the step ended with status 0" not in text:
        fail("the serving step did not exit 0", log)
    if gone >= KILL_WAIT_S:
        fail(f"the job took {gone:.1f} s: it was killed at KillWait, not drained", log)
    if os.path.exists(os.path.join(work, "serve.endpoint")):
        fail("the endpoint file outlived the job", log)
    print(f"3. plain scancel: the {tokens}-token stream in flight finished, drained once, all "
          f"ranks exited 0, job gone {gone:.1f} s after scancel (KillWait {KILL_WAIT_S} s)")

    # 4. A killed worker: the dead-rank error, named, within seconds.
    job, endpoint, log = submit_server(bin_path, model, work, env, "kill")
    grpc_port = int(endpoint["grpc"].rsplit(":", 1)[1])
    stream_log = os.path.join(work, "kill-stream.err")
    p, _ = start_stream(bin_path, grpc_port, 1000, stream_log)
    victim = rank_pid(job, 2)
    if victim is None:
        fail(f"rank 2 of job {job} not found", log)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    p.stdout.read()
    p.wait(timeout=30)
    answered = time.monotonic() - t0
    gone = wait_gone(job, env, 30)
    with open(stream_log, errors="replace") as f:
        err = f.read()
    if p.returncode == 0 or "UNAVAILABLE" not in err or f"rank 2 (pid {victim}" not in err:
        fail(f"the stream should end UNAVAILABLE naming rank 2 (pid {victim}); exit "
             f"{p.returncode}: {err.strip()}", log)
    if gone is None:
        fail(f"job {job} still queued 30 s after its rank 2 was killed", log)
    if answered > 10:
        fail(f"the client learned of the dead rank after {answered:.1f} s", log)
    print(f"4. kill -9 of rank 2: the stream ended UNAVAILABLE naming it after {answered:.2f} s, "
          f"job gone after {gone:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
