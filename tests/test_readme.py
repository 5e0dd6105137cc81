"""The README's cheap commands, run exactly as written, in a scratch copy of the project layout."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _block_after(heading: str) -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_single_notebook_commands_work_as_written(tmp_path):
    commands = _block_after("### Run one notebook headless with papermill")
    assert any(c.startswith("mkdir") for c in commands) and len(commands) == 3
    # the layout of a fresh clone, with outputs kept out of the repository through LOOPER_ROOT
    for name in ("notebooks", "looper_utils", "pyproject.toml"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").mkdir()
    (tmp_path / ".venv" / "bin" / "papermill").symlink_to(Path(sys.executable).parent / "papermill")
    env = dict(os.environ, LOOPER_ROOT=str(tmp_path), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    outputs = []
    for cmd in commands:
        r = subprocess.run(shlex.split(cmd), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        outputs.append(r.stdout + r.stderr)
    assert "epochs: float" in outputs[0]  # --help-notebook documents 02's parameters
    assert (tmp_path / "runs" / "my-run" / "01_data.ipynb").is_file()
    assert (tmp_path / "runs" / "my-run" / "metrics" / "01_data.json").is_file()
    assert (tmp_path / "data" / "gsm8k_train.jsonl").is_file()
    assert not (REPO / "runs" / "my-run").exists()


@pytest.mark.parametrize("target", ["run", "test", "lab", "kernel"])
def test_make_targets_the_readme_names_exist(target):
    r = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
