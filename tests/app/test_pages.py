"""AppTest smoke tests: every page runs without exception."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_home_renders_datasets_and_runs() -> None:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "AnomalyLab"
    assert [s.value for s in at.subheader] == ["Data", "Runs"]
    assert any("builtin:synthetic" in str(df.value) for df in at.dataframe)
