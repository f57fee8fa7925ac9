"""Runs the parallel programs many times in a row and counts stalls (not run in CI).

Usage (from the repository root, with the venv active):

  python tests/parallel_progs/stall_loop.py --runs 30            # what CI runs, 30 times
  python tests/parallel_progs/stall_loop.py --runs 10 --repro     # the bare repro, run-ahead
  python tests/parallel_progs/stall_loop.py --runs 10 --repro --sync

Each run is bounded exactly as in tests/test_parallel.py (own process group,
deadline, SIGTERM, SIGKILL after a grace period). Every failure is counted
and reported, never retried. Prints one line per run and a summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for test_parallel

from runner import device_env, run_processes
from test_parallel import DEVICES, two_process_commands

MODES = ["pmap", "shard_map", "jit", "zero1", "fsdp", "zero1_explicit"]


def classify(results: list) -> str:
    if all(rc == 0 for rc, _ in results):
        return "ok"
    if any("Termination timeout" in out for _, out in results):
        return "stall"
    if any(rc is not None and rc < 0 for rc, _ in results):
        return "killed"  # hit the deadline: a hang
    return "error"


def one_suite(tmp: str) -> dict:
    """Every program tests/test_parallel.py starts, once; returns {name: outcome}."""
    outcomes = {}
    for mode in MODES:
        cmd = [sys.executable, os.path.join(HERE, "dp_prog.py"), mode, f"{tmp}/{mode}.npz"]
        outcomes[mode] = classify(run_processes([(cmd, device_env(DEVICES))]))
    outcomes["multihost"] = classify(run_processes(two_process_commands(tmp)))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--repro", action="store_true", help="loop runahead_repro.py instead")
    parser.add_argument("--sync", action="store_true", help="with --repro: wait for every step")
    args = parser.parse_args()
    counts: dict = {}
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(1, args.runs + 1):
            t0 = time.monotonic()
            if args.repro:
                cmd = [sys.executable, os.path.join(HERE, "runahead_repro.py")]
                cmd += ["--sync"] if args.sync else []
                outcomes = {"repro": classify(run_processes([(cmd, device_env(DEVICES))]))}
            else:
                outcomes = one_suite(tmp)
            for name, outcome in outcomes.items():
                counts.setdefault(name, {}).setdefault(outcome, 0)
                counts[name][outcome] += 1
            line = " ".join(f"{k}={v}" for k, v in outcomes.items())
            print(
                f"run {run:3d} ({time.monotonic() - t0:5.1f} s, load {os.getloadavg()[0]:.1f}): {line}",
                flush=True,
            )
    total = sum(sum(c.values()) for c in counts.values())
    bad = sum(n for c in counts.values() for k, n in c.items() if k != "ok")
    print(
        f"summary: {args.runs} runs, {total} program runs, {bad} not ok, "
        f"{time.monotonic() - start:.0f} s: {counts}",
        flush=True,
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
