#!/usr/bin/python3
"""`switchyard study sweep` end to end on the demo model: two decode points and one serving
point of one configuration, each a JSON line with the point, what was measured and the
environment; run again it runs nothing; with its last line gone (an interrupted sweep) it
runs that point only; a bad spec is named by field (exit 2). Speed is not tested.

  study_sweep_test.py SWITCHYARD MODEL WORKDIR
"""
import json
import os
import shutil
import subprocess
import sys

binary, model, work = sys.argv[1:4]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
spec = os.path.join(work, "spec.json")
out = os.path.join(work, "results.jsonl")
with open(spec, "w") as f:
    json.dump({"model": model, "configs": [{"ep": 1, "pp": 1}],
               "decode": {"batch": [1, 2], "prompt_len": [8], "output_len": [4], "repeats": 1},
               "serving": {"concurrency": [1], "prompt_len": [8], "output_len": [4],
                           "requests_per_client": 2}}, f)
env = dict(os.environ, OMP_NUM_THREADS="1")


def sweep():
    r = subprocess.run([binary, "study", "sweep", "--spec", spec, "--out", out],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stderr


err = sweep()
assert "3 points, 0 already in" in err and "[3/3] ep 1 x pp 1, serving concurrency 1" in err, err
rows = [json.loads(line) for line in open(out)]
assert [r["point"]["kind"] for r in rows] == ["decode", "decode", "serving"], rows
assert [r["point"].get("batch") for r in rows[:2]] == [1, 2], rows
assert rows[0]["measured"]["decode_step_s_median"] > 0, rows[0]
assert rows[2]["measured"]["output_tokens"] == 8 and rows[2]["measured"]["output_tokens_per_s"] > 0
e = rows[0]["environment"]
assert e["hosts"] and e["device"] == "cpu" and e["switchyard"] == os.path.realpath(binary), e
assert e["omp_num_threads"] == "1" and "Open MPI" in e["mpirun"], e
print(f"3 points measured; git {e['git_commit'] or '(no git)'}")

# Again: nothing to do.
err = sweep()
assert "3 points, 3 already in" in err and "[1/" not in err, err
assert len(open(out).read().splitlines()) == 3

# Interrupted before its last point: only that one runs.
lines = open(out).read().splitlines()
with open(out, "w") as f:
    f.write("\n".join(lines[:2]) + "\n")
err = sweep()
assert "3 points, 2 already in" in err and "[1/1] ep 1 x pp 1, serving concurrency 1" in err, err
assert len(open(out).read().splitlines()) == 3

# A bad spec names its field.
with open(spec, "w") as f:
    json.dump({"model": model, "configs": [{"ep": 0, "pp": 1}], "decode": {}}, f)
r = subprocess.run([binary, "study", "sweep", "--spec", spec, "--out", out], capture_output=True,
                   text=True, timeout=60)
assert r.returncode == 2 and "configs[0]: needs positive integers ep and pp" in r.stderr, \
    (r.returncode, r.stderr)
