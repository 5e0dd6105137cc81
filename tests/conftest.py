"""Shared fixtures: the real GSM8K files when present, and one smoke pipeline run per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The real GSM8K JSONL folder; tests using it skip cleanly where it is absent."""
    if not (SHARED_GSM8K / "train.jsonl").is_file():
        pytest.skip(f"real GSM8K not found at {SHARED_GSM8K}")
    return SHARED_GSM8K


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """Run every notebook once in the smoke profile into a temporary root; return the run folder.

    Each stage's test reads this one run's outputs, so CI executes every notebook once.
    """
    from looper_utils import pipeline

    root = tmp_path_factory.mktemp("smoke_root")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    record = pipeline.run("smoke", run_id="test", root=root, log=lambda *_: None)
    assert all(s["status"] == "ok" for s in record["stages"].values())
    return root / "runs" / "test"
