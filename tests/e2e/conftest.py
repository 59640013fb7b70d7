"""Real-browser fixtures: a streamlit server on a free loopback port and a headless Chromium page.

The browser is Debian's Chromium (``apt-get install -y chromium``), driven by Playwright; tests skip
with a reason when either is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``streamlit run app.py`` on a free port with its own workspace; yield its URL."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not found: install it with `apt-get install -y chromium` to run browser tests")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    port = _free_port()
    workspace = tmp_path_factory.mktemp("e2e_workspace")
    log = open(workspace / "server.log", "w")  # noqa: SIM115 - closed in teardown
    # the product's own job workers: heavy jobs in spawned worker processes (the in-process tests use threads)
    env = {**os.environ, "ANOMALYLAB_HOME": str(workspace), "ANOMALYLAB_JOB_WORKERS": "process"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true", "--server.address=127.0.0.1",
         f"--server.port={port}", "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{(workspace / 'server.log').read_text()}")
        else:
            raise RuntimeError("streamlit did not become healthy in 60 s")
        os.environ["ANOMALYLAB_E2E_SERVER_READY_S"] = f"{time.monotonic() - started:.2f}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def browser(app_server: str):
    """One headless Chromium for the session."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_server: str):
    """A fresh page (1400x1000) per test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def server_workspace(app_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's workspace folder (the app_server fixture makes "e2e_workspace*")."""
    found = sorted(tmp_path_factory.getbasetemp().glob("e2e_workspace*"), key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.fail("the app_server fixture's workspace was not found under the pytest base temp folder")
    return found[-1]


def _fit_in(workspace: Path, **kw) -> Path:
    from core.config import TrainConfig
    from core.training.loop import fit

    old = os.environ.get("ANOMALYLAB_HOME")
    os.environ["ANOMALYLAB_HOME"] = str(workspace)
    try:
        return fit(TrainConfig(data="builtin:synthetic", category="bottle", device="cpu", **kw))
    finally:
        if old is None:
            os.environ.pop("ANOMALYLAB_HOME", None)
        else:
            os.environ["ANOMALYLAB_HOME"] = old


@pytest.fixture(scope="session")
def server_vae_run(server_workspace: Path) -> Iterator[Path]:
    """A tiny VAE trained inside the server's workspace."""
    yield _fit_in(server_workspace, model="vae", size=32, z_dim=16, base_channels=8, epochs=1)


@pytest.fixture(scope="session")
def server_ae_run(server_workspace: Path, server_vae_run: Path) -> Iterator[Path]:
    """A tiny AE trained inside the server's workspace (after the VAE: the newest run)."""
    yield _fit_in(server_workspace, model="ae", size=32, base_channels=4, depth=3, epochs=1)
