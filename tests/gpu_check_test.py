#!/usr/bin/python3
"""launch/gpu_check.py's verdicts, without a GPU: on a GPU machine a skipped test is a failure
(unless it needs two ranks or GPUs), in a CPU rehearsal it is only counted; a step that would
overrun the deadline does not start; the summary names what failed and what did not run."""
import importlib.util
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(HERE, "..", "launch", "gpu_check.py"))
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)

XML = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="4" failures="1" disabled="0" errors="0" time="0.1" name="AllTests">
  <testsuite name="Ops" tests="4" failures="1" skipped="2">
    <testcase name="Passes" status="run" result="completed" classname="Ops"/>
    <testcase name="Fails" status="run" result="completed" classname="Ops">
      <failure message="expected 1, got 2" type=""/>
    </testcase>
    <testcase name="NoDevice" status="run" result="skipped" classname="Ops">
      <skipped message="no CUDA device"/>
    </testcase>
    <testcase name="Pair" status="run" result="skipped" classname="Ops">
      <skipped message="needs two ranks"/>
    </testcase>
  </testsuite>
</testsuites>"""

work = tempfile.mkdtemp()
xml = os.path.join(work, "t.xml")
with open(xml, "w") as f:
    f.write(XML)
env = dict(os.environ)

gpu = gc.Check(work, 100, "cuda", work, env, sys.executable, 2)
counts = gpu.gtest_counts(xml)
assert counts["passed"] == 1 and counts["skipped"] == 2, counts
assert counts["failed"] == 2 and counts["skipped_counted_as_failed"] == 1, counts  # NoDevice fails

cpu = gc.Check(work, 100, "cpu", work, env, sys.executable, 2)
counts = cpu.gtest_counts(xml)
assert counts["failed"] == 1 and "skipped_counted_as_failed" not in counts, counts

# Steps: one passes, one fails, one would overrun the deadline and does not start (a step
# starts only with 20 s or its own timeout left, beyond the 15 s kept for the summary).
c = gc.Check(work, 34, "cpu", work, env, sys.executable, 2)
assert c.run("ok", ["true"], 10)["status"] == "passed"
# A benchmark's BENCH_JSON lines become its figures in bench.json; an MPI test binary whose
# every test skipped exits 77, which its gtest counts judge (here: nothing failed).
fig = c.run("fig", ["sh", "-c", 'echo "table"; echo \'BENCH_JSON {"bench": "x", "ms": 1.5}\''], 10,
            bench=True)
assert fig["status"] == "passed", fig
skipped = os.path.join(work, "s.xml")
with open(skipped, "w") as f:
    f.write(XML.replace('failures="1"', 'failures="0"').replace(
        '<failure message="expected 1, got 2" type=""/>', ''))
c.gtest_counts = lambda _xml, real=c.gtest_counts: real(skipped)
all_skipped = c.run("mpi77", ["sh", "-c", "exit 77"], 10, gtest=True)
assert all_skipped["status"] == "passed", all_skipped
del c.gtest_counts
assert c.run("bad", ["sh", "-c", "echo boom; exit 3"], 10)["exit_code"] == 3
late = c.run("late", ["true"], 300)  # 19 s left after the reserve: under 20
assert late["status"] == "not_run", late
hung = c.run("hung", ["sleep", "60"], 2)  # killed by its own timeout
assert hung.get("timed_out") and hung["status"] == "failed", hung
assert c.finish() == 1
summary = json.load(open(os.path.join(work, "summary.json")))
bench = json.load(open(os.path.join(work, "bench.json")))
assert bench[0]["figures"] == [{"bench": "x", "ms": 1.5}], bench
assert gc.bench_figures("log line\n{\n  \"batch\": 8,\n  \"s\": 0.5\n}\ndone\n") == [{"batch": 8, "s": 0.5}]
assert summary["failed_steps"] == ["bad", "hung"] and summary["not_run_steps"] == ["late"], summary
assert "boom" in open(os.path.join(work, "steps.log")).read()
assert sorted(os.listdir(work)) == ["bench.json", "gtest-xml.tar.gz", "s.xml", "steps.log",
                                    "summary.json", "t.xml"]
print("gpu_check: 13 checks passed")
