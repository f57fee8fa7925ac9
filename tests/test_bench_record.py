"""The docs' benchmark tables quote the committed record, benchmarks/results.json.

Every cell of the timing table is the record's median; every figure of the
targets table is one of the record's figures, rounded as shown, and every
cell of a target appears in the part (met / not met) the record puts it in.
A new record with other numbers fails here until docs/benchmark.md follows it."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = json.loads((ROOT / "benchmarks" / "results.json").read_text())
NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?"


def _bench_section():
    return (ROOT / "docs" / "benchmark.md").read_text()


def _table(header_start):
    """The rows (lists of cells) of the benchmark page's table whose header starts so."""
    lines = _bench_section().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return lines[start].strip().strip("|").split("|"), rows


def _target(name_start):
    _, rows = _table("| target |")
    return next(result for target, result in rows if target.startswith(name_start))


def _rounds_to(value, shown):
    """Whether ``value`` printed with ``shown``'s decimals is ``shown``."""
    shown = shown.replace(",", "")
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return f"{value:.{decimals}f}" == shown


def _figures(text, unit):
    """Each figure before ``unit`` in ``text``: ('a',) or ('a', 'b') for a range a-b."""
    found = re.findall(rf"({NUMBER})(?:-({NUMBER}))?{unit}(?![\w\d])", text)
    return [tuple(x for x in pair if x) for pair in found]


def _check_figures(text, values, unit="x"):
    """Every figure in ``text`` is some value, rounded; every value is a figure or in a range."""
    figures = _figures(text, unit)
    assert figures, text
    for figure in figures:
        for shown in figure:
            assert any(_rounds_to(v, shown) for v in values), (shown, text)
    for v in values:
        covered = any(
            any(_rounds_to(v, shown) for shown in figure)
            or (len(figure) == 2 and float(figure[0]) <= v <= float(figure[1]))
            for figure in figures
        )
        assert covered, (v, text)


def _split_met(text):
    """(the met part, the not-met part) of a target's result."""
    met, _, not_met = re.split(r"([Nn]ot met)", text, maxsplit=1)
    return met, not_met


def _ratios(key):
    return [r[key] for r in RECORD["summary"]["ratios"] if key in r]


def _step_targets(prefix):
    return [t for t in RECORD["summary"]["targets"] if t["target"].startswith(prefix)]


def test_timing_table_is_the_records_medians():
    header, rows = _table("| case | config | dtype | leaves |")
    impls = [h.strip() for h in header[4:]]
    by_cell = {(r["case"], r["config"], r["dtype"], r["impl"]): r for r in RECORD["results"]}
    cells = {(r["case"], r["config"], r["dtype"]) for r in RECORD["results"]}
    assert {tuple(row[:3]) for row in rows} == cells
    for row in rows:
        case, config, dtype, leaves = row[:4]
        for impl, shown in zip(impls, row[4:], strict=True):
            record = by_cell.get((case, config, dtype, impl))
            if shown == "-":
                assert record is None, (case, config, dtype, impl)
                continue
            assert int(leaves.replace(",", "")) == record["leaves"]
            assert f"{record['median_s'] * 1e3:.3g}" == shown, (case, config, dtype, impl)


def test_run_conditions_are_the_records():
    meta = RECORD["meta"]
    section = _bench_section()
    assert f"{meta['wall_s']:.0f} s on {meta['cpu_count']} cores" in section
    load = f"load average {meta['loadavg_before'][0]:.1f} -> {meta['loadavg_after'][0]:.1f}"
    assert load in section
    repeats = {r["repeats"] for r in RECORD["results"]}
    assert repeats == {20} and "20 repeats" in section


def test_step_target_count_and_figures():
    targets = _step_targets("step jrmsprop <= 1.0x optax")
    text = _target("jrmsprop step <= 1.0x optax")
    met = [t["value"] for t in targets if t["met"]]
    assert f"met in {len(met)} of {len(targets)} cells" in text
    met_text, not_met_text = _split_met(text)
    _check_figures(met_text, met)
    _check_figures(not_met_text, [t["value"] for t in targets if not t["met"]])


def test_first_step_target_figures():
    text = _target("first step (compile)")
    targets = _step_targets("first step jrmsprop")
    est = RECORD["summary"]["first_step_at_most_leaves"]
    ratios = [t["value"] for t in targets] + [
        RECORD["summary"]["first_step_over_optax"]["jrmsprop"]
    ]
    seconds = [r["first_step_s"] for r in RECORD["results"]]
    seconds += [e["first_step_s"] for e in est.values()]
    for figure in _figures(text, "x"):
        assert any(_rounds_to(v, figure[0]) for v in ratios), figure
    for t in targets:  # each cell, met or not, where the record puts it
        part = _split_met(text)[0] if t["met"] else text[text.index("not met") :]
        assert any(_rounds_to(t["value"], f[0]) for f in _figures(part, "x")), t
    for figure in _figures(text, " s"):
        assert any(_rounds_to(v, figure[0]) for v in seconds), figure
    assert est["jrmsprop"]["extrapolated"] and est["optax"]["extrapolated"]
    assert "Extrapolated along the sweep to 10,000 leaves" in text


def test_adapter_target_figures():
    text = _target("`FunctionalRMSprop.step`")
    rows = [r for r in RECORD["summary"]["ratios"] if "adapter/jrmsprop" in r]
    every = [r["adapter/jrmsprop"] for r in rows]
    assert f"{min(every):.2f}-{max(every):.2f}x over every cell" in text
    one_leaf = next(
        r for r in rows if (r["case"], r["config"], r["dtype"]) == ("large", "plain", "float32")
    )
    many = next(
        r
        for r in rows
        if (r["case"], r["config"], r["dtype"]) == ("many-medium", "plain", "float32")
    )
    assert f"foreach=False: {one_leaf['adapter/jrmsprop']:.2f}x on one 4096x4096 leaf" in text
    assert f"{many['adapter/jrmsprop']:.2f}x at 1,000 leaves of 100x100" in text
    foreach = (one_leaf["adapter-foreach/jrmsprop"], many["adapter-foreach/jrmsprop"])
    assert f"foreach=True: {foreach[0]:.2f}x and {foreach[1]:.2f}x there" in text
    assert max(one_leaf["adapter/jrmsprop"], many["adapter/jrmsprop"]) <= 1.1


def test_many_leaves_target_figures():
    text = _target("10,000 leaves within 2x")
    by = {(r["case"], r["config"], r["dtype"], r["impl"]): r for r in RECORD["results"]}
    flat = by["many-small", "plain", "float32", "jrmsprop-flat"]
    assert f"{flat['median_s'] * 1e3:.1f} ms for 10,000 x 1,000 float32" in text
    assert f"{flat['vs_roofline']:.2f}x the roofline" in text
    flat3k = by["sweep-3000", "plain", "float32", "jrmsprop-flat"]["median_s"]
    j = by["sweep-3000", "plain", "float32", "jrmsprop"]["median_s"] / flat3k
    o = by["sweep-3000", "plain", "float32", "optax"]["median_s"] / flat3k
    assert f"jrmsprop is {j:.1f}x the flat step, optax {o:.1f}x" in text


def test_torch_target_lists_every_cell_where_the_record_puts_it():
    text = _target(">= 3x faster than torch foreach")
    values = _ratios("torch-foreach/best jrmsprop")
    met_text, not_met_text = _split_met(text)
    _check_figures(met_text, [v for v in values if v >= 3])
    _check_figures(not_met_text, [v for v in values if v < 3])


@pytest.mark.parametrize("impl", ["jrmsprop", "jrmsprop-flat", "optax"])
def test_memory_target_holds_for_every_jitted_step(impl):
    assert "met for every jitted step (jrmsprop, jrmsprop-flat, optax) in every cell" in _target(
        "no parameter-sized temporaries"
    )
    records = [r for r in RECORD["results"] if r["impl"] == impl]
    assert records
    for r in records:
        assert r["memory"]["no_param_sized_temporaries"], r["case"]
        assert r["memory"]["outputs_alias_donated_inputs"], r["case"]


# The adapter against the pure step with lr, alpha and eps injected at run time: its own
# record (a short run of four implementations on the adapter's target cells).
ADAPTER_RECORD = json.loads((ROOT / "benchmarks" / "adapter.json").read_text())


def _adapter_section():
    text = _bench_section()
    start = text.index("## The adapter against the pure step it stands for")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else None]


def test_adapter_table_is_the_adapter_records_medians_and_ratios():
    lines = _adapter_section().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| case | config |"))
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    by_cell = {(r["case"], r["config"], r["impl"]): r for r in ADAPTER_RECORD["results"]}
    ratios = {(r["case"], r["config"]): r for r in ADAPTER_RECORD["summary"]["ratios"]}
    assert {tuple(row[:2]) for row in rows} == set(ratios)
    assert all(r["dtype"] == "float32" for r in ADAPTER_RECORD["results"])
    for row in rows:
        case, config = row[:2]
        for name, shown in zip(header[3:], row[3:], strict=True):
            if "/" in name:  # a ratio column
                assert f"{ratios[case, config][name]:.2f}" == shown, (case, config, name)
            else:
                record = by_cell[case, config, name]
                assert int(row[2].replace(",", "")) == record["leaves"]
                assert f"{record['median_s'] * 1e3:.3g}" == shown, (case, config, name)


def test_adapter_targets_are_the_adapter_records():
    section = _adapter_section()
    prose = " ".join(section.split())  # the page's line breaks are not the text's
    meta = ADAPTER_RECORD["meta"]
    assert f"{meta['wall_s']:.0f} s on {meta['cpu_count']} cores" in section
    load = f"load average {meta['loadavg_before'][0]:.1f} -> {meta['loadavg_after'][0]:.1f}"
    assert load in section
    assert {r["repeats"] for r in ADAPTER_RECORD["results"]} == {25} and "25 repeats" in section
    targets = [t for t in ADAPTER_RECORD["summary"]["targets"] if "inject" in t["target"]]
    assert len(targets) == 8  # two cases, two configs, foreach False and True
    for impl, name in (("adapter", "`foreach=False`"), ("adapter-foreach", "`foreach=True`")):
        mine = [t for t in targets if t["target"].startswith(f"step {impl} <=")]
        met = sum(t["met"] for t in mine)
        assert f"{name}: met in {met} of {len(mine)} cells" in prose
    target = section[section.index("Target, the adapter within 1.10x of `inject`.") :]
    target = target.replace("within 1.10x of", "within the limit of")
    _check_figures(target.split("\n\n")[0], [t["value"] for t in targets])
