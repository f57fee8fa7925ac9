"""Benchmark: jrmsprop against optax, torch and a memory roofline.

RMSprop is memory bound: a step reads params, grads and state and writes
params and state. This module times, in one process and interleaved (each
repeat runs every implementation once, in a rotating order, so a change in
machine load hits all of them alike), the median step of:

* ``jrmsprop``: ``jrmsprop.rmsprop`` update and ``optax.apply_updates`` in one
  ``jax.jit`` with params and state donated;
* ``inject``: the same step through ``optax.inject_hyperparams(jrmsprop.rmsprop,
  static_args=("momentum", "weight_decay", "centered"))``: lr, alpha and eps
  are runtime values (changing them never recompiles), as in the adapter,
  which is held to this step;
* ``jrmsprop-flat``: the same step on the opt-in flat layout (every leaf of a
  dtype kept in one 1-D buffer by the caller, see the docs' benchmark page): one leaf of
  the same bytes;
* ``adapter`` / ``adapter-foreach``: ``jrmsprop.FunctionalRMSprop.step`` with
  ``foreach`` False / True (when the adapter is importable);
* ``optax``: ``optax.rmsprop(eps_in_sqrt=False)`` jitted and donated the same
  way (the same memory traffic; not the same algorithm);
* ``torch-foreach`` / ``torch-forloop``: ``torch.optim.RMSprop``;
* ``torch-functional``: torch's scripted ``_FunctionalRMSprop``;
* ``roofline``: a jitted, donated elementwise kernel on one flat buffer that
  reads and writes the same arrays as the step, with no arithmetic to speak of.

Run ``python -m jrmsprop.bench --help`` for the flags; ``--tiny`` runs every
code path at toy sizes in seconds (the smoke test does that).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jrmsprop

IMPLS = (
    "jrmsprop",
    "inject",
    "jrmsprop-flat",
    "adapter",
    "adapter-foreach",
    "optax",
    "torch-foreach",
    "torch-forloop",
    "torch-functional",
    "roofline",
)
# Implementations whose executable has an output per leaf: XLA's CPU compile
# time grows faster than linearly with that (optax's first step at 10,000
# leaves on 2 cores: 86 s extrapolated in the committed record, 126.5 s and
# 366 s measured, see the README; the adapter's foreach=True splits its flat
# result back into the caller's leaves, so it is one of them).
PER_LEAF_COMPILED = ("jrmsprop", "inject", "adapter", "adapter-foreach", "optax")
CONFIGS = {
    "plain": {"momentum": 0.0, "centered": False},
    "centered+momentum": {"momentum": 0.9, "centered": True},
}
DTYPES = ("float32", "bfloat16")
HYPER: dict[str, Any] = {"lr": 1e-3, "alpha": 0.99, "eps": 1e-8}
# What the adapter's compiled step takes as runtime values (never recompiling
# when they change) and as structure; ``inject`` makes the pure step the same.
INJECT_STATIC = ("momentum", "weight_decay", "centered")
# The committed record (results.json, bench.png) the docs' benchmark page shows;
# --record refreshes it.
RECORD = "benchmarks"


def _in_checkout() -> bool:
    """Whether the working directory is jrmsprop's repository root."""
    return all(os.path.exists(x) for x in ("pyproject.toml", RECORD, os.path.join("jrmsprop", "bench.py")))


def _runs_root() -> str:
    """Where a run without --out goes: benchmarks/runs/ (ignored by git) in the
    repository root, else a folder under the system's temporary directory, so an
    installed jrmsprop never writes into whatever directory the user stands in."""
    if _in_checkout():
        return os.path.join(RECORD, "runs")
    return os.path.join(tempfile.gettempdir(), "jrmsprop-bench")


def _transformer_shapes(vocab: int, seq: int, width: int, layers: int) -> list[tuple]:
    """Leaves of a GPT-like model: embeddings, then per layer attention and
    MLP matrices with their biases and two layer norms (many small leaves)."""
    shapes: list[tuple] = [(vocab, width), (seq, width)]
    for _ in range(layers):
        shapes += [
            (width,), (width,),  # layer norm 1: scale, bias
            (width, 3 * width), (3 * width,),  # qkv
            (width, width), (width,),  # attention output
            (width,), (width,),  # layer norm 2
            (width, 4 * width), (4 * width,),  # MLP in
            (4 * width, width), (width,),  # MLP out
        ]
    return shapes + [(width,), (width,)]  # final layer norm


def case_shapes(tiny: bool) -> dict[str, list[tuple]]:
    """The benchmark cases: name -> list of leaf shapes."""
    if tiny:
        return {
            "large": [(64, 64)],
            "many-medium": [(10, 10)] * 10,
            "many-small": [(10,)] * 20,
            "transformer": _transformer_shapes(vocab=64, seq=16, width=8, layers=2),
        }
    return {
        "large": [(4096, 4096)],
        "many-medium": [(100, 100)] * 1_000,
        "many-small": [(1_000,)] * 10_000,
        "transformer": _transformer_shapes(vocab=8192, seq=512, width=256, layers=12),
    }


def _n_elements(shapes: Sequence[tuple]) -> int:
    return int(sum(math.prod(s) for s in shapes))


def _arrays_touched(config: dict) -> tuple[int, int]:
    """(reads, writes) of whole parameter-sized arrays in one ideal step."""
    state = 1 + (config["momentum"] > 0) + config["centered"]
    return 2 + state, 1 + state  # read param, grad, state; write param, state


def _host_data(shapes: Sequence[tuple], seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 1e-2 for s in shapes]
    return params, grads


def _block(tree: Any) -> None:
    jax.block_until_ready(tree)


def _all_finite(leaves: Sequence[Any]) -> bool:
    return all(bool(np.isfinite(np.asarray(x, dtype=np.float32)).all()) for x in leaves)


class Runner:
    """One implementation on one case: ``first()`` then many ``step()``."""

    def first(self) -> float:
        """Runs the first step (compilation included); returns its seconds."""
        start = time.perf_counter()
        self.step()
        return time.perf_counter() - start

    def step(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def params(self) -> list:  # pragma: no cover - overridden
        raise NotImplementedError

    def memory(self) -> dict | None:
        return None


class JaxStepRunner(Runner):
    """``update`` + ``optax.apply_updates`` in one jit, params/state donated."""

    def __init__(self, opt: optax.GradientTransformation, params: Any, grads: Any):
        self.p, self.g = params, grads
        self.s = opt.init(params)

        def step(p, s, g):
            updates, s = opt.update(g, s, p)
            return optax.apply_updates(p, updates), s

        self.fn = jax.jit(step, donate_argnums=(0, 1))
        self._compiled: Any = None

    def first(self) -> float:
        start = time.perf_counter()
        # AOT so that memory_analysis reads the very executable that is timed.
        self._compiled = self.fn.lower(self.p, self.s, self.g).compile()
        self.step()
        return time.perf_counter() - start

    def step(self) -> None:
        self.p, self.s = self._compiled(self.p, self.s, self.g)
        _block(self.p)

    def params(self) -> list:
        return jax.tree.leaves(self.p)

    def memory(self) -> dict | None:
        return _memory_report(self._compiled, self.p, self.s)


def _memory_report(compiled: Any, params: Any, state: Any) -> dict:
    """Temporaries and input/output aliasing of a compiled, donated step."""
    analysis = compiled.memory_analysis()
    leaves = jax.tree.leaves((params, state))
    donated = sum(x.nbytes for x in leaves)
    largest = max((x.nbytes for x in jax.tree.leaves(params)), default=0)
    hlo = compiled.as_text()
    header = hlo[: hlo.find("\n")]
    aliased_outputs = header.count("may-alias") + header.count("must-alias")
    temp = int(analysis.temp_size_in_bytes)
    alias = int(analysis.alias_size_in_bytes)
    return {
        "temp_bytes": temp,
        "alias_bytes": alias,
        "donated_bytes": int(donated),
        "largest_param_bytes": int(largest),
        "aliased_outputs": aliased_outputs,
        "outputs": len(leaves),
        # The two memory targets: no temporary the size of a parameter, and
        # every donated byte reused by an output.
        "no_param_sized_temporaries": temp < largest,
        "outputs_alias_donated_inputs": alias == donated and aliased_outputs == len(leaves),
    }


class AdapterRunner(Runner):
    def __init__(self, params: list, grads: list, config: dict, foreach: bool):
        self.g = grads
        self.opt = jrmsprop.FunctionalRMSprop(
            list(params), foreach=foreach, **HYPER, **config
        )

    def step(self) -> None:
        self.opt.step(self.g)
        _block(self.opt.param_group["params"])

    def params(self) -> list:
        return list(self.opt.param_group["params"])


class TorchRunner(Runner):
    def __init__(self, params: list, grads: list, config: dict, kind: str, device: str):
        import torch

        self.torch, self.device = torch, device
        self.opt: Any
        self._step: Any
        if kind == "functional":
            self.tensors = params
            from torch.distributed.optim.functional_rmsprop import _FunctionalRMSprop

            self.opt = _FunctionalRMSprop(self.tensors, **HYPER, **config)
            self.grads = grads
            self._step = lambda: self.opt.step(self.grads)
        else:
            self.tensors = [p.requires_grad_(True) for p in params]
            for p, g in zip(self.tensors, grads):
                p.grad = g
            self.opt = torch.optim.RMSprop(
                self.tensors, foreach=(kind == "foreach"), **HYPER, **config
            )
            self._step = self.opt.step

    def step(self) -> None:
        self._step()
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def params(self) -> list:
        return [p.detach().float().cpu().numpy() for p in self.tensors]


class RooflineRunner(Runner):
    """Reads and writes the step's arrays once, elementwise, on one buffer.

    Plain: reads param, grad, square_avg; writes param, square_avg.
    Centered with momentum adds grad_avg and the momentum buffer to both.
    The arithmetic is one multiply-add per array, so only memory counts
    (a lone add becomes a single-instruction kernel that XLA's CPU backend
    runs slower); the dependency (param after state) is the step's, so XLA
    schedules it the same way: each new state buffer written once, then read
    by the kernel that writes the param.
    """

    def __init__(self, n_elements: int, dtype: Any, config: dict, device: Any):
        n_state = 1 + (config["momentum"] > 0) + config["centered"]
        make = lambda v: jax.device_put(jnp.full((n_elements,), v, dtype), device)
        self.p, self.g = make(1.0), make(1e-3)
        self.s = tuple(make(0.5) for _ in range(n_state))

        def kernel(p, s, g):
            s = tuple(x * 0.5 + g for x in s)
            return p * 0.5 + g * sum(s[1:], s[0]), s

        self.fn = jax.jit(kernel, donate_argnums=(0, 1))

    def step(self) -> None:
        self.p, self.s = self.fn(self.p, self.s, self.g)
        _block(self.p)

    def params(self) -> list:
        return [self.p]


def _torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_runner(
    impl: str, shapes: Sequence[tuple], dtype: str, config: dict, seed: int = 0
) -> Runner:
    """Builds ``impl`` on fresh copies of the case's params and grads.

    Args:
      impl: one of :data:`IMPLS`.
      shapes: leaf shapes of the case.
      dtype: ``"float32"`` or ``"bfloat16"``.
      config: one of :data:`CONFIGS`'s values.
      seed: seed of the random params and grads (the same for every impl).

    Returns:
      A :class:`Runner` ready for its first step.
    """
    host_params, host_grads = _host_data(shapes, seed)
    device = jax.devices()[0]
    if impl.startswith("torch"):
        import torch

        tdev = _torch_device()
        tdtype = getattr(torch, dtype)
        to_t = lambda xs: [torch.from_numpy(x).to(tdev, tdtype) for x in xs]
        kind = impl.split("-", 1)[1]
        with warnings.catch_warnings(record=True):
            # The scripted class warns, with its own "always" filter, that
            # TorchScript optimizers are deprecated: recording drops it.
            return TorchRunner(to_t(host_params), to_t(host_grads), config, kind, tdev)
    if impl == "roofline":
        return RooflineRunner(_n_elements(shapes), jnp.dtype(dtype), config, device)
    to_j = lambda xs: [jax.device_put(x.astype(jnp.dtype(dtype)), device) for x in xs]
    params, grads = to_j(host_params), to_j(host_grads)
    if impl == "jrmsprop":
        return JaxStepRunner(jrmsprop.rmsprop(**HYPER, **config), params, grads)
    if impl == "inject":
        tx = optax.inject_hyperparams(jrmsprop.rmsprop, static_args=INJECT_STATIC)
        return JaxStepRunner(tx(**HYPER, **config), params, grads)
    if impl == "jrmsprop-flat":
        # The opt-in flat layout: the caller keeps each dtype's leaves in one
        # 1-D buffer (and differentiates with respect to it), so the
        # optimizer sees one leaf per dtype.
        flat = lambda xs: jnp.concatenate([x.reshape(-1) for x in xs])
        return JaxStepRunner(jrmsprop.rmsprop(**HYPER, **config), [flat(params)], [flat(grads)])
    if impl == "optax":
        opt = optax.rmsprop(
            HYPER["lr"],
            decay=HYPER["alpha"],
            eps=HYPER["eps"],
            eps_in_sqrt=False,
            centered=config["centered"],
            momentum=config["momentum"] or None,
        )
        return JaxStepRunner(opt, params, grads)
    if impl in ("adapter", "adapter-foreach"):
        return AdapterRunner(params, grads, config, foreach=impl == "adapter-foreach")
    raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")


def available_impls() -> dict[str, str]:
    """Implementations that cannot run here, with the reason."""
    missing = {}
    if not hasattr(jrmsprop, "FunctionalRMSprop"):
        for name in ("adapter", "adapter-foreach"):
            missing[name] = "jrmsprop.FunctionalRMSprop is not importable"
    try:
        import torch  # noqa: F401
    except ImportError:
        for name in IMPLS:
            if name.startswith("torch"):
                missing[name] = "torch is not installed"
    return missing


@dataclasses.dataclass
class Cell:
    case: str
    config: str
    dtype: str
    shapes: list


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def run_cell(
    cell: Cell,
    impls: Sequence[str],
    repeats: int,
    warmup: int,
    progress: Any = None,
    memory: bool = True,
) -> list[dict]:
    """Times ``impls`` on one cell, interleaved; returns one record per impl."""
    config = CONFIGS[cell.config]
    runners: dict[str, Runner] = {}
    records: dict[str, dict] = {}
    n = _n_elements(cell.shapes)
    reads, writes = _arrays_touched(config)
    ideal_bytes = n * jnp.dtype(cell.dtype).itemsize * (reads + writes)
    failed = []
    for impl in impls:
        record = {
            "case": cell.case,
            "config": cell.config,
            "dtype": cell.dtype,
            "leaves": len(cell.shapes),
            "elements": n,
            "ideal_bytes": int(ideal_bytes),
            "impl": impl,
        }
        try:
            runner = make_runner(impl, cell.shapes, cell.dtype, config)
            record["first_step_s"] = runner.first()
        except Exception as err:  # noqa: BLE001 - one broken impl must not stop the others
            message = str(err).strip().split("\n")[0]
            failed.append({**record, "error": f"{type(err).__name__}: {message}"[:300]})
            continue
        runners[impl], records[impl] = runner, record
    for impl, runner in runners.items():
        for _ in range(warmup):
            runner.step()
    samples: dict[str, list[float]] = {impl: [] for impl in runners}
    order = list(runners)
    for r in range(repeats):
        for i in range(len(order)):
            impl = order[(i + r) % len(order)]
            start = time.perf_counter()
            runners[impl].step()
            samples[impl].append(time.perf_counter() - start)
        if progress is not None:
            progress.update(1)
    for impl, runner in runners.items():
        times = sorted(samples[impl])
        median = statistics.median(times)
        rec = records[impl]
        rec.update(
            median_s=median,
            p25_s=times[len(times) // 4],
            p75_s=times[(3 * len(times)) // 4],
            repeats=len(times),
            gbytes_per_s=ideal_bytes / median / 1e9,
            finite=_all_finite(runner.params()),
        )
        if memory:
            rec["memory"] = runner.memory()
    base = {k: records[k]["median_s"] for k in ("roofline", "optax", "torch-foreach", "jrmsprop-flat") if k in records}
    for rec in records.values():
        for name, t in base.items():
            rec[f"vs_{name}"] = rec["median_s"] / t
    runners.clear()
    gc.collect()
    return list(records.values()) + failed


def _fit_power(points: Sequence[tuple[int, float]], at: int) -> float | None:
    """Log-log line through the two largest leaf counts, evaluated at ``at``."""
    pts = sorted(p for p in points if p[0] > 1 and p[1] > 0)[-2:]
    if len(pts) < 2:
        return None
    (n0, t0), (n1, t1) = pts
    slope = math.log(t1 / t0) / math.log(n1 / n0)
    return t1 * (at / n1) ** slope


def summarize(results: list[dict], sweep_elements: int, target_leaves: int) -> dict:
    """The issue's targets as ratios measured in this run."""
    by = {(r["case"], r["config"], r["dtype"], r["impl"]): r for r in results}
    out: dict[str, Any] = {}

    def get(case, config, dtype, impl, key="median_s"):
        r = by.get((case, config, dtype, impl))
        return None if r is None else r.get(key)

    cells = sorted({(r["case"], r["config"], r["dtype"]) for r in results})
    rows = []
    for case, config, dtype in cells:
        j = get(case, config, dtype, "jrmsprop")
        flat = get(case, config, dtype, "jrmsprop-flat")
        best_j = min((t for t in (j, flat) if t is not None), default=None)
        row = {"case": case, "config": config, "dtype": dtype}
        pairs = {
            "jrmsprop/optax": (j, get(case, config, dtype, "optax")),
            "roofline/jrmsprop (bandwidth fraction)": (get(case, config, dtype, "roofline"), j),
            "roofline/jrmsprop-flat": (get(case, config, dtype, "roofline"), flat),
            "adapter/jrmsprop": (get(case, config, dtype, "adapter"), j),
            "adapter-foreach/jrmsprop": (get(case, config, dtype, "adapter-foreach"), j),
            "adapter-foreach/jrmsprop-flat": (get(case, config, dtype, "adapter-foreach"), flat),
            "inject/jrmsprop": (get(case, config, dtype, "inject"), j),
            "adapter/inject": (get(case, config, dtype, "adapter"), get(case, config, dtype, "inject")),
            "adapter-foreach/inject": (
                get(case, config, dtype, "adapter-foreach"),
                get(case, config, dtype, "inject"),
            ),
            "torch-foreach/best jrmsprop": (get(case, config, dtype, "torch-foreach"), best_j),
            "jrmsprop/one leaf same bytes": (j, flat),
        }
        for name, (a, b) in pairs.items():
            if a is not None and b is not None:
                row[name] = a / b
        rows.append(row)
    out["ratios"] = rows

    # First-step time against leaf count (plain float32 at a fixed total).
    compile_growth: dict[str, list] = {}
    for r in results:
        if (r["config"], r["dtype"], r["elements"]) == ("plain", "float32", sweep_elements):
            compile_growth.setdefault(r["impl"], []).append((r["leaves"], r["first_step_s"]))
    for pts in compile_growth.values():
        pts.sort()
    out["first_step_vs_leaves"] = compile_growth
    target = max([n for pts in compile_growth.values() for n, _ in pts] + [target_leaves])
    est = {}
    for impl, pts in compile_growth.items():
        measured = dict(pts)
        if target in measured:
            est[impl] = {"leaves": target, "first_step_s": measured[target], "extrapolated": False}
        else:
            guess = _fit_power(pts, target)
            if guess is not None:
                est[impl] = {"leaves": target, "first_step_s": guess, "extrapolated": True}
    out["first_step_at_most_leaves"] = est
    if "optax" in est:
        out["first_step_over_optax"] = {
            impl: e["first_step_s"] / est["optax"]["first_step_s"] for impl, e in est.items()
        }
    out["targets"] = _targets(results, rows)
    return out


# Leaf counts at which jrmsprop's first step (trace + compile + run) is held to optax's.
COMPILE_TARGET_LEAVES = (100, 1000, 3000)
# The adapter's step is held to the pure step that offers what it offers
# (``inject``) on these cases (one 4096x4096 leaf, 1,000 of 100x100), float32.
ADAPTER_TARGET = 1.10
ADAPTER_TARGET_CASES = ("large", "many-medium")


def _targets(results: list[dict], rows: list[dict]) -> list[dict]:
    """Each target of the benchmark page with its figure: met or not met in this run."""
    targets = []
    for row in rows:
        ratio = row.get("jrmsprop/optax")
        if ratio is not None:
            cell = f"{row['case']}/{row['config']}/{row['dtype']}"
            targets.append({"target": f"step jrmsprop <= 1.0x optax, {cell}", "value": ratio,
                            "limit": 1.0, "met": ratio <= 1.0})
    for row in rows:
        if row["case"] not in ADAPTER_TARGET_CASES or row["dtype"] != "float32":
            continue
        for impl in ("adapter", "adapter-foreach"):
            ratio = row.get(f"{impl}/inject")
            if ratio is not None:
                cell = f"{row['case']}/{row['config']}/{row['dtype']}"
                targets.append({"target": f"step {impl} <= {ADAPTER_TARGET:.2f}x inject, {cell}",
                                "value": ratio, "limit": ADAPTER_TARGET,
                                "met": ratio <= ADAPTER_TARGET})
    first = {(r["case"], r["config"], r["dtype"], r["impl"]): r for r in results}
    for (case, config, dtype, impl), r in sorted(first.items()):
        if impl != "jrmsprop" or r["leaves"] not in COMPILE_TARGET_LEAVES:
            continue
        other = first.get((case, config, dtype, "optax"))
        if other is None:
            continue
        ratio = r["first_step_s"] / other["first_step_s"]
        targets.append({
            "target": f"first step jrmsprop <= 1.0x optax at {r['leaves']} leaves, "
                      f"{case}/{config}/{dtype}",
            "value": ratio,
            "limit": 1.0,
            "met": ratio <= 1.0,
        })
    return targets


def format_table(results: list[dict]) -> str:
    """Median ms per step, one row per case/config/dtype, one column per impl."""
    impls = [i for i in IMPLS if any(r["impl"] == i for r in results)]
    cells = []
    for r in results:
        key = (r["case"], r["config"], r["dtype"], r["leaves"])
        if key not in cells:
            cells.append(key)
    head = ["case", "config", "dtype", "leaves"] + impls
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r["case"], r["config"], r["dtype"], r["impl"]): r for r in results}
    for case, config, dtype, leaves in cells:
        row = [case, config, dtype, str(leaves)]
        for impl in impls:
            cell = by.get((case, config, dtype, impl))
            row.append("-" if cell is None else f"{cell['median_s'] * 1e3:.3g}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    lines = []
    for row in summary["ratios"]:
        label = f"{row['case']}/{row['config']}/{row['dtype']}"
        ratios = ", ".join(
            f"{k} {v:.2f}" for k, v in row.items() if k not in ("case", "config", "dtype")
        )
        lines.append(f"{label}: {ratios}")
    for impl, e in summary.get("first_step_at_most_leaves", {}).items():
        how = "extrapolated" if e["extrapolated"] else "measured"
        lines.append(f"first step {impl} at {e['leaves']} leaves: {e['first_step_s']:.2f} s ({how})")
    for impl, v in summary.get("first_step_over_optax", {}).items():
        lines.append(f"first step {impl}/optax: {v:.3f}")
    targets = summary.get("targets", [])
    if targets:
        lines.append("")
        lines.append("targets:")
    for t in targets:
        lines.append(f"  {'met' if t['met'] else 'NOT MET'}: {t['target']}: {t['value']:.3f}x")
    return "\n".join(lines)


def plot(results: list[dict], sweep_elements: int, path: str) -> bool:
    """Time per step and first-step time against leaf count (plain float32).

    Returns False, saving nothing, when the run has fewer than two leaf
    counts of the sweep for every implementation: there is no line to draw.
    """
    swept = {
        r["leaves"]
        for r in results
        if (r["config"], r["dtype"], r["elements"]) == ("plain", "float32", sweep_elements)
    }
    if len(swept) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl in IMPLS:
        pts = sorted(
            (r["leaves"], r["median_s"], r["first_step_s"])
            for r in results
            if r["impl"] == impl
            and (r["config"], r["dtype"], r["elements"]) == ("plain", "float32", sweep_elements)
        )
        if not pts:
            continue
        n, t, c = zip(*pts)
        ax1.plot(n, [x * 1e3 for x in t], marker="o", label=impl)
        if impl not in ("roofline",) and not impl.startswith("torch"):
            ax2.plot(n, c, marker="o", label=impl)
    ax1.set(xscale="log", yscale="log", xlabel="leaves (same total elements)",
            ylabel="median time per step (ms)",
            title=f"step, plain float32, {sweep_elements:,} elements")
    ax2.set(xscale="log", yscale="log", xlabel="leaves", ylabel="first step (s)",
            title="first step (trace + compile + run)")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def build_cells(args: argparse.Namespace) -> list[Cell]:
    shapes = case_shapes(args.tiny)
    cells = []
    for case in args.cases:
        for config in args.configs:
            for dtype in args.dtypes:
                cells.append(Cell(case, config, dtype, shapes[case]))
    # The leaf-count sweep: plain float32, a fixed total, leaf counts not
    # already covered by a case with that total.
    covered = {len(c.shapes) for c in cells if (c.config, c.dtype) == ("plain", "float32")
               and _n_elements(c.shapes) == args.sweep_elements}
    for n in args.sweep:
        if n not in covered and n <= args.sweep_elements:
            # n leaves summing to the total exactly (sizes differ by at most one).
            q, r = divmod(args.sweep_elements, n)
            cells.append(Cell(f"sweep-{n}", "plain", "float32", [(q + 1,)] * r + [(q,)] * (n - r)))
    # Cheap cells first, so that an interrupted run has measured most cells:
    # the cost is the per-leaf compiles, which run up to the cap.
    return sorted(cells, key=lambda c: len(c.shapes) * (len(c.shapes) <= args.max_compile_leaves))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jrmsprop.bench", description=__doc__.split("\n")[0])
    csv = lambda s: [x for x in s.split(",") if x]
    p.add_argument("--tiny", action="store_true", help="toy sizes: every code path in seconds")
    p.add_argument("--cases", type=csv, default=None,
                   help="comma list of large,many-medium,many-small,transformer (default all)")
    p.add_argument("--configs", type=csv, default=list(CONFIGS), help="comma list: plain,centered+momentum")
    p.add_argument("--dtypes", type=csv, default=list(DTYPES), help="comma list: float32,bfloat16")
    p.add_argument("--impls", type=csv, default=list(IMPLS), help=f"comma list of {','.join(IMPLS)}")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per impl (default 20, tiny 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    p.add_argument("--sweep", type=lambda s: [int(x) for x in csv(s)], default=None,
                   help="leaf counts of the plot's sweep (default 1,10,100,1000,10000; tiny 1,4,20)")
    p.add_argument("--sweep-elements", type=int, default=None,
                   help="total elements of the sweep (default 10,000,000 = the many-small case)")
    p.add_argument("--max-compile-leaves", type=int, default=None,
                   help="skip impls that compile per leaf (jrmsprop, adapter, optax) on cells "
                        "with more leaves; their first step there is extrapolated (default 3000; "
                        "--full lifts it)")
    p.add_argument("--full", action="store_true",
                   help="run every impl on every cell (adds minutes of per-leaf compiles)")
    p.add_argument("--out", default=None,
                   help="folder for results.json and the plot (default: a fresh "
                        "benchmarks/runs/<UTC time>/ in the repository root, ignored by git; elsewhere "
                        "<temp dir>/jrmsprop-bench/<UTC time>/)")
    p.add_argument("--record", action="store_true",
                   help="write to benchmarks/, the committed record the docs show")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    all_cases = list(case_shapes(args.tiny))
    args.cases = args.cases or all_cases
    for name, chosen, allowed in (("case", args.cases, all_cases), ("config", args.configs, list(CONFIGS)),
                                  ("dtype", args.dtypes, list(DTYPES)), ("impl", args.impls, list(IMPLS))):
        bad = [x for x in chosen if x not in allowed]
        if bad:
            p.error(f"unknown {name} {', '.join(bad)}; choose from {', '.join(allowed)}")
    if args.record and args.out is not None:
        p.error("--record writes to benchmarks/; leave out --out")
    if args.record and not _in_checkout():
        p.error("--record refreshes the repository's benchmarks/: run it from the repository root")
    if args.out is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        args.out = RECORD if args.record else os.path.join(_runs_root(), stamp)
    args.repeats = args.repeats or (3 if args.tiny else 20)
    args.sweep = args.sweep if args.sweep is not None else ([1, 4, 20] if args.tiny else [1, 10, 100, 1000, 3000, 10000])
    args.sweep_elements = args.sweep_elements or (200 if args.tiny else 10_000_000)
    if args.full:
        args.max_compile_leaves = sys.maxsize
    elif args.max_compile_leaves is None:
        args.max_compile_leaves = max(COMPILE_TARGET_LEAVES)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark; prints the table and writes JSON (and the plot).

    Args:
      argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
      The JSON document written to ``<out>/results.json``.
    """
    args = parse_args(argv)
    missing = available_impls()
    impls = [i for i in args.impls if i not in missing]
    cells = build_cells(args)
    skipped = []
    plan = []
    for cell in cells:
        run = [i for i in impls if not (i in PER_LEAF_COMPILED and len(cell.shapes) > args.max_compile_leaves)]
        skipped += [(cell.case, cell.config, cell.dtype, i) for i in impls if i not in run]
        plan.append((cell, run))
    load_before = _load()
    started = time.perf_counter()
    results: list[dict] = []
    try:
        from tqdm import tqdm

        progress = tqdm(total=len(plan) * args.repeats, disable=args.no_progress,
                        desc="bench", unit="repeat", file=sys.stderr)
    except ImportError:
        progress = None
    os.makedirs(args.out, exist_ok=True)
    doc = _document(args, argv, results, missing, skipped, load_before, started)
    for cell, run in plan:
        if progress is not None:
            progress.set_postfix_str(f"{cell.case} {cell.config} {cell.dtype}")
        results += run_cell(cell, run, args.repeats, args.warmup, progress)
        # Written after every cell: a long run that is stopped keeps its data.
        doc = _document(args, argv, results, missing, skipped, load_before, started)
    if progress is not None:
        progress.close()
    print(format_table(doc["results"]))
    print()
    print(format_summary(doc["summary"]))
    if skipped:
        print(f"\nnot run (per-leaf compile, > {args.max_compile_leaves} leaves; --full runs them): "
              + ", ".join("/".join(s) for s in skipped))
    for e in doc["errors"]:
        print(f"\nFAILED {e['impl']} on {e['case']}/{e['config']}/{e['dtype']}: {e['error']}")
    if missing:
        print("\nunavailable: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))
    print(f"\nload average before/after: {load_before} / {_load()}; wall {doc['meta']['wall_s']:.0f} s")
    if not args.no_plot:
        path = os.path.join(args.out, "bench.png")
        try:
            if plot(doc["results"], args.sweep_elements, path):
                print(f"plot: {path}")
            else:
                print(
                    "no plot: the run has fewer than two leaf counts of the plain float32 "
                    f"sweep ({args.sweep_elements:,} elements); add --sweep 1,10,100"
                )
        except ImportError:
            print("no plot: matplotlib is not installed (pip install matplotlib)")
    print(f"results: {os.path.join(args.out, 'results.json')}")
    return doc


def _document(args, argv, results, missing, skipped, load_before, started) -> dict:
    """The JSON document of the results so far, also written to disk."""
    errors = [r for r in results if "error" in r]
    results = [r for r in results if "error" not in r]
    summary = summarize(results, args.sweep_elements, max(args.sweep, default=1))
    doc = {
        "meta": {
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": "python -m jrmsprop.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "wall_s": time.perf_counter() - started,
            "loadavg_before": load_before,
            "loadavg_after": _load(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "jax_backend": jax.default_backend(),
            "jax_device": str(jax.devices()[0]),
            "torch": _torch_version(),
            "unavailable": missing,
            "skipped_per_leaf_compiles": skipped,
            "max_compile_leaves": args.max_compile_leaves,
        },
        "results": results,
        "errors": errors,
        "summary": summary,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(doc, f, indent=1, default=_jsonable)
    return doc


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating, np.bool_)):
        return x.item()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


def _torch_version() -> str | None:
    try:
        import torch

        return f"{torch.__version__} ({_torch_device()})"
    except ImportError:
        return None


if __name__ == "__main__":
    main()
