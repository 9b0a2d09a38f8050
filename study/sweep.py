#!/usr/bin/python3
"""A measured sweep on the real job: `switchyard study sweep` runs this.

    switchyard study sweep --spec sweep.json --out results.jsonl

The spec (JSON):

    {"model": "models/brown-moe",
     "configs": [{"ep": 1, "pp": 1}, {"ep": 2, "pp": 2, "placement": "placement.json"}],
     "decode": {"batch": [1, 8, 64], "prompt_len": [16], "output_len": [64], "repeats": 3},
     "serving": {"concurrency": [1, 8, 64], "prompt_len": [16], "output_len": [64],
                 "requests_per_client": 8},
     "serve_flags": ["--kv-memory", "2GiB"]}

Every point is one run of Switchyard's own code: a decode point is `switchyard bench decode
--batch B` under launch/mpirun.sh with EP x PP ranks (HOSTFILE in the environment spreads
them over nodes, as launch/mpirun.sh does); a serving point is `switchyard loadgen` against
a cluster of that configuration started once per configuration with launch/cluster.sh (this
machine). Each point appends one JSON line to --out as soon as it is measured: the point
(kind, ep, pp, placement, batch or concurrency, lengths), what was measured, and the
environment (hosts, CPU, threads, the versions of Switchyard, Open MPI and the kernel, the
git commit of the source tree). A sweep that was interrupted resumes: points already in
--out are not run again. Progress goes to stderr.

Exit status: 0 every point measured; 1 a point failed (the rows measured so far stay);
2 a bad spec (the message names the field).
"""
import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SpecError(Exception):
    pass


def int_list(spec, section, field, default):
    v = spec.get(section, {}).get(field, default)
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and x > 0 for x in v):
        raise SpecError(f"{section}.{field}: a non-empty list of positive integers")
    return v


def points_of(spec):
    if not isinstance(spec.get("model"), str):
        raise SpecError("model: the checkpoint folder (a string)")
    configs = spec.get("configs")
    if not isinstance(configs, list) or not configs:
        raise SpecError("configs: a non-empty list of {\"ep\": E, \"pp\": P}")
    for i, c in enumerate(configs):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), int) and c[k] > 0
                                              for k in ("ep", "pp")):
            raise SpecError(f"configs[{i}]: needs positive integers ep and pp")
        if "placement" in c and not isinstance(c["placement"], str):
            raise SpecError(f"configs[{i}].placement: a file name")
    if "decode" not in spec and "serving" not in spec:
        raise SpecError("decode or serving: the sweep measures nothing")
    points = []
    for c in configs:
        base = {"ep": c["ep"], "pp": c["pp"], "placement": c.get("placement", "")}
        if "decode" in spec:
            for b in int_list(spec, "decode", "batch", [1]):
                for p in int_list(spec, "decode", "prompt_len", [16]):
                    for o in int_list(spec, "decode", "output_len", [64]):
                        points.append({"kind": "decode", **base, "batch": b, "prompt_len": p,
                                       "output_len": o})
        if "serving" in spec:
            for n in int_list(spec, "serving", "concurrency", [1]):
                for p in int_list(spec, "serving", "prompt_len", [16]):
                    for o in int_list(spec, "serving", "output_len", [64]):
                        points.append({"kind": "serving", **base, "concurrency": n,
                                       "prompt_len": p, "output_len": o})
    return points


def key(point):
    return json.dumps(point, sort_keys=True)


def first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return ""


def environment(binary):
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = first_line(["git", "-C", ROOT, "rev-parse", "HEAD"])
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() != ""
    hosts = [socket.gethostname()]
    if os.environ.get("HOSTFILE"):
        try:
            hosts = [l.split()[0] for l in open(os.environ["HOSTFILE"])
                     if l.strip() and not l.startswith("#")]
        except OSError:
            pass
    return {"hosts": hosts, "cpu": cpu, "cpus": os.cpu_count(), "device": "cpu",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "switchyard": binary, "git_commit": commit + ("-dirty" if dirty else ""),
            "mpirun": first_line(["mpirun", "--version"]), "kernel": platform.release(),
            "python": platform.python_version()}


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r.stdout


def launcher(world):
    return [os.path.join(ROOT, "launch", "mpirun.sh"), str(world)]  # runs $SWITCHYARD_BIN


def measure_decode(binary, model, p, repeats):
    cmd = launcher(p["ep"] * p["pp"]) + ["bench", "decode", "--model", model, "--ep",
                                         str(p["ep"]), "--pp", str(p["pp"]), "--batch",
                                         str(p["batch"]), "--prompt-len", str(p["prompt_len"]),
                                         "--tokens", str(p["output_len"]), "--repeats",
                                         str(repeats), "--json"]
    if p["placement"]:
        cmd += ["--placement", p["placement"]]
    j = json.loads(run(cmd))
    return {k: j[k] for k in ("decode_step_s_median", "tokens_per_s_median", "tokens_per_s_best",
                              "tokens_per_s_worst", "memory_copy_bandwidth_Bps") if k in j}


class Cluster:
    """A serving cluster of one configuration (launch/cluster.sh), started on first use."""

    def __init__(self, binary, model, config, flags, work):
        self.args = (binary, model, config, flags, work)
        self.dir = None

    def port(self):
        if self.dir is None:
            binary, model, c, flags, work = self.args
            self.dir = os.path.join(work, f"cluster-{c['ep']}x{c['pp']}")
            extra = list(flags) + (["--placement", c["placement"]] if c["placement"] else [])
            run([os.path.join(ROOT, "launch", "cluster.sh"), "start", self.dir,
                 str(c["ep"] * c["pp"]), str(c["ep"]), str(c["pp"]), binary, model, *extra])
        return open(os.path.join(self.dir, "port")).read().strip()

    def stop(self):
        if self.dir is not None:
            subprocess.run([os.path.join(ROOT, "launch", "cluster.sh"), "stop", self.dir],
                           capture_output=True)
            self.dir = None


def measure_serving(binary, cluster, p, per_client):
    j = json.loads(run([binary, "loadgen", "--target", f"127.0.0.1:{cluster.port()}",
                        "--concurrency", str(p["concurrency"]), "--requests",
                        str(per_client * p["concurrency"]), "--prompt-len", str(p["prompt_len"]),
                        "--max-tokens", str(p["output_len"]), "--ignore-eos", "--json"]))
    if j["requests_failed"]:
        raise RuntimeError(f"loadgen: {j['requests_failed']} requests failed: {j['errors']}")
    return {k: j[k] for k in ("output_tokens_per_s", "requests_per_s", "ttft_ms", "itl_ms",
                              "e2e_ms", "wall_s", "output_tokens")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--switchyard", required=True, help="the binary to run")
    a = ap.parse_args()
    try:
        spec = json.load(open(a.spec))
        if not isinstance(spec, dict):
            raise SpecError("not a JSON object")
        points = points_of(spec)
        repeats = spec.get("decode", {}).get("repeats", 3)
        per_client = spec.get("serving", {}).get("requests_per_client", 8)
        flags = spec.get("serve_flags", [])
        for name, v in (("decode.repeats", repeats), ("serving.requests_per_client", per_client)):
            if not isinstance(v, int) or v < 1:
                raise SpecError(f"{name}: a positive integer")
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise SpecError("serve_flags: a list of strings")
    except (OSError, ValueError, SpecError) as e:
        print(f"study sweep: {a.spec}: {e}", file=sys.stderr)
        return 2
    model = spec["model"]
    done = set()
    if os.path.exists(a.out):
        for n, line in enumerate(open(a.out), start=1):
            if line.strip():
                try:
                    done.add(key(json.loads(line)["point"]))
                except (ValueError, KeyError, TypeError):
                    print(f"study sweep: {a.out}: line {n} is not a sweep row", file=sys.stderr)
                    return 2
    todo = [p for p in points if key(p) not in done]
    print(f"study sweep: {len(points)} points, {len(points) - len(todo)} already in {a.out}, "
          f"{len(todo)} to run", file=sys.stderr, flush=True)
    os.environ["SWITCHYARD_BIN"] = a.switchyard
    env = environment(a.switchyard)
    status = 0
    with tempfile.TemporaryDirectory(prefix="sy-sweep-") as work:
        clusters = {}
        try:
            for i, p in enumerate(todo, start=1):
                what = (f"decode batch {p['batch']}" if p["kind"] == "decode"
                        else f"serving concurrency {p['concurrency']}")
                print(f"study sweep: [{i}/{len(todo)}] ep {p['ep']} x pp {p['pp']}, {what}, "
                      f"prompt {p['prompt_len']}, output {p['output_len']}", file=sys.stderr,
                      flush=True)
                cfg = (p["ep"], p["pp"], p["placement"])
                if p["kind"] == "serving":
                    # One cluster at a time: the previous configuration's stops first.
                    for other in [c for c in clusters if c != cfg]:
                        clusters.pop(other).stop()
                    if cfg not in clusters:
                        clusters[cfg] = Cluster(a.switchyard, model, p, flags, work)
                    measured = measure_serving(a.switchyard, clusters[cfg], p, per_client)
                else:
                    for other in list(clusters):
                        clusters.pop(other).stop()
                    measured = measure_decode(a.switchyard, model, p, repeats)
                row = {"point": p, "measured": measured, "environment": env,
                       "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                           timespec="seconds")}
                with open(a.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        except RuntimeError as e:
            print(f"study sweep: {e}", file=sys.stderr)
            status = 1
        finally:
            for c in clusters.values():
                c.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
