"""A PatchCore run goes everywhere a run goes: every page renders it without exception, and Results and
Threshold show the same image AUROC as the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import TrainConfig
from core.evaluation.curves import summary
from core.evaluation.scored import scored_set
from core.training.loop import fit
from tests.app.test_pages import APP, PAGES

pytest.importorskip("timm", reason="the feature detectors need timm (requirements.txt)")


@pytest.fixture(scope="module")
def patchcore_run() -> Path:
    return fit(TrainConfig(data="builtin:synthetic", category="bottle", model="patchcore", size=32, feature_size=64,
                           coreset_ratio=0.05, device="cpu"))


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_a_patchcore_run(patchcore_run: Path, page: str) -> None:
    from views.components import ui

    at = AppTest.from_file(APP, default_timeout=180).run()
    at.sidebar.selectbox(key=ui.KEY_CATEGORY).set_value("bottle").run()
    at.sidebar.selectbox(key=ui.KEY_RUN).set_value(patchcore_run.name).run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    if page == "views/results.py":
        auroc = summary(scored_set(patchcore_run, "patchcore"))["image_auroc"]
        shown = [m.value for m in at.metric if m.label.lower().startswith("image auroc")]
        assert shown and shown[0].startswith(f"{auroc:.3f}"), (shown, auroc)
