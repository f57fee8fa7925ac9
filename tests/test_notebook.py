"""examples/rmsprop_in_jax.ipynb runs top to bottom (so it cannot rot) and is
committed without outputs."""

from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "rmsprop_in_jax.ipynb"


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [], "outputs are stripped before committing"
        assert cell.execution_count is None


def test_notebook_executes_and_plots_matching_curves():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError on the first failing cell, including the
    # notebook's own assert_close of jrmsprop's curves against torch's.
    nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()

    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    assert any("image/png" in out.get("data", {}) for out in outputs), "no loss plot"
    printed = "".join(out.get("text", "") for out in outputs if out.get("name") == "stdout")
    gaps = {
        line.split("|")[1].strip(): float(line.split("=")[1])
        for line in printed.splitlines()
        if line.startswith("max |torch - ")
    }
    assert gaps["torch - jrmsprop.rmsprop"] < 1e-5
    assert gaps["torch - jrmsprop.FunctionalRMSprop"] < 1e-5
    assert gaps["torch - optax.rmsprop"] > 1e-3
