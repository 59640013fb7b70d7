"""The operating point in a real browser: it survives page visits and reloads, travels in the URL, belongs
to its run; Undo acts on the last labeling action; a killed training shows as interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser_helpers import (
    label_image_on_screen,
    press_and_advance,
    screenshot,
    wait_idle,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]


def _pick_run(page, run_name: str) -> None:
    picker = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="Run")
    picker.click()
    page.get_by_role("option", name=re.compile(re.escape(run_name))).click()
    wait_idle(page)


def _sidebar_run(page) -> str:
    picker = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="Run")
    return picker.get_by_role("combobox").input_value()


def _number(page, label: str):
    return page.get_by_label(label, exact=True)


def _number_value(page, label: str, want: float, timeout_s: float = 30.0) -> float:
    """The number input's value once it is ``want`` (else its value at the deadline): a reload's first render may
    still be replacing the page's elements when the heading appears."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = float(_number(page, label).input_value())
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.25)


def _set_number(page, label: str, value: str) -> None:
    box = _number(page, label)
    box.fill(value)
    box.press("Enter")
    wait_idle(page)


def _nav(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
    wait_idle(page)
    page.get_by_role("heading", name=title).first.wait_for(timeout=60_000)
    wait_idle(page)


def _open_threshold(page, app_server: str, run: Path) -> None:
    page.goto(f"{app_server}/threshold")
    wait_idle(page)
    _pick_run(page, run.name)
    page.get_by_role("heading", name=re.compile(r"^At threshold")).first.wait_for(timeout=60_000)
    wait_idle(page)


def _in_workspace(workspace: Path, fn):
    old = os.environ.get("ANOMALYLAB_HOME")
    os.environ["ANOMALYLAB_HOME"] = str(workspace)
    try:
        return fn()
    finally:
        if old is None:
            os.environ.pop("ANOMALYLAB_HOME", None)
        else:
            os.environ["ANOMALYLAB_HOME"] = old


def test_threshold_and_costs_survive_other_pages_and_a_reload(page, app_server: str, server_workspace: Path,
                                                              server_ae_run: Path) -> None:
    from core.evaluation.scored import scored_set

    scores = sorted(_in_workspace(server_workspace, lambda: scored_set(server_ae_run)).scores)
    typed = f"{float(scores[len(scores) // 3]):.4g}"  # inside the slider's range, away from every rule's threshold
    heading = f"At threshold {float(typed):.4g}"
    _open_threshold(page, app_server, server_ae_run)
    _set_number(page, "Type a threshold", typed)
    _set_number(page, "False alarm", "2.5")
    page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000)
    rule = page.get_by_test_id("stSelectbox").filter(has_text="Set the threshold by")
    assert rule.get_by_role("combobox").input_value().startswith("Manual")
    assert f"threshold={typed}" in page.url and f"run={server_ae_run.name}" in page.url

    _nav(page, "Try your image")
    page.get_by_text("the manual threshold of the operating point saved").first.wait_for(timeout=60_000)
    screenshot(page, "operating_point_try_image")
    _nav(page, "Threshold")
    page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
    assert float(_number(page, "False alarm").input_value()) == 2.5
    assert rule.get_by_role("combobox").input_value().startswith("Manual")

    page.reload()
    wait_idle(page)
    page.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
    wait_idle(page)
    assert server_ae_run.name in _sidebar_run(page)
    assert _number_value(page, "False alarm", 2.5) == 2.5
    screenshot(page, "operating_point_after_reload")
    assert page.get_by_test_id("stException").count() == 0


def test_a_threshold_url_opens_run_detector_and_threshold(browser, app_server: str, server_vae_run: Path,
                                                          server_ae_run: Path) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})  # a colleague's fresh browser
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{app_server}/threshold?data=builtin:synthetic&category=bottle&run={server_vae_run.name}"
                  "&detector=reconstruction&threshold=0.0123")
        wait_idle(page)
        page.get_by_role("heading", name="At threshold 0.0123").first.wait_for(timeout=60_000)
        wait_idle(page)
        assert server_vae_run.name in _sidebar_run(page)
        detector = page.get_by_test_id("stSelectbox").filter(has_text="Detector of the sidebar run")
        assert detector.get_by_role("combobox").input_value() == "Reconstruction error"
        saved = json.loads((server_vae_run / "operating_points.json").read_text())["points"]["reconstruction"]
        assert saved["rule"] == "manual" and saved["threshold"] == pytest.approx(0.0123)
        screenshot(page, "operating_point_from_url")
        assert page.get_by_test_id("stException").count() == 0
    finally:
        context.close()
        (server_vae_run / "operating_points.json").unlink(missing_ok=True)  # later tests start from the default


def _pixel_value(page) -> str:
    """The pixel slider's value as the page shows it (``%.4g``)."""
    box = page.get_by_test_id("stSlider").filter(has_text="Pixel threshold")
    return box.get_by_test_id("stSliderThumbValue").first.text_content().strip()


def test_switching_runs_gives_the_new_runs_pixel_threshold(page, app_server: str, server_workspace: Path,
                                                           server_vae_run: Path, server_ae_run: Path) -> None:
    from core.evaluation.pixel import pixel_curves
    from core.evaluation.scored import scored_set

    _open_threshold(page, app_server, server_ae_run)
    slider = page.get_by_test_id("stSlider").filter(has_text="Pixel threshold").get_by_role("slider")
    slider.scroll_into_view_if_needed()
    slider.focus()
    page.keyboard.press("Home")  # the minimum: every pixel segmented
    wait_idle(page)
    page.get_by_text(re.compile("pixel threshold's precision is")).first.wait_for(timeout=30_000)  # the warning
    low = _pixel_value(page)
    _pick_run(page, server_vae_run.name)
    page.get_by_role("heading", name=re.compile(r"^At threshold")).first.wait_for(timeout=60_000)
    wait_idle(page)
    expected = _in_workspace(server_workspace, lambda: pixel_curves(scored_set(server_vae_run)).f1_threshold)
    assert _pixel_value(page) == f"{float(expected):.4g}"
    assert _pixel_value(page) != low
    screenshot(page, "operating_point_switched_run")
    (server_ae_run / "operating_points.json").unlink(missing_ok=True)
    assert page.get_by_test_id("stException").count() == 0


def test_g_then_z_undoes_that_g(page, app_server: str, server_workspace: Path) -> None:
    from core.labels.store import LabelStore, dataset_key

    db = LabelStore(server_workspace / "labels.sqlite")
    key = dataset_key("builtin:synthetic", "bottle")
    page.goto(f"{app_server}/label?data=builtin:synthetic&category=bottle")
    wait_idle(page)
    page.get_by_role("heading", name="Label").first.wait_for(timeout=60_000)
    wait_idle(page)
    first = label_image_on_screen(page)
    before = db.get(key, first)
    press_and_advance(page, "g", first)
    assert db.get(key, first).label == "good"
    page.get_by_role("heading", name="Label").first.click()
    page.keyboard.press("z")
    wait_idle(page)
    page.get_by_text(re.compile(r"Undone on .*" + re.escape(Path(first).name))).first.wait_for(timeout=30_000)
    wait_idle(page)
    assert db.get(key, first) == before
    assert label_image_on_screen(page) == first  # the undone image is shown again
    screenshot(page, "label_g_then_z")
    assert page.get_by_test_id("stException").count() == 0


def test_a_killed_training_shows_as_interrupted(page, app_server: str, server_workspace: Path) -> None:
    out = server_workspace / "runs" / "killed-training"
    env = {**os.environ, "ANOMALYLAB_HOME": str(server_workspace)}
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", "--model", "ae", "--size", "32", "--base-channels", "4",
                             "--depth", "3", "--epochs", "500", "--patience", "500", "--out", str(out), "--quiet", "--no-eval"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                hist = json.loads((out / "history.json").read_text())
                if hist.get("status") == "running" and (out / "model.pt").exists():
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the training never reported running with a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert json.loads((out / "history.json").read_text())["status"] == "running"  # the file still says so
    page.goto(f"{app_server}/train")
    wait_idle(page)
    page.get_by_text("Interrupted runs keep their best checkpoint").first.wait_for(timeout=60_000)
    table = page.get_by_test_id("stDataFrame").first
    table.scroll_into_view_if_needed()
    wait_idle(page)
    screenshot(page, "train_interrupted_run")
    cells = page.locator("[data-testid='stDataFrame'] [role='gridcell']")
    texts = [t.strip() for t in cells.all_text_contents()]
    assert "interrupted" in texts and "killed-training" in texts
    assert page.get_by_test_id("stException").count() == 0
