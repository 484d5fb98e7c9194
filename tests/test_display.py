"""How result objects show themselves: one bounded line for `repr`, a collapsed bounded HTML table for
Jupyter, a pandas DataFrame where the object is a table."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

from interp.caa import CAAVectors
from interp.classify import ClassifierReport, ClassifierRow
from interp.dictionaries import Dictionary, Encoder
from interp.directions import Direction
from interp.display import HTML_ROWS, REPR_LIMIT, frame
from interp.features import FeatureContext, MaxActivating
from interp.refusal.rates import RefusalRates
from interp.refusal.selection import CandidateTable
from interp.selfexplain import SelfExplanation, SelfExplanationTable
from interp.sweeps import Sweep
from interp.vectors import SteeringVectors

HTML_LIMIT = 60_000  # characters: a few screens, whatever the object's size


def big_objects() -> dict[str, Any]:
    """Each object at a realistic size (a 65,536-atom SAE, 200 classifier rows, 30 layers)."""
    n_atoms, width = 65_536, 64
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, width), dim=-1)
    encoder = Encoder(torch.randn(width, n_atoms), torch.zeros(n_atoms), torch.zeros(width))
    rows = [ClassifierRow(f"feature {i} (encoder pre-activation)", "feature", 1.0, 0.7, 0.65, (0.6, 0.7), 0.4,
                          (0.3, 0.5), 0.6, (0.5, 0.7), note="x" * 500) for i in range(200)]
    contexts = {f: [FeatureContext(f, 2.0, 0, 3, ["tok"] * 2000, [1.0] * 2000, 5) for _ in range(20)] for f in range(100)}
    layers = list(range(30))
    grid = torch.rand(30, 5)
    return {
        "Direction": Direction(torch.randn(4096), 12, "m" * 300, "caa", meta={f"key{i}": "v" * 1000 for i in range(200)}),
        "SteeringVectors": SteeringVectors(torch.randn(30, 4096), tuple(layers), "smollm", "caa",
                                           meta={"data": "x" * 10_000}),
        "Dictionary": Dictionary(atoms, torch.ones(n_atoms), "blocks.5.hook_resid_pre", "smollm", "saelens", encoder,
                                 meta={"release": "r" * 5000}),
        "CAAVectors": CAAVectors(torch.randn(30, 4096), torch.rand(30) * 50, "smollm", 500),
        "ClassifierReport": ClassifierReport(rows, 400, 200, 4, 12, test_scores={r.name: torch.randn(200, 4) for r in rows},
                                             feature_train_auroc={"encoder": torch.rand(n_atoms)}),
        "Sweep": Sweep(layers, [float(m) for m in range(-10, 11)], torch.rand(30, 21), torch.rand(30, 21), "resid"),
        "SelfExplanationTable": SelfExplanationTable(
            tuple(SelfExplanation(f"direction {d}", s, "a long explanation " * 200, 0.5, 2.0)
                  for d in range(40) for s in (0.5, 1.0, 2.0)), {f"direction {d}": 1.0 for d in range(40)},
            "blocks.5.hook_resid_pre", 54.0),
        "CandidateTable": CandidateTable(layers, [-5, -4, -3, -2, -1], ["a", "b", "c", "d", "e"], torch.randn(30, 5, 4096),
                                         grid, grid, grid, torch.ones(30, 5, dtype=torch.bool), grid, 1.0, -1.0,
                                         chosen=(3, 1), reason="r" * 1000),
        "MaxActivating": MaxActivating(list(range(100)), torch.rand(100, 20), torch.zeros(100, 20, dtype=torch.long),
                                       torch.zeros(100, 20, dtype=torch.long), contexts, torch.rand(100), 10**6, 5000),
        "RefusalRates": RefusalRates("ito k=2", 0.1, (0.0, 0.3), 0.5, (0.3, 0.7), 32, 32,
                                     {"harmful": "x" * 100_000, "harmless": "y" * 100_000}),
    }


OBJECTS = big_objects()
TABLES = ("SteeringVectors", "CAAVectors", "ClassifierReport", "Sweep", "SelfExplanationTable", "CandidateTable",
          "MaxActivating")


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_repr_is_one_bounded_line(name: str) -> None:
    text = repr(OBJECTS[name])
    assert text.startswith(name + "(") and "\n" not in text and len(text) <= REPR_LIMIT
    assert "tensor(" not in text
    assert str(OBJECTS[name]) == text  # print() shows the same line


@pytest.mark.parametrize("name", sorted(set(OBJECTS) - {"RefusalRates"}))
def test_html_is_collapsed_and_bounded(name: str) -> None:
    page = OBJECTS[name]._repr_html_()
    assert page.startswith("<details>") and len(page) <= HTML_LIMIT
    assert page.count("<tr>") <= HTML_ROWS + 2
    assert "tensor(" not in page


@pytest.mark.parametrize("name", TABLES)
def test_to_frame(name: str) -> None:
    pandas = pytest.importorskip("pandas")
    table = OBJECTS[name].to_frame()
    assert isinstance(table, pandas.DataFrame) and len(table) > 0


def test_frames_have_the_objects_rows() -> None:
    pytest.importorskip("pandas")
    assert len(OBJECTS["Sweep"].to_frame()) == 30 * 21
    report = OBJECTS["ClassifierReport"].to_frame()
    assert len(report) == 200 and {"test_auroc", "test_auroc_ci_low", "test_auroc_ci_high"} <= set(report.columns)
    assert list(OBJECTS["SteeringVectors"].to_frame()["layer"]) == list(range(30))


def test_to_frame_without_pandas_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        frame([{"a": 1}])
