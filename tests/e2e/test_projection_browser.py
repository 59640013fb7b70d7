"""The Projection page in a real browser: run a short projection, play the client-side animation."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_helpers import screenshot, wait_idle

pytestmark = pytest.mark.browser


@pytest.fixture(scope="session")
def server_vae_run(app_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny VAE trained inside the server's workspace (the app_server fixture makes "e2e_workspace*")."""
    from core.train import TrainConfig, fit

    found = sorted(tmp_path_factory.getbasetemp().glob("e2e_workspace*"), key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.fail("the app_server fixture's workspace was not found under the pytest base temp folder")
    old = os.environ.get("ANOMALYLAB_HOME")
    os.environ["ANOMALYLAB_HOME"] = str(found[-1])
    try:
        run_dir = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="vae", size=32, z_dim=16, base_channels=8,
                                  epochs=1, device="cpu"))
    finally:
        if old is None:
            os.environ.pop("ANOMALYLAB_HOME", None)
        else:
            os.environ["ANOMALYLAB_HOME"] = old
    yield run_dir


def test_projection_runs_and_animates_in_the_browser(page, app_server: str, server_vae_run: Path) -> None:
    page.goto(app_server)
    wait_idle(page)
    page.goto(f"{app_server}/projection")
    wait_idle(page)
    page.get_by_role("heading", name="Projection").first.wait_for()
    run_picker = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="Run")
    run_picker.click()
    page.get_by_role("option", name=re.compile(re.escape(server_vae_run.name))).click()
    wait_idle(page)
    steps = page.get_by_role("spinbutton", name="Steps")
    steps.fill("3")
    steps.blur()
    page.get_by_role("button", name="Run projection").click()
    page.get_by_text("Projection, step by step").wait_for(timeout=60_000)
    wait_idle(page)
    play = page.locator(".updatemenu-button").first
    play.wait_for(timeout=30_000)
    current = page.locator("text.slider-label").filter(has_text=re.compile(r"^step "))  # the slider's current value
    assert current.first.text_content().strip() == "step 0"
    play.click()
    page.wait_for_timeout(2000)
    # The animation ran in the browser, without a rerun: the slider reached the last step.
    assert current.first.text_content().strip() == "step 3"
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "projection_played")
    page.get_by_role("tab", name="GIF").click()
    page.get_by_role("button", name="Download GIF").wait_for(timeout=10_000)
    assert page.get_by_test_id("stException").count() == 0
