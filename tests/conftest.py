"""Shared fixtures: every test session writes into its own temporary workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# .streamlit/config.toml hides error details from users; tests want to read them.
os.environ.setdefault("STREAMLIT_CLIENT_SHOW_ERROR_DETAILS", "full")
# Heavy jobs share slots (one per 2 cores in production); AppTests share one registry per process, and a job one
# test leaves running must not queue the next test's. tests/core/test_jobs.py tests the queue on its own registries.
os.environ.setdefault("ANOMALYLAB_HEAVY_JOBS", "8")
# Heavy jobs run in worker processes in production; AppTests monkeypatch job functions and build in-memory models,
# which a spawned worker would not see. tests/core/test_jobs.py runs jobs in worker processes on its own registries,
# and the browser tests' servers run them in processes (tests/e2e/conftest.py).
os.environ.setdefault("ANOMALYLAB_JOB_WORKERS", "thread")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_small"


@pytest.fixture(scope="session", autouse=True)
def _workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workspace")
    old = os.environ.get("ANOMALYLAB_HOME")
    os.environ["ANOMALYLAB_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ANOMALYLAB_HOME", None)
    else:
        os.environ["ANOMALYLAB_HOME"] = old


@pytest.fixture(autouse=True)
def _fresh_last_selection(_workspace: Path) -> None:
    """Each test starts without the app's remembered selection (a test that wants it writes it itself)."""
    (_workspace / "last_selection.json").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def mvtec_small() -> Path:
    """The shared real MVTec subset; skips the test with a reason when it is absent."""
    if not (SHARED_DATA / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"real MVTec data not found at {SHARED_DATA} (it lives next to the checkout, never in the repo)")
    return SHARED_DATA
