"""The smoke pipeline, run once per session through papermill; each stage's metrics checked."""
import json

import pytest

pytestmark = pytest.mark.notebooks


def _metrics(run_dir, stage):
    path = run_dir / "metrics" / f"{stage}.json"
    assert path.is_file(), f"{stage} wrote no metrics"
    return json.loads(path.read_text())


def test_01_data(pipeline_run):
    m = _metrics(pipeline_run, "01_data")
    rows = m["rows"]
    assert rows["test"] == 300 and rows["platinum"] == 300
    assert rows["train"] + rows["dev"] == 4300 and 200 <= rows["dev"] <= 400
    assert all(1.0 <= v <= 2.0 for v in m["steps_mean"].values())
    assert m["overlap"]["test"]["exact"] == 0 and m["unparseable_rows"] == 0
    root = pipeline_run.parents[1]
    for name in ("gsm8k_train", "gsm8k_dev", "gsm8k_test", "gsm8k_platinum_test"):
        lines = (root / "data" / f"{name}.jsonl").read_text().splitlines()
        assert set(json.loads(lines[0])) >= {"id", "question", "answer", "gold"}
    assert (pipeline_run / "01_data.ipynb").is_file()
    assert {p.name for p in (pipeline_run / "figures").glob("01_*.png")} == {"01_steps.png", "01_gold_magnitude.png"}
    assert json.loads((pipeline_run / "configs" / "01_data.json").read_text())["profile"] == "smoke"
