"""`python -m core bench app-load` (issue 16), at its smallest: one session, one load per phase, a training
started from the Train page in between; the command reports p50/p90 of both phases and their ratio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.services.report import chromium_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(chromium_path() is None, reason="Chromium not found: apt-get install -y chromium")
def test_bench_app_load_reports_both_phases(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ANOMALYLAB_HOME": str(tmp_path / "ws")}
    done = subprocess.run([sys.executable, "-m", "core", "bench", "app-load", "--sessions", "1", "--rounds", "1", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    for phase in ("idle", "training"):
        assert res[phase]["loads"] == 1 and res[phase]["failed"] == 0 and res[phase]["p50"] > 0
    assert res["p50_ratio"] == pytest.approx(res["training"]["p50"] / res["idle"]["p50"])
    assert isinstance(res["meets_target"], bool)
    assert subprocess.run([sys.executable, "-m", "core", "bench", "app-load", "--sessions", "99"], cwd=ROOT, env=env,
                          capture_output=True, text=True).returncode != 0
