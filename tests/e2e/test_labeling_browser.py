"""The Label page in a real browser: keyboard labeling stores labels in the workspace's database."""

from __future__ import annotations

import pytest
from browser_helpers import (
    label_image_on_screen,
    press_and_advance,
    screenshot,
    wait_idle,
)

pytestmark = pytest.mark.browser


def _server_workspace(tmp_path_factory: pytest.TempPathFactory):
    found = sorted(tmp_path_factory.getbasetemp().glob("e2e_workspace*"), key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.fail("the app_server fixture's workspace was not found under the pytest base temp folder")
    return found[-1]


def test_keys_g_and_d_store_two_labels(page, app_server: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    from core.labels.store import LabelStore, dataset_key

    db = LabelStore(_server_workspace(tmp_path_factory) / "labels.sqlite")
    key = dataset_key("builtin:synthetic", "bottle")
    before = db.labels_for(key)
    page.goto(f"{app_server}/label")
    wait_idle(page)
    page.get_by_role("heading", name="Label").first.wait_for(timeout=60_000)
    first = label_image_on_screen(page)
    second = press_and_advance(page, "g", first)  # moved on to the next image
    press_and_advance(page, "d", second)
    screenshot(page, "label_after_g_d")
    after = db.labels_for(key)
    assert after[first].label == "good" and after[second].label == "defective"
    assert len(after) == len(before) + 2 - sum(p in before for p in (first, second))
    assert page.get_by_test_id("stException").count() == 0
