#!/usr/bin/python3
"""Compares a .npy written by `switchyard score` with a reference .npy: same shape, max-abs
error within a tolerance. Usage: check_npy.py OUT.npy REF.npy TOL"""
import sys

import numpy as np

out, ref, tol = np.load(sys.argv[1]), np.load(sys.argv[2]), float(sys.argv[3])
if out.shape != ref.shape or out.dtype != np.float32:
    sys.exit(f"shape/dtype {out.shape} {out.dtype} != {ref.shape} float32")
err = float(np.abs(out - ref).max())
print(f"max abs error {err:.3g} (tolerance {tol})")
sys.exit(0 if err <= tol else 1)
