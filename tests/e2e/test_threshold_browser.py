"""The Threshold page in a real browser: clicking a ROC point moves the threshold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_helpers import screenshot, wait_idle

pytestmark = pytest.mark.browser

# Pixel position of a ROC point far from the current operating point, from plotly's own axes.
POINT_JS = """
() => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(
      g => g._fullLayout && g._fullLayout.xaxis && String(g._fullLayout.xaxis.title.text).includes('false-alarm'));
  if (!gd) return null;
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const cd = gd.calcdata[0];
  const op = gd.calcdata[gd.calcdata.length - 1][0];
  let best = null, far = -1;
  for (let i = 1; i < cd.length - 1; i++) {
    const d = Math.hypot(cd[i].x - op.x, cd[i].y - op.y);
    if (d > far) { far = d; best = i; }
  }
  const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return {x: r.left + xa.l2p(cd[best].x), y: r.top + ya.l2p(cd[best].y), fpr: cd[best].x, tpr: cd[best].y};
}
"""


def _heading(page) -> str:
    return page.get_by_role("heading", name=re.compile(r"^At threshold")).first.text_content()


def test_clicking_a_roc_point_moves_the_threshold(page, app_server: str, server_vae_run: Path) -> None:
    (server_vae_run / "operating_points.json").unlink(missing_ok=True)  # the run's default operating point
    page.goto(app_server)
    wait_idle(page)
    page.goto(f"{app_server}/threshold")
    wait_idle(page)
    run_picker = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="Run")
    run_picker.click()
    page.get_by_role("option", name=re.compile(re.escape(server_vae_run.name))).click()
    wait_idle(page)
    page.get_by_role("heading", name=re.compile(r"^At threshold")).first.wait_for(timeout=60_000)
    wait_idle(page)
    before = _heading(page)
    rule = page.get_by_test_id("stSelectbox").filter(has_text="Set the threshold by")
    assert rule.get_by_role("combobox").input_value().startswith("Youden J")  # the default rule
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()  # click coordinates are viewport coordinates
    page.wait_for_timeout(300)
    point = page.evaluate(POINT_JS)
    assert point is not None, "the ROC chart was not found"
    page.mouse.click(point["x"], point["y"])
    page.wait_for_timeout(500)
    wait_idle(page)
    page.wait_for_function("h => ![...document.querySelectorAll('h3')].some(e => e.textContent === h)", arg=before,
                           timeout=30_000)
    wait_idle(page)
    screenshot(page, "threshold_after_click")
    assert _heading(page) != before
    assert rule.get_by_role("combobox").input_value().startswith("Manual")
    assert page.get_by_test_id("stException").count() == 0
