"""Do two pytest-ssd JSON reports reach the same warmth verdicts? (e.g. a CPU compile-only
prediction against a GPU run with real launches)

    python benchmarks/peers/compare_verdicts.py cpu.json gpu.json

Compares, per layer config, the cold events by kernel and reason. Binary identities may differ
where an autotuner picked another winner (compile-only keeps the first config), so identities are
not compared; what compiled and why is.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter


def _cold(path: str) -> dict:
    with open(path) as fh:
        report = json.load(fh)
    out = {}
    for worker in report["workers"]:
        for v in worker["verdicts"]:
            out[v["layer"]] = Counter(_kind(line) for line in v["cold"])
    return out


def _kind(line: str) -> tuple:
    kernel = re.split(r"[\[ ]", line, maxsplit=1)[0]
    what = "autotune" if " autotune key (" in line else "binary"
    reason = line.split(" -- ")[1] if " -- " in line else ""
    reason = re.sub(r"=\d+", "=N", reason)  # integer values differ between requests, classes do not
    return kernel, what, reason


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", help="a pytest-ssd JSON report (--ssd-report)")
    parser.add_argument("second", help="another one")
    args = parser.parse_args()
    a, b = _cold(args.first), _cold(args.second)
    same = True
    for layer in sorted(set(a) | set(b)):
        left, right = a.get(layer, Counter()), b.get(layer, Counter())
        kinds_match = set(left) == set(right)
        same &= kinds_match
        print(f"{layer}: {sum(left.values())} vs {sum(right.values())} cold events; "
              f"{'same kernels and reasons' if kinds_match else 'DIFFERENT'}")
        for kind in sorted(set(left) | set(right)):
            print(f"  {left.get(kind, 0):3d} | {right.get(kind, 0):3d}  {kind[0]} {kind[1]}: {kind[2]}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
