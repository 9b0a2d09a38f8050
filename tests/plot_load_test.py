#!/usr/bin/python3
"""launch/plot_load.py draws the expert-load heatmap (PNG and SVG) from a load file and a
placement planned by `switchyard plan --load`, and refuses a malformed load naming the file.
Skips (77) only when Debian's python3-matplotlib is missing (launch/install-deps.sh installs it).

usage: plot_load_test.py SWITCHYARD MODEL LOAD WORK"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

binary, model, load, work = sys.argv[1:5]
try:
    import matplotlib  # noqa: F401
except ImportError:
    print("SKIP: python3-matplotlib is not installed")
    sys.exit(77)
os.makedirs(work, exist_ok=True)
script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch",
                      "plot_load.py")
placement = os.path.join(work, "placement.json")
subprocess.run([binary, "plan", "--model", model, "--ep", "4", "--pp", "1", "--load", load,
                "--redundant", "2", "--out", placement], check=True, capture_output=True)
png, svg = os.path.join(work, "load.png"), os.path.join(work, "load.svg")
for out in (png, svg):
    if os.path.exists(out):
        os.remove(out)
    p = subprocess.run([sys.executable, script, "--load", load, "--placement", placement,
                        "--out", out], capture_output=True, text=True)
    assert p.returncode == 0 and "4 layers x 8 experts" in p.stdout, p.stdout + p.stderr
with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
assert os.path.getsize(png) > 10000
root = ET.parse(svg).getroot()
assert root.tag.endswith("svg"), root.tag

bad = os.path.join(work, "bad.json")
with open(bad, "w") as f:
    f.write('[[1, 2], [3, "x"]]')
p = subprocess.run([sys.executable, script, "--load", bad, "--out", png], capture_output=True,
                   text=True)
assert p.returncode == 1 and f"{bad}: layer 1: not a number" in p.stderr, p.stderr
p = subprocess.run([sys.executable, script, "--load", load, "--out", "x.gif"],
                   capture_output=True, text=True)
assert p.returncode == 1 and "want a .png or .svg" in p.stderr, p.stderr
print("ok")
