"""House rules for the committed notebooks: valid, stripped, parameters first, no def/class."""
import ast
import json
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
    raw = json.loads(path.read_text(encoding="utf-8"))  # nbformat.read would fill in missing cell ids
    assert all(c.get("id") for c in raw["cells"]), "every cell needs an id (nbformat 4.5)"
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


def _parameter_lines(path):
    """name -> (annotation, default) as written in the notebook's parameters cell."""
    nb = nbformat.read(path, as_version=4)
    src = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {n.target.id: (ast.unparse(n.annotation), ast.unparse(n.value))
            for n in ast.parse(src).body if isinstance(n, ast.AnnAssign)}


def test_a_parameter_means_the_same_in_every_notebook():
    """One `-p name=value` of the pipeline reaches every notebook that declares `name`: same type and default."""
    seen: dict[str, dict[str, tuple[str, str]]] = {}
    for path in NOTEBOOKS:
        for name, decl in _parameter_lines(path).items():
            seen.setdefault(name, {})[path.stem] = decl
    for name, by_nb in seen.items():
        if len(by_nb) > 1:
            assert len(set(by_nb.values())) == 1, f"{name} is declared differently: {by_nb}"


def test_reward_and_bandit_parameters_are_shared_by_04_and_05():
    from looper_utils import config

    decl = {p.stem: _parameter_lines(p) for p in NOTEBOOKS if p.stem in ("04_regime_w", "05_ppo")}
    assert set(decl) == {"04_regime_w", "05_ppo"}
    sections = {nb: {n for n in d if n.startswith(("reward__", "bandit__"))} for nb, d in decl.items()}
    assert sections["04_regime_w"] == sections["05_ppo"]
    weights = {k.replace(".", "__") for k in config.valid_keys() if k.startswith("reward.")}
    assert weights <= sections["05_ppo"], "every weight W is a parameter"
    assert {"bandit__algorithm", "bandit__arms"} <= sections["05_ppo"]
    for nb, names in sections.items():
        for n in names:
            config.build("smoke", stage=nb, **{n: None})  # a section__field the config resolves
            sec, field = n.split("__", 1)
            assert f"{sec}.{field}" in config.valid_keys(), (nb, n)
    # no other spelling of the same fields (w_correct, bandit_algorithm, arms, reward_weights)
    for nb, d in decl.items():
        assert not any(n.startswith("w_") or n in ("reward_weights", "bandit_algorithm", "arms") for n in d), nb


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem in ("04_regime_w", "05_ppo")], ids=lambda p: p.stem)
def test_section_parameters_reach_the_config(path):
    """The config cell passes every reward__/bandit__ parameter on (through config.section_parameters)."""
    from looper_utils import config

    decl = _parameter_lines(path)
    values = {"reward__correct": 0.5, "reward__format": 0.0, "bandit__algorithm": "uniform",
              "bandit__arms": "difficulty"}
    namespace = {n: values.get(n) for n in decl}
    cfg = config.build("smoke", stage=path.stem, **config.section_parameters(namespace))
    assert (cfg.reward.correct, cfg.reward.format, cfg.bandit.algorithm) == (0.5, 0.0, "uniform")
    nb = nbformat.read(path, as_version=4)
    assert any("config.section_parameters(globals())" in c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_use_public_names_and_import_at_the_top(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, c in enumerate(code):
        tree = ast.parse(c.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert not (node.attr.startswith("_") and not node.attr.startswith("__")), \
                    f"code cell {i} uses a private attribute .{node.attr}"
                if isinstance(node.value, ast.Name) and node.value.id == "trainer":
                    assert node.attr not in ("pv", "tok"), f"code cell {i} reaches into trainer.{node.attr}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                assert i <= 1, f"code cell {i} imports: imports belong in the first cells"
