import json
from pathlib import Path

import pytest

from looper_utils import pipeline
from looper_utils.artifacts import MissingInputError, require


def test_parse_params():
    assert pipeline.parse_params(["k=4", "lr=1e-3", "algo=gae", "flag=True"]) == \
        {"k": 4, "lr": 1e-3, "algo": "gae", "flag": True}
    with pytest.raises(SystemExit):
        pipeline.parse_params(["novalue"])


def test_declared_parameters_reads_the_tagged_cell(tmp_path):
    from pathlib import Path
    nb = Path(pipeline.__file__).resolve().parents[1] / "notebooks" / "01_data.ipynb"
    declared = pipeline.declared_parameters(nb)
    assert {"profile", "run_id", "seed", "root", "max_steps"} <= set(declared)


def test_json_given_to_a_str_parameter_reaches_the_notebook_as_text():
    from pathlib import Path
    nb = Path(pipeline.__file__).resolve().parents[1] / "notebooks" / "02_sft.ipynb"
    declared = pipeline.declared_parameters(nb)
    value = pipeline.parse_params(['overrides={"data.n_train": 8000}'])["overrides"]
    text = pipeline._as_declared(value, declared["overrides"])
    assert declared["overrides"] == "str" and json.loads(text) == {"data.n_train": 8000}
    assert pipeline._as_declared(4, declared["n_train"]) == 4


def test_unknown_parameter_fails_before_running(tmp_path):
    with pytest.raises(SystemExit, match="declared by none"):
        pipeline.run("smoke", stages=["01"], run_id="x", root=tmp_path, params={"no_such_knob": 1},
                     log=lambda *_: None)
    assert not (tmp_path / "runs" / "x" / "01_data.ipynb").exists()


def test_unknown_stage_and_profile(tmp_path):
    with pytest.raises(SystemExit, match="unknown stage"):
        pipeline.run("smoke", stages=["99"], root=tmp_path, log=lambda *_: None)
    with pytest.raises(SystemExit, match="unknown profile"):
        pipeline.run("huge", root=tmp_path, log=lambda *_: None)


def test_failing_notebook_names_stage_and_cell(tmp_path):
    # a bad parameter value makes the config cell raise: the error names the stage and the cell
    with pytest.raises(pipeline.StageFailed) as exc:
        pipeline.run("smoke", stages=["01"], run_id="bad", root=tmp_path, params={"max_steps": -3},
                     log=lambda *_: None)
    msg = str(exc.value)
    assert "01_data failed in cell" in msg and "ValueError" in msg and "01_data.ipynb" in msg
    record = json.loads((tmp_path / "runs" / "bad" / "pipeline.json").read_text())
    assert record["stages"]["01_data"]["status"] == "failed"


def test_require_names_the_notebook(tmp_path):
    with pytest.raises(MissingInputError, match="run notebooks/02_sft.ipynb first"):
        require(tmp_path / "checkpoints" / "sft", "02_sft")


def test_misspelt_parameter_gets_a_suggestion(tmp_path):
    with pytest.raises(SystemExit, match=r"'reward__corect': did you mean 'reward__correct'\?"):
        pipeline.run("smoke", stages=["04", "05"], run_id="x", root=tmp_path, params={"reward__corect": 0.5},
                     log=lambda *_: None)


def test_one_reward_parameter_reaches_04_and_05(tmp_path, monkeypatch):
    import papermill

    got = {}
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda nb, out, parameters, **kw: got.setdefault(Path(nb).stem, parameters))
    for k in pipeline.OFFLINE_ENV:
        monkeypatch.setenv(k, pipeline.OFFLINE_ENV[k])
    pipeline.run("smoke", stages=["04", "05"], run_id="x", root=tmp_path, log=lambda *_: None,
                 params=pipeline.parse_params(["reward__correct=0.5", "bandit__arms=pass_rate"]))
    assert set(got) == {"04_regime_w", "05_ppo"}
    for params in got.values():
        assert params["reward__correct"] == 0.5 and params["bandit__arms"] == "pass_rate"


@pytest.mark.parametrize("old, new", [("arms", "bandit__arms"), ("w_correct", "reward__correct"),
                                      ("bandit_algorithm", "bandit__algorithm")])
def test_old_reward_and_bandit_names_point_to_the_new_ones(tmp_path, old, new):
    with pytest.raises(SystemExit, match=rf"'{old}': did you mean '{new}'\?"):
        pipeline.run("smoke", stages=["04", "05"], run_id="x", root=tmp_path, params={old: 1}, log=lambda *_: None)
