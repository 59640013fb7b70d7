"""Helpers shared by the AppTest modules (imported by name, as tests/e2e/browser_helpers.py is)."""

from __future__ import annotations

import json

import pytest

from core.data.synthetic import CATEGORIES
from core.runs import list_runs


def category_without_run() -> str:
    """A built-in synthetic category with no AE/VAE run in the test workspace (the sidebar lists only
    those); skips the test when every category has one."""
    configs = [json.loads((d / "config.json").read_text())["config"] for d in list_runs()]
    with_run = {c["category"] for c in configs if c["model"] in ("ae", "vae")}
    free = [c for c in CATEGORIES if c not in with_run]
    if not free:
        pytest.skip("every synthetic category has a run in this workspace")
    return free[0]
