"""Memory and time of moving an RMSprop run between torch and JAX (``jrmsprop.interop``).

Each direction runs in a fresh Python process: a torch model of ``--params`` float32
parameters (12 square ``Linear`` layers) under ``torch.optim.RMSprop(momentum=0.9,
centered=True)``, stepped once so every buffer exists. After a warm-up call on a tiny model
(JAX's runtime started, its small ops compiled), the process's resident memory is the
baseline; the peak is Linux's ``VmHWM`` (reset through ``/proc/self/clear_refs`` just before
the call), so "peak" is the most memory the call itself added, and "held" what is still
added after it returns (the result alive). Both are given as a multiple of the bytes of the
JAX params and optimizer state (four arrays per parameter: params, square_avg,
momentum_buffer, grad_avg). "wall s" is wall time, "cpu s" the CPU time of the process
(all its threads) during the call: on a machine shared with other work, the wall time grows
with the load, the CPU time much less.

    python benchmarks/migration_memory.py                      # 50M parameters
    python benchmarks/migration_memory.py --params 2_000_000   # a quick look

Linux only (it reads ``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

# This checkout's jrmsprop, also when run as a script from anywhere.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

WIDTH_LAYERS = 12


def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _build(n_params: int):
    import torch

    torch.manual_seed(0)
    width = max(2, int((n_params / WIDTH_LAYERS) ** 0.5))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(WIDTH_LAYERS)])
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, centered=True)
    with torch.no_grad():
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-2)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def _child(direction: str, n_params: int) -> dict:
    import ctypes
    import gc
    import time

    import jax

    import jrmsprop.interop as interop

    small_model, small_opt = _build(1000)
    small = interop.from_torch(small_model, small_opt)
    interop.to_torch(small[0], small[2], small_model, small_opt)
    model, optimizer = _build(n_params)
    n = sum(p.numel() for p in model.parameters())
    if direction == "to_torch":
        params, _, opt_state = interop.from_torch(model, optimizer)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory back to the system
    base = _status()["VmRSS"]
    _reset_peak()
    start, cpu_start = time.perf_counter(), time.process_time()
    if direction == "from_torch":
        result = interop.from_torch(model, optimizer)
        jax.block_until_ready((result[0], result[2]))
    else:
        interop.to_torch(params, opt_state, model, optimizer)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status()["VmHWM"]
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    status = {"VmHWM": peak, "VmRSS": _status()["VmRSS"]}
    return {
        "direction": direction,
        "params": n,
        "state_bytes": 4 * 4 * n,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak": status["VmHWM"] - base,
        "held": status["VmRSS"] - base,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=lambda s: int(s.replace("_", "")), default=50_000_000)
    parser.add_argument("--child", choices=["from_torch", "to_torch"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.params)))
        return
    mib = 2**20
    print(
        f"{'direction':<11}{'params':>11} {'JAX MiB':>8} {'wall s':>7} {'cpu s':>6} "
        f"{'peak MiB':>13} {'held MiB':>13}"
    )
    for direction in ("from_torch", "to_torch"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", direction, "--params", str(args.params)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        b = r["state_bytes"]
        print(
            f"{direction:<11}{r['params']:>11,} {b / mib:>8.0f} {r['seconds']:>7.2f} "
            f"{r['cpu_seconds']:>6.2f} {r['peak'] / mib:>6.0f} {r['peak'] / b:>5.2f}x "
            f"{r['held'] / mib:>6.0f} {r['held'] / b:>5.2f}x"
        )


if __name__ == "__main__":
    main()
