"""Helpers for browser tests: wait for a settled page, save screenshots."""

from __future__ import annotations

from pathlib import Path

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"


def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until the app has rendered and no script run is in progress."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=timeout, state="attached")
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-test-script-state='notRunning']", timeout=timeout, state="attached")


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot under tests/e2e/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def label_image_on_screen(page) -> str:
    """The Label page's current image (its relative path, shown in bold)."""
    return page.locator("[data-testid='stMarkdownContainer'] strong").filter(has_text="test/").first.text_content()


def press_and_advance(page, key: str, current: str) -> str:
    """On the Label page: press ``key`` (focus on the page, not an input), wait until the page shows another
    image than ``current``, and return it."""
    page.get_by_role("heading", name="Label").first.click()
    page.keyboard.press(key)
    wait_idle(page)
    page.wait_for_function("p => ![...document.querySelectorAll('strong')].some(e => e.textContent === p)", arg=current,
                           timeout=30_000)
    wait_idle(page)
    return label_image_on_screen(page)
