"""The review report in a real browser (issue 15): it renders offline with no console error and no network
request, its plots are drawn, and its images are inline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from browser_helpers import screenshot

from core.config import TrainConfig
from core.evaluation.operating import OperatingPoint, save_point
from core.evaluation.scored import scored_set
from core.services.report import write_report
from core.training.loop import fit


def test_the_report_renders_offline_without_errors_or_requests(page, tmp_path: Path) -> None:
    kw = dict(data="builtin:synthetic", category="bottle", model="ae", size=32, base_channels=4, depth=3, device="cpu")
    run = fit(TrainConfig(**kw, epochs=1), tmp_path / "run")
    other = fit(TrainConfig(**kw, epochs=1, seed=3), tmp_path / "other")
    ss = scored_set(run)
    save_point(run, "reconstruction", OperatingPoint(rule="manual", threshold=float(np.median(ss.scores)), cost_fn=5.0))
    out = tmp_path / "report.html"
    write_report(run, out, compare=[str(other)], n_boot=100, n_boot_pixel=50)

    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:"))
               else route.continue_())  # offline: anything else would fail (and be counted)
    page.goto(out.resolve().as_uri(), wait_until="load")
    page.wait_for_selector(".js-plotly-plot .main-svg")
    assert problems == []
    assert [u for u in requests if not u.startswith("data:")] == [out.resolve().as_uri()]
    assert page.locator(".js-plotly-plot").count() == 2  # ROC and PR, drawn from the inline plotly.js
    assert page.locator("figure img").count() > 0
    assert all(src.startswith("data:image/") for src in page.locator("img").evaluate_all("els => els.map(e => e.src)"))
    assert page.get_by_text("A part is flagged as defective when its anomaly score is at least").count() == 1
    screenshot(page, "report")
