"""House rules for the committed notebooks: valid, stripped, parameters first, no def/class."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

from looper_utils import pipeline

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
EXPECTED = ["01_data", "02_sft", "03_rollouts", "04_regime_w", "05_ppo", "06_eval"]


def test_notebooks_are_numbered_stages():
    names = [p.stem for p in NOTEBOOKS]
    assert names and names == [n for n in EXPECTED if n in names]
    assert names[0] == "01_data"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_house_rules(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = nb.cells
    assert cells[0].cell_type == "markdown", "first cell must be the markdown overview"
    code = [c for c in cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged parameters"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    for i, c in enumerate(code):
        assert not c.get("outputs"), f"code cell {i} has outputs"
        assert c.get("execution_count") is None, f"code cell {i} has an execution count"
        assert not re.search(r"^\s*(async\s+def|def|class)\s", c.source, re.M), f"code cell {i} defines something"
        assert "if False" not in c.source
        ast.parse(c.source)  # valid Python
    # markdown before each code cell
    for prev, cur in zip(cells, cells[1:]):
        if cur.cell_type == "code" and "parameters" not in cur.metadata.get("tags", []):
            assert prev.cell_type == "markdown" or prev.cell_type == "code" and prev is not cells[0]
    assert any("Things to try" in c.source for c in cells if c.cell_type == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_documents_itself(path):
    """Every parameter is `name: type = default  # comment`, and papermill infers all of them.

    papermill's parser takes no `X | None` annotations, so an optional
    parameter is written `name: int = None  # ... (None keeps the profile value)`.
    """
    from papermill import inspect_notebook

    nb = nbformat.read(path, as_version=4)
    src = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = [line for line in src.splitlines() if line.strip()]
    for line in lines:
        assert re.match(r"^\w+: [\w\[\], ]+ = .+  # \S", line), f"not `name: type = default  # what`: {line}"
    declared = pipeline.declared_parameters(path)
    assert {"profile", "run_id", "seed", "root"} <= set(declared)
    inferred = set(inspect_notebook(str(path)))
    assert inferred == set(declared), "papermill could not parse some parameter lines"
