#!/usr/bin/python3
"""`switchyard study plot` end to end: a study of three configurations (lines appended by
`study simulate --append`, one of them served) drawn into the four pictures, each as PNG and
SVG; a line that is not a simulation is named by file and line (exit 1); a missing input is a
usage error (exit 2).

  study_plot_test.py SWITCHYARD WORKDIR
"""
import os
import shutil
import subprocess
import sys

binary, work = sys.argv[1:3]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
study = os.path.join(work, "study.jsonl")
base = [binary, "study", "simulate", "--preset", "mixtral-8x7b", "--hardware", "h100",
        "--batch", "1,8,64", "--append", study]
for extra in (["--nodes", "1", "--ep", "8", "--requests", "40", "--concurrency", "8"],
              ["--nodes", "2", "--ep", "16"],
              ["--nodes", "2", "--ep", "8", "--pp", "2"]):
    r = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
with open(study) as f:
    assert len(f.read().splitlines()) == 3

out = os.path.join(work, "plots")
r = subprocess.run([binary, "study", "plot", "--in", study, "--out", out, "--batch", "8"],
                   capture_output=True, text=True, timeout=120)
assert r.returncode == 0, r.stdout + r.stderr
names = ["throughput_vs_nodes", "itl_vs_throughput", "step_breakdown", "traffic_heatmap"]
for name in names:
    png, svg = os.path.join(out, name + ".png"), os.path.join(out, name + ".svg")
    assert png in r.stdout and svg in r.stdout, r.stdout
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    with open(svg) as f:
        assert "<svg" in f.read(), svg
print("8 pictures:", ", ".join(names))

bad = os.path.join(work, "bad.jsonl")
with open(bad, "w") as f:
    f.write(open(study).read().splitlines()[0] + "\n" + '{"decode": []}\n')
r = subprocess.run([binary, "study", "plot", "--in", bad, "--out", out], capture_output=True,
                   text=True, timeout=60)
assert r.returncode == 1 and f"{bad}: line 2: not a `study simulate --json` object" in r.stderr, \
    (r.returncode, r.stderr)
r = subprocess.run([binary, "study", "plot", "--in", os.path.join(work, "none.jsonl"), "--out",
                    out], capture_output=True, text=True, timeout=60)
assert r.returncode == 2 and "--in" in r.stderr, (r.returncode, r.stderr)
