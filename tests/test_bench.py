"""Smoke test of ``python -m jrmsprop.bench`` at toy sizes.

Benchmarks measure, they do not assert timings: this checks that every
implementation runs, that the outputs have their structure and finite
values, and the memory properties of the compiled step (no temporary the
size of a parameter; outputs alias the donated params and state).
"""

import json
import math
import os
import tempfile
from pathlib import Path

import pytest

from jrmsprop import bench


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    doc = bench.main([
        "--tiny", "--cases", "large,many-small", "--configs", "centered+momentum",
        "--dtypes", "float32", "--repeats", "2", "--warmup", "0", "--sweep", "1,4",
        "--no-progress", "--out", str(out),
    ])
    return doc, out


def test_every_available_impl_runs_on_every_cell(tiny_run):
    doc, _ = tiny_run
    assert doc["errors"] == []
    expected = [i for i in bench.IMPLS if i not in doc["meta"]["unavailable"]]
    cells = {(r["case"], r["config"], r["dtype"]) for r in doc["results"]}
    assert cells == {
        ("large", "centered+momentum", "float32"),
        ("many-small", "centered+momentum", "float32"),
        ("sweep-1", "plain", "float32"),
        ("sweep-4", "plain", "float32"),
    }
    for cell in cells:
        impls = sorted(r["impl"] for r in doc["results"] if (r["case"], r["config"], r["dtype"]) == cell)
        assert impls == sorted(expected), cell


def test_records_are_finite_and_complete(tiny_run):
    doc, _ = tiny_run
    for r in doc["results"]:
        for key in ("median_s", "p25_s", "p75_s", "first_step_s", "gbytes_per_s", "vs_roofline"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["impl"], key, r[key])
        assert r["p25_s"] <= r["median_s"] <= r["p75_s"]
        assert r["repeats"] == 2
        assert r["finite"], f"{r['impl']} produced non-finite params"
        reads, writes = bench._arrays_touched(bench.CONFIGS[r["config"]])
        assert r["ideal_bytes"] == r["elements"] * 4 * (reads + writes)


def test_jitted_steps_hold_no_param_sized_temporaries_and_alias_donated_buffers(tiny_run):
    doc, _ = tiny_run
    for r in doc["results"]:
        if r["impl"] in ("jrmsprop", "jrmsprop-flat") and r["case"] in ("large", "sweep-1"):
            mem = r["memory"]
            assert mem["no_param_sized_temporaries"], mem
            assert mem["outputs_alias_donated_inputs"], mem


def test_json_table_and_plot_are_written(tiny_run, capsys):
    doc, out = tiny_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(doc["results"]))
    assert set(on_disk["summary"]) >= {"ratios", "first_step_vs_leaves"}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_has_the_target_ratios(tiny_run):
    doc, _ = tiny_run
    large = next(r for r in doc["summary"]["ratios"] if r["case"] == "large")
    for key in ("jrmsprop/optax", "roofline/jrmsprop (bandwidth fraction)",
                "torch-foreach/best jrmsprop", "adapter/inject", "adapter-foreach/inject",
                "inject/jrmsprop"):
        assert math.isfinite(large[key]) and large[key] > 0


def test_unknown_names_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--impls", "jrmsprop,nope"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "huge"])


def test_flat_layout_steps_like_the_per_leaf_pytree():
    """The docs' opt-in flat layout: one raveled buffer gives the same
    params and state as the per-leaf pytree (the math is elementwise)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.flatten_util import ravel_pytree

    import jrmsprop

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal(4), jnp.float32)}
    opt = jrmsprop.rmsprop(lr=1e-2, momentum=0.9, centered=True, weight_decay=0.1)
    flat, unravel = ravel_pytree(params)
    state, flat_state = opt.init(params), opt.init(flat)
    for _ in range(5):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        flat_updates, flat_state = opt.update(ravel_pytree(grads)[0], flat_state, flat)
        flat = optax.apply_updates(flat, flat_updates)
    for name, leaf in unravel(flat).items():
        np.testing.assert_allclose(leaf, params[name], rtol=1e-6, atol=1e-7)
    for field in ("square_avg", "grad_avg", "momentum_buffer"):
        np.testing.assert_allclose(getattr(flat_state, field),
                                   ravel_pytree(getattr(state, field))[0], rtol=1e-6, atol=1e-7)


def test_summary_lists_each_target_met_or_not(tiny_run, capsys):
    doc, _ = tiny_run
    targets = doc["summary"]["targets"]
    names = [t["target"] for t in targets]
    assert any(n.startswith("step jrmsprop <= 1.0x optax, large/") for n in names)
    # The adapter against the pure step with lr, alpha and eps injected (runtime values).
    for impl in ("adapter", "adapter-foreach"):
        assert f"step {impl} <= 1.10x inject, large/centered+momentum/float32" in names
    for t in targets:
        assert t["met"] == (t["value"] <= t["limit"])
    printed = bench.format_summary(doc["summary"])
    assert "targets:" in printed and ("met: step" in printed or "NOT MET: step" in printed)


def test_a_run_writes_to_a_fresh_folder_unless_recording():
    """The committed record (benchmarks/results.json, bench.png) changes only with --record."""
    args = bench.parse_args(["--tiny"])
    assert args.out.startswith("benchmarks/runs/") and args.out != "benchmarks/runs/"
    assert bench.parse_args(["--tiny", "--record"]).out == bench.RECORD == "benchmarks"
    with pytest.raises(SystemExit):
        bench.parse_args(["--record", "--out", "x"])
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "benchmarks/runs/" in ignored


def test_outside_the_repository_a_run_writes_under_the_temp_dir(tmp_path, monkeypatch):
    """An installed jrmsprop run from any folder writes nothing there."""
    monkeypatch.chdir(tmp_path)
    out = bench.parse_args(["--tiny"]).out
    assert out.startswith(os.path.join(tempfile.gettempdir(), "jrmsprop-bench") + os.sep), out
    assert bench.parse_args(["--tiny", "--out", "mine"]).out == "mine"
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--record"])


def test_a_run_with_one_sweep_point_saves_no_empty_chart(tmp_path):
    one = [{"impl": "jrmsprop", "leaves": 1, "median_s": 0.01, "first_step_s": 0.1,
            "config": "plain", "dtype": "float32", "elements": 100}]
    assert bench.plot(one, 100, str(tmp_path / "bench.png")) is False
    assert not (tmp_path / "bench.png").exists()
