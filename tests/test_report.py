"""The report card built from the fixture run in tests/fixtures/report_run (copied, never written to)."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from looper_utils.report import build_report, environment_info

FIXTURE = Path(__file__).parent / "fixtures" / "report_run"
DATA_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    dst = tmp_path / "runs" / "r42"
    shutil.copytree(FIXTURE, dst)
    for leftover in ("report.md", "report.html"):
        (dst / leftover).unlink(missing_ok=True)
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str, str]:
    dst = tmp_path_factory.mktemp("runs") / "r42"
    shutil.copytree(FIXTURE, dst)
    md, html = build_report(dst)
    return dst, md.read_text(encoding="utf-8"), html.read_text(encoding="utf-8")


def test_fixture_figures_are_small_real_pngs():
    figures = sorted((FIXTURE / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["02_sft_loss_curve.png", "06_eval_accuracy.png"]
    for f in figures:
        assert f.stat().st_size < 20_000
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size[0] >= 200


def test_markdown_has_the_numbers(built):
    run, md, _ = built
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    assert md.startswith("# Report card: run r42 (smoke profile)")
    for expected in [
        "| 01_data Data | ok | 3.2 s | train 4,000 · dev 300 · test 300 · platinum 300 (synthetic) |",
        "dev accuracy 1.3% → 46.3% (n=300)",           # 02 summary
        "| dev accuracy after SFT [95% Wilson CI] | 46.3% [40.8, 52.0] |",
        "| pass@k | 44.1% | 59.0% | 73.1% | 83.6% |",  # 03 pass@k row
        "| maj@8 | 52.3% |",
        "| reward mean ± std | 0.5127 ± 0.4318 |",
        "| payoff vs uniform | 1.21× |",              # 118.4 / 97.9
        "| dev accuracy PPO [95% CI] | 53.7% [48.0, 59.3] |",
        "| sampling | 4 min 11 s | 60.9% |",           # 251.3 of 412.9 s
        "| ppo | 52.3% [46.7, 58.0] (n=300) | 51.3% [45.7, 57.0] (n=300) |",
        "| ppo vs sft | platinum | +6.7 pp | [+2.7, +10.7] | 0.0021 | 28 | 8 |",
        "| sft/platinum | 137 | 4 | 9 | 2 | 148 |",
        "| total |  | 12 min 32 s |  |",               # sum of pipeline.json seconds = 752.6
    ]:
        assert expected in md, expected
    assert "Missing" not in md and "Partial run" not in md


def test_unknown_metrics_are_kept(built):
    _, md, _ = built
    assert "| unparsed_rows | 0 |" in md
    assert "| eval_seconds | 7.25 |" in md
    assert "| loss_history | 13 values: first 2.91, last 0.4871, min 0.4871, max 2.91 |" in md
    assert "| bandit.rounds | 500 |" in md
    assert "| models.ppo.platinum.mean_length | 61.2 |" in md


def test_figures_grouped_by_stage_with_captions(built):
    _, md, html = built
    sft, rollouts, evals = md.index("## 02_sft"), md.index("## 03_rollouts"), md.index("## 06_eval")
    loss, acc = md.index("![Loss curve](figures/02_sft_loss_curve.png)"), md.index("![Accuracy](figures/06_eval")
    assert sft < loss < rollouts < evals < acc
    assert "Figure 1. Loss curve" in html and "Figure 2. Accuracy" in html


def test_html_embeds_every_figure_and_fetches_nothing(built):
    run, _, html = built
    payloads = DATA_IMG.findall(html)
    on_disk = sorted(f.read_bytes() for f in (run / "figures").glob("*.png"))
    assert sorted(base64.b64decode(p) for p in payloads) == on_disk
    for p in payloads:
        with Image.open(io.BytesIO(base64.b64decode(p))) as im:
            im.verify()
    assert html.count("<img ") == len(payloads) == 2
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//|file:)""", html, re.I)
    assert not re.search(r"<link\b|@import|url\(", html, re.I)
    assert "figures/02_sft_loss_curve.png\"" not in html  # the file name appears only as caption text


def test_html_config_details_and_environment(built):
    _, _, html = built
    for name in ("01_data", "02_sft", "05_ppo"):
        assert f"<details><summary>{name} (configs/{name}.json)</summary>" in html
    # the stage's own section first, the rest folded inside
    ppo = html[html.index("<summary>05_ppo"):]
    assert ppo.index("ppo.iterations</td><td class=\"num\">20</td>") < ppo.index("other sections")
    env = html[html.index("<h2>Environment</h2>"):]
    assert "run (02_sft)" in env and "5.17.0" in env  # recorded by the run
    assert f"<td>cpu_count</td><td>{os.cpu_count()}</td>" in env  # collected at build time


def test_missing_stage_is_reported(run_dir):
    (run_dir / "metrics" / "04_regime_w.json").unlink()
    (run_dir / "pipeline.json").unlink()
    md_path, html_path = build_report(run_dir)
    md, html = md_path.read_text(), html_path.read_text()
    assert "Partial run: no metrics for 04_regime_w. Run notebooks/04_regime_w.ipynb" in md
    assert "| 04_regime_w Regime W: reward and bandit | missing | — | — |" in md
    assert "Missing: no metrics/04_regime_w.json" in md and "Missing: no metrics/04_regime_w.json" in html
    assert "wall times are unknown" in md
    assert "46.3%" in md  # the other stages are still there


def test_partial_run_with_one_stage_and_nothing_else(tmp_path):
    run = tmp_path / "early"
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "01_data.json").write_text(json.dumps({"rows": {"train": 10}, "profile": "demo"}))
    md = build_report(run)[0].read_text()
    assert md.startswith("# Report card: run early (demo profile)")
    assert "no metrics for 02_sft, 03_rollouts, 04_regime_w, 05_ppo, 06_eval" in md
    assert "No configs/*.json in this run." in md
    assert "| 01_data Data | ok | — | train 10 |" in md


def test_failed_stage_bad_json_and_escaping(run_dir):
    pipe = json.loads((run_dir / "pipeline.json").read_text())
    pipe["stages"]["05_ppo"] = {"seconds": 12.0, "status": "failed", "error": "CUDA out of memory"}
    (run_dir / "pipeline.json").write_text(json.dumps(pipe))
    (run_dir / "metrics" / "05_ppo.json").unlink()
    (run_dir / "metrics" / "03_rollouts.json").write_text("{not json")
    data = json.loads((run_dir / "metrics" / "01_data.json").read_text())
    data["source"] = "<script>alert(1)</script>"
    (run_dir / "metrics" / "01_data.json").write_text(json.dumps(data))
    md_path, html_path = build_report(run_dir)
    md, html = md_path.read_text(), html_path.read_text()
    assert "| 05_ppo PPO | failed | 12.0 s | — |" in md
    assert "Pipeline status failed: CUDA out of memory" in md
    assert "03_rollouts.json:1: not valid JSON" in md
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_environment_info_and_missing_folder(tmp_path):
    env = environment_info()
    assert env["python"].count(".") == 2 and env["cpu_count"] == os.cpu_count()
    assert {"torch", "transformers", "trl", "peft", "gpu"} <= set(env)
    with pytest.raises(FileNotFoundError, match="runs/<run_id>"):
        build_report(tmp_path / "nope")


def test_ppo_reward_per_arm_explains_the_mean(tmp_path):
    """05's reward per arm, first -> last iteration, with each arm's share of the prompts."""
    from looper_utils import report

    run = tmp_path / "runs" / "r"
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "05_ppo.json").write_text(json.dumps({
        "dev_accuracy_sft": 0.37, "dev_accuracy_ppo": 0.75, "n_dev": 300, "reward_first": 0.74, "reward_last": 0.71,
        "reward_by_arm_first": {"1 step": 0.9, "2 steps": 0.5}, "reward_by_arm_last": {"1 step": 1.1, "2 steps": 0.8},
        "arm_share_first": {"1 step": 0.5, "2 steps": 0.5}, "arm_share_last": {"1 step": 0.1, "2 steps": 0.9}}))
    md_path, _ = report.build_report(run)
    md = md_path.read_text()
    assert "| 2 steps | 0.5 → 0.8 | 50.0% → 90.0% |" in md and "| 1 step | 0.9 → 1.1 | 50.0% → 10.0% |" in md
    assert "reward_by_arm" not in md  # shown as the table, not again under other metrics
