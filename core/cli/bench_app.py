"""``python -m core bench app-load``: page loads of N concurrent headless browser sessions against a local
Streamlit server (127.0.0.1, a fresh workspace with a tiny run), once idle and once while a training started
from the Train page runs in that server; p50 and p90 of both, and their ratio (target: p50 while training
<= 1.5 x the idle p50).

A page load is the time from navigation until the app's script has finished (``data-test-script-state`` is
``notRunning``) with the page's title drawn; a load that shows an exception or passes the timeout counts as
failed. Sessions and loads are bounded (``--sessions`` at most 16, every load at most ``--timeout`` s).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from core.config import TrainConfig
from core.errors import ConfigError
from core.services.report import chromium_path
from core.training.loop import fit

try:
    from playwright.async_api import async_playwright
except ImportError:  # optional: only this benchmark and the report's PDF need it
    async_playwright = None

MAX_SESSIONS = 16
PAGES = {"dataset": "Dataset", "results": "Results"}
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    exe = chromium_path()  # the same lookup as the report's PDF
    if exe is None:
        raise ConfigError("bench app-load needs Chromium (apt-get install -y chromium)")
    return exe


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(len(s) - 1, int(k) + 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def _load(context, url: str, title: str, timeout_s: float) -> float | None:
    page = await context.new_page()
    try:
        t0 = time.perf_counter()
        await page.goto(url, timeout=timeout_s * 1000)
        await page.get_by_role("heading", name=title).first.wait_for(timeout=timeout_s * 1000)
        await page.wait_for_selector("[data-test-script-state='notRunning']", timeout=timeout_s * 1000)
        seconds = time.perf_counter() - t0
        if await page.get_by_test_id("stException").count():
            return None
        return seconds
    except Exception:  # noqa: BLE001 - a timeout or a crash of the page is a failed load, counted
        return None
    finally:
        await page.close()


async def _round(browser, base: str, query: str, sessions: int, rounds: int, timeout_s: float) -> dict[str, Any]:
    contexts = [await browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(sessions)]

    async def one(ctx, offset: int) -> list[float | None]:
        out = []
        names = list(PAGES)
        for r in range(rounds):
            name = names[(offset + r) % len(names)]
            out.append(await _load(ctx, f"{base}/{name}{query}", PAGES[name], timeout_s))
        return out

    try:
        results = await asyncio.gather(*(one(c, i) for i, c in enumerate(contexts)))
    finally:
        for c in contexts:
            await c.close()
    loads = [v for r in results for v in r]
    ok = [v for v in loads if v is not None]
    return {"loads": len(loads), "failed": len(loads) - len(ok), "p50": _percentile(ok, 0.5), "p90": _percentile(ok, 0.9),
            "seconds": ok}


async def _start_training(browser, base: str, query: str, timeout_s: float) -> None:
    """Start a training in the server from the Train page: an AE at the page's default size, 500 epochs (it runs
    in the server's job worker process until the benchmark ends)."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    await page.goto(f"{base}/train{query}", timeout=timeout_s * 1000)
    await page.wait_for_selector("[data-test-script-state='notRunning']", timeout=timeout_s * 1000)
    await page.get_by_text("Autoencoder (AE)").click()  # the default PatchCore is one pass: train an AE for minutes
    await page.get_by_label("Epochs (max; AE, VAE)").fill("500")
    await page.get_by_role("button", name="Start training").click()
    # the job panel's Stop button: the training job runs in the server
    await page.get_by_role("button", name="Stop", exact=True).first.wait_for(timeout=timeout_s * 1000)
    await ctx.close()


async def _bench(base: str, query: str, sessions: int, rounds: int, timeout_s: float, warm_s: float) -> dict[str, Any]:
    if async_playwright is None:
        raise ConfigError("bench app-load needs Playwright (pip install playwright)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            await _round(browser, base, query, 1, 2, timeout_s)  # warm the server's caches (not counted)
            idle = await _round(browser, base, query, sessions, rounds, timeout_s)
            await _start_training(browser, base, query, timeout_s)
            await asyncio.sleep(warm_s)  # the training is under way
            busy = await _round(browser, base, query, sessions, rounds, timeout_s)
        finally:
            await browser.close()
    return {"idle": idle, "training": busy}


def bench_app_load(sessions: int = 8, rounds: int = 2, timeout_s: float = 120.0, warm_s: float = 5.0) -> dict[str, Any]:
    """Run the benchmark; returns p50/p90 (s) idle and while training, their ratio and the target's verdict."""
    if not 1 <= sessions <= MAX_SESSIONS:
        raise ConfigError(f"--sessions must be 1 to {MAX_SESSIONS}")
    with tempfile.TemporaryDirectory(prefix="anomalylab-appload-") as home:
        # the product's job workers (a caller's environment may say threads, as the test harness does)
        env = {**os.environ, "ANOMALYLAB_HOME": home, "PYTHONPATH": str(ROOT), "ANOMALYLAB_JOB_WORKERS": "process"}
        before = os.environ.get("ANOMALYLAB_HOME")
        os.environ["ANOMALYLAB_HOME"] = home  # the tiny run below goes into the server's workspace
        try:
            run = fit(TrainConfig(data="builtin:synthetic", category="bottle", model="ae", size=32, base_channels=4,
                                  depth=3, epochs=1, device="cpu"))
        finally:
            if before is None:
                os.environ.pop("ANOMALYLAB_HOME", None)
            else:
                os.environ["ANOMALYLAB_HOME"] = before
        port = _free_port()
        log = open(Path(home) / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless=true",
                                   "--server.address=127.0.0.1", f"--server.port={port}",
                                   "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"],
                                  cwd=ROOT, env=env, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{base}/_stcore/health", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise ConfigError("the Streamlit server did not start (see its log)") from None
                    time.sleep(0.5)
            query = f"?data=builtin:synthetic&category=bottle&run={run.name}"
            res = asyncio.run(_bench(base, query, sessions, rounds, timeout_s, warm_s))
            # the training went on meanwhile (a job starved by the page loads would make the ratio meaningless)
            trained = [d for d in (Path(home) / "runs").iterdir() if d.is_dir() and d.name != run.name]
            epochs = [len(json.loads((d / "history.json").read_text()).get("epochs", [])) for d in trained
                      if (d / "history.json").is_file()]
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    idle, busy = res["idle"], res["training"]
    ratio = busy["p50"] / idle["p50"] if idle["p50"] and busy["p50"] else None
    return {"sessions": sessions, "rounds": rounds, "pages": list(PAGES), "cpu_count": os.cpu_count(),
            "idle": {k: idle[k] for k in ("loads", "failed", "p50", "p90")},
            "training": {k: busy[k] for k in ("loads", "failed", "p50", "p90")},
            "p50_ratio": ratio, "target_ratio": 1.5, "meets_target": ratio is not None and ratio <= 1.5,
            "training_epochs_done": max(epochs, default=0)}
