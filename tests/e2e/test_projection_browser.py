"""The Projection page in a real browser: run a short projection, play the client-side animation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_helpers import screenshot, wait_idle

pytestmark = pytest.mark.browser
expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)").expect


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
    # The animation runs in the browser, without a rerun: the slider reaches the last step.
    expect(current.first).to_have_text("step 3", timeout=15_000)
    assert page.get_by_test_id("stException").count() == 0
    screenshot(page, "projection_played")
    page.get_by_role("tab", name="GIF").click()
    page.get_by_role("button", name="Download GIF").wait_for(timeout=10_000)
    assert page.get_by_test_id("stException").count() == 0
